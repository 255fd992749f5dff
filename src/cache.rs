//! The exchange cache in proxy-wasm shared data: a fixed table of slots (shared data has no
//! delete, so memory stays bounded), the entry encoding, and the lifetime rule.
//!
//! A key is the SHA-256 of everything that shapes a minted token ([`crate::client::ExchangeProfile::cache_key`]).
//! Its first eight bytes pick the slot; the entry stores the whole key, so an entry is served only
//! for the exact exchange it was made for, and a collision of slots merely evicts.

use crate::config::CacheConfig;
use crate::host::{Host, LogLevel};

/// A cache key: the SHA-256 of an exchange's inputs.
pub type CacheKey = [u8; 32];

const VERSION: u8 = 1;
const KIND_TOKEN: u8 = 0;
const KIND_SUBJECT_REJECTED: u8 = 1;
const KIND_FORBIDDEN: u8 = 2;
const HEADER_LEN: usize = 2 + 32 + 8;

/// What a cache entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// A minted access token.
    Token(String),
    /// A remembered STS rejection (negative cache).
    Rejected(Rejection),
}

impl Cached {
    /// The bytes its text takes.
    pub fn bytes(&self) -> usize {
        match self {
            Cached::Token(t) => t.len(),
            Cached::Rejected(Rejection::Subject(c) | Rejection::Forbidden(c)) => c.len(),
        }
    }
}

/// An STS rejection worth remembering, with the OAuth error code it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The STS rejected the subject (or actor) token: 401.
    Subject(String),
    /// The STS refused this exchange: 403.
    Forbidden(String),
}

/// The exchange cache as the workers share it: reads and writes of the slot table.
#[derive(Debug, Clone, Copy)]
pub struct SharedCache {
    table: SlotTable,
}

impl SharedCache {
    /// The table of `max_entries` slots.
    pub fn new(max_entries: u32) -> Self {
        SharedCache {
            table: SlotTable::new(SLOT_PREFIX, max_entries),
        }
    }

    /// The entry for `key` and its expiry (ms), if one lives at `now_ms`.
    pub fn get<H: Host>(&self, host: &H, key: &CacheKey, now_ms: u64) -> Option<(Cached, u64)> {
        let (kind, payload, expires_at) = self.table.get(host, key, now_ms)?;
        Some((decode(kind, payload)?, expires_at))
    }

    /// Writes the entry for `key` (evicting whatever shared its slot); a failure is logged.
    pub fn put<H: Host>(&self, host: &H, key: &CacheKey, expires_at_ms: u64, value: &Cached) {
        let (kind, payload) = kind_of(value);
        self.table.put(host, key, expires_at_ms, kind, payload);
    }

    /// Drops the entry for `key` if the slot still holds the one that expires at
    /// `expires_at_ms` (not a newer one); whether it did.
    pub fn evict<H: Host>(&self, host: &H, key: &CacheKey, expires_at_ms: u64) -> bool {
        self.table.evict(host, key, expires_at_ms)
    }
}

/// A bounded table of entries in shared data: `slots` names under `prefix`, each holding one
/// entry of a kind (a byte its owner defines), its full key, its expiry and a payload.
#[derive(Debug, Clone, Copy)]
pub struct SlotTable {
    prefix: &'static str,
    slots: u32,
}

impl SlotTable {
    /// The table of `slots` slots named `prefix` + index.
    pub fn new(prefix: &'static str, slots: u32) -> Self {
        SlotTable { prefix, slots }
    }

    /// The kind, payload and expiry (ms) of the entry for `key`, if one lives at `now_ms`.
    pub fn get<H: Host>(
        &self,
        host: &H,
        key: &CacheKey,
        now_ms: u64,
    ) -> Option<(u8, Vec<u8>, u64)> {
        let (slot, _) = host.shared_get(&self.name(key))?;
        let (kind, expires_at) = lookup_raw(&slot, key, now_ms)?;
        let mut payload = slot;
        payload.drain(..HEADER_LEN);
        Some((kind, payload, expires_at))
    }

    /// Writes the entry for `key` (evicting whatever shared its slot); a failure is logged.
    pub fn put<H: Host>(
        &self,
        host: &H,
        key: &CacheKey,
        expires_at_ms: u64,
        kind: u8,
        payload: &[u8],
    ) {
        let bytes = encode_raw(key, expires_at_ms, kind, payload);
        if let Err(e) = host.shared_set(&self.name(key), &bytes, None) {
            host.log(LogLevel::Warn, &format!("cache write failed: {}", e.0));
        }
    }

