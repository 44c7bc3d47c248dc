//! `WriteClaims`: the predecessors the SetManifests on this leader are being written against, so that a
//! call that races another on the same predecessor is refused at once instead of queueing behind the
//! winner's commit only to be refused after it.
//!
//! Each transition names its predecessor (the caller signs over a hash that names it), so of several
//! calls on one predecessor at most one can commit; the others are doomed as soon as one is under way.
//! A claim lasts from the call's arrival on the leader until its answer; a second call on a claimed
//! predecessor with a different manifest is refused with `CoordinatorError::WriteConflict` (gRPC
//! Aborted), which tells the caller to re-read the history and retry. A call with the same manifest (a retry of the same transition) is
//! not refused: it queues and is answered as the first one was (or as "unchanged"). A refusal here
//! never writes anything, so it is always safe; at worst (the claimant then fails) the caller retried
//! for nothing. Pure bookkeeping: no I/O, no lock held across an await.

use std::sync::Mutex;

use crate::error::CoordinatorError;
use crate::hash::Hash;

/// Outstanding claims: one per SetManifest between its arrival on this leader and its answer.
#[derive(Debug, Default)]
pub struct WriteClaims {
    claims: Mutex<Claims>,
}

#[derive(Debug, Default)]
struct Claims {
    next_id: u64,
    /// (id, predecessor, manifest hash); a handful at most (one per caller in flight).
    open: Vec<(u64, Hash, Hash)>,
}

/// An open claim; dropping it (the call answered, failed or was abandoned) releases it.
#[derive(Debug)]
pub struct Claim<'a> {
    claims: &'a WriteClaims,
    id: u64,
}

impl WriteClaims {
    /// Claims `previous` for a call that writes the manifest hashed `manifest` after it, or refuses
    /// the call if another one with a different manifest holds a claim on the same predecessor.
    pub fn claim(&self, previous: Hash, manifest: Hash) -> Result<Claim<'_>, CoordinatorError> {
        let mut c = self.lock();
        if c.open
            .iter()
            .any(|(_, p, m)| *p == previous && *m != manifest)
        {
            return Err(CoordinatorError::WriteConflict { previous });
        }
        c.next_id += 1;
        let id = c.next_id;
        c.open.push((id, previous, manifest));
        Ok(Claim { claims: self, id })
    }

    /// How many claims are open (for tests).
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Claims> {
        // The bookkeeping stays consistent even if a holder panicked: every update is one push or
        // one retain, so the poisoned value is still a valid list.
        self.claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let id = self.id;
        self.claims.lock().open.retain(|(i, _, _)| *i != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(b: u8) -> Hash {
        Hash::of(&[b])
    }

    #[test]
    fn a_second_write_on_a_claimed_predecessor_is_refused_until_the_claim_ends() {
        let claims = WriteClaims::default();
        let winner = claims.claim(h(0), h(1)).expect("the first claim");
        assert!(matches!(
            claims.claim(h(0), h(2)),
            Err(CoordinatorError::WriteConflict { previous }) if previous == h(0)
        ));
        drop(winner);
        assert_eq!(claims.open(), 0);
        let _retry = claims
            .claim(h(0), h(2))
            .expect("free again once the winner answered");
    }

    #[test]
    fn the_same_transition_and_other_predecessors_are_not_refused() {
        let claims = WriteClaims::default();
        let _a = claims.claim(h(0), h(1)).expect("the first claim");
        let _same = claims
            .claim(h(0), h(1))
            .expect("a retry of the same transition queues");
        let _chained = claims
            .claim(h(9), h(3))
            .expect("another predecessor queues");
        assert_eq!(claims.open(), 3);
        assert!(claims.claim(h(9), h(4)).is_err());
    }

    #[test]
    fn the_message_says_nothing_was_written_and_to_retry() {
        let m = CoordinatorError::WriteConflict { previous: h(0) }.to_string();
        assert!(
            m.contains("nothing was written") && m.contains("retry"),
            "{m}"
        );
    }
}
