//! The worker memo: this worker's memory of recent answers per exchange profile, keyed by the
//! subject token itself, consulted before any hashing or host call. An entry keeps its cache key,
//! its shared-data expiry and, with trusted issuers, the verification it rests on. The memo is
//! bounded across profiles, in entries and in bytes (a flood of large junk tokens cannot pin
//! memory): a full memo first drops what has expired, then empties. Expired entries are also
//! swept at most once a second from the tick.

use std::collections::HashMap;

use crate::cache::{CacheKey, Cached};
use crate::token::Verified;

/// The most bytes of tokens and answers one worker's memo holds.
pub const MAX_BYTES: usize = 8 * 1024 * 1024;

/// One remembered answer.
#[derive(Debug, Clone)]
pub struct Remembered {
    /// The token or rejection.
    pub value: Cached,
    /// The shared cache's key of the same answer.
    pub key: CacheKey,
    /// When it stops being served (ms): the shared entry's expiry.
    pub expires_at_ms: u64,
    /// With trusted issuers: the subject's verification.
    pub verified: Option<Verified>,
}

impl Remembered {
    /// What keeping it for `subject` costs: the subject, the answer, and the verification it
    /// rests on (an introspection answer's claims, the claim headers' values).
    fn bytes(&self, subject: &str) -> usize {
        let verified = self.verified.as_ref().map_or(0, Verified::bytes);
        subject.len() + self.value.bytes() + verified + std::mem::size_of::<Kept>()
    }
}

/// An entry and what it costs, counted once when it is put.
struct Kept {
    entry: Remembered,
    bytes: usize,
}

/// The memo of one worker.
pub struct Memo {
    maps: Vec<HashMap<Box<str>, Kept>>,
    cap: usize,
    bytes: usize,
    entries: usize,
    swept_ms: u64,
    needs_verification: bool,
}

impl Memo {
    /// A memo for `profiles` exchange profiles of at most `cap` entries in all; with
    /// `needs_verification` (trusted issuers), only verified answers are kept.
    pub fn new(profiles: usize, cap: usize, needs_verification: bool) -> Self {
        Memo {
            maps: (0..profiles).map(|_| HashMap::new()).collect(),
            cap: cap.max(1),
            bytes: 0,
            entries: 0,
            swept_ms: 0,
            needs_verification,
        }
    }

    /// The answer remembered for `subject` on `profile`, if it lives at `now_ms` and (with
    /// trusted issuers) the verification it rests on `still_holds`; with that verification.
    /// An entry is put only once its profile's checks passed (the policy among them), so a hit
    /// needs no check but that.
    pub fn get(
        &self,
        profile: usize,
        subject: &str,
        now_ms: u64,
        still_holds: impl Fn(&Verified) -> bool,
    ) -> Option<&Remembered> {
        let e = &self.maps.get(profile)?.get(subject)?.entry;
        if now_ms >= e.expires_at_ms {
            return None;
        }
        if self.needs_verification && !e.verified.as_ref().is_some_and(still_holds) {
            return None;
        }
        Some(e)
    }

    /// Remembers an answer for `subject` on `profile` until its expiry.
    pub fn put(&mut self, profile: usize, subject: &str, entry: Remembered, now_ms: u64) {
        if (self.needs_verification && entry.verified.is_none()) || profile >= self.maps.len() {
            return;
        }
        let size = entry.bytes(subject);
        if size > MAX_BYTES / 16 {
            return;
        }
        self.forget(profile, subject);
        if self.entries >= self.cap || self.bytes + size > MAX_BYTES {
            self.sweep(now_ms);
        }
        if self.entries >= self.cap || self.bytes + size > MAX_BYTES {
            self.clear();
        }
        if let Some(map) = self.maps.get_mut(profile) {
            map.insert(subject.into(), Kept { entry, bytes: size });
            self.entries += 1;
            self.bytes += size;
        }
    }

