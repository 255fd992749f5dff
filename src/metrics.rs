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
    /// Subject JWTs refused, by reason (each also counts in [`Metric::Rejected`]).
    InvalidToken(JwtError),
}

impl Metric {
    /// Every metric, for defining them at start, in [`Metric::index`] order.
    pub fn all() -> Vec<Metric> {
        let mut all = vec![
            Metric::Requests,
            Metric::CacheHits,
            Metric::CacheMisses,
            Metric::StsCalls,
            Metric::StsErrors,
            Metric::Rejected,
            Metric::Bypassed,
            Metric::Coalesced,
            Metric::StsLatencyMs,
            Metric::JwksFetches,
            Metric::JwksFetchFailures,
            Metric::CibaRequests,
            Metric::CibaApproved,
            Metric::CibaDenied,
            Metric::CibaExpired,
            Metric::CibaPolls,
        ];
        all.extend(JwtError::ALL.iter().map(|e| Metric::InvalidToken(*e)));
        all
    }

    /// The full stat name.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Requests => "token_exchange.requests",
            Metric::CacheHits => "token_exchange.cache_hits",
            Metric::CacheMisses => "token_exchange.cache_misses",
            Metric::StsCalls => "token_exchange.sts_calls",
            Metric::StsErrors => "token_exchange.sts_errors",
            Metric::Rejected => "token_exchange.rejected",
            Metric::Bypassed => "token_exchange.bypassed",
            Metric::Coalesced => "token_exchange.coalesced",
            Metric::StsLatencyMs => "token_exchange.sts_latency_ms",
            Metric::JwksFetches => "token_exchange.jwks_fetches",
            Metric::JwksFetchFailures => "token_exchange.jwks_fetch_failures",
            Metric::CibaRequests => "token_exchange.ciba_requests",
            Metric::CibaApproved => "token_exchange.ciba_approved",
            Metric::CibaDenied => "token_exchange.ciba_denied",
            Metric::CibaExpired => "token_exchange.ciba_expired",
            Metric::CibaPolls => "token_exchange.ciba_polls",
            Metric::InvalidToken(e) => match e {
                JwtError::Malformed => "token_exchange.rejected_malformed",
                JwtError::MissingExp => "token_exchange.rejected_missing_exp",
                JwtError::Algorithm => "token_exchange.rejected_algorithm",
                JwtError::UntrustedIssuer => "token_exchange.rejected_untrusted_issuer",
                JwtError::UnknownKey => "token_exchange.rejected_unknown_key",
                JwtError::Signature => "token_exchange.rejected_signature",
                JwtError::Expired => "token_exchange.rejected_expired",
                JwtError::NotYetValid => "token_exchange.rejected_not_yet_valid",
                JwtError::Audience => "token_exchange.rejected_audience",
            },
        }
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
        match self {
            Metric::Requests => 0,
            Metric::CacheHits => 1,
            Metric::CacheMisses => 2,
            Metric::StsCalls => 3,
            Metric::StsErrors => 4,
            Metric::Rejected => 5,
            Metric::Bypassed => 6,
            Metric::Coalesced => 7,
            Metric::StsLatencyMs => 8,
            Metric::JwksFetches => 9,
            Metric::JwksFetchFailures => 10,
            Metric::CibaRequests => 11,
            Metric::CibaApproved => 12,
            Metric::CibaDenied => 13,
            Metric::CibaExpired => 14,
            Metric::CibaPolls => 15,
            Metric::InvalidToken(e) => 16 + JwtError::ALL.iter().position(|x| *x == e).unwrap_or(0),
        }
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
        assert_eq!(Metric::StsLatencyMs.kind(), MetricKind::Histogram);
        assert_eq!(Metric::Requests.kind(), MetricKind::Counter);
    }
}
