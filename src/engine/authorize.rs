//! The authorize stage, for a subject the trust stage let through: the route's `require`
//! policy on its verified claims (403 before any STS call), then a forwarded issuer's token
//! passed on unchanged; anything else goes on to the exchange.

use std::borrow::Cow;

use super::request::{Next, Request};
use super::setup::Setup;
use crate::host::Host;
use crate::token;
use crate::verdict::Verdict;

/// The route's policy, then a forwarded issuer: a verdict, or on to the exchange.
pub(super) fn authorize<H: Host>(s: &Setup, host: &H, req: &Request) -> Next<()> {
    let policy = s.client.profiles[req.profile].policy;
    if !s.rules.permits(policy, req.facts(), host.now_ms() / 1000) {
        return Next::Stop(deny(s, host, req, policy));
    }
    let issuers = &s.config.trusted_issuers;
    let forwarded = |i: usize| issuers.get(i).is_some_and(|t| t.forward);
    if let Some(v) = req.verified.as_ref().filter(|v| forwarded(v.issuer)) {
        // Already a token the services accept: no exchange.
        token::log_debug(host, req.ctx, req.token(), "forwarded unchanged");
        return Next::Stop(s.outcomes.forward(host, req.token(), v));
    }
    Next::Go(())
}

/// A verified token that fails `policy`: RFC 9470's 401 when an alternative fails only on the
/// user's authentication (`acr`, `max_age_s`), else 403; the reason in the debug log (scopes
/// and claim names, never a value).
fn deny<H: Host>(s: &Setup, host: &H, req: &Request, policy: usize) -> Verdict {
    let claims = req.verified.as_ref().and_then(|v| v.claims.as_deref());
    let needed = host.debug_enabled() || s.rules.may_step_up(policy);
    let read = || needed.then(|| token::claims(req.token())).flatten();
    let claims = claims.map(Cow::Borrowed).or_else(|| read().map(Cow::Owned));
    if host.debug_enabled() {
        let why = match &claims {
            Some(c) => s.rules.reason(policy, c),
            None => "policy not met".to_string(),
        };
        token::log_debug(host, req.ctx, req.token(), &why);
    }
    if let Some(step) = claims.and_then(|c| s.rules.step_up(policy, &c)) {
        return s.outcomes.step_up(host, &step);
    }
    let scope = s.rules.challenge_scope(policy);
    s.outcomes.policy_denied(host, scope.as_deref())
}
