//! CIBA consents (OpenID CIBA Core 1.0): one prompt per key across workers. A worker claims the
//! key in a shared-data slot (compare-and-swap); the backchannel request and the polls (every
//! `interval`, `slow_down` adding 5 s, at once after a ping) are the root's, handed to the
//! engine from the tick as [`Wanted`] calls, so no consent depends on the request that started
//! it. Requests of other workers for a claimed key wait for the cache entry the owner writes.
//! Every request waits at most `wait_s`.
//!
//! A claim slot holds: the key (32 bytes), the owner worker (8), the consent's end (8, ms), the
//! owner's lease (8, ms; renewed on the tick, so a claim whose owner is gone is taken over after
//! it), the time of the last ping (8, ms; 0 = none) and the SHA-256 of the ping notification
//! token (32). The slot table is bounded like the cache; a key probes a few slots (8) from its
//! own, a notification token names its slot, and one client holds at most a share of the slots.

mod messages;
mod slots;

use std::collections::HashMap;

use slots::{constant_time_eq, hash, notification_token, probes, slot_name, Claim};

pub use messages::{Ask, Asking, ConsentEvent, ConsentWaiter, Want, Wanted};

use crate::cache::CacheKey;
use crate::config::CibaConfig;
use crate::host::{Host, HttpAnswer, LogLevel};
use crate::metrics::Metric;
use crate::sts::{self, Minted, Poll, StsFailure};

/// The lease beyond the STS's timeout: a claim outlives any call in the air.
const LEASE_MARGIN_MS: u64 = 10_000;

enum Phase {
    /// Claimed here; the backchannel request waits for the tick (`outgoing`) or is in the air.
    Asking {
        outgoing: Option<Want>,
        call: Option<u32>,
    },
    /// Waiting for the user; polled from the tick.
    Pending {
        auth_req_id: String,
        interval_ms: u64,
        next_poll_ms: u64,
        lapses_ms: u64,
        polling: Option<u32>,
    },
    /// Another worker owns the consent.
    Elsewhere,
}

struct Consent {
    profile: usize,
    slot: u32,
    client: [u8; 32],
    subject_exp: Option<u64>,
    phase: Phase,
    waiters: Vec<ConsentWaiter>,
}

impl Consent {
    fn owned(&self) -> bool {
        !matches!(self.phase, Phase::Elsewhere)
    }
}

/// The consents of one worker.
pub struct Consents {
    worker: u64,
    slots: u32,
    share: usize,
    wait_ms: u64,
    lease_ms: u64,
    ping: bool,
    table: HashMap<CacheKey, Consent>,
    /// Consents this worker owns, per client.
    held: HashMap<[u8; 32], usize>,
}

impl Consents {
    /// The consents of a worker (`worker`: a random id) with `slots` claim slots; a claim's
    /// lease outlasts a call of `timeout_ms`.
    pub fn new(ciba: &CibaConfig, slots: u32, timeout_ms: u64, worker: u64) -> Self {
        let slots = slots.max(1);
        Consents {
            worker,
            slots,
            share: usize::try_from(slots / 16).unwrap_or(usize::MAX).max(1),
            wait_ms: ciba.wait_s.saturating_mul(1000),
            lease_ms: timeout_ms.saturating_add(LEASE_MARGIN_MS),
            ping: matches!(ciba.mode, crate::config::CibaMode::Ping { .. }),
            table: HashMap::new(),
            held: HashMap::new(),
        }
    }

    /// Writes an empty value into every slot that was never written, so that each claim is a
    /// compare-and-swap (run at start, before requests; slots already written stay as they are).
    pub fn prepare<H: Host>(&self, host: &H) {
        for slot in 0..self.slots {
            let name = slot_name(slot);
            if host.shared_get(&name).is_none() {
                let _ = host.shared_set(&name, &[], None);
            }
        }
    }

