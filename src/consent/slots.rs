//! The claim slots of CIBA consents in shared data: their layout, which slots a key probes,
//! and the `client_notification_token` that names a slot.

use sha2::{Digest, Sha256};

use crate::cache::{slot_index, CacheKey};

const SLOT_LEN: usize = 32 + 8 + 8 + 8 + 8 + 32;
/// How many slots a key tries, from the one its hash picks, before it answers 503.
pub(super) const PROBES: u32 = 8;

/// The slots `key` tries among `slots`, from the one its hash picks.
pub(super) fn probes(key: &CacheKey, slots: u32) -> impl Iterator<Item = u32> {
    let count = slots.max(1);
    let start = slot_index(key, count);
    (0..PROBES.min(count)).map(move |i| (start + i) % count)
}

pub(super) fn slot_name(slot: u32) -> String {
    format!("token_exchange.ciba.{slot}")
}

/// A claim slot's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Claim {
    pub key: CacheKey,
    pub worker: u64,
    pub until_ms: u64,
    pub lease_ms: u64,
    pub pinged_ms: u64,
    pub token_hash: [u8; 32],
}

impl Claim {
    /// Whether the consent still runs and its owner is still there.
    pub fn live(&self, now: u64) -> bool {
        self.until_ms > now && self.lease_ms > now
    }

    pub fn read(bytes: &[u8]) -> Option<Claim> {
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
            lease_ms: word(48)?,
            pinged_ms: word(56)?,
            token_hash: bytes.get(64..96)?.try_into().ok()?,
        })
    }

    pub fn write(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SLOT_LEN);
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.worker.to_be_bytes());
        out.extend_from_slice(&self.until_ms.to_be_bytes());
        out.extend_from_slice(&self.lease_ms.to_be_bytes());
        out.extend_from_slice(&self.pinged_ms.to_be_bytes());
        out.extend_from_slice(&self.token_hash);
        out
    }
}

/// A fresh `client_notification_token`: the slot index, a dot, 128 random bits in hex.
pub(super) fn notification_token(slot: u32) -> Option<String> {
    let mut random = [0u8; 16];
    getrandom::getrandom(&mut random).ok()?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("{slot}.{hex}"))
}

pub(super) fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equal, in a time that does not depend on where the inputs differ.
pub(super) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_reads_back_and_lives_only_while_both_its_end_and_its_lease_are_ahead() {
        let c = Claim {
            key: [7; 32],
            worker: 42,
            until_ms: 100,
            lease_ms: 50,
            pinged_ms: 3,
            token_hash: [9; 32],
        };
        assert_eq!(Claim::read(&c.write()), Some(c));
        assert_eq!(Claim::read(&c.write()[1..]), None);
        assert!(c.live(49));
        assert!(!c.live(50), "the owner's lease ran out: taken over");
        let ended = Claim { until_ms: 10, ..c };
        assert!(!ended.live(20));
    }

    #[test]
    fn a_key_probes_distinct_slots_from_its_own_bounded_by_the_table() {
        let key = [0xff; 32];
        let all: Vec<u32> = probes(&key, 4096).collect();
        assert_eq!(all.len(), PROBES as usize);
        assert!(all.iter().all(|s| *s < 4096));
        let mut unique = all.clone();
        unique.dedup();
        assert_eq!(unique.len(), all.len());
        assert_eq!(
            probes(&key, 3).collect::<Vec<_>>().len(),
            3,
            "never more than the slots"
        );
        assert_eq!(probes(&key, 0).collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn a_notification_token_names_its_slot_and_hashes_compare_in_full() {
        let t = notification_token(17).unwrap();
        assert!(t.starts_with("17.") && t.len() == 3 + 32);
        assert!(constant_time_eq(&hash(&t), &hash(&t)));
        assert!(!constant_time_eq(&hash(&t), &hash("17.x")));
    }
}
