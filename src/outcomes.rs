//! What a request gets once the engine has decided: the header edits of a success or a bypass
//! (prepared once from the configuration), and the error table's verdicts with the fail-open
//! policy. Counts a rejection wherever it answers one.

use crate::cache::Cached;
use crate::caller::{NoToken, DPOP_HEADER};
use crate::config::{Config, OnMissingToken, OnStsUnavailable};
use crate::host::{Host, LogLevel};
use crate::introspection::Failure;
use crate::jwt_error::JwtError;
use crate::metrics::Metric;
use crate::policy::StepUp;
use crate::reply::{LocalReply, Schemes};
use crate::sts::StsFailure;
use crate::token::{self, Verified};
use crate::verdict::{HeaderOp, Verdict};

/// The verdicts of one configuration.
#[derive(Debug, Clone)]
pub struct Outcomes {
    realm: String,
    /// Headers a client could use to pass off a token as the filter's: removed from every request
    /// the filter lets through.
    strip: Vec<HeaderOp>,
    /// `strip` and the claim headers: what a request that goes on without verified claims loses.
    pass: Vec<HeaderOp>,
    /// The claim headers' other spellings (`x_tenant` for `x-tenant`): removed from every
    /// request that goes on, since CGI-style upstreams read them as the claim header.
    aliases: Vec<HeaderOp>,
    /// `pass` plus the subject header: what a request that goes on without any token loses.
    strip_all: Vec<HeaderOp>,
    /// `output.claims_to_headers`' headers, in order: set from verified claims, else removed.
    claim_headers: Vec<String>,
    subject_header: String,
    output_header: String,
    output_prefix: String,
    original_token_header: Option<String>,
    fail_open: bool,
    allow_missing: bool,
}

impl Outcomes {
    /// Prepares the header edits of `config`.
    pub fn new(config: &Config) -> Self {
        let out = &config.output;
        let subject_header = config.subject_token.header.clone();
        let mut strip = Vec::new();
        if out.header != subject_header {
            strip.push(HeaderOp::Remove(out.header.clone()));
        }
        if let Some(h) = &out.original_token_header {
            strip.push(HeaderOp::Remove(h.clone()));
        }
        strip.extend(
            config
                .actor_headers
                .iter()
                .map(|h| HeaderOp::Remove(h.clone())),
        );
        let claim_headers: Vec<String> = out
            .claims_to_headers
            .iter()
            .map(|c| c.header.clone())
            .collect();
        let aliases: Vec<HeaderOp> = out
            .claims_to_headers
            .iter()
            .flat_map(|c| c.aliases.iter().map(|a| HeaderOp::Remove(a.clone())))
            .collect();
        let mut pass = strip.clone();
        pass.extend(claim_headers.iter().map(|h| HeaderOp::Remove(h.clone())));
        pass.extend(aliases.iter().cloned());
        // A request let through without its token loses its DPoP proof too.
        let dpop = HeaderOp::Remove(DPOP_HEADER.to_string());
        let mut strip_all = vec![HeaderOp::Remove(subject_header.clone()), dpop];
        strip_all.extend(pass.iter().cloned());
        Outcomes {
            realm: config.realm.clone(),
            strip,
            pass,
            aliases,
            strip_all,
            claim_headers,
            subject_header,
            output_header: out.header.clone(),
            output_prefix: out.prefix.clone(),
            original_token_header: out.original_token_header.clone(),
            fail_open: config.on_sts_unavailable == OnStsUnavailable::Allow,
            allow_missing: config.on_missing_token == OnMissingToken::Allow,
        }
    }

    /// A request the filter lets through without exchanging (bypass, allowed missing token).
    pub fn pass(&self) -> Verdict {
        Verdict::Continue(self.pass.clone())
    }