    /// A request needs the user's consent: it joins the consent for its key (here or in
    /// another worker), or claims a slot for it; the tick then wants the backchannel request.
    pub fn ask<H: Host>(&mut self, host: &H, a: Asking, now: u64) -> Ask {
        let waiter = ConsentWaiter {
            ctx: a.ctx,
            deadline_ms: now.saturating_add(self.wait_ms),
        };
        if let Some(c) = self.table.get_mut(&a.key) {
            c.waiters.push(waiter);
            return Ask::Waiting;
        }
        let mut free = None;
        let mut found = None;
        for slot in probes(&a.key, self.slots) {
            let current = host.shared_get(&slot_name(slot));
            match current.as_ref().and_then(|(b, _)| Claim::read(b)) {
                Some(c) if c.live(now) && c.key == a.key => {
                    found = Some(slot);
                    break;
                }
                Some(c) if c.live(now) => {}
                _ if free.is_none() => free = Some((slot, current.map(|(_, cas)| cas))),
                _ => {}
            }
        }
        let (slot, phase) = match (found, free) {
            (Some(slot), _) => (slot, Phase::Elsewhere),
            (None, None) => return Ask::Busy,
            (None, Some(_)) if self.held.get(&a.client).copied().unwrap_or(0) >= self.share => {
                log(
                    host,
                    &a.key,
                    "busy: the client holds its share of consent slots",
                );
                return Ask::Busy;
            }
            (None, Some((slot, cas))) => match self.claim(host, &a, slot, cas, now) {
                Some(phase) => (slot, phase),
                None => return Ask::Busy,
            },
        };
        if !matches!(phase, Phase::Elsewhere) {
            *self.held.entry(a.client).or_default() += 1;
        }
        self.table.insert(
            a.key,
            Consent {
                profile: a.profile,
                slot,
                client: a.client,
                subject_exp: a.subject_exp,
                phase,
                waiters: vec![waiter],
            },
        );
        Ask::Waiting
    }

    /// Claims a free `slot` for `a`; on a lost race, waits for the winner if it claimed the
    /// same key. `None`: the slot went to another key.
    fn claim<H: Host>(
        &self,
        host: &H,
        a: &Asking,
        slot: u32,
        cas: Option<u32>,
        now: u64,
    ) -> Option<Phase> {
        // Shared data has no "create if absent": a slot that was never written gets an empty
        // value first, so that the claim itself is always a compare-and-swap.
        let cas = match cas {
            Some(cas) => cas,
            None => {
                let name = slot_name(slot);
                let _ = host.shared_set(&name, &[], None);
                host.shared_get(&name)?.1
            }
        };
        let token = match self.ping {
            true => Some(notification_token(slot)?),
            false => None,
        };
        let claim = Claim {
            key: a.key,
            worker: self.worker,
            until_ms: now.saturating_add(self.lease_ms),
            lease_ms: now.saturating_add(self.lease_ms),
            pinged_ms: 0,
            token_hash: token.as_deref().map(hash).unwrap_or_default(),
        };
        if host
            .shared_set(&slot_name(slot), &claim.write(), Some(cas))
            .is_ok()
        {
            let outgoing = Want::Backchannel {
                hint: a.hint.clone(),
                notification_token: token,
                trace: a.trace.clone(),
            };
            return Some(Phase::Asking {
                outgoing: Some(outgoing),
                call: None,
            });
        }
        let winner = host
            .shared_get(&slot_name(slot))
            .and_then(|(b, _)| Claim::read(&b))?;
        (winner.key == a.key).then_some(Phase::Elsewhere)
    }

    /// The wanted call for `key` went out as callout `call`.
    pub fn sent(&mut self, key: &CacheKey, call: u32) {
        let Some(c) = self.table.get_mut(key) else {
            return;
        };
        match &mut c.phase {
            Phase::Asking { call: slot, .. } | Phase::Pending { polling: slot, .. } => {
                *slot = Some(call);
            }
            Phase::Elsewhere => {}
        }
    }

    /// The wanted call for `key` could not be sent: a backchannel request gives the consent
    /// (and its claim) up, its waiters get the outage answer; a poll is tried at the next
    /// interval.
    pub fn unsent<H: Host>(&mut self, host: &H, key: &CacheKey, now: u64) -> Option<ConsentEvent> {
        let c = self.table.get_mut(key)?;
        match &mut c.phase {
            Phase::Pending {
                next_poll_ms,
                interval_ms,
                ..
            } => {
                *next_poll_ms = now.saturating_add(*interval_ms);
                None
            }
            _ => {
                let unavailable = StsFailure::Unavailable("token service unavailable");
                Some(self.end(host, *key, Err(unavailable)))
            }
        }
    }

