//! `verified`: the last few transition signatures this process verified and found good, so that one
//! SetManifest's signatures are verified once on the leader rather than at every check that guards it.
//!
//! The leader checks a SetManifest's owner signature before it lets the call hold a write claim, again
//! when it authorizes the call before and after the write gate, in the self-check of the transition it
//! prepared (with the coordinator signature it just made), and once more when it applies the entry:
//! five Ed25519 verifications of one owner signature, about a quarter of a millisecond on the commit
//! path (issue 11.3).
//!
//! An entry is the whole input of `verify_strict`: the key, the message (a label and a 32-byte hash)
//! and the signature. A lookup must match all of it, byte for byte. `verify_strict` is a pure function
//! of that input, so a hit gives the verdict a fresh check would give: the memo can never accept what
//! a fresh check would refuse. Only successes are kept; a signature that fails is checked again every
//! time. At most [`SLOTS`] entries, the oldest replaced. The entries are public values (keys,
//! hashes, signatures that travel in the log), so keeping them tells nobody anything.

use std::sync::Mutex;

use ed25519_dalek::{Signature, VerifyingKey};

use crate::hash::Hash;

/// Signatures remembered at once: a few SetManifests in flight, each with an owner and a coordinator
/// signature.
pub const SLOTS: usize = 8;

/// One signature that verified: everything `verify_strict` was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    label: &'static [u8],
    key: [u8; 32],
    hash: [u8; 32],
    signature: [u8; 64],
}

/// The memo: [`SLOTS`] entries, replaced oldest first.
#[derive(Debug)]
pub struct Memo {
    entries: [Option<Entry>; SLOTS],
    next: usize,
}

impl Memo {
    pub const fn new() -> Memo {
        Memo {
            entries: [None; SLOTS],
            next: 0,
        }
    }

    /// Whether `key` signed `label || hash` with `signature` under `verify_strict`: from the memo when
    /// this exact input verified before, else by `fresh` (which runs `verify_strict`), remembered if
    /// it succeeds.
    fn verify(
        memo: &Mutex<Memo>,
        label: &'static [u8],
        key: &VerifyingKey,
        hash: &Hash,
        signature: &Signature,
        fresh: impl FnOnce() -> bool,
    ) -> bool {
        let entry = Entry {
            label,
            key: key.to_bytes(),
            hash: *hash.as_bytes(),
            signature: signature.to_bytes(),
        };
        if lock(memo).entries.contains(&Some(entry)) {
            return true;
        }
        let good = fresh();
        if good {
            let mut memo = lock(memo);
            let slot = memo.next;
            memo.entries[slot] = Some(entry);
            memo.next = (slot + 1) % SLOTS;
        }
        good
    }
}

impl Default for Memo {
    fn default() -> Memo {
        Memo::new()
    }
}

/// A panic while holding the memo cannot leave it inconsistent (whole entries are written at once).
fn lock(memo: &Mutex<Memo>) -> std::sync::MutexGuard<'_, Memo> {
    memo.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The process's memo.
static MEMO: Mutex<Memo> = Mutex::new(Memo::new());

