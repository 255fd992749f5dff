//! Calls sent again from the root's tick: a flight whose carrier went away (or a refresh ahead
//! queued by a hit) is built anew and sent for whoever still waits; one that cannot be sent
//! answers its waiters as an outage.

use super::calls::Owner;
use super::{opaque, Engine, UNAVAILABLE};
use crate::flights::Job;
use crate::host::Host;
use crate::verdict::{to_each, Verdict};

impl Engine {
    /// Sends every orphaned flight again; the verdicts of the requests whose flight could not
    /// be sent.
    pub(super) fn send_orphans<H: Host>(&mut self, host: &H, now: u64) -> Vec<(u32, Verdict)> {
        let mut out = Vec::new();
        for (key, job) in self.flights.orphans() {
            let (owner, request) = match &job {
                Job::Exchange(x) if x.first_hop.is_some() => {
                    (Owner::Flight(key), Ok(self.second_hop_request(x, now)))
                }
                Job::Exchange(x) => {
                    // The filter's own actor token as it is now; else the one first sent.
                    let recorded = x.actor_token.as_deref();
                    let actor = self.actor_for(host, x.profile, recorded, None, now);
                    let actor = actor.map_or_else(|_| x.actor_token.clone(), |(t, _)| t);
                    let p = &self.client.profiles[x.profile];
                    let endpoint = self.client.endpoint(p.service);
                    let r = p.request(endpoint, &x.subject, actor.as_deref(), now / 1000);
                    (Owner::Flight(key), Ok(r))
                }
                Job::Actor { actor } => {
                    let a = &self.client.actors[*actor];
                    let r = a.request(self.client.endpoint(a.service), now / 1000);
                    (Owner::Flight(key), Ok(r))
                }
                Job::Introspect { issuer, token } => (
                    Owner::Introspection(key),
                    self.introspection.request(*issuer, token, now),
                ),
            };
            let what = match &job {
                Job::Exchange(x) if x.refresh && x.first_hop.is_none() => "refresh ahead",
                _ => "call sent again",
            };
            let sent = request.map(|r| self.calls.send(host, owner, what, r));
            let service = match &job {
                Job::Exchange(x) => Some(self.hop_service(x)),
                Job::Actor { actor } => Some(self.client.actors[*actor].service),
                Job::Introspect { .. } => None,
            };
            if let Some(s) = service {
                self.count_service(host, s, matches!(sent, Ok(Ok(_))));
            }
            if let Ok(Ok(call)) = sent {
                self.flights.resent(&key, call);
                continue;
            }
            let waiters = self.flights.take(&key).map(|l| l.waiters);
            let waiters = waiters.unwrap_or_default();
            self.resume(&waiters);
            if waiters.is_empty() {
                if let Job::Exchange(x) = &job {
                    if x.refresh {
                        self.refresh_failed(host, &key, "its call could not be sent");
                    }
                }
                continue;
            }
            let v = match job {
                Job::Introspect { .. } => self.outcomes.untrusted(host, opaque::NOT_SENT),
                _ => self.outcomes.failure(host, &UNAVAILABLE),
            };
            out.extend(to_each(waiters.iter().copied(), &v));
        }
        out
    }
}
