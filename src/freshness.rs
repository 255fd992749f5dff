//! Freshness of minted tokens across the workers: the refresh-ahead window and its claims in
//! shared data (one background exchange per entry across workers), the requests that were
//! served a minted token (so that the upstream's 401 can evict it), and the eviction log through
//! which every worker drops its memo's copies of an evicted token.

use std::collections::HashMap;

use crate::cache::{slot_index, swap_slot, write_claim, CacheKey, Cached};
use crate::config::CacheConfig;
use crate::host::Host;

/// A minted token a request was served: its cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// The entry's key.
    pub key: CacheKey,
    /// The entry's expiry (ms): which of the key's entries it was.
    pub expires_at_ms: u64,
}

/// What the eviction log says this worker has not yet applied.
#[derive(Debug, PartialEq, Eq)]
pub enum News {
    /// These entries were evicted.
    Evicted(Vec<Served>),
    /// More were evicted than the log keeps: forget every copy.
    Missed,
}

/// The freshness state of one worker.
pub struct Freshness {
    window_ms: u64,
    hold_ms: u64,
    claim_slots: u32,
    evict: bool,
    served: HashMap<u32, Served>,
    /// The eviction log's sequence number this worker has applied (`None` before its first
    /// read, or after a time without copies).
    seen: Option<u64>,
}

/// How long a failed refresh waits before another worker may try again (ms).
pub const RETRY_MS: u64 = 1_000;
/// A key is evicted on the upstream's 401 at most once in this long (ms), across workers: an
/// upstream that refuses every token costs the STS one more call per key a minute at most.
pub const EVICT_EVERY_MS: u64 = 60_000;
/// The most evictions the log keeps.
const LOG_LEN: usize = 32;
const LOG_NAME: &str = "token_exchange.evictions";
const RECORD_LEN: usize = 32 + 8;

impl Freshness {
    /// The state for `rules`; a refresh claim holds for `hold_ms` while its call is in the air.
    pub fn new(rules: &CacheConfig, hold_ms: u64) -> Self {
        Freshness {
            window_ms: rules.refresh_ahead_s.saturating_mul(1000),
            hold_ms,
            claim_slots: rules.max_entries,
            evict: rules.evict_on_upstream_401,
            served: HashMap::new(),
            seen: None,
        }
    }

    /// Whether an entry expiring at `expires_at_ms` is inside the refresh window at `now_ms`.
    pub fn due(&self, expires_at_ms: u64, now_ms: u64) -> bool {
        self.window_ms > 0 && expires_at_ms.saturating_sub(now_ms) <= self.window_ms
    }

    /// Claims the refresh of `key` for this worker: `false` when another worker's claim on its
    /// slot still holds (its call is in the air, or its refresh failed less than a second ago).
    pub fn claim<H: Host>(&self, host: &H, key: &CacheKey, now_ms: u64) -> bool {
        let name = self.claim_name(key);
        let until = now_ms.saturating_add(self.hold_ms);
        swap_slot(host, &name, |held| {
            let free = held.is_none_or(|(_, until)| until <= now_ms);
            free.then(|| write_claim(key, until))
        })
    }

    /// Whether `key` may be evicted at `now_ms`: no worker evicted it in the last
    /// [`EVICT_EVERY_MS`]. When it may, the eviction is marked across workers (a slot in shared
    /// data, compare-and-swap), so that of two workers hearing 401s at once only one evicts.
    pub fn may_evict<H: Host>(&self, host: &H, key: &CacheKey, now_ms: u64) -> bool {
        let name = format!(
            "token_exchange.evicted.{}",
            slot_index(key, self.claim_slots)
        );
        swap_slot(host, &name, |last| {
            let recent = last
                .is_some_and(|(k, at)| k == *key && at <= now_ms && now_ms - at < EVICT_EVERY_MS);
            (!recent).then(|| write_claim(key, now_ms))
        })
    }

