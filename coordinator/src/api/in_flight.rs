//! `InFlight`: the transitions this leader is committing and will adopt the secrets of itself.
//!
//! A leader applies its own SetManifest's entry before the call adopts the new mesh CA it prepared
//! (`Coordinator::commit_set`, right after the write returns). In between, its core sees a latest
//! transition whose mesh CA it does not hold, and the peer-recovery loop would ask the followers for
//! it: a round trip with two attestation checks, on every write, to fetch a key this replica made
//! and is about to adopt anyway. The recovery loop skips a transition listed here. Pure bookkeeping:
//! no I/O, no lock held across an await.

use std::sync::{Arc, Mutex, PoisonError};

use crate::hash::Hash;

/// The transitions under commit on this replica (a handful at most: one per write in flight).
#[derive(Debug, Default)]
pub struct InFlight {
    hashes: Arc<Mutex<Vec<Hash>>>,
}

/// One transition under commit; dropping it (the commit adopted its secrets, or failed) ends it.
#[derive(Debug)]
pub struct Committing {
    hashes: Arc<Mutex<Vec<Hash>>>,
    hash: Hash,
}

impl InFlight {
    /// Marks `hash` as under commit until the returned value drops.
    pub fn start(&self, hash: Hash) -> Committing {
        lock(&self.hashes).push(hash);
        Committing {
            hashes: self.hashes.clone(),
            hash,
        }
    }

    /// Whether the transition `hash` is under commit here.
    pub fn contains(&self, hash: &Hash) -> bool {
        lock(&self.hashes).contains(hash)
    }
}

impl Drop for Committing {
    fn drop(&mut self) {
        let mut hashes = lock(&self.hashes);
        if let Some(i) = hashes.iter().position(|h| *h == self.hash) {
            hashes.swap_remove(i);
        }
    }
}

/// A list of hashes stays valid whatever a panicking holder did.
fn lock(m: &Mutex<Vec<Hash>>) -> std::sync::MutexGuard<'_, Vec<Hash>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transition_is_in_flight_until_its_marker_drops() {
        let in_flight = InFlight::default();
        let (a, b) = (Hash::of(b"a"), Hash::of(b"b"));
        let first = in_flight.start(a);
        let second = in_flight.start(a);
        assert!(in_flight.contains(&a) && !in_flight.contains(&b));
        drop(first);
        assert!(
            in_flight.contains(&a),
            "the second write of the same transition is still under way"
        );
        drop(second);
        assert!(!in_flight.contains(&a));
    }
}