    /// Takes up the answer to callout `call`, the backchannel request or a poll of the consent
    /// for `key`.
    pub fn on_answer<H: Host>(
        &mut self,
        host: &H,
        key: CacheKey,
        call: u32,
        answer: &HttpAnswer,
        now: u64,
    ) -> Option<ConsentEvent> {
        let consent = self.table.get_mut(&key)?;
        let in_air = match &consent.phase {
            Phase::Asking { call: c, .. } | Phase::Pending { polling: c, .. } => *c,
            Phase::Elsewhere => None,
        };
        if in_air != Some(call) {
            return None;
        }
        let end = match &mut consent.phase {
            Phase::Asking { .. } => match sts::parse_backchannel(answer) {
                Ok(b) => {
                    let lapses_ms = now.saturating_add(b.expires_in.saturating_mul(1000));
                    let interval_ms = b.interval.saturating_mul(1000);
                    consent.phase = Phase::Pending {
                        auth_req_id: b.auth_req_id,
                        interval_ms,
                        next_poll_ms: now.saturating_add(interval_ms),
                        lapses_ms,
                        polling: None,
                    };
                    let slot = consent.slot;
                    self.update_claim(host, &key, slot, |c| c.until_ms = lapses_ms);
                    let msg = format!("consent asked, lapses in {} s", b.expires_in);
                    log(host, &key, &msg);
                    return None;
                }
                Err(failure) => Err(failure),
            },
            Phase::Pending {
                polling,
                interval_ms,
                next_poll_ms,
                ..
            } => {
                *polling = None;
                match sts::parse_poll(answer) {
                    Poll::Token(minted) => Ok(minted),
                    // Not yet; an outage while polling is tried again at the next interval.
                    Poll::Pending | Poll::Failed(StsFailure::Unavailable(_)) => {
                        *next_poll_ms = now.saturating_add(*interval_ms);
                        return None;
                    }
                    Poll::SlowDown => {
                        *interval_ms = interval_ms.saturating_add(5_000);
                        *next_poll_ms = now.saturating_add(*interval_ms);
                        return None;
                    }
                    Poll::Denied => {
                        host.metric(Metric::CibaDenied, 1);
                        Err(StsFailure::Forbidden("access_denied".into()))
                    }
                    Poll::Expired => {
                        host.metric(Metric::CibaExpired, 1);
                        Err(StsFailure::Forbidden("expired_token".into()))
                    }
                    Poll::Failed(failure) => Err(failure),
                }
            }
            Phase::Elsewhere => return None,
        };
        Some(self.end(host, key, end))
    }

    /// A POST to the notification path with this bearer token: whether it names a pending
    /// consent (then its owner polls at once).
    pub fn notify<H: Host>(&self, host: &H, token: &str, now: u64) -> bool {
        let Some(index) = token
            .split_once('.')
            .and_then(|(i, _)| i.parse::<u32>().ok())
        else {
            return false;
        };
        if index >= self.slots {
            return false;
        }
        let slot = slot_name(index);
        for _ in 0..4 {
            let Some((bytes, cas)) = host.shared_get(&slot) else {
                return false;
            };
            let Some(mut claim) = Claim::read(&bytes) else {
                return false;
            };
            if !claim.live(now) || !constant_time_eq(&claim.token_hash, &hash(token)) {
                return false;
            }
            claim.pinged_ms = now.max(1);
            if host.shared_set(&slot, &claim.write(), Some(cas)).is_ok() {
                return true;
            }
        }
        false
    }

