//! The filter's Envoy stats: every name is defined here once, under the `token_exchange.` prefix.

use crate::jwt_error::JwtError;

/// Whether a metric counts events or records values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A monotonically increasing counter.
    Counter,
    /// A histogram of recorded values.
    Histogram,
}

/// One of the filter's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Requests seen by the filter.
    Requests,
    /// Requests answered from the cache (minted token or remembered rejection).
    CacheHits,
    /// Requests whose key was not in the cache.
    CacheMisses,
    /// Calls dispatched to the STS.
    StsCalls,
    /// STS calls that failed: unreachable, timed out, 5xx, bad credentials or a nonsense answer.
    StsErrors,
    /// Requests the filter answered with 401 or 403.
    Rejected,
    /// Requests a bypass route let through untouched.
    Bypassed,
    /// Requests that waited on another request's STS call.
    Coalesced,
    /// Time from dispatch to answer of STS calls, in milliseconds.
    StsLatencyMs,
    /// JWKS fetches dispatched.
    JwksFetches,
    /// JWKS fetches that failed (unreachable, non-200, not a usable key set).
    JwksFetchFailures,
    /// CIBA backchannel authentication requests sent (prompts on a user's device).
    CibaRequests,
    /// CIBA consents the user approved.
    CibaApproved,
    /// CIBA consents the user denied.
    CibaDenied,
    /// CIBA consents that lapsed without an answer.
    CibaExpired,
    /// CIBA polls of the token endpoint.
    CibaPolls,
    /// Verified tokens of an `action: forward` issuer passed on unchanged.
    Forwarded,
    /// Verified tokens refused by the route's `require` policy (each also counts in
    /// [`Metric::Rejected`]).
    PolicyDenied,
    /// Introspection calls dispatched.
    Introspections,
    /// Introspections that failed: unreachable, timed out, 5xx, refused credentials, nonsense.
    IntrospectionErrors,
    /// Introspections that called the token inactive.
    IntrospectionInactive,
    /// Refreshes ahead that replaced a live entry.
    RefreshedAhead,
    /// Minted tokens dropped because the upstream answered 401 to them.
    EvictedOn401,
    /// Upstream 401s about a minted token that evicted nothing: its key was evicted less than
    /// a minute before.
    EvictionHeld,
    /// DPoP proofs that held (RFC 9449).
    DpopVerified,
    /// DPoP proofs refused: missing, malformed, replayed, for another request, key or token.
    DpopRejected,
    /// Verified tokens refused for the user's authentication alone (a `require` alternative's
    /// `acr` or `max_age_s`): RFC 9470's step-up challenge.
    StepUpRequired,
    /// Tokens refused for their binding: a DPoP-bound token as `Bearer`, a certificate-bound
    /// token without its certificate, an unbound token where DPoP is required.
    BoundTokenRejected,
    /// Faults contained by the native module: a hook that panicked (its request answered 500).
    Panics,
    /// Subject JWTs refused, by reason (each also counts in [`Metric::Rejected`]).
    InvalidToken(JwtError),
    /// With `token_services`: calls dispatched to token service `n` (0 is `sts`).
    ServiceCalls(u8),
    /// With `token_services`: calls of token service `n` that failed as [`Metric::StsErrors`]
    /// counts them.
    ServiceErrors(u8),
}

/// Every metric but the refusals by reason, with its stat name, in [`Metric::index`] order.
const PLAIN: [(Metric, &str); 29] = [
    (Metric::Requests, "token_exchange.requests"),
    (Metric::CacheHits, "token_exchange.cache_hits"),
    (Metric::CacheMisses, "token_exchange.cache_misses"),
    (Metric::StsCalls, "token_exchange.sts_calls"),
    (Metric::StsErrors, "token_exchange.sts_errors"),
    (Metric::Rejected, "token_exchange.rejected"),
    (Metric::Bypassed, "token_exchange.bypassed"),
    (Metric::Coalesced, "token_exchange.coalesced"),
    (Metric::StsLatencyMs, "token_exchange.sts_latency_ms"),
    (Metric::JwksFetches, "token_exchange.jwks_fetches"),
    (
        Metric::JwksFetchFailures,
        "token_exchange.jwks_fetch_failures",
    ),
    (Metric::CibaRequests, "token_exchange.ciba_requests"),
    (Metric::CibaApproved, "token_exchange.ciba_approved"),
    (Metric::CibaDenied, "token_exchange.ciba_denied"),
    (Metric::CibaExpired, "token_exchange.ciba_expired"),
    (Metric::CibaPolls, "token_exchange.ciba_polls"),
    (Metric::Forwarded, "token_exchange.forwarded"),
    (Metric::PolicyDenied, "token_exchange.policy_denied"),
    (Metric::Introspections, "token_exchange.introspections"),
    (
        Metric::IntrospectionErrors,
        "token_exchange.introspection_errors",
    ),
    (
        Metric::IntrospectionInactive,
        "token_exchange.introspection_inactive",
    ),
    (Metric::RefreshedAhead, "token_exchange.refreshed_ahead"),
    (Metric::EvictedOn401, "token_exchange.evicted_on_401"),
    (Metric::EvictionHeld, "token_exchange.eviction_held"),
    (Metric::DpopVerified, "token_exchange.dpop_verified"),
    (Metric::DpopRejected, "token_exchange.dpop_rejected"),
    (
        Metric::BoundTokenRejected,
        "token_exchange.bound_token_rejected",
    ),
    (Metric::StepUpRequired, "token_exchange.step_up_required"),
    (Metric::Panics, "token_exchange.panics"),
];