    /// The request goes on with the minted token in the output header, and the claim headers
    /// from the subject's `verified` facts. A token bound to a key came with the DPoP scheme:
    /// its proof is for the filter alone (RFC 9449) and never reaches the upstream. (A stray
    /// `DPoP` header on a bearer request is passed as any header: its proof names a token the
    /// upstream never sees, and removing it would cost every bearer request a host call.)
    pub fn success(&self, minted: &str, subject: &str, verified: Option<&Verified>) -> Verdict {
        let claims = self.claim_headers.len() + self.aliases.len();
        let mut ops = Vec::with_capacity(self.strip.len() + claims + 4);
        if verified.is_some_and(|v| v.binding.jkt().is_some()) {
            ops.push(HeaderOp::Remove(DPOP_HEADER.to_string()));
        }
        let facts = verified.map(|v| &v.facts);
        // Setting the output header replaces every copy of it; the subject header needs its
        // own removal only when it is another header.
        if self.output_header != self.subject_header {
            ops.push(HeaderOp::Remove(self.subject_header.clone()));
        }
        ops.extend(self.strip.iter().cloned());
        ops.push(HeaderOp::Set(
            self.output_header.clone(),
            format!("{}{minted}", self.output_prefix),
        ));
        if let Some(h) = &self.original_token_header {
            ops.push(HeaderOp::Set(h.clone(), subject.to_string()));
        }
        ops.extend(self.aliases.iter().cloned());
        for (i, h) in self.claim_headers.iter().enumerate() {
            ops.push(match facts.and_then(|f| f.header_value(i)) {
                Some(v) => HeaderOp::Set(h.clone(), v.to_string()),
                None => HeaderOp::Remove(h.clone()),
            });
        }
        Verdict::Continue(ops)
    }

    /// A verified token of an `action: forward` issuer goes on unchanged in the output header.
    pub fn forward<H: Host>(&self, host: &H, subject: &str, verified: &Verified) -> Verdict {
        host.metric(Metric::Forwarded, 1);
        self.success(subject, subject, Some(verified))
    }

    /// A verified token that fails the route's `require` policy: 403 naming the scope of the
    /// policy's first alternative, if it lists any.
    pub fn policy_denied<H: Host>(&self, host: &H, scope: Option<&str>) -> Verdict {
        host.metric(Metric::PolicyDenied, 1);
        host.metric(Metric::Rejected, 1);
        Verdict::Respond(LocalReply::insufficient_scope(
            &self.realm,
            "the token does not meet this route's access policy",
            scope,
        ))
    }

    /// A verified token whose authentication is not strong or recent enough for the route:
    /// RFC 9470's 401 naming what would do.
    pub fn step_up<H: Host>(&self, host: &H, step: &StepUp) -> Verdict {
        host.metric(Metric::StepUpRequired, 1);
        host.metric(Metric::Rejected, 1);
        let acr = step.acr_values.as_deref();
        Verdict::Respond(LocalReply::step_up(&self.realm, acr, step.max_age))
    }

    /// A path whose readings fall under different route rules: 400, counted as rejected.
    pub fn ambiguous_path<H: Host>(&self, host: &H, ctx: u32) -> Verdict {
        host.metric(Metric::Rejected, 1);
        if host.debug_enabled() {
            let msg = format!("ctx={ctx} refused: the path reads as more than one route");
            host.log(LogLevel::Debug, &msg);
        }
        Verdict::Respond(LocalReply::ambiguous_path())
    }

    /// The error table for STS failures, including the fail-open policy.
    pub fn failure<H: Host>(&self, host: &H, failure: &StsFailure) -> Verdict {
        let realm = &self.realm;
        match failure {
            StsFailure::SubjectRejected(_) => {
                host.metric(Metric::Rejected, 1);
                Verdict::Respond(LocalReply::invalid_token(
                    realm,
                    "the token service rejected the token",
                ))
            }
            StsFailure::Forbidden(code) => {
                host.metric(Metric::Rejected, 1);
                Verdict::Respond(LocalReply::forbidden(
                    realm,
                    &format!("the token service refused this exchange: {code}"),
                ))
            }
            StsFailure::InvalidClient => Verdict::Respond(LocalReply::bad_gateway(
                "the token service rejected the proxy's credentials",
            )),
            StsFailure::BadAnswer(why) => Verdict::Respond(LocalReply::bad_gateway(why)),
            StsFailure::Unavailable(_) if self.fail_open => {
                Verdict::Continue(self.strip_all.clone())
            }
            StsFailure::Unavailable(why) => Verdict::Respond(LocalReply::unavailable(why)),
            StsFailure::Interaction { code, claims } => {
                host.metric(Metric::Rejected, 1);
                Verdict::Respond(LocalReply::interaction(realm, code, claims.as_deref()))
            }
        }
    }