    /// The refresh of `key` ended: no worker starts another before `retry_at_ms`.
    pub fn retry_at<H: Host>(&self, host: &H, key: &CacheKey, retry_at_ms: u64) {
        let _ = host.shared_set(&self.claim_name(key), &write_claim(key, retry_at_ms), None);
    }

    /// Request `ctx` was served `value` from the entry `served` (a rejection serves no token).
    pub fn served(&mut self, ctx: u32, value: &Cached, served: Served) {
        if self.evict && matches!(value, Cached::Token(_)) {
            self.served.insert(ctx, served);
        }
    }

    /// Whether request `ctx` carries a minted token whose answer status matters.
    pub fn watches(&self, ctx: u32) -> bool {
        self.served.contains_key(&ctx)
    }

    /// The entry request `ctx` was served, taken (its answer came).
    pub fn take(&mut self, ctx: u32) -> Option<Served> {
        self.served.remove(&ctx)
    }

    /// Writes `evicted` to the eviction log unless it is there already; whether it was new.
    pub fn publish<H: Host>(&self, host: &H, evicted: Served) -> bool {
        for _ in 0..4 {
            let (seq, mut records, cas) = match host.shared_get(LOG_NAME) {
                Some((bytes, cas)) => {
                    let (seq, records) = read_log(&bytes);
                    (seq, records, Some(cas))
                }
                None => (0, Vec::new(), None),
            };
            if records.contains(&evicted) {
                return false;
            }
            records.push(evicted);
            let keep = records.len().saturating_sub(LOG_LEN);
            let log = write_log(seq.saturating_add(1), &records[keep..]);
            if host.shared_set(LOG_NAME, &log, cas).is_ok() {
                return true;
            }
        }
        // Lost every race: the others wrote; this eviction still reaches this worker's memo.
        true
    }

    /// What the eviction log holds that this worker has not applied yet.
    pub fn news<H: Host>(&mut self, host: &H) -> News {
        if !self.evict {
            return News::Evicted(Vec::new());
        }
        let (seq, records) = host
            .shared_get(LOG_NAME)
            .map_or((0, Vec::new()), |(b, _)| read_log(&b));
        // A first read applies the whole log: an eviction applied late or twice drops only
        // copies of the evicted answer (never a newer one), so that is always safe.
        let Some(seen) = self.seen.replace(seq) else {
            return News::Evicted(records);
        };
        let new = usize::try_from(seq.saturating_sub(seen)).unwrap_or(usize::MAX);
        if new > records.len() {
            return News::Missed;
        }
        News::Evicted(records[records.len() - new..].to_vec())
    }

    /// This worker holds no copies: the log's next read applies all of it.
    pub fn restart_log(&mut self) {
        self.seen = None;
    }

    fn claim_name(&self, key: &CacheKey) -> String {
        format!(
            "token_exchange.refresh.{}",
            slot_index(key, self.claim_slots)
        )
    }
}

/// The log: its sequence number (evictions ever written), then the last ones, oldest first.
fn write_log(seq: u64, records: &[Served]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + records.len() * RECORD_LEN);
    out.extend_from_slice(&seq.to_be_bytes());
    for r in records {
        out.extend_from_slice(&r.key);
        out.extend_from_slice(&r.expires_at_ms.to_be_bytes());
    }
    out
}

