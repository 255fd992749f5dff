//! One proof, one use (RFC 9449 §11.1): each accepted proof's key thumbprint and `jti` are
//! recorded in a fixed table of shared-data slots until the proof could no longer be accepted,
//! so that a proof replayed on this worker or another is refused. A record is claimed by
//! compare-and-swap: two workers shown the same proof at once cannot both take it.

use sha2::{Digest, Sha256};

use crate::cache::{slot_index, swap_slot, write_claim, CacheKey};
use crate::host::Host;

/// Slots probed for a free one before the table counts as full.
const PROBES: u32 = 4;
/// Attempts on one slot that other workers keep changing under us.
const ATTEMPTS: u32 = 3;

/// What recording a proof found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Never seen: now recorded.
    New,
    /// Seen before: a replay.
    Seen,
    /// No slot could take it (every probed one holds a live record, or shared data refused):
    /// the request cannot be let through unchecked.
    Full,
}

/// The shared table of proofs seen.
#[derive(Debug, Clone, Copy)]
pub struct ReplayTable {
    slots: u32,
}

impl ReplayTable {
    /// A table of `slots` slots.
    pub fn new(slots: u32) -> Self {
        ReplayTable { slots }
    }

    /// Records the proof of key `jkt` with `jti`, kept until `until_ms`.
    pub fn record<H: Host>(&self, host: &H, (jkt, jti): (&str, &str), until_ms: u64) -> Recorded {
        let key = record_key(jkt, jti);
        let now = host.now_ms();
        let first = slot_index(&key, self.slots);
        for probe in 0..PROBES {
            let slot = (u64::from(first) + u64::from(probe)) % u64::from(self.slots.max(1));
            let name = format!("token_exchange.dpop.{slot}");
            for _ in 0..ATTEMPTS {
                let mut found = None;
                let written = swap_slot(host, &name, |held| match held {
                    Some((k, until)) if until > now => {
                        found = Some(if k == key {
                            Recorded::Seen
                        } else {
                            Recorded::Full
                        });
                        None
                    }
                    _ => Some(write_claim(&key, until_ms)),
                });
                match (written, found) {
                    (true, _) => return Recorded::New,
                    (false, Some(Recorded::Seen)) => return Recorded::Seen,
                    // Live and another proof's: the next slot.
                    (false, Some(_)) => break,
                    // Another worker wrote meanwhile (perhaps this very proof): read again.
                    (false, None) => continue,
                }
            }
        }
        Recorded::Full
    }
}

/// The record's key: the proof's key thumbprint and `jti` (a `jti` is unique per key only).
fn record_key(jkt: &str, jti: &str) -> CacheKey {
    let mut h = Sha256::new();
    h.update((jkt.len() as u64).to_be_bytes());
    h.update(jkt.as_bytes());
    h.update(jti.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

    #[test]
    fn a_proof_is_taken_once_on_any_worker_until_its_record_ends() {
        let host = FakeHost::at(1_000_000);
        let table = ReplayTable::new(1024);
        assert_eq!(table.record(&host, ("k", "a"), 1_060_000), Recorded::New);
        // Another worker shares the host's shared data: the same proof is a replay there too.
        let other = ReplayTable::new(1024);
        assert_eq!(other.record(&host, ("k", "a"), 1_060_000), Recorded::Seen);
        assert_eq!(table.record(&host, ("k", "b"), 1_060_000), Recorded::New);
        assert_eq!(
            table.record(&host, ("k2", "a"), 1_060_000),
            Recorded::New,
            "jti per key"
        );
        host.advance_ms(60_000);
        assert_eq!(
            table.record(&host, ("k", "a"), 1_120_000),
            Recorded::New,
            "record ended"
        );
    }

    #[test]
    fn a_flood_fills_the_table_and_is_then_refused_never_let_through() {
        let host = FakeHost::at(1_000);
        let table = ReplayTable::new(8);
        let mut outcomes = Vec::new();
        for i in 0..64 {
            outcomes.push(table.record(&host, ("k", &format!("jti-{i}")), 100_000));
        }
        let new = outcomes.iter().filter(|o| **o == Recorded::New).count();
        assert!(new <= 8, "{new} recorded in 8 slots");
        assert!(outcomes.contains(&Recorded::Full));
        assert!(
            !outcomes[8..].contains(&Recorded::Seen),
            "no fresh proof reads as a replay"
        );
        // Every proof that was taken is still refused as a replay.
        for (i, o) in outcomes.iter().enumerate() {
            if *o == Recorded::New {
                let again = table.record(&host, ("k", &format!("jti-{i}")), 100_000);
                assert_eq!(again, Recorded::Seen);
            }
        }
        host.advance_ms(100_000);
        assert_eq!(table.record(&host, ("k", "late"), 200_000), Recorded::New);
    }
}