    /// Drops the entries that expired by `now_ms`, at most once a second.
    pub fn sweep(&mut self, now_ms: u64) {
        if now_ms < self.swept_ms.saturating_add(1_000) {
            return;
        }
        self.swept_ms = now_ms;
        let (mut entries, mut bytes) = (0, 0);
        for map in &mut self.maps {
            map.retain(|_, k| {
                let keep = k.entry.expires_at_ms > now_ms;
                if keep {
                    entries += 1;
                    bytes += k.bytes;
                }
                keep
            });
        }
        (self.entries, self.bytes) = (entries, bytes);
    }

    /// Drops every entry of cache key `key` that expires by `expires_at_ms` (the one an
    /// upstream refused, and older copies; a newer answer stays).
    pub fn evict(&mut self, key: &CacheKey, expires_at_ms: u64) {
        let (mut entries, mut bytes) = (0, 0);
        for map in &mut self.maps {
            map.retain(|_, k| {
                let keep = k.entry.key != *key || k.entry.expires_at_ms > expires_at_ms;
                if keep {
                    entries += 1;
                    bytes += k.bytes;
                }
                keep
            });
        }
        (self.entries, self.bytes) = (entries, bytes);
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Forgets everything (evictions were missed).
    pub fn clear(&mut self) {
        self.maps.iter_mut().for_each(HashMap::clear);
        (self.entries, self.bytes) = (0, 0);
    }

    /// How many bytes the memo holds, as it counts them.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn forget(&mut self, profile: usize, subject: &str) {
        if let Some(old) = self.maps.get_mut(profile).and_then(|m| m.remove(subject)) {
            self.entries -= 1;
            self.bytes -= old.bytes;
        }
    }
}