fn read_log(bytes: &[u8]) -> (u64, Vec<Served>) {
    let Some(seq) = bytes.get(..8).and_then(|b| b.try_into().ok()) else {
        return (0, Vec::new());
    };
    let records = bytes[8..]
        .chunks_exact(RECORD_LEN)
        .filter_map(|c| {
            Some(Served {
                key: c.get(..32)?.try_into().ok()?,
                expires_at_ms: u64::from_be_bytes(c.get(32..)?.try_into().ok()?),
            })
        })
        .collect();
    (u64::from_be_bytes(seq), records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

    fn rules(refresh_ahead_s: u64) -> CacheConfig {
        CacheConfig {
            max_entries: 16,
            expiry_skew_s: 30,
            default_ttl_s: 300,
            negative_ttl_s: 5,
            refresh_ahead_s,
            evict_on_upstream_401: true,
        }
    }

    fn served(k: u8, at: u64) -> Served {
        Served {
            key: [k; 32],
            expires_at_ms: at,
        }
    }

    #[test]
    fn the_window_is_the_last_seconds_of_an_entry_and_off_by_default() {
        let f = Freshness::new(&rules(10), 3_000);
        assert!(!f.due(100_000, 89_999));
        assert!(f.due(100_000, 90_000));
        assert!(f.due(100_000, 99_999));
        assert!(!Freshness::new(&rules(0), 3_000).due(100_000, 99_999));
    }

    #[test]
    fn one_worker_claims_a_refresh_until_its_call_could_have_answered_or_a_failure_retries() {
        let h = FakeHost::at(1_000);
        let (a, b) = (
            Freshness::new(&rules(10), 3_000),
            Freshness::new(&rules(10), 3_000),
        );
        assert!(a.claim(&h, &[1; 32], 1_000));
        assert!(!b.claim(&h, &[1; 32], 1_000), "one worker refreshes");
        assert!(!a.claim(&h, &[1; 32], 3_999));
        assert!(b.claim(&h, &[1; 32], 4_000), "a lost call is claimed again");
        b.retry_at(&h, &[1; 32], 5_000);
        assert!(
            !a.claim(&h, &[1; 32], 4_999),
            "a failure retries a second later"
        );
        assert!(a.claim(&h, &[1; 32], 5_000));
        // A slot holding garbage is claimed over.
        let name = a.claim_name(&[2; 32]);
        h.shared_set(&name, b"junk", None).unwrap();
        assert!(a.claim(&h, &[2; 32], 0));
    }

    #[test]
    fn evictions_reach_every_worker_once_and_a_worker_too_far_behind_forgets_everything() {
        let h = FakeHost::at(0);
        let (mut a, mut b) = (Freshness::new(&rules(0), 0), Freshness::new(&rules(0), 0));
        assert_eq!(b.news(&h), News::Evicted(vec![]));
        assert!(a.publish(&h, served(1, 10)));
        assert!(!a.publish(&h, served(1, 10)), "a second 401 adds nothing");
        assert!(a.publish(&h, served(2, 10)));
        assert_eq!(
            b.news(&h),
            News::Evicted(vec![served(1, 10), served(2, 10)])
        );
        assert_eq!(b.news(&h), News::Evicted(vec![]), "applied once");
        let all = News::Evicted(vec![served(1, 10), served(2, 10)]);
        assert_eq!(a.news(&h), all, "a first read applies the whole log");
        b.restart_log();
        assert_eq!(b.news(&h), all, "so does one after a time without copies");
        for k in 0..=LOG_LEN as u8 {
            a.publish(&h, served(k, 20));
        }
        assert_eq!(b.news(&h), News::Missed);
        let (seq, records) = read_log(&h.shared_get(LOG_NAME).unwrap().0);
        assert_eq!((seq, records.len()), (2 + LOG_LEN as u64 + 1, LOG_LEN));
        assert_eq!(read_log(b"short"), (0, vec![]));
    }

    #[test]
    fn only_minted_tokens_are_watched_and_only_when_eviction_is_on() {
        let mut f = Freshness::new(&rules(0), 0);
        let rejected = Cached::Rejected(crate::cache::Rejection::Subject("invalid_grant".into()));
        f.served(1, &rejected, served(1, 10));
        f.served(2, &Cached::Token("t".into()), served(1, 10));
        assert!(!f.watches(1) && f.watches(2));
        assert_eq!(f.take(2), Some(served(1, 10)));
        assert!(!f.watches(2));
        let off = CacheConfig {
            evict_on_upstream_401: false,
            ..rules(0)
        };
        let mut f = Freshness::new(&off, 0);
        f.served(2, &Cached::Token("t".into()), served(1, 10));
        assert!(!f.watches(2));
        assert_eq!(f.news(&FakeHost::at(0)), News::Evicted(vec![]));
    }
}
