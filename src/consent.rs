//! CIBA consents (OpenID CIBA Core 1.0): one prompt per key across workers. A worker claims the
//! key in a shared-data slot (compare-and-swap), sends the backchannel request, then polls the
//! token endpoint from the root's tick (every `interval`, `slow_down` adding 5 s, at once after a
//! ping) until the user answers or the request lapses. Requests of other workers for a claimed
//! key wait for the cache entry the owner writes. Every request waits at most `wait_s`.
//!
//! A claim slot holds: the key (32 bytes), the owner worker (8), the claim's end (8, ms), the
//! time of the last ping (8, ms; 0 = none) and the SHA-256 of the ping notification token (32).
//! The slot table is bounded like the cache; a notification token names its slot.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::cache::CacheKey;
use crate::client::Client;
use crate::config::CibaConfig;
use crate::host::{Host, HttpAnswer, LogLevel};
use crate::metrics::Metric;
use crate::sts::{self, Minted, Poll, StsFailure};

const SLOT_LEN: usize = 32 + 8 + 8 + 8 + 32;
/// How long a claim lasts while the backchannel request is in the air.
const ASKING_MS: u64 = 30_000;

/// A request waiting for a consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentWaiter {
    /// Its context.
    pub ctx: u32,
    /// Its subject token (for the output headers).
    pub subject: String,
    /// When it stops waiting (ms).
    pub deadline_ms: u64,
}

/// What became of a consent, or of requests waiting for one.
#[derive(Debug, Clone, PartialEq)]
pub enum ConsentEvent {
    /// The user approved: the token, for the cache and the waiters.
    Approved {
        /// The consent's key.
        key: CacheKey,
        /// The minted token.
        minted: Minted,
        /// The subject's `exp`, capping the cache lifetime.
        subject_exp: Option<u64>,
        /// Who waited.
        waiters: Vec<ConsentWaiter>,
    },
    /// The user said no, the request lapsed, or the STS refused: remembered when it is a
    /// rejection, then the error table.
    Refused {
        /// The consent's key.
        key: CacheKey,
        /// Why.
        failure: StsFailure,
        /// The subject's `exp`, capping how long a rejection is remembered.
        subject_exp: Option<u64>,
        /// Who waited.
        waiters: Vec<ConsentWaiter>,
    },
    /// Another worker's consent ended: the waiters find its outcome in the cache.
    Settled {
        /// The consent's key.
        key: CacheKey,
        /// Who waited.
        waiters: Vec<ConsentWaiter>,
    },
    /// These waited `wait_s` in vain: 503 with `retry-after`; the consent goes on.
    TimedOut(Vec<ConsentWaiter>),
}

/// What a request for consent should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// It waits for a consent already asked for (here or in another worker).
    Waiting,
    /// This worker holds the claim: send the backchannel request, with this notification token
    /// in ping mode, then call [`Consents::asked`].
    Start {
        /// The `client_notification_token`, in ping mode.
        notification_token: Option<String>,
    },
    /// No slot is free for it now: 503.
    Busy,
}

enum Phase {
    /// The backchannel request is in the air.
    Asking { call: Option<u32> },
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
    subject_exp: Option<u64>,
    phase: Phase,
    waiters: Vec<ConsentWaiter>,
}

/// The consents of one worker.
pub struct Consents {
    worker: u64,
    slots: u32,
    wait_ms: u64,
    ping: bool,
    table: HashMap<CacheKey, Consent>,
    calls: HashMap<u32, CacheKey>,
    members: HashMap<u32, CacheKey>,
}

impl Consents {
    /// The consents of a worker (`worker`: a random id) with `slots` claim slots.
    pub fn new(ciba: &CibaConfig, slots: u32, worker: u64) -> Self {
        Consents {
            worker,
            slots: slots.max(1),
            wait_ms: ciba.wait_s.saturating_mul(1000),
            ping: matches!(ciba.mode, crate::config::CibaMode::Ping { .. }),
            table: HashMap::new(),
            calls: HashMap::new(),
            members: HashMap::new(),
        }
    }