    /// Periodic work on the root context: the calls that are due (backchannel requests, polls
    /// due or pinged), leases renewed, lapsed consents, other workers' consents that ended or
    /// that nobody here waits for any more, waiters out of time.
    pub fn tick<H: Host>(&mut self, host: &H, now: u64) -> (Vec<ConsentEvent>, Vec<Wanted>) {
        let mut events = Vec::new();
        let mut wanted = Vec::new();
        let keys: Vec<CacheKey> = self.table.keys().copied().collect();
        for key in keys {
            let Some(consent) = self.table.get_mut(&key) else {
                continue;
            };
            let (slot, profile) = (consent.slot, consent.profile);
            let claim = host
                .shared_get(&slot_name(slot))
                .and_then(|(b, _)| Claim::read(&b))
                .filter(|c| c.key == key);
            match &mut consent.phase {
                Phase::Elsewhere if claim.is_none_or(|c| !c.live(now)) => {
                    let waiters = self.take(&key).map(|c| c.waiters).unwrap_or_default();
                    events.push(ConsentEvent::Settled { key, waiters });
                    continue;
                }
                Phase::Elsewhere if consent.waiters.is_empty() => {
                    self.take(&key);
                    continue;
                }
                Phase::Elsewhere => {}
                Phase::Asking { outgoing, .. } => {
                    if let Some(call) = outgoing.take() {
                        wanted.push(Wanted { key, profile, call });
                    }
                }
                Phase::Pending {
                    lapses_ms, polling, ..
                } if now >= *lapses_ms && polling.is_none() => {
                    host.metric(Metric::CibaExpired, 1);
                    let lapsed = StsFailure::Forbidden("expired_token".into());
                    events.push(self.end(host, key, Err(lapsed)));
                    continue;
                }
                Phase::Pending {
                    auth_req_id,
                    next_poll_ms,
                    polling: None,
                    ..
                } => {
                    let pinged = claim.is_some_and(|c| c.pinged_ms > 0);
                    if now >= *next_poll_ms || pinged {
                        let call = Want::Poll {
                            auth_req_id: auth_req_id.clone(),
                        };
                        wanted.push(Wanted { key, profile, call });
                        if pinged {
                            self.update_claim(host, &key, slot, |c| c.pinged_ms = 0);
                        }
                    }
                }
                Phase::Pending { .. } => {}
            }
            // The owner renews its lease well before it runs out.
            let renew = self.lease_ms / 2;
            if claim.is_some_and(|c| c.worker == self.worker && c.lease_ms < now + renew) {
                let lease = now.saturating_add(self.lease_ms);
                self.update_claim(host, &key, slot, |c| c.lease_ms = lease);
            }
            // Waiters out of time get 503; the consent goes on.
            if let Some(consent) = self.table.get_mut(&key) {
                let (late, on_time): (Vec<_>, Vec<_>) = std::mem::take(&mut consent.waiters)
                    .into_iter()
                    .partition(|w| w.deadline_ms <= now);
                consent.waiters = on_time;
                if !late.is_empty() {
                    events.push(ConsentEvent::TimedOut(late));
                }
            }
        }
        (events, wanted)
    }

    /// Forgets request `ctx`, which waited for the consent of `key` and ended; the consent
    /// itself goes on (another worker's, only while someone here waits for it).
    pub fn leave(&mut self, ctx: u32, key: &CacheKey) {
        if let Some(c) = self.table.get_mut(key) {
            c.waiters.retain(|w| w.ctx != ctx);
            if c.waiters.is_empty() && !c.owned() {
                self.take(key);
            }
        }
    }

    /// The seconds a waiting request should wait before it asks again.
    pub fn retry_after_s(&self) -> u64 {
        (self.wait_ms / 1000).clamp(1, 5)
    }

    /// Ends the consent for `key` (approved, or why not) and releases its claim.
    fn end<H: Host>(
        &mut self,
        host: &H,
        key: CacheKey,
        outcome: Result<Minted, StsFailure>,
    ) -> ConsentEvent {
        match &outcome {
            Ok(_) => {
                host.metric(Metric::CibaApproved, 1);
                log(host, &key, "consent approved");
            }
            Err(failure) => log(host, &key, &format!("consent ended: {failure}")),
        }
        let c = self.take(&key);
        if let Some(c) = &c {
            self.update_claim(host, &key, c.slot, |claim| claim.until_ms = 0);
        }
        let subject_exp = c.as_ref().and_then(|c| c.subject_exp);
        let waiters = c.map(|c| c.waiters).unwrap_or_default();
        match outcome {
            Ok(minted) => ConsentEvent::Approved {
                key,
                minted,
                subject_exp,
                waiters,
            },
            Err(failure) => ConsentEvent::Refused {
                key,
                failure,
                subject_exp,
                waiters,
            },
        }
    }

