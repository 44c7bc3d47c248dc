//! `WriteClaims`: the predecessors the SetManifests on this leader are being written against, so that a
//! call that races another on the same predecessor is refused at once instead of queueing behind the
//! winner's commit only to be refused after it.
//!
//! Each transition names its predecessor (the caller signs over a hash that names it), so of several
//! calls on one predecessor at most one can commit; the others are doomed as soon as one is under way.
//! A claim lasts from the call's arrival on the leader until its commit is over (answered, or given
//! up by the caller and finished anyway); a second call on a claimed
//! predecessor with a different manifest is refused with `CoordinatorError::WriteConflict` (gRPC
//! Aborted), which tells the caller to re-read the history and retry. A call with the same manifest (a retry of the same transition) is
//! not refused: it queues and is answered as the first one was (or as "unchanged"). A refusal here
//! never writes anything, so it is always safe; at worst (the claimant then fails) the caller retried
//! for nothing. Likewise a call whose predecessor is neither the latest transition nor the one a
//! claimed call would make is stale, and is refused at once ("previous transition mismatch") when the
//! caller can say what the latest is (the leader applied its whole log). Pure bookkeeping: no I/O, no
//! lock held across an await.

use std::sync::{Arc, Mutex};

use crate::error::CoordinatorError;
use crate::hash::Hash;
use crate::history::format::transition_hash;

/// Outstanding claims: one per SetManifest between its arrival on this leader and the end of its
/// commit (which may outlive the caller's wait).
#[derive(Debug, Default)]
pub struct WriteClaims {
    claims: Arc<Mutex<Claims>>,
}

#[derive(Debug, Default)]
struct Claims {
    next_id: u64,
    /// (id, predecessor, manifest hash); a handful at most (one per caller in flight).
    open: Vec<(u64, Hash, Hash)>,
}

/// An open claim; dropping it (the call refused, or its commit over) releases it.
#[derive(Debug)]
pub struct Claim {
    claims: Arc<Mutex<Claims>>,
    id: u64,
}

impl WriteClaims {
    /// Claims `previous` for a call that writes the manifest hashed `manifest` after it, or refuses
    /// the call if another one with a different manifest holds a claim on the same predecessor, or
    /// if it is stale. `latest` reads the latest transition's hash and manifest hash, or None when
    /// that is not known for sure (no history, a leader that has not applied its whole log, a core
    /// busy): then nothing is refused as stale. It is called with the claims locked, so no claim ends
    /// between the two readings and a predecessor that a claimed call just made the latest is known
    /// one way or the other.
    pub fn claim(
        &self,
        previous: Hash,
        manifest: Hash,
        latest: impl FnOnce() -> Option<(Hash, Hash)>,
    ) -> Result<Claim, CoordinatorError> {
        let mut c = self.lock();
        c.refuse_a_conflict(previous, manifest)?;
        if let Some((latest, latest_manifest)) = latest() {
            let made_by_a_claim = c
                .open
                .iter()
                .any(|(_, p, m)| transition_hash(m, p) == previous);
            // The same manifest as the latest is a no-op, answered as "unchanged" whatever it names.
            if previous != latest && manifest != latest_manifest && !made_by_a_claim {
                return Err(CoordinatorError::PreviousMismatch {
                    expected: previous,
                    latest,
                });
            }
        }
        c.next_id += 1;
        let id = c.next_id;
        c.open.push((id, previous, manifest));
        Ok(Claim {
            claims: self.claims.clone(),
            id,
        })
    }

    /// Refuses a call as [`WriteClaims::claim`] would for a racing one, without claiming anything:
    /// for the check made before the call's signature is. A call is refused here only when an
    /// owner-signed call on the same predecessor with another manifest is under way; the refusal
    /// writes nothing, and tells the caller no more than that an owner's write on the transition it
    /// names is being committed (which it sees in the history a moment later).
    pub fn refuse_a_conflict(
        &self,
        previous: Hash,
        manifest: Hash,
    ) -> Result<(), CoordinatorError> {
        self.lock().refuse_a_conflict(previous, manifest)
    }

    /// How many claims are open (for tests).
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Claims> {
        lock(&self.claims)
    }
}

impl Claims {
    /// A WriteConflict if a call with another manifest holds a claim on `previous`.
    fn refuse_a_conflict(&self, previous: Hash, manifest: Hash) -> Result<(), CoordinatorError> {
        let racing = self
            .open
            .iter()
            .any(|(_, p, m)| *p == previous && *m != manifest);
        match racing {
            true => Err(CoordinatorError::WriteConflict { previous }),
            false => Ok(()),
        }
    }
}

fn lock(claims: &Mutex<Claims>) -> std::sync::MutexGuard<'_, Claims> {
    // The bookkeeping stays consistent even if a holder panicked: every update is one push or one
    // retain, so the poisoned value is still a valid list.
    claims
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for Claim {
    fn drop(&mut self) {
        let id = self.id;
        lock(&self.claims).open.retain(|(i, _, _)| *i != id);
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
        let winner = claims.claim(h(0), h(1), || None).expect("the first claim");
        assert!(matches!(
            claims.claim(h(0), h(2), || None),
            Err(CoordinatorError::WriteConflict { previous }) if previous == h(0)
        ));
        // The check made before a call's signature is: the same verdict, nothing claimed.
        assert!(matches!(
            claims.refuse_a_conflict(h(0), h(2)),
            Err(CoordinatorError::WriteConflict { previous }) if previous == h(0)
        ));
        claims
            .refuse_a_conflict(h(0), h(1))
            .expect("the same transition is not a conflict");
        claims
            .refuse_a_conflict(h(5), h(2))
            .expect("another predecessor is not a conflict");
        assert_eq!(claims.open(), 1);
        drop(winner);
        assert_eq!(claims.open(), 0);
        claims
            .refuse_a_conflict(h(0), h(2))
            .expect("no conflict once the winner answered");
        let _retry = claims
            .claim(h(0), h(2), || None)
            .expect("free again once the winner answered");
    }

    #[test]
    fn the_same_transition_and_other_predecessors_are_not_refused() {
        let claims = WriteClaims::default();
        let _a = claims.claim(h(0), h(1), || None).expect("the first claim");
        let _same = claims
            .claim(h(0), h(1), || None)
            .expect("a retry of the same transition queues");
        let _chained = claims
            .claim(h(9), h(3), || None)
            .expect("another predecessor queues");
        assert_eq!(claims.open(), 3);
        assert!(claims.claim(h(9), h(4), || None).is_err());
    }

    #[test]
    fn a_stale_predecessor_is_refused_but_the_latest_and_a_claimed_result_are_not() {
        let claims = WriteClaims::default();
        let latest = || Some((h(0), h(100)));
        let _a = claims.claim(h(0), h(1), latest).expect("on the latest");
        // After the claimed call's transition: it may be the latest by the time this one runs.
        let next = transition_hash(&h(1), &h(0));
        let _b = claims
            .claim(next, h(2), latest)
            .expect("after the claimed call");
        assert!(matches!(
            claims.claim(h(7), h(3), latest),
            Err(CoordinatorError::PreviousMismatch { expected, latest }) if expected == h(7) && latest == h(0)
        ));
        // Re-sending the latest manifest is a no-op, not a mismatch.
        let _c = claims.claim(h(7), h(100), latest).expect("unchanged");
        // Without a known latest nothing is refused as stale.
        let _d = claims.claim(h(8), h(4), || None).expect("unknown latest");
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