    /// What a cached answer gives (the claim headers from the subject's verified `facts`).
    pub fn cached<H: Host>(
        &self,
        host: &H,
        value: &Cached,
        subject: &str,
        verified: Option<&Verified>,
    ) -> Verdict {
        match value {
            Cached::Token(minted) => self.success(minted, subject, verified),
            Cached::Rejected(r) => self.failure(host, &StsFailure::from(r.clone())),
        }
    }

    /// An exchange (call `call`, `waiting` requests) that produced no token: counted and logged
    /// unless the STS judged the subject or the exchange, then the error table's verdict.
    pub fn exchange_failed<H: Host>(
        &self,
        host: &H,
        call: u32,
        failure: &StsFailure,
        waiting: usize,
    ) -> Verdict {
        let asks_the_user = matches!(failure, StsFailure::Interaction { .. });
        if failure.rejection().is_none() && !asks_the_user {
            host.metric(Metric::StsErrors, 1);
            host.log(
                LogLevel::Warn,
                &format!("STS call {call} failed: {failure}"),
            );
        }
        let v = self.failure(host, failure);
        if let Verdict::Respond(r) = &v {
            if r.status == 401 || r.status == 403 {
                // Every waiter is one more rejected request.
                host.metric(Metric::Rejected, waiting.saturating_sub(1) as u64);
            }
        }
        v
    }

    /// The filter's own actor-token call failed: an outage by the usual policy, else 502.
    pub fn actor_failed<H: Host>(&self, host: &H, call: u32, failure: &StsFailure) -> Verdict {
        host.metric(Metric::StsErrors, 1);
        let msg = format!("actor token call {call} failed: {failure}");
        host.log(LogLevel::Warn, &msg);
        match failure {
            StsFailure::Unavailable(_) => self.failure(host, failure),
            _ => Verdict::Respond(LocalReply::bad_gateway(
                "the token service refused the proxy's own actor token request",
            )),
        }
    }

    /// A token the filter itself refuses (format, trusted-issuer checks, header rules): 401.
    pub fn invalid_token<H: Host>(&self, host: &H, why: &str) -> Verdict {
        host.metric(Metric::Rejected, 1);
        Verdict::Respond(LocalReply::invalid_token(&self.realm, why))
    }

    /// A DPoP proof that does not hold: 401 `invalid_dpop_proof`.
    pub fn bad_proof<H: Host>(&self, host: &H, why: &str, schemes: Schemes<'_>) -> Verdict {
        host.metric(Metric::DpopRejected, 1);
        host.metric(Metric::Rejected, 1);
        let reply = LocalReply::unbound(&self.realm, "invalid_dpop_proof", why, schemes);
        Verdict::Respond(reply)
    }

    /// A token refused for its binding (or for having none where DPoP is required): 401
    /// `invalid_token`.
    pub fn unbound<H: Host>(&self, host: &H, why: &str, schemes: Schemes<'_>) -> Verdict {
        host.metric(Metric::BoundTokenRejected, 1);
        host.metric(Metric::Rejected, 1);
        let reply = LocalReply::unbound(&self.realm, "invalid_token", why, schemes);
        Verdict::Respond(reply)
    }

    /// A request without a token on a route that takes DPoP-bound tokens only.
    pub fn missing_dpop_token<H: Host>(&self, host: &H, algs: &str) -> Verdict {
        host.metric(Metric::Rejected, 1);
        Verdict::Respond(LocalReply::missing_dpop_token(&self.realm, algs))
    }

