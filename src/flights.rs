//! Single flight: the STS calls in the air, the requests waiting on each, and the context that
//! carries each call. A call whose carrier goes away stays in the table without a callout, for
//! the root to send again ([`Flights::orphans`]); one that nobody waits for any more is dropped.

use std::collections::HashMap;

use crate::cache::CacheKey;
use crate::caller::TraceContext;
use crate::token::Verified;

/// What an STS call is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// A token exchange; every waiter gets its token.
    Exchange(Box<Exchange>),
    /// The filter's own client-credentials call for actor `actor`; each waiter then goes on with
    /// its own exchange.
    Actor {
        /// Index into the client's actor profiles.
        actor: usize,
    },
    /// An introspection of `token` at trusted issuer `issuer`; each waiter then goes on at
    /// the trust stage.
    Introspect {
        /// Index of the trusted issuer.
        issuer: usize,
        /// The opaque token.
        token: String,
    },
}

/// A token exchange in the air, with what deciding on its answer (or sending it again) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Index of the exchange profile.
    pub profile: usize,
    /// The subject token.
    pub subject: String,
    /// The subject's `exp` (seconds), capping the cache lifetime.
    pub subject_exp: Option<u64>,
    /// The actor token sent, for a delegation.
    pub actor_token: Option<String>,
    /// When the actor's token stops being good (ms); caps the cache lifetime.
    pub actor_until_ms: Option<u64>,
    /// With `expect_act`: the `sub` the minted token's `act` must name.
    pub actor_sub: Option<String>,
    /// No header actor: the answer may go into the worker memo.
    pub rememberable: bool,
    /// The subject's verification, with trusted issuers: what its claims allow and tell.
    pub verified: Option<Verified>,
    /// Set once a chain's first hop answered: the call in the air is the second hop.
    pub first_hop: Option<Box<FirstHop>>,
    /// A refresh ahead: started by a hit, it replaces a live entry; its failure leaves that
    /// entry as it was.
    pub refresh: bool,
    /// The trace context of the request it was made for (none for a refresh ahead).
    pub trace: TraceContext,
}

/// A chain's first hop, done: what the second hop is sent, and how long its answer may live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstHop {
    /// The first hop's token (the second hop's `assertion` or `subject_token`).
    pub token: String,
    /// Its `issued_token_type` (the second hop's `subject_token_type`).
    pub issued_type: String,
    /// When it stops being good (ms): the chain's entry never outlives it.
    pub until_ms: u64,
}

/// A call that answered (or is given up): its key, job, waiters and start time.
#[derive(Debug)]
pub struct Landed {
    /// The flight's key.
    pub key: CacheKey,
    /// What the call was for.
    pub job: Job,
    /// The contexts of the requests that waited, in arrival order.
    pub waiters: Vec<u32>,
}

struct Flight {
    /// The callout's token; `None` while the call waits to be sent again.
    call: Option<u32>,
    /// The context whose callout it is; `None` for the root.
    carrier: Option<u32>,
    waiters: Vec<u32>,
    job: Job,
}

/// The flights of one worker.
#[derive(Default)]
pub struct Flights {
    flights: HashMap<CacheKey, Flight>,
    carried: HashMap<u32, Vec<CacheKey>>,
}

impl Flights {
    /// Adds request `ctx` to the waiters of the flight for `key`, if one is in the air.
    pub fn join(&mut self, key: &CacheKey, ctx: u32) -> bool {
        let Some(flight) = self.flights.get_mut(key) else {
            return false;
        };
        flight.waiters.push(ctx);
        true
    }

    /// Whether a flight for `key` is in the air (or waits to be sent).
    pub fn contains(&self, key: &CacheKey) -> bool {
        self.flights.contains_key(key)
    }

    /// A flight for `key` that nobody waits for yet, for the root to send (a refresh ahead):
    /// it is one of [`Flights::orphans`] until sent.
    pub fn queue(&mut self, key: CacheKey, job: Job) {
        let flight = Flight {
            call: None,
            carrier: None,
            waiters: Vec::new(),
            job,
        };
        self.flights.entry(key).or_insert(flight);
    }

    /// A new flight for `key`: callout `call` carried by `carrier` (`None`: the root), request
    /// `ctx` its first waiter.
    pub fn start(&mut self, key: CacheKey, call: u32, carrier: Option<u32>, ctx: u32, job: Job) {
        self.relaunch(key, call, carrier, vec![ctx], job);
    }

    /// The flight for `key` goes on as callout `call` (a chain's second hop) for `waiters`.
    pub fn relaunch(
        &mut self,
        key: CacheKey,
        call: u32,
        carrier: Option<u32>,
        waiters: Vec<u32>,
        job: Job,
    ) {
        self.flights.insert(
            key,
            Flight {
                call: Some(call),
                carrier,
                waiters,
                job,
            },
        );
        if let Some(c) = carrier {
            self.carried.entry(c).or_default().push(key);
        }
    }

    /// The flight of `key`, whose callout `call` answered, taken out of the table; `None` when
    /// that call is no longer the flight's.
    pub fn land(&mut self, key: &CacheKey, call: u32) -> Option<Landed> {
        if self.flights.get(key)?.call != Some(call) {
            return None;
        }
        self.take(key)
    }