#[cfg(test)]
impl Memo {
    /// How many entries `profile` holds.
    pub fn len(&self, profile: usize) -> usize {
        self.maps.get(profile).map_or(0, HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Facts;

    fn v() -> Verified {
        Verified {
            issuer: 0,
            version: 1,
            exp: 100,
            may_act_ok: true,
            facts: Facts::default(),
            until_ms: None,
            claims: None,
            binding: Default::default(),
        }
    }

    fn tok(t: &str) -> Cached {
        Cached::Token(t.into())
    }

    fn e(value: Cached, expires_at_ms: u64, verified: Option<Verified>) -> Remembered {
        Remembered {
            value,
            key: [0; 32],
            expires_at_ms,
            verified,
        }
    }

    #[test]
    fn an_eviction_drops_every_copy_of_that_answer_and_older_but_not_a_newer_one() {
        let mut m = Memo::new(2, 10, false);
        let keyed = |k: u8, until: u64| Remembered {
            key: [k; 32],
            ..e(tok("t"), until, None)
        };
        m.put(0, "a", keyed(1, 1_000), 0);
        m.put(1, "a", keyed(1, 900), 0);
        m.put(0, "b", keyed(1, 2_000), 0);
        m.put(0, "c", keyed(2, 1_000), 0);
        m.evict(&[1; 32], 1_000);
        assert!(m.get(0, "a", 0, |_| true).is_none());
        assert!(m.get(1, "a", 0, |_| true).is_none(), "every profile's copy");
        assert!(m.get(0, "b", 0, |_| true).is_some(), "a newer answer stays");
        assert!(m.get(0, "c", 0, |_| true).is_some(), "another key stays");
        let kept = m.bytes();
        m.clear();
        assert!(kept > 0 && m.bytes() == 0 && m.len(0) == 0);
    }

    #[test]
    fn an_entry_serves_until_its_expiry_and_never_after() {
        let mut m = Memo::new(2, 10, false);
        m.put(1, "s", e(tok("t"), 1_000, None), 0);
        assert_eq!(
            m.get(1, "s", 999, |_| true).map(|h| &h.value),
            Some(&tok("t"))
        );
        assert_eq!(m.get(1, "s", 1_000, |_| true).map(|h| &h.value), None);
        assert_eq!(
            m.get(0, "s", 0, |_| true).map(|h| &h.value),
            None,
            "profiles do not share"
        );
    }

    #[test]
    fn with_trusted_issuers_only_a_verification_that_still_holds_serves() {
        let mut m = Memo::new(1, 10, true);
        m.put(0, "unverified", e(tok("t"), 1_000, None), 0);
        assert_eq!(m.get(0, "unverified", 0, |_| true).map(|h| &h.value), None);
        m.put(0, "s", e(tok("t"), 1_000, Some(v())), 0);
        assert_eq!(
            m.get(0, "s", 0, |v| v.version == 1).map(|h| &h.value),
            Some(&tok("t"))
        );
        assert_eq!(
            m.get(0, "s", 0, |v| v.version == 2).map(|h| &h.value),
            None,
            "keys changed"
        );
    }

    #[test]
    fn junk_is_dropped_once_expired_and_bytes_stay_bounded_across_profiles() {
        // Eight profiles, 4,096 entries in all: 8,184 junk tokens of 7 KiB, rejected for 5 s.
        let mut m = Memo::new(8, 4_096, false);
        let junk = Cached::Rejected(crate::cache::Rejection::Subject("invalid_grant".into()));
        for i in 0..8_184usize {
            let token = format!("{i:07}{}", "x".repeat(7 * 1024));
            m.put(i % 8, &token, e(junk.clone(), 5_000, None), 0);
            assert!(m.bytes() <= MAX_BYTES, "{} bytes after {i}", m.bytes());
        }
        assert!(m.bytes() > 0);
        // An hour later nothing of it is held, whether or not anything else came.
        m.sweep(3_600_000);
        assert_eq!((m.bytes(), (0..8).map(|p| m.len(p)).sum::<usize>()), (0, 0));
        // A full memo drops what expired before it empties: the live entry survives.
        let mut m = Memo::new(2, 3, false);
        m.put(0, "old", e(tok("o"), 10, None), 0);
        m.put(1, "live", e(tok("l"), 10_000, None), 0);
        m.put(0, "old2", e(tok("o"), 10, None), 0);
        m.put(1, "new", e(tok("n"), 10_000, None), 2_000);
        assert_eq!(
            m.get(1, "live", 2_000, |_| true).map(|h| &h.value),
            Some(&tok("l"))
        );
        assert_eq!(
            m.get(1, "new", 2_000, |_| true).map(|h| &h.value),
            Some(&tok("n"))
        );
        // A token too large to be worth holding is not held.
        m.put(0, &"y".repeat(MAX_BYTES), e(tok("t"), 10_000, None), 2_000);
        assert!(m.bytes() < 1024);
    }

    #[test]
    fn the_byte_bound_counts_the_verification_an_entry_keeps() {
        // Round 5, D6: 300 introspected tokens whose answers hold 60 KiB of claims each are
        // about 18 MiB; the memo must count them, and hold at most its bound.
        let mut m = Memo::new(1, 4_096, true);
        let mut claims = crate::policy::Claims::new();
        claims.insert(
            "blob".into(),
            serde_json::Value::String("z".repeat(60 * 1024)),
        );
        let claims = std::sync::Arc::new(claims);
        let mut held = 0;
        for i in 0..300 {
            let verified = Verified {
                claims: Some(std::sync::Arc::new((*claims).clone())),
                until_ms: Some(10_000),
                ..v()
            };
            m.put(
                0,
                &format!("opaque-{i}"),
                e(tok("t"), 10_000, Some(verified)),
                0,
            );
            held = m.len(0);
            assert!(m.bytes() <= MAX_BYTES, "{} bytes after {i}", m.bytes());
        }
        assert!(
            held * 60 * 1024 <= MAX_BYTES,
            "{held} answers of 60 KiB held"
        );
        assert!(
            m.bytes() >= held * 60 * 1024,
            "{} bytes counted for {held}",
            m.bytes()
        );
    }

    #[test]
    fn a_full_table_is_emptied_so_memory_stays_bounded() {
        let mut m = Memo::new(1, 2, false);
        m.put(0, "a", e(tok("a"), 10, None), 0);
        m.put(0, "b", e(tok("b"), 10, None), 0);
        m.put(0, "c", e(tok("c"), 10, None), 0);
        assert_eq!(m.get(0, "a", 0, |_| true).map(|h| &h.value), None);
        assert_eq!(
            m.get(0, "c", 0, |_| true).map(|h| &h.value),
            Some(&tok("c"))
        );
    }
}