    /// A request (`ctx`, for exchange `profile`) needs the user's consent for `key`.
    #[allow(clippy::too_many_arguments)]
    pub fn ask<H: Host>(
        &mut self,
        host: &H,
        key: CacheKey,
        ctx: u32,
        profile: usize,
        subject: &str,
        subject_exp: Option<u64>,
        now: u64,
    ) -> Ask {
        let waiter = ConsentWaiter {
            ctx,
            subject: subject.to_string(),
            deadline_ms: now.saturating_add(self.wait_ms),
        };
        if let Some(c) = self.table.get_mut(&key) {
            c.waiters.push(waiter);
            self.members.insert(ctx, key);
            return Ask::Waiting;
        }
        let slot = self.slot_name(&key);
        let current = host.shared_get(&slot);
        let claimed = current
            .as_ref()
            .and_then(|(bytes, _)| Claim::read(bytes))
            .filter(|c| c.until_ms > now);
        let (phase, ask) = match claimed {
            Some(c) if c.key == key => (Phase::Elsewhere, Ask::Waiting),
            Some(_) => return Ask::Busy,
            None => {
                let token = if self.ping {
                    match notification_token(self.slot_index(&key)) {
                        Some(t) => Some(t),
                        None => return Ask::Busy,
                    }
                } else {
                    None
                };
                let claim = Claim {
                    key,
                    worker: self.worker,
                    until_ms: now.saturating_add(ASKING_MS),
                    pinged_ms: 0,
                    token_hash: token.as_deref().map(hash).unwrap_or_default(),
                };
                let cas = current.map(|(_, cas)| cas);
                if host.shared_set(&slot, &claim.write(), cas).is_err() {
                    // Another worker claimed it first: wait for its outcome.
                    (Phase::Elsewhere, Ask::Waiting)
                } else {
                    let ask = Ask::Start {
                        notification_token: token,
                    };
                    (Phase::Asking { call: None }, ask)
                }
            }
        };
        self.members.insert(ctx, key);
        self.table.insert(
            key,
            Consent {
                profile,
                subject_exp,
                phase,
                waiters: vec![waiter],
            },
        );
        ask
    }

    /// The backchannel request for `key` went out as callout `call`.
    pub fn asked(&mut self, key: &CacheKey, call: u32) {
        if let Some(c) = self.table.get_mut(key) {
            c.phase = Phase::Asking { call: Some(call) };
            self.calls.insert(call, *key);
        }
    }

    /// The backchannel request for `key` could not be sent: give the consent (and its claim) up.
    pub fn abandon<H: Host>(&mut self, host: &H, key: &CacheKey) -> Vec<ConsentWaiter> {
        self.update_claim(host, key, |c| c.until_ms = 0);
        self.take(key).map(|c| c.waiters).unwrap_or_default()
    }

    /// Whether callout `call` is a consent's.
    pub fn owns(&self, call: u32) -> bool {
        self.calls.contains_key(&call)
    }

    /// Takes up the answer to a backchannel request or a poll.
    pub fn on_answer<H: Host>(
        &mut self,
        host: &H,
        call: u32,
        answer: &HttpAnswer,
        now: u64,
    ) -> Option<ConsentEvent> {
        let key = self.calls.remove(&call)?;
        let consent = self.table.get_mut(&key)?;
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
                    self.update_claim(host, &key, |c| c.until_ms = lapses_ms);
                    log(
                        host,
                        &key,
                        &format!("consent asked, lapses in {} s", b.expires_in),
                    );
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
        let slot = format!("token_exchange.ciba.{index}");
        for _ in 0..4 {
            let Some((bytes, cas)) = host.shared_get(&slot) else {
                return false;
            };
            let Some(mut claim) = Claim::read(&bytes) else {
                return false;
            };
            if claim.until_ms <= now || !constant_time_eq(&claim.token_hash, &hash(token)) {
                return false;
            }
            claim.pinged_ms = now.max(1);
            if host.shared_set(&slot, &claim.write(), Some(cas)).is_ok() {
                return true;
            }
        }
        false
    }