    /// Drops the entry for `key` that expires at `expires_at_ms`, by compare-and-swap (so an
    /// entry written meanwhile stays); whether it did. Shared data has no delete: the slot
    /// keeps an entry that is never alive.
    pub fn evict<H: Host>(&self, host: &H, key: &CacheKey, expires_at_ms: u64) -> bool {
        let name = self.name(key);
        let Some((slot, cas)) = host.shared_get(&name) else {
            return false;
        };
        let now = host.now_ms();
        if lookup_raw(&slot, key, now).is_none_or(|(_, at)| at != expires_at_ms) {
            return false;
        }
        let dead = encode_raw(key, 0, KIND_TOKEN, &[]);
        host.shared_set(&name, &dead, Some(cas)).is_ok()
    }

    fn name(&self, key: &CacheKey) -> String {
        format!("{}{}", self.prefix, slot_index(key, self.slots))
    }
}

const SLOT_PREFIX: &str = "token_exchange.slot.";

/// The slot of a table of `slots` that `key` picks (its first 8 bytes, modulo the size).
pub fn slot_index(key: &CacheKey, slots: u32) -> u32 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&key[..8]);
    let slot = u64::from_be_bytes(first) % u64::from(slots.max(1));
    u32::try_from(slot).unwrap_or(0)
}

fn kind_of(value: &Cached) -> (u8, &[u8]) {
    match value {
        Cached::Token(t) => (KIND_TOKEN, t.as_bytes()),
        Cached::Rejected(Rejection::Subject(code)) => (KIND_SUBJECT_REJECTED, code.as_bytes()),
        Cached::Rejected(Rejection::Forbidden(code)) => (KIND_FORBIDDEN, code.as_bytes()),
    }
}

fn decode(kind: u8, payload: Vec<u8>) -> Option<Cached> {
    let payload = String::from_utf8(payload).ok()?;
    Some(match kind {
        KIND_TOKEN => Cached::Token(payload),
        KIND_SUBJECT_REJECTED => Cached::Rejected(Rejection::Subject(payload)),
        KIND_FORBIDDEN => Cached::Rejected(Rejection::Forbidden(payload)),
        _ => return None,
    })
}