    /// A subject JWT refused by the trusted-issuer checks, counted by reason.
    pub fn refused_jwt<H: Host>(&self, host: &H, ctx: u32, subject: &str, e: JwtError) -> Verdict {
        host.metric(Metric::InvalidToken(e), 1);
        if host.debug_enabled() {
            let why = format!("refused: {}", e.description());
            token::log_debug(host, ctx, subject, &why);
        }
        self.invalid_token(host, e.description())
    }

    /// RFC 8693 §4.4: the subject token's `may_act` does not name the actor: 403.
    pub fn actor_not_allowed<H: Host>(&self, host: &H, ctx: u32) -> Verdict {
        host.metric(Metric::Rejected, 1);
        if host.debug_enabled() {
            host.log(
                LogLevel::Debug,
                &format!("ctx={ctx} actor not named in the token's may_act"),
            );
        }
        Verdict::Respond(LocalReply::forbidden(
            &self.realm,
            "the token does not allow this actor to act for its subject (may_act)",
        ))
    }

    /// A request without a usable subject token: passed on or challenged as
    /// `on_missing_token` says when there is none and its route's policy is `open` (asks for
    /// nothing), challenged when the policy asks for something, 401 when it is malformed.
    pub fn no_token<H: Host>(&self, host: &H, ctx: u32, why: NoToken, open: bool) -> Verdict {
        match why {
            NoToken::Missing if self.allow_missing && open => self.pass(),
            NoToken::Missing => {
                host.metric(Metric::Rejected, 1);
                Verdict::Respond(LocalReply::missing_token(&self.realm))
            }
            NoToken::Malformed(why) => {
                if host.debug_enabled() {
                    host.log(
                        LogLevel::Debug,
                        &format!("ctx={ctx} malformed token: {why}"),
                    );
                }
                self.invalid_token(host, why)
            }
        }
    }

    /// An opaque token that introspection did not make trusted: 401 when inactive or refused,
    /// 502 for the endpoint's nonsense or its refusal of the proxy, 503 when it is down. Never
    /// passed on, whatever `on_sts_unavailable` says: trust was not established.
    pub fn untrusted<H: Host>(&self, host: &H, failure: Failure) -> Verdict {
        let why = failure.description();
        match failure {
            Failure::Inactive | Failure::Refused(_) => self.invalid_token(host, why),
            Failure::ClientRejected | Failure::Nonsense(_) => {
                Verdict::Respond(LocalReply::bad_gateway(why))
            }
            Failure::Unavailable(_) => Verdict::Respond(LocalReply::unavailable(why)),
        }
    }