/// The refusals by reason, with their stat names, after [`PLAIN`] in [`Metric::index`] order.
const REJECTED: [(JwtError, &str); 9] = [
    (JwtError::Malformed, "token_exchange.rejected_malformed"),
    (JwtError::MissingExp, "token_exchange.rejected_missing_exp"),
    (JwtError::Algorithm, "token_exchange.rejected_algorithm"),
    (
        JwtError::UntrustedIssuer,
        "token_exchange.rejected_untrusted_issuer",
    ),
    (JwtError::UnknownKey, "token_exchange.rejected_unknown_key"),
    (JwtError::Signature, "token_exchange.rejected_signature"),
    (JwtError::Expired, "token_exchange.rejected_expired"),
    (
        JwtError::NotYetValid,
        "token_exchange.rejected_not_yet_valid",
    ),
    (JwtError::Audience, "token_exchange.rejected_audience"),
];

impl Metric {
    /// Every metric, for defining them at start, in [`Metric::index`] order.
    pub fn all() -> Vec<Metric> {
        let plain = PLAIN.iter().map(|(m, _)| *m);
        plain
            .chain(REJECTED.iter().map(|(e, _)| Metric::InvalidToken(*e)))
            .collect()
    }

    /// The per-service counters of token services `names` (in service order), with their
    /// stat names, in [`Metric::index`] order after [`Metric::all`].
    pub fn per_service(names: &[String]) -> Vec<(Metric, String)> {
        let mut out = Vec::with_capacity(names.len() * 2);
        for (i, name) in names.iter().enumerate() {
            let n = u8::try_from(i).unwrap_or(u8::MAX);
            out.push((
                Metric::ServiceCalls(n),
                format!("token_exchange.service.{name}.calls"),
            ));
            out.push((
                Metric::ServiceErrors(n),
                format!("token_exchange.service.{name}.errors"),
            ));
        }
        out
    }

    /// The full stat name (per-service counters are named by [`Metric::per_service`]).
    pub fn name(self) -> &'static str {
        let named = match self {
            Metric::ServiceCalls(_) | Metric::ServiceErrors(_) => None,
            Metric::InvalidToken(e) => REJECTED.iter().find(|(r, _)| *r == e).map(|(_, n)| *n),
            m => PLAIN.iter().find(|(p, _)| *p == m).map(|(_, n)| *n),
        };
        named.unwrap_or("token_exchange.unnamed")
    }

    /// Counter or histogram.
    pub fn kind(self) -> MetricKind {
        match self {
            Metric::StsLatencyMs => MetricKind::Histogram,
            _ => MetricKind::Counter,
        }
    }

    /// Position in [`Metric::all`], for id tables.
    pub fn index(self) -> usize {
        let fixed = PLAIN.len() + REJECTED.len();
        let at = match self {
            Metric::ServiceCalls(n) => Some(fixed + 2 * usize::from(n)),
            Metric::ServiceErrors(n) => Some(fixed + 2 * usize::from(n) + 1),
            Metric::InvalidToken(e) => REJECTED
                .iter()
                .position(|(r, _)| *r == e)
                .map(|i| PLAIN.len() + i),
            m => PLAIN.iter().position(|(p, _)| *p == m),
        };
        at.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_indexed_in_order() {
        let all = Metric::all();
        let mut names: Vec<_> = all.iter().map(|m| m.name()).collect();
        assert!(names.iter().all(|n| n.starts_with("token_exchange.")));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        for (i, m) in all.iter().enumerate() {
            assert_eq!(m.index(), i);
        }
        // A new reason fails to compile here, then fails this test until REJECTED names it.
        let position = |e: JwtError| match e {
            JwtError::Malformed => 0,
            JwtError::MissingExp => 1,
            JwtError::Algorithm => 2,
            JwtError::UntrustedIssuer => 3,
            JwtError::UnknownKey => 4,
            JwtError::Signature => 5,
            JwtError::Expired => 6,
            JwtError::NotYetValid => 7,
            JwtError::Audience => 8,
        };
        for (i, (e, _)) in REJECTED.iter().enumerate() {
            assert_eq!(position(*e), i);
        }
        assert_eq!(REJECTED.len(), position(JwtError::Audience) + 1);
        let services = Metric::per_service(&["sts".into(), "partner".into()]);
        for (i, (m, name)) in services.iter().enumerate() {
            assert_eq!(m.index(), all.len() + i);
            assert!(name.starts_with("token_exchange.service."));
        }
        assert_eq!(services[3].1, "token_exchange.service.partner.errors");
        assert_eq!(Metric::StsLatencyMs.kind(), MetricKind::Histogram);
        assert_eq!(Metric::Requests.kind(), MetricKind::Counter);
    }
}