/// `key.verify_strict(label || hash, signature).is_ok()`, remembered for the next few calls with the
/// same input (see the module's documentation).
pub fn verify_strict(
    label: &'static [u8],
    key: &VerifyingKey,
    hash: &Hash,
    signature: &Signature,
) -> bool {
    Memo::verify(&MEMO, label, key, hash, signature, || {
        key.verify_strict(&[label, hash.as_bytes()].concat(), signature)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    const LABEL: &[u8] = b"concord/v1/set-manifest";
    const OTHER_LABEL: &[u8] = b"concord/v1/transition";

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn sign(k: &SigningKey, label: &[u8], hash: &Hash) -> Signature {
        k.sign(&[label, hash.as_bytes()].concat())
    }

    /// `Memo::verify` on `memo` with the real check, counting the fresh verifications in `fresh`.
    fn check(
        memo: &Mutex<Memo>,
        fresh: &Cell<usize>,
        label: &'static [u8],
        key: &VerifyingKey,
        hash: &Hash,
        signature: &Signature,
    ) -> bool {
        Memo::verify(memo, label, key, hash, signature, || {
            fresh.set(fresh.get() + 1);
            key.verify_strict(&[label, hash.as_bytes()].concat(), signature)
                .is_ok()
        })
    }

    #[test]
    fn a_good_signature_is_verified_once_and_then_remembered() {
        let (memo, fresh) = (Mutex::new(Memo::new()), Cell::new(0));
        let (k, hash) = (key(1), Hash([7; 32]));
        let sig = sign(&k, LABEL, &hash);
        for _ in 0..5 {
            assert!(check(&memo, &fresh, LABEL, &k.verifying_key(), &hash, &sig));
        }
        assert_eq!(fresh.get(), 1);
    }

    #[test]
    fn the_memo_never_accepts_what_a_fresh_check_refuses() {
        let (memo, fresh) = (Mutex::new(Memo::new()), Cell::new(0));
        let (k, hash) = (key(1), Hash([7; 32]));
        let sig = sign(&k, LABEL, &hash);
        assert!(check(&memo, &fresh, LABEL, &k.verifying_key(), &hash, &sig));
        // Each part of the remembered input changed on its own: all refused, each checked afresh.
        let other_sig = sign(&k, LABEL, &Hash([8; 32]));
        assert!(!check(
            &memo,
            &fresh,
            LABEL,
            &k.verifying_key(),
            &hash,
            &other_sig
        ));
        assert!(!check(
            &memo,
            &fresh,
            LABEL,
            &k.verifying_key(),
            &Hash([8; 32]),
            &sig
        ));
        assert!(!check(
            &memo,
            &fresh,
            OTHER_LABEL,
            &k.verifying_key(),
            &hash,
            &sig
        ));
        assert!(!check(
            &memo,
            &fresh,
            LABEL,
            &key(2).verifying_key(),
            &hash,
            &sig
        ));
        assert_eq!(fresh.get(), 5);
    }

    #[test]
    fn a_failure_is_not_remembered() {
        let (memo, fresh) = (Mutex::new(Memo::new()), Cell::new(0));
        let (k, hash) = (key(1), Hash([7; 32]));
        let forged = sign(&key(2), LABEL, &hash);
        for _ in 0..3 {
            assert!(!check(
                &memo,
                &fresh,
                LABEL,
                &k.verifying_key(),
                &hash,
                &forged
            ));
        }
        assert_eq!(fresh.get(), 3);
        assert!(lock(&memo).entries.iter().all(Option::is_none));
    }

    #[test]
    fn the_memo_holds_at_most_its_slots_and_forgets_the_oldest_first() {
        let (memo, fresh) = (Mutex::new(Memo::new()), Cell::new(0));
        let k = key(1);
        let hashes: Vec<Hash> = (0..=SLOTS as u8).map(|i| Hash([i; 32])).collect();
        let sigs: Vec<Signature> = hashes.iter().map(|h| sign(&k, LABEL, h)).collect();
        for (h, s) in hashes.iter().zip(&sigs) {
            assert!(check(&memo, &fresh, LABEL, &k.verifying_key(), h, s));
        }
        assert_eq!(fresh.get(), SLOTS + 1);
        // The newest `SLOTS` are remembered; the first was replaced and is verified again.
        for (h, s) in hashes.iter().zip(&sigs).skip(1) {
            assert!(check(&memo, &fresh, LABEL, &k.verifying_key(), h, s));
        }
        assert_eq!(fresh.get(), SLOTS + 1);
        assert!(check(
            &memo,
            &fresh,
            LABEL,
            &k.verifying_key(),
            &hashes[0],
            &sigs[0]
        ));
        assert_eq!(fresh.get(), SLOTS + 2);
    }

    #[test]
    fn the_process_memo_gives_verify_stricts_verdicts() {
        let (k, hash) = (key(3), Hash([9; 32]));
        let sig = sign(&k, LABEL, &hash);
        assert!(verify_strict(LABEL, &k.verifying_key(), &hash, &sig));
        assert!(verify_strict(LABEL, &k.verifying_key(), &hash, &sig));
        assert!(!verify_strict(OTHER_LABEL, &k.verifying_key(), &hash, &sig));
        assert!(!verify_strict(LABEL, &key(4).verifying_key(), &hash, &sig));
    }
}
