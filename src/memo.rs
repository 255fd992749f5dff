//! The worker memo: this worker's memory of recent answers per exchange profile, keyed by the
//! subject token itself, consulted before any hashing or host call. An entry keeps its
//! shared-data expiry and, with trusted issuers, the verification it rests on; the table is
//! bounded (emptied when full).

use std::collections::HashMap;

use crate::cache::Cached;
use crate::token::Verified;

struct Entry {
    value: Cached,
    expires_at_ms: u64,
    verified: Option<Verified>,
}

/// The memo of one worker.
pub struct Memo {
    maps: Vec<HashMap<Box<str>, Entry>>,
    cap: usize,
    needs_verification: bool,
}

impl Memo {
    /// A memo for `profiles` exchange profiles of at most `cap` entries each; with
    /// `needs_verification` (trusted issuers), only verified answers are kept.
    pub fn new(profiles: usize, cap: usize, needs_verification: bool) -> Self {
        Memo {
            maps: (0..profiles).map(|_| HashMap::new()).collect(),
            cap: cap.max(1),
            needs_verification,
        }
    }

    /// The answer remembered for `subject` on `profile`, if it lives at `now_ms` and (with
    /// trusted issuers) the verification it rests on `still_holds`.
    pub fn get(
        &self,
        profile: usize,
        subject: &str,
        now_ms: u64,
        still_holds: impl Fn(&Verified) -> bool,
    ) -> Option<&Cached> {
        let e = self.maps.get(profile)?.get(subject)?;
        if now_ms >= e.expires_at_ms {
            return None;
        }
        if self.needs_verification && !e.verified.as_ref().is_some_and(still_holds) {
            return None;
        }
        Some(&e.value)
    }

    /// Remembers an answer until `expires_at_ms`.
    pub fn put(
        &mut self,
        profile: usize,
        subject: &str,
        value: Cached,
        expires_at_ms: u64,
        verified: Option<Verified>,
    ) {
        if self.needs_verification && verified.is_none() {
            return;
        }
        let Some(map) = self.maps.get_mut(profile) else {
            return;
        };
        if map.len() >= self.cap {
            map.clear();
        }
        map.insert(
            subject.into(),
            Entry {
                value,
                expires_at_ms,
                verified,
            },
        );
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

    const V: Verified = Verified {
        issuer: 0,
        version: 1,
        exp: 100,
        may_act_ok: true,
    };

    fn tok(t: &str) -> Cached {
        Cached::Token(t.into())
    }

    #[test]
    fn an_entry_serves_until_its_expiry_and_never_after() {
        let mut m = Memo::new(2, 10, false);
        m.put(1, "s", tok("t"), 1_000, None);
        assert_eq!(m.get(1, "s", 999, |_| true), Some(&tok("t")));
        assert_eq!(m.get(1, "s", 1_000, |_| true), None);
        assert_eq!(m.get(0, "s", 0, |_| true), None, "profiles do not share");
    }

    #[test]
    fn with_trusted_issuers_only_a_verification_that_still_holds_serves() {
        let mut m = Memo::new(1, 10, true);
        m.put(0, "unverified", tok("t"), 1_000, None);
        assert_eq!(m.get(0, "unverified", 0, |_| true), None);
        m.put(0, "s", tok("t"), 1_000, Some(V));
        assert_eq!(m.get(0, "s", 0, |v| v.version == 1), Some(&tok("t")));
        assert_eq!(m.get(0, "s", 0, |v| v.version == 2), None, "keys changed");
    }

    #[test]
    fn a_full_table_is_emptied_so_memory_stays_bounded() {
        let mut m = Memo::new(1, 2, false);
        m.put(0, "a", tok("a"), 10, None);
        m.put(0, "b", tok("b"), 10, None);
        m.put(0, "c", tok("c"), 10, None);
        assert_eq!(m.get(0, "a", 0, |_| true), None);
        assert_eq!(m.get(0, "c", 0, |_| true), Some(&tok("c")));
    }
}