    /// The issuer's keys are not there: not fetched yet, or the fetch failed. 503.
    pub fn no_keys(&self, fetch_failed: bool) -> Verdict {
        Verdict::Respond(LocalReply::unavailable(if fetch_failed {
            "signing keys of the token issuer could not be fetched"
        } else {
            "signing keys of the token issuer are not available yet"
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{config_with, merged};
    use crate::host::FakeHost;

    fn outcomes(extra: serde_json::Value) -> Outcomes {
        let base = serde_json::json!({
            "trusted_issuers": [{ "issuer": "i", "algorithms": ["ES256"], "jwks": { "keys": [] } }],
            "output": { "original_token_header": "x-original",
                        "claims_to_headers": [{ "claim": "tenant", "header": "x-tenant" }] },
            "exchange": { "actor": { "source": "header", "header": "x-actor" } }
        });
        Outcomes::new(&config_with(merged(base, &extra)))
    }

    fn ops(v: &Verdict) -> &[HeaderOp] {
        match v {
            Verdict::Continue(ops) => ops,
            other => panic!("expected the request to go on, got {other:?}"),
        }
    }

    fn removed(v: &Verdict, name: &str) -> bool {
        ops(v).contains(&HeaderOp::Remove(name.into()))
    }

    #[test]
    fn a_success_writes_the_minted_token_and_strips_what_a_client_could_forge() {
        let o = outcomes(serde_json::json!({}));
        let v = o.success("minted", "caller", None);
        let ops = ops(&v);
        assert!(ops.contains(&HeaderOp::Set(
            "authorization".into(),
            "Bearer minted".into()
        )));
        assert!(ops.contains(&HeaderOp::Set("x-original".into(), "caller".into())));
        assert!(
            removed(&v, "x-actor"),
            "the actor header never reaches the upstream"
        );
        for claim_header in ["x-tenant", "x_tenant"] {
            assert!(
                removed(&v, claim_header),
                "{claim_header}: no verified value, no header"
            );
        }
        // The original token header is set after its client copy is removed.
        let strip = ops
            .iter()
            .position(|op| *op == HeaderOp::Remove("x-original".into()));
        let set = ops
            .iter()
            .position(|op| matches!(op, HeaderOp::Set(n, _) if n == "x-original"));
        assert!(strip < set, "{ops:?}");
    }

    #[test]
    fn a_bypass_or_an_allowed_missing_token_loses_every_header_the_filter_owns() {
        let o = outcomes(serde_json::json!({ "on_missing_token": "allow" }));
        for v in [
            o.pass(),
            o.no_token(&FakeHost::at(0), 1, NoToken::Missing, true),
        ] {
            for h in ["x-original", "x-actor", "x-tenant", "x_tenant"] {
                assert!(removed(&v, h), "{h}");
            }
            assert!(
                !removed(&v, "authorization"),
                "the caller's own request goes on as it is"
            );
        }
    }

    #[test]
    fn a_missing_token_is_challenged_where_the_route_asks_for_something() {
        let h = FakeHost::at(0);
        let allow = outcomes(serde_json::json!({ "on_missing_token": "allow" }));
        let v = allow.no_token(&h, 1, NoToken::Missing, false);
        assert!(
            matches!(&v, Verdict::Respond(r) if r.status == 401),
            "{v:?}"
        );
        let reject = outcomes(serde_json::json!({}));
        let v = reject.no_token(&h, 2, NoToken::Missing, true);
        assert!(
            matches!(&v, Verdict::Respond(r) if r.status == 401),
            "{v:?}"
        );
        let v = allow.no_token(&h, 3, NoToken::Malformed("bad"), true);
        assert!(
            matches!(&v, Verdict::Respond(r) if r.status == 401),
            "malformed: {v:?}"
        );
        assert_eq!(h.metric_value(Metric::Rejected), 3);
    }

    #[test]
    fn failing_open_strips_the_callers_token_and_never_passes_it() {
        let h = FakeHost::at(0);
        let open = outcomes(serde_json::json!({ "on_sts_unavailable": "allow" }));
        let v = open.failure(&h, &StsFailure::Unavailable("down"));
        assert!(
            removed(&v, "authorization") && removed(&v, "x-tenant"),
            "{v:?}"
        );
        let closed = outcomes(serde_json::json!({}));
        let v = closed.failure(&h, &StsFailure::Unavailable("down"));
        assert!(
            matches!(&v, Verdict::Respond(r) if r.status == 503),
            "{v:?}"
        );
        // An opaque token whose issuer is down is never passed on, fail-open or not.
        let v = open.untrusted(&h, Failure::Unavailable("down"));
        assert!(
            matches!(&v, Verdict::Respond(r) if r.status == 503),
            "{v:?}"
        );
    }

    #[test]
    fn every_waiter_of_a_rejected_exchange_counts_as_rejected() {
        let h = FakeHost::at(0);
        let o = outcomes(serde_json::json!({}));
        let rejected = StsFailure::SubjectRejected("invalid_grant".into());
        let v = o.exchange_failed(&h, 7, &rejected, 5);
        assert!(
            matches!(&v, Verdict::Respond(r) if r.status == 401),
            "{v:?}"
        );
        assert_eq!(h.metric_value(Metric::Rejected), 5);
        assert_eq!(
            h.metric_value(Metric::StsErrors),
            0,
            "the STS judged the token"
        );
        let v = o.exchange_failed(&h, 8, &StsFailure::BadAnswer("nonsense"), 2);
        assert!(
            matches!(&v, Verdict::Respond(r) if r.status == 502),
            "{v:?}"
        );
        assert_eq!(h.metric_value(Metric::StsErrors), 1);
    }
}
