//! The filter's Envoy stats: every name is defined here once, under the `token_exchange.` prefix.

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
}

impl Metric {
    /// Every metric, for defining them at start.
    pub const ALL: [Metric; 9] = [
        Metric::Requests,
        Metric::CacheHits,
        Metric::CacheMisses,
        Metric::StsCalls,
        Metric::StsErrors,
        Metric::Rejected,
        Metric::Bypassed,
        Metric::Coalesced,
        Metric::StsLatencyMs,
    ];

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
        }
    }

    /// Counter or histogram.
    pub fn kind(self) -> MetricKind {
        match self {
            Metric::StsLatencyMs => MetricKind::Histogram,
            _ => MetricKind::Counter,
        }
    }

    /// Position in [`Metric::ALL`], for id tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_indexed_in_order() {
        let mut names: Vec<_> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert!(names.iter().all(|n| n.starts_with("token_exchange.")));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Metric::ALL.len());
        for (i, m) in Metric::ALL.iter().enumerate() {
            assert_eq!(m.index(), i);
        }
        assert_eq!(Metric::StsLatencyMs.kind(), MetricKind::Histogram);
        assert_eq!(Metric::Requests.kind(), MetricKind::Counter);
    }
}