    fn take(&mut self, key: &CacheKey) -> Option<Consent> {
        let c = self.table.remove(key)?;
        if c.owned() {
            if let Some(n) = self.held.get_mut(&c.client) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.held.remove(&c.client);
                }
            }
        }
        Some(c)
    }

    /// Rewrites this worker's claim on `key` in `slot` (if it still holds it) through `change`.
    fn update_claim<H: Host>(
        &self,
        host: &H,
        key: &CacheKey,
        slot: u32,
        change: impl Fn(&mut Claim),
    ) {
        let name = slot_name(slot);
        if let Some((bytes, cas)) = host.shared_get(&name) {
            if let Some(mut claim) = Claim::read(&bytes) {
                if claim.key == *key && claim.worker == self.worker {
                    change(&mut claim);
                    let _ = host.shared_set(&name, &claim.write(), Some(cas));
                }
            }
        }
    }
}

/// A log line naming the consent by a short hash of its key, never a token or id.
fn log<H: Host>(host: &H, key: &CacheKey, what: &str) {
    let tag: String = key[..4].iter().map(|b| format!("{b:02x}")).collect();
    host.log(LogLevel::Info, &format!("consent key={tag}: {what}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{config_with, minimal};
    use crate::host::FakeHost;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000_000;

    /// Consents of a ciba configuration (`wait_s` 10), a worker with id `worker`.
    fn consents(worker: u64) -> Consents {
        let mut sts = minimal()["sts"].clone();
        sts["ciba"] = json!({ "path": "/bc", "login_hint": "login_hint_token", "wait_s": 10 });
        let config = config_with(json!({ "sts": sts,
                                         "exchange": { "grant": "ciba", "scope": "openid" } }));
        let ciba = config.sts.ciba.as_ref().unwrap();
        Consents::new(ciba, 64, 2_000, worker)
    }

    fn asking(key: u8, ctx: u32) -> Asking {
        Asking {
            key: [key; 32],
            client: [key; 32],
            ctx,
            profile: 0,
            subject_exp: None,
            hint: "the-user".into(),
            trace: Default::default(),
        }
    }

    fn backchannels(wanted: &[Wanted]) -> usize {
        let calls = wanted
            .iter()
            .filter(|w| matches!(w.call, Want::Backchannel { .. }));
        calls.count()
    }

    #[test]
    fn one_prompt_per_key_across_workers_and_later_requests_join_it() {
        let h = FakeHost::at(NOW);
        let (mut a, mut b) = (consents(1), consents(2));
        a.prepare(&h);
        assert_eq!(a.ask(&h, asking(1, 10), NOW), Ask::Waiting);
        assert_eq!(a.ask(&h, asking(1, 11), NOW), Ask::Waiting, "joins");
        assert_eq!(
            b.ask(&h, asking(1, 20), NOW),
            Ask::Waiting,
            "waits for the other worker"
        );
        let (_, wanted) = a.tick(&h, NOW);
        assert_eq!(backchannels(&wanted), 1, "one prompt");
        let (_, wanted) = b.tick(&h, NOW);
        assert_eq!(
            backchannels(&wanted),
            0,
            "never a second one for the same key"
        );
        // Another key is another prompt.
        assert_eq!(a.ask(&h, asking(2, 12), NOW), Ask::Waiting);
        let (_, wanted) = a.tick(&h, NOW);
        assert_eq!(backchannels(&wanted), 1);
    }

    #[test]
    fn a_waiter_that_leaves_is_not_answered_and_the_rest_time_out_after_wait_s() {
        let h = FakeHost::at(NOW);
        let mut a = consents(1);
        a.prepare(&h);
        a.ask(&h, asking(1, 10), NOW);
        a.ask(&h, asking(1, 11), NOW);
        a.leave(10, &[1; 32]);
        let (events, _) = a.tick(&h, NOW + 9_999);
        assert!(events.is_empty(), "{events:?}");
        let (events, _) = a.tick(&h, NOW + 10_000);
        let timed_out: Vec<u32> = events
            .iter()
            .flat_map(|e| match e {
                ConsentEvent::TimedOut(w) => w.iter().map(|w| w.ctx).collect(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(timed_out, vec![11], "only the one still waiting, once");
    }
}