    /// Gives a flight up (it could not be sent again): its waiters need an answer.
    pub fn take(&mut self, key: &CacheKey) -> Option<Landed> {
        let flight = self.flights.remove(key)?;
        Some(Landed {
            key: *key,
            job: flight.job,
            waiters: flight.waiters,
        })
    }

    /// Forgets request `ctx`, which waited on the flight for `key` and ended.
    pub fn leave(&mut self, ctx: u32, key: &CacheKey) {
        if let Some(flight) = self.flights.get_mut(key) {
            flight.waiters.retain(|w| *w != ctx);
            if flight.call.is_none() && flight.waiters.is_empty() {
                self.flights.remove(key);
            }
        }
    }

    /// The context `ctx` ended: the calls it carried are lost with it (returned); they wait to
    /// be sent again for whoever still waits, or are dropped when nobody does.
    pub fn carrier_gone(&mut self, ctx: u32) -> Vec<u32> {
        let mut lost = Vec::new();
        for key in self.carried.remove(&ctx).unwrap_or_default() {
            let Some(flight) = self.flights.get_mut(&key) else {
                continue;
            };
            if flight.carrier != Some(ctx) {
                continue;
            }
            lost.extend(flight.call.take());
            flight.carrier = None;
            if flight.waiters.is_empty() {
                self.flights.remove(&key);
            }
        }
        lost
    }

    /// The flights waiting to be sent again, with their jobs.
    pub fn orphans(&self) -> Vec<(CacheKey, Job)> {
        self.flights
            .iter()
            .filter(|(_, f)| f.call.is_none())
            .map(|(k, f)| (*k, f.job.clone()))
            .collect()
    }

    /// An orphan went out again as callout `call` (`None`: it could not be sent, so it is given
    /// up); the contexts of its waiters when it was given up, who need an answer.
    pub fn send_again(&mut self, key: &CacheKey, call: Option<u32>) -> Option<Vec<u32>> {
        match call {
            Some(call) => {
                self.resent(key, call);
                None
            }
            None => Some(self.take(key).map(|l| l.waiters).unwrap_or_default()),
        }
    }

    /// An orphan was sent again (by the root) as callout `call`.
    pub fn resent(&mut self, key: &CacheKey, call: u32) {
        if let Some(flight) = self.flights.get_mut(key) {
            flight.call = Some(call);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(ctx: u32) -> u32 {
        ctx
    }

    const K: CacheKey = [7; 32];
    const JOB: Job = Job::Actor { actor: 0 };

    #[test]
    fn waiters_join_one_call_and_land_together() {
        let mut f = Flights::default();
        assert!(!f.join(&K, waiter(1)));
        f.start(K, 10, Some(1), waiter(1), JOB);
        assert!(f.join(&K, waiter(2)));
        assert!(f.land(&K, 99).is_none());
        let landed = f.land(&K, 10).unwrap();
        assert_eq!(landed.waiters, vec![waiter(1), waiter(2)]);
        assert!(f.land(&K, 10).is_none(), "a flight lands once");
        assert!(!f.join(&K, waiter(3)), "and is gone");
    }

    #[test]
    fn a_lost_carrier_leaves_an_orphan_for_whoever_still_waits() {
        let mut f = Flights::default();
        f.start(K, 10, Some(1), waiter(1), JOB);
        assert!(f.join(&K, waiter(2)));
        f.leave(1, &K);
        assert_eq!(
            f.carrier_gone(1),
            vec![10],
            "the carrier's callout is lost with it"
        );
        assert!(
            f.land(&K, 10).is_none(),
            "the lost callout's answer is ignored"
        );
        assert_eq!(f.orphans(), vec![(K, JOB)]);
        f.resent(&K, 11);
        assert!(f.orphans().is_empty());
        assert_eq!(f.land(&K, 11).unwrap().waiters, vec![waiter(2)]);
    }

    #[test]
    fn an_orphan_nobody_waits_for_is_dropped() {
        let mut f = Flights::default();
        f.start(K, 10, Some(1), waiter(1), JOB);
        assert!(f.join(&K, waiter(2)));
        f.leave(1, &K);
        f.carrier_gone(1);
        f.leave(2, &K);
        f.carrier_gone(2);
        assert!(f.orphans().is_empty());
        // Also when the carrier is the last to go.
        f.start(K, 12, Some(3), waiter(3), JOB);
        f.leave(3, &K);
        f.carrier_gone(3);
        assert!(f.orphans().is_empty());
        assert!(!f.join(&K, waiter(4)));
    }

    #[test]
    fn a_queued_flight_waits_for_the_root_and_takes_waiters_meanwhile() {
        let mut f = Flights::default();
        f.queue(K, JOB);
        assert!(f.contains(&K));
        assert_eq!(f.orphans(), vec![(K, JOB)]);
        assert!(f.join(&K, waiter(1)));
        f.resent(&K, 20);
        f.carrier_gone(1);
        assert_eq!(f.land(&K, 20).unwrap().waiters, vec![waiter(1)]);
        assert!(!f.contains(&K));
    }

    #[test]
    fn a_waiter_that_leaves_gets_nothing() {
        let mut f = Flights::default();
        f.start(K, 10, None, waiter(1), JOB);
        assert!(f.join(&K, waiter(2)));
        f.leave(2, &K);
        f.carrier_gone(2);
        assert_eq!(f.land(&K, 10).unwrap().waiters, vec![waiter(1)]);
    }
}
