//! Share submissions: how a seed share owner hands its decrypted share to a recovering coordinator so
//! that the coordinator knows **which owner** sent it (issue 9.6).
//!
//! The deployment id and the threshold are public, so anyone can build a well-formed share for any
//! index. A share is therefore accepted only when its sender proves that it holds the X25519 private
//! key the first manifest lists for that index: the owner seals the share plaintext with HPKE in
//! **Auth mode** (RFC 9180 §5.1.3), its own key pair as the sender key, to the coordinator process's
//! [`RecoveryKey`] (made at process start, held only in memory, never derived from the seed). DHKEM's
//! Auth mode mixes `DH(sender private, recipient public)` into the key schedule and binds both public
//! keys, so only the holder of the owner's private key can make a ciphertext that opens under that
//! owner's public key; and only this process can open it.
//!
//! This module owns the submission format and both of its ends. It must never return a share whose
//! sender was not checked against the owner list it was given, and never put share bytes in an error.

use std::fmt;

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable as _, OpModeR, OpModeS, Serializable as _};
use rand::rngs::OsRng;
use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::rng::{self, FailureRecordingRng};
use crate::shares::{SeedShare, ShareOwnerKeyPair, x25519_private_key};
use crate::{MeshCaError, labels};

type Kem = X25519HkdfSha256;
type Kdf = HkdfSha256;
type Aead = ChaCha20Poly1305;

/// A share sealed by its owner to a coordinator's recovery key. Every field is public: the
/// ciphertext can be opened only with the recovery key's private half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSubmission {
    /// The X25519 public key of the owner that sealed it: which `seed_share_owners.keys` entry.
    pub owner_public_key: [u8; 32],
    /// HPKE's encapsulated key, 32 bytes.
    pub encapsulated_key: Vec<u8>,
    /// The sealed share plaintext (PROTOCOL.md §6, 114 bytes) with its 16-byte tag.
    pub ciphertext: Vec<u8>,
}

/// A coordinator process's X25519 key for share submissions: random, made at start, kept only in
/// memory (wiped on drop), never written or derived from the seed. A restart makes a new one, so a
/// submission sealed to an earlier process cannot be opened by a later one.
pub struct RecoveryKey {
    secret: Zeroizing<[u8; 32]>,
    public_key: [u8; 32],
}

impl fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryKey")
            .field("public_key", &hex::encode(self.public_key))
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl RecoveryKey {
    /// A new key from the OS CSPRNG.
    pub fn generate() -> Result<RecoveryKey, MeshCaError> {
        Self::generate_with(&mut OsRng)
    }

    pub(crate) fn generate_with<R: RngCore + CryptoRng + ?Sized>(
        rng: &mut R,
    ) -> Result<RecoveryKey, MeshCaError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng::fill(rng, secret.as_mut(), "generating the share recovery key")?;
        let public_key = <Kem as hpke::Kem>::sk_to_pk(&x25519_private_key(&secret))
            .to_bytes()
            .into();
        Ok(RecoveryKey { secret, public_key })
    }

    /// What owners seal to; the coordinator hands it out over aTLS (`GetRecoveryKey`).
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// Opens `submission` and returns its share, only if it was sealed by the owner key it names,
    /// that key is `owners[i]`, and the share's index is `i + 1` (PROTOCOL.md §6: share `i` belongs
    /// to `K[i-1]`). `owners` must come from the verified first manifest.
    pub fn open(
        &self,
        submission: &ShareSubmission,
        owners: &[[u8; 32]],
    ) -> Result<SeedShare, MeshCaError> {
        let owner_hex = || hex::encode(submission.owner_public_key);
        let position = owners
            .iter()
            .position(|k| *k == submission.owner_public_key)
            .ok_or_else(|| MeshCaError::UnknownShareOwner {
                owner_key: owner_hex(),
            })?
            + 1;
        let not_authentic = |reason: &str| MeshCaError::SubmissionNotAuthentic {
            reason: reason.into(),
        };
        let sender = <Kem as hpke::Kem>::PublicKey::from_bytes(&submission.owner_public_key)
            .map_err(|_| not_authentic("the owner key is not an X25519 public key"))?;
        let encapsulated_key =
            <Kem as hpke::Kem>::EncappedKey::from_bytes(&submission.encapsulated_key)
                .map_err(|_| not_authentic("its encapsulated key is not 32 bytes"))?;
        let plaintext = Zeroizing::new(
            hpke::single_shot_open::<Aead, Kdf, Kem>(
                &OpModeR::Auth(sender),
                &x25519_private_key(&self.secret),
                &encapsulated_key,
                labels::SHARE_SUBMISSION,
                &submission.ciphertext,
                &[],
            )
            .map_err(|_| not_authentic("the HPKE Auth-mode ciphertext does not verify"))?,
        );
        let share = SeedShare::from_bytes(&plaintext)?;
        if usize::from(share.index) != position {
            return Err(MeshCaError::SubmissionIndexMismatch {
                owner_key: owner_hex(),
                position,
                index: share.index,
            });
        }
        Ok(share)
    }
}