    /// Periodic work on the root context: polls that are due (or pinged), lapsed consents, other
    /// workers' consents that ended, waiters out of time.
    pub fn tick<H: Host>(&mut self, host: &H, client: &Client, now: u64) -> Vec<ConsentEvent> {
        let mut events = Vec::new();
        let keys: Vec<CacheKey> = self.table.keys().copied().collect();
        for key in keys {
            let claim = host
                .shared_get(&self.slot_name(&key))
                .and_then(|(b, _)| Claim::read(&b))
                .filter(|c| c.key == key);
            let Some(consent) = self.table.get_mut(&key) else {
                continue;
            };
            match &mut consent.phase {
                Phase::Elsewhere if claim.is_none_or(|c| c.until_ms <= now) => {
                    let waiters = self.take(&key).map(|c| c.waiters).unwrap_or_default();
                    events.push(ConsentEvent::Settled { key, waiters });
                    continue;
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
                    polling: polling @ None,
                    ..
                } => {
                    let pinged = claim.is_some_and(|c| c.pinged_ms > 0);
                    if now >= *next_poll_ms || pinged {
                        let request = client
                            .profiles
                            .get(consent.profile)
                            .map(|p| p.ciba_poll(&client.endpoint, auth_req_id, now / 1000));
                        if let Some(Ok(Ok(call))) = request.map(|r| r.map(|r| host.dispatch(&r))) {
                            host.metric(Metric::CibaPolls, 1);
                            *polling = Some(call);
                            self.calls.insert(call, key);
                        }
                        if pinged {
                            self.update_claim(host, &key, |c| c.pinged_ms = 0);
                        }
                    }
                }
                _ => {}
            }
            // Waiters out of time get 503; the consent goes on.
            if let Some(consent) = self.table.get_mut(&key) {
                let (late, on_time): (Vec<_>, Vec<_>) = std::mem::take(&mut consent.waiters)
                    .into_iter()
                    .partition(|w| w.deadline_ms <= now);
                consent.waiters = on_time;
                for w in &late {
                    self.members.remove(&w.ctx);
                }
                if !late.is_empty() {
                    events.push(ConsentEvent::TimedOut(late));
                }
            }
        }
        events
    }

    /// Forgets a request that ended; the consent itself goes on.
    pub fn leave(&mut self, ctx: u32) {
        if let Some(key) = self.members.remove(&ctx) {
            if let Some(c) = self.table.get_mut(&key) {
                c.waiters.retain(|w| w.ctx != ctx);
                if c.waiters.is_empty() && matches!(c.phase, Phase::Elsewhere) {
                    self.table.remove(&key);
                }
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
            Err(failure) => log(host, &key, &format!("consent ended: {failure:?}")),
        }
        self.update_claim(host, &key, |c| c.until_ms = 0);
        let c = self.take(&key);
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
        for w in &c.waiters {
            self.members.remove(&w.ctx);
        }
        if let Phase::Asking { call: Some(call) }
        | Phase::Pending {
            polling: Some(call),
            ..
        } = &c.phase
        {
            self.calls.remove(call);
        }
        Some(c)
    }

    /// Rewrites this worker's claim on `key` (if it still holds it) through `change`.
    fn update_claim<H: Host>(&self, host: &H, key: &CacheKey, change: impl Fn(&mut Claim)) {
        let slot = self.slot_name(key);
        if let Some((bytes, cas)) = host.shared_get(&slot) {
            if let Some(mut claim) = Claim::read(&bytes) {
                if claim.key == *key && claim.worker == self.worker {
                    change(&mut claim);
                    let _ = host.shared_set(&slot, &claim.write(), Some(cas));
                }
            }
        }
    }

    fn slot_index(&self, key: &CacheKey) -> u32 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&key[..8]);
        u32::try_from(u64::from_be_bytes(first) % u64::from(self.slots)).unwrap_or(0)
    }

    fn slot_name(&self, key: &CacheKey) -> String {
        format!("token_exchange.ciba.{}", self.slot_index(key))
    }
}

/// A claim slot's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    key: CacheKey,
    worker: u64,
    until_ms: u64,
    pinged_ms: u64,
    token_hash: [u8; 32],
}

impl Claim {
    fn read(bytes: &[u8]) -> Option<Claim> {
        if bytes.len() != SLOT_LEN {
            return None;
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes.get(at..at + 8)?);
            Some(u64::from_be_bytes(b))
        };
        Some(Claim {
            key: bytes.get(..32)?.try_into().ok()?,
            worker: word(32)?,
            until_ms: word(40)?,
            pinged_ms: word(48)?,
            token_hash: bytes.get(56..88)?.try_into().ok()?,
        })
    }

    fn write(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SLOT_LEN);
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.worker.to_be_bytes());
        out.extend_from_slice(&self.until_ms.to_be_bytes());
        out.extend_from_slice(&self.pinged_ms.to_be_bytes());
        out.extend_from_slice(&self.token_hash);
        out
    }
}

/// A fresh `client_notification_token`: the slot index, a dot, 128 random bits in hex.
fn notification_token(slot: u32) -> Option<String> {
    let mut random = [0u8; 16];
    getrandom::getrandom(&mut random).ok()?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("{slot}.{hex}"))
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equal, in a time that does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A log line naming the consent by a short hash of its key, never a token or id.
fn log<H: Host>(host: &H, key: &CacheKey, what: &str) {
    let tag: String = key[..4].iter().map(|b| format!("{b:02x}")).collect();
    host.log(LogLevel::Info, &format!("consent key={tag}: {what}"));
}
