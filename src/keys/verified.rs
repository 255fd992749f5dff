//! The tokens this worker verified, by cache key: a token is verified once per key set, and
//! the record is bounded (emptied when full).

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::cache::CacheKey;
use crate::token::Verified;

/// Verified tokens remembered per worker before the record is emptied.
const MAX_VERIFIED: usize = 10_000;

/// The verified-token record of one worker.
#[derive(Default)]
pub(super) struct VerifiedTokens {
    by_key: HashMap<CacheKey, Verified>,
}

impl VerifiedTokens {
    /// The verification remembered under `key`, if it still `holds`.
    pub(super) fn get(
        &self,
        key: &CacheKey,
        holds: impl Fn(&Verified) -> bool,
    ) -> Option<Verified> {
        self.by_key.get(key).filter(|v| holds(v)).cloned()
    }

    /// Remembers a verification under `key`.
    pub(super) fn remember(&mut self, key: CacheKey, v: Verified) {
        if self.by_key.len() >= MAX_VERIFIED {
            self.by_key.clear();
        }
        self.by_key.insert(key, v);
    }
}

/// The record's key for what issuer `issuer`'s introspection said about the token of cache key
/// `key`: trust is kept under the issuer that established it, apart from a signature's.
pub(super) fn introspected_key(key: &CacheKey, issuer: usize) -> CacheKey {
    Sha256::new()
        .chain_update(b"introspected\n")
        .chain_update((issuer as u64).to_be_bytes())
        .chain_update(key)
        .finalize()
        .into()
}

/// The record's key for a header actor token (apart from every exchange's cache key).
pub(super) fn actor_key(actor: &str) -> CacheKey {
    Sha256::new()
        .chain_update(b"actor\n")
        .chain_update(actor)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Facts;

    fn v() -> Verified {
        Verified {
            issuer: 0,
            version: 7,
            exp: 100,
            may_act_ok: true,
            facts: Facts::default(),
            until_ms: None,
            claims: None,
            binding: Default::default(),
        }
    }

    #[test]
    fn a_verification_serves_while_it_holds_and_the_record_stays_bounded() {
        let mut r = VerifiedTokens::default();
        r.remember([1; 32], v());
        assert_eq!(r.get(&[1; 32], |v| v.version == 7), Some(v()));
        assert_eq!(r.get(&[1; 32], |v| v.version == 8), None, "keys changed");
        assert_eq!(r.get(&[2; 32], |_| true), None);
        for i in 0..MAX_VERIFIED as u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            key[31] = 9;
            r.remember(key, v());
        }
        assert!(r.by_key.len() <= MAX_VERIFIED);
        assert_eq!(r.get(&[1; 32], |_| true), None, "emptied when full");
    }

    #[test]
    fn an_actor_token_has_a_key_of_its_own() {
        assert_ne!(actor_key("a"), actor_key("b"));
        assert_eq!(actor_key("a"), actor_key("a"));
    }

    #[test]
    fn an_introspection_is_kept_under_its_issuer_apart_from_the_exchange_key() {
        let key = [7; 32];
        assert_ne!(introspected_key(&key, 0), key);
        assert_ne!(introspected_key(&key, 0), introspected_key(&key, 1));
        assert_eq!(introspected_key(&key, 1), introspected_key(&key, 1));
    }
}