/// The owner's side: seals `share` with `owner`'s key pair as the HPKE sender key, to the
/// coordinator's `recovery_key`, with `info = "concord/v1/share-submission"` and an empty AAD.
pub fn seal_submission(
    owner: &ShareOwnerKeyPair,
    recovery_key: &[u8; 32],
    share: &SeedShare,
) -> Result<ShareSubmission, MeshCaError> {
    seal_submission_with(&mut OsRng, owner, recovery_key, share)
}

pub(crate) fn seal_submission_with<R: RngCore + CryptoRng + ?Sized>(
    rng: &mut R,
    owner: &ShareOwnerKeyPair,
    recovery_key: &[u8; 32],
    share: &SeedShare,
) -> Result<ShareSubmission, MeshCaError> {
    let bad_recipient = |reason| MeshCaError::InvalidOwnerPublicKey {
        owner_key: hex::encode(recovery_key),
        reason,
    };
    let recipient = <Kem as hpke::Kem>::PublicKey::from_bytes(recovery_key)
        .map_err(|_| bad_recipient("it is not 32 bytes"))?;
    let sender_public = <Kem as hpke::Kem>::PublicKey::from_bytes(&owner.public_key())
        .map_err(|_| bad_recipient("the owner's public key is not 32 bytes"))?;
    let plaintext = share.to_bytes();
    let mut rng = FailureRecordingRng::new(rng);
    let sealed = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
        &OpModeS::Auth((owner.hpke_private_key().clone(), sender_public)),
        &recipient,
        labels::SHARE_SUBMISSION,
        &plaintext,
        &[],
        &mut rng,
    );
    rng.check("sealing a seed share submission")?;
    let (encapsulated_key, ciphertext) = sealed.map_err(|err| match err {
        hpke::HpkeError::EncapError => {
            bad_recipient("it is a low-order X25519 point, which no key pair produces")
        }
        other => MeshCaError::ShareEncryptionFailed {
            reason: other.to_string(),
        },
    })?;
    Ok(ShareSubmission {
        owner_public_key: owner.public_key(),
        encapsulated_key: encapsulated_key.to_bytes().to_vec(),
        ciphertext,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::Salt;

    fn share(index: u8) -> SeedShare {
        SeedShare {
            deployment: [0x11; 32],
            threshold: 2,
            index,
            salt: Salt::from_bytes([0x22; 32]),
            value: Zeroizing::new([index; 32]),
        }
    }

    fn owners() -> Vec<ShareOwnerKeyPair> {
        (0..3)
            .map(|_| ShareOwnerKeyPair::generate().unwrap())
            .collect()
    }

    fn keys(owners: &[ShareOwnerKeyPair]) -> Vec<[u8; 32]> {
        owners.iter().map(ShareOwnerKeyPair::public_key).collect()
    }

    #[test]
    fn an_owner_submission_opens_to_its_share() {
        let owners = owners();
        let coordinator = RecoveryKey::generate().unwrap();
        for (i, owner) in owners.iter().enumerate() {
            let index = i as u8 + 1;
            let sub = seal_submission(owner, &coordinator.public_key(), &share(index)).unwrap();
            let opened = coordinator.open(&sub, &keys(&owners)).unwrap();
            assert_eq!(opened.to_bytes(), share(index).to_bytes());
        }
    }

    #[test]
    fn a_key_that_is_not_an_owners_is_refused() {
        let owners = owners();
        let coordinator = RecoveryKey::generate().unwrap();
        let stranger = ShareOwnerKeyPair::generate().unwrap();
        let sub = seal_submission(&stranger, &coordinator.public_key(), &share(1)).unwrap();
        let err = coordinator.open(&sub, &keys(&owners)).unwrap_err();
        assert!(
            matches!(err, MeshCaError::UnknownShareOwner { .. }),
            "{err}"
        );
    }

    #[test]
    fn naming_an_owner_without_its_private_key_is_refused() {
        let owners = owners();
        let coordinator = RecoveryKey::generate().unwrap();
        let stranger = ShareOwnerKeyPair::generate().unwrap();
        // The forger seals with its own key and claims to be owner 1.
        let mut sub = seal_submission(&stranger, &coordinator.public_key(), &share(1)).unwrap();
        sub.owner_public_key = owners[0].public_key();
        let err = coordinator.open(&sub, &keys(&owners)).unwrap_err();
        assert!(
            matches!(err, MeshCaError::SubmissionNotAuthentic { .. }),
            "{err}"
        );
        // Base mode (an ordinary HPKE seal) to the recovery key does not pass either.
        let enc = crate::shares::encrypt_share(&coordinator.public_key(), &share(1)).unwrap();
        let base = ShareSubmission {
            owner_public_key: owners[0].public_key(),
            encapsulated_key: enc.encapsulated_key,
            ciphertext: enc.ciphertext,
        };
        assert!(matches!(
            coordinator.open(&base, &keys(&owners)),
            Err(MeshCaError::SubmissionNotAuthentic { .. })
        ));
    }

    #[test]
    fn another_process_or_a_changed_byte_cannot_open_it() {
        let owners = owners();
        let coordinator = RecoveryKey::generate().unwrap();
        let restarted = RecoveryKey::generate().unwrap();
        let sub = seal_submission(&owners[0], &coordinator.public_key(), &share(1)).unwrap();
        assert!(matches!(
            restarted.open(&sub, &keys(&owners)),
            Err(MeshCaError::SubmissionNotAuthentic { .. })
        ));
        for i in 0..sub.ciphertext.len() {
            let mut bad = sub.clone();
            bad.ciphertext[i] ^= 1;
            assert!(coordinator.open(&bad, &keys(&owners)).is_err());
        }
        let mut short = sub.clone();
        short.encapsulated_key.pop();
        assert!(coordinator.open(&short, &keys(&owners)).is_err());
    }

    #[test]
    fn an_owner_cannot_submit_another_index() {
        let owners = owners();
        let coordinator = RecoveryKey::generate().unwrap();
        let sub = seal_submission(&owners[0], &coordinator.public_key(), &share(2)).unwrap();
        let err = coordinator.open(&sub, &keys(&owners)).unwrap_err();
        assert!(
            matches!(
                err,
                MeshCaError::SubmissionIndexMismatch {
                    position: 1,
                    index: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let key = RecoveryKey::generate().unwrap();
        let text = format!("{key:?}");
        assert!(text.contains("redacted"));
        assert!(!text.contains(&hex::encode(key.secret.as_ref())));
    }
}
