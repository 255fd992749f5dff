//! The engine's one call table: every callout the filter makes (token exchange, actor token,
//! CIBA backchannel request and poll, key fetch, introspection) is sent here, counted in its family, timed and
//! logged the same way, and mapped to the part whose answer it is.

use std::collections::HashMap;

use crate::cache::CacheKey;
use crate::endpoint::NoRandomness;
use crate::host::{Host, HttpCall, LogLevel};
use crate::metrics::Metric;

/// Whose answer a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// The flight (exchange or actor token) of this key.
    Flight(CacheKey),
    /// The consent of this key.
    Consent(CacheKey),
    /// The key fetch of this trusted issuer.
    Keys(usize),
    /// The introspection flight of this key.
    Introspection(CacheKey),
}

impl Owner {
    /// The counters of the call's family: sent, and not sent.
    fn counters(self) -> (Metric, Metric) {
        match self {
            Owner::Keys(_) => (Metric::JwksFetches, Metric::JwksFetchFailures),
            Owner::Introspection(_) => (Metric::Introspections, Metric::IntrospectionErrors),
            Owner::Flight(_) | Owner::Consent(_) => (Metric::StsCalls, Metric::StsErrors),
        }
    }
}

struct Outstanding {
    owner: Owner,
    sent_ms: u64,
}

/// The callouts in the air.
#[derive(Default)]
pub(super) struct Calls {
    table: HashMap<u32, Outstanding>,
}

impl Calls {
    /// Sends `request` for `owner` (`what` names it in the log); the error says why it could
    /// not be sent.
    pub(super) fn send<H: Host>(
        &mut self,
        host: &H,
        owner: Owner,
        what: &str,
        request: Result<HttpCall, NoRandomness>,
    ) -> Result<u32, String> {
        let (sent, failed) = owner.counters();
        let dispatched = request
            .map_err(|_| "no randomness for the client assertion".to_string())
            .and_then(|r| host.dispatch(&r).map_err(|e| e.0));
        match &dispatched {
            Ok(call) => {
                host.metric(sent, 1);
                let sent_ms = host.now_ms();
                self.table.insert(*call, Outstanding { owner, sent_ms });
            }
            Err(why) => {
                // A key fetch counts its attempt too.
                if sent == Metric::JwksFetches {
                    host.metric(sent, 1);
                }
                host.metric(failed, 1);
                host.log(LogLevel::Warn, &format!("{what} not dispatched: {why}"));
            }
        }
        dispatched
    }

    /// The owner of callout `call`, which answered; STS calls record their latency.
    pub(super) fn land<H: Host>(&mut self, host: &H, call: u32) -> Option<Owner> {
        let out = self.table.remove(&call)?;
        if matches!(out.owner, Owner::Flight(_) | Owner::Consent(_)) {
            let latency = host.now_ms().saturating_sub(out.sent_ms);
            host.metric(Metric::StsLatencyMs, latency);
        }
        Some(out.owner)
    }

    /// Forgets calls that were lost with their carrier (Envoy cancels them).
    pub(super) fn forget(&mut self, calls: impl IntoIterator<Item = u32>) {
        for call in calls {
            self.table.remove(&call);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

    fn call(cluster: &str) -> Result<HttpCall, NoRandomness> {
        Ok(HttpCall {
            cluster: cluster.into(),
            headers: Vec::new(),
            body: String::new(),
            timeout_ms: 100,
        })
    }

    #[test]
    fn every_call_is_counted_in_its_family_timed_and_owned_once() {
        let h = FakeHost::at(1_000);
        let mut calls = Calls::default();
        let sts = calls
            .send(&h, Owner::Flight([1; 32]), "STS call", call("sts"))
            .unwrap();
        let keys = calls
            .send(&h, Owner::Keys(0), "key fetch", call("idp"))
            .unwrap();
        assert_eq!(h.metric_value(Metric::StsCalls), 1);
        assert_eq!(h.metric_value(Metric::JwksFetches), 1);
        h.advance_ms(40);
        assert_eq!(calls.land(&h, sts), Some(Owner::Flight([1; 32])));
        assert_eq!(calls.land(&h, sts), None, "an answer lands once");
        assert_eq!(h.metric_value(Metric::StsLatencyMs), 40);
        calls.forget([keys]);
        assert_eq!(
            calls.land(&h, keys),
            None,
            "a lost call's answer belongs to no one"
        );
        h.refuse_dispatch.set(true);
        let why = calls.send(&h, Owner::Consent([2; 32]), "CIBA poll", call("sts"));
        assert!(why.is_err());
        assert_eq!(h.metric_value(Metric::StsErrors), 1);
        assert!(h
            .logs
            .borrow()
            .iter()
            .any(|(_, l)| l.starts_with("CIBA poll not dispatched")));
        assert!(calls
            .send(&h, Owner::Keys(0), "key fetch", call("idp"))
            .is_err());
        assert_eq!(h.metric_value(Metric::JwksFetches), 2, "an attempt counts");
        assert_eq!(h.metric_value(Metric::JwksFetchFailures), 1);
        let no_key = calls.send(&h, Owner::Flight([3; 32]), "STS call", Err(NoRandomness));
        assert_eq!(
            no_key.unwrap_err(),
            "no randomness for the client assertion"
        );
    }
}