fn encode_raw(key: &CacheKey, expires_at_ms: u64, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(key);
    out.extend_from_slice(&expires_at_ms.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The kind and expiry of a slot's entry, if it was made for `key` and lives at `now_ms`.
fn lookup_raw(slot: &[u8], key: &CacheKey, now_ms: u64) -> Option<(u8, u64)> {
    if slot.len() < HEADER_LEN || slot[0] != VERSION || slot[2..34] != key[..] {
        return None;
    }
    let mut exp = [0u8; 8];
    exp.copy_from_slice(&slot[34..HEADER_LEN]);
    let expires_at = u64::from_be_bytes(exp);
    (now_ms < expires_at).then_some((slot[1], expires_at))
}

/// The size of a claim slot's record.
const CLAIM_LEN: usize = 32 + 8;

/// Replaces slot `name` with what `decide` makes of its record (a key and a time), by
/// compare-and-swap; `false` when `decide` keeps it or another worker wrote first.
pub fn swap_slot<H: Host>(
    host: &H,
    name: &str,
    decide: impl FnOnce(Option<(CacheKey, u64)>) -> Option<Vec<u8>>,
) -> bool {
    // Shared data has no "create if absent": a slot never written gets an empty value first,
    // so that the swap itself is always a compare-and-swap.
    let (bytes, cas) = match host.shared_get(name) {
        Some(found) => found,
        None => {
            let _ = host.shared_set(name, &[], None);
            match host.shared_get(name) {
                Some(found) => found,
                None => return false,
            }
        }
    };
    match decide(read_claim(&bytes)) {
        Some(next) => host.shared_set(name, &next, Some(cas)).is_ok(),
        None => false,
    }
}

/// A claim slot's record: a key and a time (ms) (a refresh claim's end, an eviction's moment,
/// a proof's last moment).
pub fn write_claim(key: &CacheKey, until_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(CLAIM_LEN);
    out.extend_from_slice(key);
    out.extend_from_slice(&until_ms.to_be_bytes());
    out
}

pub fn read_claim(bytes: &[u8]) -> Option<(CacheKey, u64)> {
    if bytes.len() != CLAIM_LEN {
        return None;
    }
    let key = bytes.get(..32)?.try_into().ok()?;
    let until = u64::from_be_bytes(bytes.get(32..40)?.try_into().ok()?);
    Some((key, until))
}

/// How long a minted token may be served, in ms:
/// `min(expires_in or default_ttl_s, subject exp − now) − expiry_skew_s`; `None` when that is
/// not positive (then nothing is cached).
pub fn token_lifetime_ms(
    rules: &CacheConfig,
    expires_in_s: Option<u64>,
    subject_exp_s: Option<u64>,
    now_ms: u64,
) -> Option<u64> {
    let mut life = expires_in_s
        .unwrap_or(rules.default_ttl_s)
        .saturating_mul(1000);
    if let Some(exp) = subject_exp_s {
        life = life.min(exp.saturating_mul(1000).saturating_sub(now_ms));
    }
    let life = life.saturating_sub(rules.expiry_skew_s.saturating_mul(1000));
    (life > 0).then_some(life)
}

/// When a minted token stops being served (ms since the epoch): now plus
/// [`token_lifetime_ms`], never past `actor_until_ms` (when the actor's token stops being good,
/// skew included); `None` when that is not in the future. Saturating: no remote number can wrap
/// the clock.
pub fn token_expiry_ms(
    rules: &CacheConfig,
    expires_in_s: Option<u64>,
    subject_exp_s: Option<u64>,
    actor_until_ms: Option<u64>,
    now_ms: u64,
) -> Option<u64> {
    let life = token_lifetime_ms(rules, expires_in_s, subject_exp_s, now_ms)?;
    let until = now_ms.saturating_add(life);
    let until = actor_until_ms.map_or(until, |a| until.min(a));
    (until > now_ms).then_some(until)
}

/// The latest any minted token for this subject and actor may be served (ms since the epoch),
/// whatever the STS says: [`token_expiry_ms`] of a token that never expires by itself.
pub fn latest_expiry_ms(
    rules: &CacheConfig,
    subject_exp_s: Option<u64>,
    actor_until_ms: Option<u64>,
    now_ms: u64,
) -> Option<u64> {
    token_expiry_ms(rules, Some(u64::MAX), subject_exp_s, actor_until_ms, now_ms)
}

/// How long an STS rejection is remembered, in ms: `negative_ttl_s`, never past the subject's
/// `exp`; `None` when negative caching is off or would be empty.
pub fn rejection_lifetime_ms(
    rules: &CacheConfig,
    subject_exp_s: Option<u64>,
    now_ms: u64,
) -> Option<u64> {
    let mut life = rules.negative_ttl_s.saturating_mul(1000);
    if let Some(exp) = subject_exp_s {
        life = life.min(exp.saturating_mul(1000).saturating_sub(now_ms));
    }
    (life > 0).then_some(life)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared-data key of the slot that `key` lives in.
    fn slot_name(key: &CacheKey, max_entries: u32) -> String {
        SlotTable::new(SLOT_PREFIX, max_entries).name(key)
    }

    /// Encodes an entry: version, kind, key, expiry (ms since the epoch), payload.
    fn encode(key: &CacheKey, expires_at_ms: u64, value: &Cached) -> Vec<u8> {
        let (kind, payload) = kind_of(value);
        encode_raw(key, expires_at_ms, kind, payload)
    }

    /// Reads a slot: the entry and its expiry (ms) if it was made for `key` and is still alive at
    /// `now_ms`.
    fn lookup(slot: &[u8], key: &CacheKey, now_ms: u64) -> Option<(Cached, u64)> {
        let (kind, expires_at) = lookup_raw(slot, key, now_ms)?;
        Some((decode(kind, slot[HEADER_LEN..].to_vec())?, expires_at))
    }

    const RULES: CacheConfig = CacheConfig {
        max_entries: 16,
        expiry_skew_s: 30,
        default_ttl_s: 300,
        negative_ttl_s: 5,
        refresh_ahead_s: 0,
        evict_on_upstream_401: true,
    };

    fn key(b: u8) -> CacheKey {
        [b; 32]
    }

    #[test]
    fn entries_round_trip_until_expiry_and_never_after() {
        let e = encode(&key(1), 10_000, &Cached::Token("tok".into()));
        assert_eq!(
            lookup(&e, &key(1), 9_999),
            Some((Cached::Token("tok".into()), 10_000))
        );
        assert_eq!(lookup(&e, &key(1), 10_000), None);
        assert_eq!(lookup(&e, &key(1), 10_001), None);
    }

    #[test]
    fn an_entry_is_served_only_for_its_own_key() {
        let e = encode(&key(1), u64::MAX, &Cached::Token("tok".into()));
        let mut other = key(1);
        other[31] ^= 1;
        assert_eq!(lookup(&e, &other, 0), None);
    }

    #[test]
    fn rejections_round_trip() {
        for r in [
            Rejection::Subject("invalid_grant".into()),
            Rejection::Forbidden("invalid_target".into()),
        ] {
            let e = encode(&key(2), 5, &Cached::Rejected(r.clone()));
            assert_eq!(lookup(&e, &key(2), 4), Some((Cached::Rejected(r), 5)));
        }
    }

    #[test]
    fn garbage_slots_are_misses() {
        assert_eq!(lookup(&[], &key(1), 0), None);
        assert_eq!(lookup(&[9; 60], &key(9), 0), None);
        let mut e = encode(&key(1), u64::MAX, &Cached::Token("tok".into()));
        e[1] = 7;
        assert_eq!(lookup(&e, &key(1), 0), None);
        let mut e = encode(&key(1), u64::MAX, &Cached::Token("tok".into()));
        e.push(0xff);
        assert_eq!(lookup(&e, &key(1), 0), None);
    }

    #[test]
    fn slots_stay_within_the_table() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let mut k = [0u8; 32];
            k[7] = b;
            let name = slot_name(&k, 16);
            let n: u64 = name.rsplit('.').next().unwrap().parse().unwrap();
            assert!(n < 16);
            seen.insert(n);
        }
        assert_eq!(seen.len(), 16);
        assert_eq!(slot_name(&key(3), 1), "token_exchange.slot.0");
    }

    #[test]
    fn lifetime_takes_the_smallest_bound_minus_skew() {
        let now = 1_000_000_000; // ms
        assert_eq!(
            token_lifetime_ms(&RULES, Some(3600), None, now),
            Some(3_570_000)
        );
        assert_eq!(token_lifetime_ms(&RULES, None, None, now), Some(270_000));
        // subject expires in 100 s: 100 − 30
        assert_eq!(
            token_lifetime_ms(&RULES, Some(3600), Some(1_000_100), now),
            Some(70_000)
        );
    }

    #[test]
    fn lifetime_edges_cache_nothing() {
        let now = 1_000_000_000;
        assert_eq!(token_lifetime_ms(&RULES, Some(30), None, now), None);
        assert_eq!(token_lifetime_ms(&RULES, Some(31), None, now), Some(1000));
        assert_eq!(token_lifetime_ms(&RULES, Some(0), None, now), None);
        // subject already expired, or expiring within the skew
        assert_eq!(
            token_lifetime_ms(&RULES, Some(3600), Some(999_000), now),
            None
        );
        assert_eq!(
            token_lifetime_ms(&RULES, Some(3600), Some(1_000_030), now),
            None
        );
        assert_eq!(
            token_lifetime_ms(&RULES, Some(u64::MAX), Some(u64::MAX), now),
            Some(u64::MAX - now - 30_000)
        );
        let no_skew = CacheConfig {
            expiry_skew_s: 0,
            ..RULES
        };
        assert_eq!(token_lifetime_ms(&no_skew, Some(1), None, now), Some(1000));
    }

    #[test]
    fn rejections_are_remembered_for_negative_ttl() {
        let now = 1_000_000_000;
        assert_eq!(rejection_lifetime_ms(&RULES, None, now), Some(5000));
        assert_eq!(
            rejection_lifetime_ms(&RULES, Some(1_000_002), now),
            Some(2000)
        );
        let off = CacheConfig {
            negative_ttl_s: 0,
            ..RULES
        };
        assert_eq!(rejection_lifetime_ms(&off, None, now), None);
    }
}
