//! `MembersAuthorization`: a workload owner's authorization of one membership change, and its check.
//!
//! Pure: the leader checks an authorization before it writes anything (so an unauthorized caller
//! costs no log entry), and every replica's state machine checks it again at the authorization's own
//! place in the Raft log, against the membership configuration that precedes it there
//! (`raft::state_machine`). That second check is the one that counts: it is made on the same input by
//! every replica, at one point of the log, so no leader change can slip another membership change
//! between the check and the authorization it lets through.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, VerifyingKey};

use super::format::members_message;
use crate::hash::Hash;

/// A signed request to make `members` the voting members, starting from the membership configuration
/// at Raft log index `membership_index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersAuthorization {
    pub membership_index: u64,
    pub members: BTreeMap<u64, String>,
    pub owner_key: VerifyingKey,
    pub owner_signature: Signature,
}

/// Why an authorization does not hold. Each says who is at fault and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembersRefusal {
    /// Stale, or replayed: the membership moved since the owner signed.
    #[error(
        "the authorization is for the membership at log index {signed}, but the membership is at \
         index {current} now: it changed since it was signed (a membership change, a replica \
         rejoining) or the authorization was used already; read the status and sign again"
    )]
    MembershipMoved { signed: u64, current: u64 },
    /// The key is not a workload owner key of the latest manifest.
    #[error("owner key {0} is not listed in the latest manifest")]
    KeyNotListed(String),
    /// The signature is not the owner's over these bytes.
    #[error(
        "the owner signature does not verify over these members at transition {latest} and \
         membership index {membership_index}"
    )]
    BadSignature { latest: Hash, membership_index: u64 },
}

impl MembersRefusal {
    /// Whether the caller may simply read the state again and sign again (the request was not wrong
    /// when it was made), as opposed to an authorization that never held.
    pub fn is_stale(&self) -> bool {
        matches!(self, MembersRefusal::MembershipMoved { .. })
    }
}

impl MembersAuthorization {
    /// The bytes the owner signed.
    pub fn message(&self, latest: &Hash) -> Vec<u8> {
        members_message(latest, self.membership_index, &self.members)
    }

    /// Holds if the authorization names the membership `current_membership` and a key of
    /// `owner_keys` (the latest manifest's) signed it at transition `latest`.
    pub fn check(
        &self,
        latest: &Hash,
        owner_keys: &[VerifyingKey],
        current_membership: u64,
    ) -> Result<(), MembersRefusal> {
        if self.membership_index != current_membership {
            return Err(MembersRefusal::MembershipMoved {
                signed: self.membership_index,
                current: current_membership,
            });
        }
        if !owner_keys.contains(&self.owner_key) {
            return Err(MembersRefusal::KeyNotListed(hex::encode(
                self.owner_key.as_bytes(),
            )));
        }
        self.owner_key
            .verify_strict(&self.message(latest), &self.owner_signature)
            .map_err(|_| MembersRefusal::BadSignature {
                latest: *latest,
                membership_index: self.membership_index,
            })
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    fn owner() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn signed(key: &SigningKey, latest: &Hash, at: u64, n: u64) -> MembersAuthorization {
        let members: BTreeMap<u64, String> =
            (0..n).map(|i| (i, format!("10.0.0.{i}:7778"))).collect();
        let owner_signature = key.sign(&members_message(latest, at, &members));
        MembersAuthorization {
            membership_index: at,
            members,
            owner_key: key.verifying_key(),
            owner_signature,
        }
    }

    #[test]
    fn holds_once_at_the_membership_it_names() {
        let latest = Hash::of(b"latest");
        let keys = [owner().verifying_key()];
        let grow = signed(&owner(), &latest, 4, 5);
        assert_eq!(grow.check(&latest, &keys, 4), Ok(()));
        // The change moved the membership: the same authorization, replayed later, is refused, and
        // rewriting the index it names breaks the signature.
        assert!(grow.check(&latest, &keys, 9).is_err_and(|e| e.is_stale()));
        let mut rewritten = grow.clone();
        rewritten.membership_index = 9;
        assert!(matches!(
            rewritten.check(&latest, &keys, 9),
            Err(MembersRefusal::BadSignature { .. })
        ));
    }

    #[test]
    fn only_a_listed_key_over_these_members_at_this_transition() {
        let latest = Hash::of(b"latest");
        let keys = [owner().verifying_key()];
        let stranger = SigningKey::from_bytes(&[8; 32]);
        assert!(matches!(
            signed(&stranger, &latest, 4, 5).check(&latest, &keys, 4),
            Err(MembersRefusal::KeyNotListed(_))
        ));
        let mut other_members = signed(&owner(), &latest, 4, 5);
        other_members.members.remove(&4);
        assert!(matches!(
            other_members.check(&latest, &keys, 4),
            Err(MembersRefusal::BadSignature { .. })
        ));
        assert!(matches!(
            signed(&owner(), &latest, 4, 5).check(&Hash::of(b"other"), &keys, 4),
            Err(MembersRefusal::BadSignature { .. })
        ));
    }

    #[test]
    fn golden_message() {
        let members = BTreeMap::from([(0, "a:1".to_string()), (1, "b:2".to_string())]);
        let m = members_message(&Hash::ZERO, 0x0102, &members);
        assert_eq!(&m[..22], b"concord/v1/set-members");
        assert_eq!(&m[22..54], &[0u8; 32]);
        assert_eq!(&m[54..62], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(m.len(), 22 + 32 + 8 + 32);
        // docs/PROTOCOL.md, section 5, "Membership authorization" (computed independently in Python).
        assert_eq!(
            hex::encode(&m),
            "636f6e636f72642f76312f7365742d6d656d62657273\
             0000000000000000000000000000000000000000000000000000000000000000\
             0000000000000102\
             3f2440192cdebccfe5d5a7f49b168de1ee4211f56e6db418a05b3b331e96f7b9"
        );
        assert_eq!(
            hex::encode(owner().sign(&m).to_bytes()),
            "d40242a6d2262e8237b9e8a19c89878fb2ca0816905c23fc59aa0194389266b7\
             1ac1200b7cf1cbd6bc4db9f6c059eaec8ce1910418f5b18a00cfaf42b441bf06"
        );
    }
}
