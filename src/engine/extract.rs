//! The route and extract stages: the route rule a request meets (its exchange profile, or a
//! bypass), then its subject token and, for a delegation with a header actor, its actor token.

use super::setup::Setup;
use crate::caller::{self, DpopRequest, NoToken, Subject};
use crate::config::RouteAction;
use crate::host::{Host, RequestHeaders};
use crate::metrics::Metric;
use crate::report::Path;
use crate::route::Ambiguous;
use crate::verdict::Verdict;

/// What a request brings, as the route and extract stages read it.
#[derive(Debug)]
pub(super) struct Credentials {
    /// The request's context.
    pub(super) ctx: u32,
    /// Its exchange profile (the route's).
    pub(super) profile: usize,
    /// Its subject token.
    pub(super) subject: Subject,
    /// A header actor token.
    pub(super) actor: Option<String>,
    /// With the DPoP scheme: its proof and what the proof must name.
    pub(super) dpop: Option<Box<DpopRequest>>,
}

impl Credentials {
    /// Whether the worker memo may answer for them: a plain bearer token, no header actor (the
    /// memo keys on the token alone), on a route that takes bearer tokens.
    pub(super) fn memo_may_answer(&self, s: &Setup) -> bool {
        let dpop_only = s.config.exchanges[self.profile].dpop_required;
        self.actor.is_none() && self.dpop.is_none() && !dpop_only
    }
}

/// What request `ctx` brings: its exchange profile, subject token, header actor token and,
/// with the DPoP scheme, its proof; `Err` is its verdict (a bypass, no token, a malformed one,
/// a path that reads as two routes) and how it came to it. `algs` names the proof algorithms
/// in a challenge.
pub(super) fn credentials<H, R>(
    s: &Setup,
    host: &H,
    (ctx, algs): (u32, &str),
    req: &R,
) -> Result<Credentials, (Verdict, Path)>
where
    H: Host,
    R: RequestHeaders + ?Sized,
{
    let profile = match s.routes.select(req) {
        Ok(RouteAction::Bypass) => {
            host.metric(Metric::Bypassed, 1);
            return Err((s.outcomes.pass(), Path::Bypassed));
        }
        Ok(RouteAction::Exchange(p)) => p,
        Err(Ambiguous) => return Err((s.outcomes.ambiguous_path(host, ctx), Path::Decided)),
    };
    let rules = &s.config.subject_token;
    let subject = caller::subject(req, rules).map_err(|why| {
        // A route whose policy asks for anything never passes a request without a token, nor
        // does one that takes DPoP-bound tokens only.
        let dpop_only = s.config.exchanges[profile].dpop_required;
        if dpop_only && why == NoToken::Missing {
            return (s.outcomes.missing_dpop_token(host, algs), Path::Decided);
        }
        let open = s.rules.permits(s.client.profiles[profile].policy, None, 0);
        match s.outcomes.no_token(host, ctx, why, open) {
            passed @ Verdict::Continue(_) => (passed, Path::PassedWithoutToken),
            refused => (refused, Path::Decided),
        }
    })?;
    let actor = match s.client.profiles[profile].actor_header() {
        Some(name) => match caller::actor(req, name, rules.max_bytes) {
            Some(t) => Some(t),
            None => {
                let why = "actor token missing or malformed";
                return Err((s.outcomes.invalid_token(host, why), Path::Decided));
            }
        },
        None => None,
    };
    let dpop = subject
        .is_dpop()
        .then(|| Box::new(caller::dpop_request(req)));
    Ok(Credentials {
        ctx,
        profile,
        subject,
        actor,
        dpop,
    })
}
