//! Seed shares: Shamir threshold sharing of the seed, and HPKE encryption of each share to its
//! owner.
//!
//! This module owns the share format, the split and the combination, and the HPKE suite of
//! DESIGN.md (RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305,
//! `info = "concord/v1/seed-share"`, empty AAD). It must never let a share value or the seed
//! leave in plaintext except inside an HPKE ciphertext to an owner key (Invariant 1), never
//! print a share value in `Debug`, and never hand out anything it made while the CSPRNG failed.

use std::fmt;

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable as _, OpModeR, OpModeS, Serializable as _};
use rand::rngs::OsRng;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::rng::{self, FailureRecordingRng};
use crate::seed::{Salt, Seed, SeedEngine};
use crate::{MeshCaError, gf256, labels};

type Kem = X25519HkdfSha256;
type Kdf = HkdfSha256;
type Aead = ChaCha20Poly1305;

/// Serialized seed share, version 1. All integers are single bytes; 114 bytes in all:
///
/// | offset | length | field                                         |
/// |--------|--------|-----------------------------------------------|
/// | 0      | 16     | magic, ASCII `concord-share-v1`               |
/// | 16     | 32     | deployment id                                 |
/// | 48     | 1      | threshold (1..=255)                           |
/// | 49     | 1      | index, the Shamir x-coordinate (1..=255)      |
/// | 50     | 32     | salt of the seed engine                       |
/// | 82     | 32     | value, the Shamir y-coordinates, one per byte |
///
/// A later format changes the magic's version suffix; a reader refuses versions it does not know.
pub const SHARE_MAGIC: &[u8; 16] = b"concord-share-v1";
/// Length of a serialized version 1 share.
pub const SHARE_LEN: usize = 114;
/// The magic without its version number, to tell "newer format" from "not a share".
const SHARE_MAGIC_PREFIX: &[u8] = b"concord-share-v";

/// One owner's share of the seed.
#[derive(Clone)]
pub struct SeedShare {
    /// Which deployment the seed belongs to, so shares of different deployments are not mixed.
    pub deployment: [u8; 32],
    /// How many shares recover the seed.
    pub threshold: u8,
    /// The share's x-coordinate, 1 ..= n.
    pub index: u8,
    /// The salt that goes with the seed; not secret, but needed to rebuild the engine.
    pub salt: Salt,
    /// The share's y-coordinates, one for each seed byte. Secret.
    pub value: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for SeedShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeedShare")
            .field("deployment", &hex::encode(self.deployment))
            .field("threshold", &self.threshold)
            .field("index", &self.index)
            .field("salt", &self.salt)
            .field("value", &"[redacted]")
            .finish()
    }
}

impl SeedShare {
    /// The version 1 binary form (see [`SHARE_MAGIC`]). Holds the secret value: wiped on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(SHARE_LEN));
        out.extend_from_slice(SHARE_MAGIC);
        out.extend_from_slice(&self.deployment);
        out.push(self.threshold);
        out.push(self.index);
        out.extend_from_slice(self.salt.as_bytes());
        out.extend_from_slice(self.value.as_ref());
        out
    }

    /// Parses the version 1 binary form, refusing anything else.
    pub fn from_bytes(bytes: &[u8]) -> Result<SeedShare, MeshCaError> {
        let malformed = |reason: String| MeshCaError::MalformedShare { reason };
        if bytes.len() >= SHARE_MAGIC.len() && !bytes.starts_with(SHARE_MAGIC) {
            return Err(malformed(if bytes.starts_with(SHARE_MAGIC_PREFIX) {
                "it is in a share format version this build does not know; use a newer concord"
                    .into()
            } else {
                "it does not start with \"concord-share-v1\", so it is not a Concord seed share"
                    .into()
            }));
        }
        if bytes.len() != SHARE_LEN {
            return Err(malformed(format!(
                "it is {} bytes long, a version 1 share is {SHARE_LEN}",
                bytes.len()
            )));
        }
        let field = |start: usize| -> [u8; 32] {
            let mut out = [0u8; 32];
            out.copy_from_slice(&bytes[start..start + 32]);
            out
        };
        let threshold = bytes[48];
        let index = bytes[49];
        if threshold == 0 {
            return Err(malformed("its threshold is 0".into()));
        }
        if index == 0 {
            // x = 0 is where the secret itself sits; no share ever has it.
            return Err(malformed("its index is 0".into()));
        }
        let mut value = Zeroizing::new([0u8; 32]);
        value.copy_from_slice(&bytes[82..114]);
        Ok(SeedShare {
            deployment: field(16),
            threshold,
            index,
            salt: Salt::from_bytes(field(50)),
            value,
        })
    }
}

/// Splits the engine's seed into `n` shares, any `threshold` of which recover it. Each seed byte
/// is the constant term of its own random polynomial of degree `threshold - 1` over GF(2^8);
/// share `i` holds the polynomials' values at x = i. With `threshold` 1 every share is the seed.
pub fn split(
    engine: &SeedEngine,
    deployment: [u8; 32],
    threshold: u8,
    n: u8,
) -> Result<Vec<SeedShare>, MeshCaError> {
    split_with(&mut OsRng, engine, deployment, threshold, n)
}

pub(crate) fn split_with<R: RngCore + CryptoRng + ?Sized>(
    rng: &mut R,
    engine: &SeedEngine,
    deployment: [u8; 32],
    threshold: u8,
    n: u8,
) -> Result<Vec<SeedShare>, MeshCaError> {
    let invalid = |reason| MeshCaError::InvalidShareParameters {
        threshold,
        shares: n,
        reason,
    };
    if threshold == 0 {
        return Err(invalid("the threshold must be at least 1"));
    }
    if threshold > n {
        return Err(invalid(
            "the threshold is larger than the number of shares, so the seed could never be recovered",
        ));
    }

    // coefficients[k][b]: the coefficient of x^(k+1) in the polynomial of seed byte b.
    let mut coefficients = Zeroizing::new(vec![[0u8; 32]; usize::from(threshold - 1)]);
    for row in coefficients.iter_mut() {
        rng::fill(rng, row, "choosing the seed share polynomials")?;
    }

    let seed = engine.seed().as_bytes();
    let shares = (1..=n)
        .map(|x| {
            let mut value = Zeroizing::new([0u8; 32]);
            for (b, out) in value.iter_mut().enumerate() {
                // Horner's rule from the highest coefficient down to the seed byte.
                let mut y = 0u8;
                for row in coefficients.iter().rev() {
                    y = gf256::add(gf256::mul(y, x), row[b]);
                }
                *out = gf256::add(gf256::mul(y, x), seed[b]);
            }
            SeedShare {
                deployment,
                threshold,
                index: x,
                salt: engine.salt().clone(),
                value,
            }
        })
        .collect();
    Ok(shares)
}

/// Recovers the seed engine from at least `threshold` shares of one split.
///
/// All the shares given are interpolated, not just the first `threshold`: if one is corrupt the
/// result is a wrong seed, which the caller's check of the transition signatures catches, rather
/// than a right seed that hides a corrupt share.
pub fn combine(shares: &[SeedShare]) -> Result<SeedEngine, MeshCaError> {
    let first = shares.first().ok_or(MeshCaError::NoShares)?;
    let mut seen = [false; 256];
    for share in shares {
        if share.threshold == 0 || share.index == 0 {
            return Err(MeshCaError::MalformedShare {
                reason: format!(
                    "share {} has threshold {} (must be at least 1) and index {} (must be at \
                     least 1)",
                    share.index, share.threshold, share.index
                ),
            });
        }
        if share.deployment != first.deployment {
            return Err(MeshCaError::ShareDeploymentMismatch {
                first: hex::encode(first.deployment),
                other: hex::encode(share.deployment),
            });
        }
        if share.threshold != first.threshold {
            return Err(MeshCaError::ShareThresholdMismatch {
                first: first.threshold,
                other: share.threshold,
            });
        }
        if share.salt != first.salt {
            return Err(MeshCaError::ShareSaltMismatch);
        }
        let seen_index = &mut seen[usize::from(share.index)];
        if *seen_index {
            return Err(MeshCaError::DuplicateShareIndex { index: share.index });
        }
        *seen_index = true;
    }
    if shares.len() < usize::from(first.threshold) {
        return Err(MeshCaError::NotEnoughShares {
            have: shares.len(),
            need: first.threshold,
        });
    }

    // Lagrange interpolation at x = 0: seed = sum_i y_i * prod_{j != i} x_j / (x_j - x_i).
    // The x-coordinates are public, so only the y side needs to be constant time.
    let mut seed = Seed::from_bytes([0u8; 32]);
    for share in shares {
        let mut basis = 1u8;
        for other in shares {
            if other.index != share.index {
                let denominator = gf256::add(other.index, share.index);
                basis = gf256::mul(basis, gf256::mul(other.index, gf256::inv(denominator)));
            }
        }
        for (out, y) in seed.as_mut_bytes().iter_mut().zip(share.value.iter()) {
            *out = gf256::add(*out, gf256::mul(*y, basis));
        }
    }
    Ok(SeedEngine::new(seed, first.salt.clone()))
}

/// A seed share owner's X25519 key pair. The secret is wiped on drop and never printed.
#[derive(Clone)]
pub struct ShareOwnerKeyPair {
    secret: Zeroizing<[u8; 32]>,
    private_key: <Kem as hpke::Kem>::PrivateKey,
    public_key: [u8; 32],
}

impl fmt::Debug for ShareOwnerKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareOwnerKeyPair")
            .field("public_key", &hex::encode(self.public_key))
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl ShareOwnerKeyPair {
    /// A new key pair from the OS CSPRNG.
    pub fn generate() -> Result<ShareOwnerKeyPair, MeshCaError> {
        Self::generate_with(&mut OsRng)
    }

    pub(crate) fn generate_with<R: RngCore + CryptoRng + ?Sized>(
        rng: &mut R,
    ) -> Result<ShareOwnerKeyPair, MeshCaError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng::fill(rng, secret.as_mut(), "generating a share owner key")?;
        Ok(Self::from_secret_bytes(*secret))
    }

    /// The key pair for a stored X25519 secret. Every 32-byte string is a valid secret (it is
    /// clamped when used). The caller's copy of `secret` is not wiped.
    pub fn from_secret_bytes(secret: [u8; 32]) -> ShareOwnerKeyPair {
        let secret = Zeroizing::new(secret);
        let private_key = x25519_private_key(&secret);
        let public_key = <Kem as hpke::Kem>::sk_to_pk(&private_key).to_bytes().into();
        ShareOwnerKeyPair {
            secret,
            private_key,
            public_key,
        }
    }

    /// The public key, what the manifest lists in `seed_share_owners.keys`.
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// The secret, for the owner to store.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.secret.clone()
    }

    /// The HPKE form of the private key (for the sender authentication of a share submission).
    pub(crate) fn hpke_private_key(&self) -> &<Kem as hpke::Kem>::PrivateKey {
        &self.private_key
    }
}

pub(crate) fn x25519_private_key(secret: &[u8; 32]) -> <Kem as hpke::Kem>::PrivateKey {
    match <Kem as hpke::Kem>::PrivateKey::from_bytes(secret) {
        Ok(key) => key,
        // X25519 accepts any 32 bytes, and the array type fixes the length, so hpke's one
        // failure ("wrong length") cannot happen.
        Err(_) => unreachable!("a 32-byte X25519 secret is always accepted"),
    }
}

/// A seed share encrypted to one owner. Serializes with hex strings, for share files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedShare {
    /// The X25519 public key the share is encrypted to.
    #[serde(with = "hex_array")]
    pub owner_public_key: [u8; 32],
    /// HPKE's encapsulated key (the sender's ephemeral public key), 32 bytes.
    #[serde(with = "hex_vec")]
    pub encapsulated_key: Vec<u8>,
    /// The encrypted share with its 16-byte tag.
    #[serde(with = "hex_vec")]
    pub ciphertext: Vec<u8>,
}

/// Encrypts `share` to the owner's X25519 public key with the HPKE suite of DESIGN.md.
pub fn encrypt_share(
    owner_public_key: &[u8; 32],
    share: &SeedShare,
) -> Result<EncryptedShare, MeshCaError> {
    encrypt_share_with(&mut OsRng, owner_public_key, share)
}

pub(crate) fn encrypt_share_with<R: RngCore + CryptoRng + ?Sized>(
    rng: &mut R,
    owner_public_key: &[u8; 32],
    share: &SeedShare,
) -> Result<EncryptedShare, MeshCaError> {
    let recipient = <Kem as hpke::Kem>::PublicKey::from_bytes(owner_public_key).map_err(|_| {
        MeshCaError::InvalidOwnerPublicKey {
            owner_key: hex::encode(owner_public_key),
            reason: "it is not 32 bytes",
        }
    })?;
    let plaintext = share.to_bytes();
    // hpke draws the ephemeral key through the infallible `fill_bytes`; the wrapper turns a
    // failing source into an error below instead of a panic, and the ciphertext is dropped.
    let mut rng = FailureRecordingRng::new(rng);
    let sealed = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
        &OpModeS::Base,
        &recipient,
        labels::SEED_SHARE,
        &plaintext,
        &[],
        &mut rng,
    );
    rng.check("encrypting a seed share")?;
    let (encapsulated_key, ciphertext) = sealed.map_err(|err| match err {
        // DHKEM fails encapsulation only when the shared secret is zero: a low-order point.
        hpke::HpkeError::EncapError => MeshCaError::InvalidOwnerPublicKey {
            owner_key: hex::encode(owner_public_key),
            reason: "it is a low-order X25519 point, which no key pair produces",
        },
        other => MeshCaError::ShareEncryptionFailed {
            reason: other.to_string(),
        },
    })?;
    Ok(EncryptedShare {
        owner_public_key: *owner_public_key,
        encapsulated_key: encapsulated_key.to_bytes().to_vec(),
        ciphertext,
    })
}

/// Decrypts a share with the owner's key pair and parses it.
pub fn decrypt_share(
    owner: &ShareOwnerKeyPair,
    enc: &EncryptedShare,
) -> Result<SeedShare, MeshCaError> {
    if enc.owner_public_key != owner.public_key {
        return Err(MeshCaError::ShareNotForThisKey {
            share_owner: hex::encode(enc.owner_public_key),
            this_key: hex::encode(owner.public_key),
        });
    }
    let encapsulated_key = <Kem as hpke::Kem>::EncappedKey::from_bytes(&enc.encapsulated_key)
        .map_err(|_| MeshCaError::MalformedEncryptedShare {
            reason: format!(
                "its encapsulated key is {} bytes, X25519 needs 32",
                enc.encapsulated_key.len()
            ),
        })?;
    // The owner key field above is not authenticated; the AEAD is. A share really meant for
    // another key fails here, since DHKEM binds the recipient's public key into the secret.
    let plaintext = Zeroizing::new(
        hpke::single_shot_open::<Aead, Kdf, Kem>(
            &OpModeR::Base,
            &owner.private_key,
            &encapsulated_key,
            labels::SEED_SHARE,
            &enc.ciphertext,
            &[],
        )
        .map_err(|_| MeshCaError::ShareDecryptionFailed)?,
    );
    SeedShare::from_bytes(&plaintext)
}

/// Serde for `[u8; 32]` as a hex string.
mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(
        bytes: &[u8; 32],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out)
            .map_err(|err| D::Error::custom(format!("expected 64 hex digits: {err}")))?;
        Ok(out)
    }
}

/// Serde for `Vec<u8>` as a hex string.
mod hex_vec {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        hex::decode(&text).map_err(|err| D::Error::custom(format!("expected hex digits: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FailingRng, FailsAfter, golden_engine};

    const DEPLOYMENT: [u8; 32] = [0x11; 32];

    fn subsets(n: usize) -> impl Iterator<Item = Vec<usize>> {
        (0u32..1 << n).map(move |mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
    }

    fn recovered_seed(shares: &[SeedShare]) -> Result<[u8; 32], MeshCaError> {
        combine(shares).map(|engine| *engine.seed().as_bytes())
    }

    #[test]
    fn every_subset_of_at_least_threshold_shares_recovers_and_smaller_ones_fail() {
        let engine = SeedEngine::generate().unwrap();
        let shares = split(&engine, DEPLOYMENT, 3, 5).unwrap();
        assert_eq!(shares.len(), 5);
        let mut recovered = 0;
        for subset in subsets(5) {
            let picked: Vec<SeedShare> = subset.iter().map(|&i| shares[i].clone()).collect();
            let result = combine(&picked);
            if subset.len() >= 3 {
                let got = result.unwrap();
                assert_eq!(
                    got.seed().as_bytes(),
                    engine.seed().as_bytes(),
                    "{subset:?}"
                );
                assert_eq!(got.salt(), engine.salt());
                recovered += 1;
            } else if subset.is_empty() {
                assert!(matches!(result, Err(MeshCaError::NoShares)));
            } else {
                let err = result.unwrap_err();
                assert!(
                    matches!(err, MeshCaError::NotEnoughShares { have, need: 3 } if have == subset.len()),
                    "{subset:?}: {err}"
                );
            }
        }
        // C(5,3) + C(5,4) + C(5,5)
        assert_eq!(recovered, 16);
    }

    #[test]
    fn shares_are_in_any_order_and_recover_the_same_keys() {
        let engine = golden_engine();
        let shares = split(&engine, DEPLOYMENT, 2, 3).unwrap();
        let got = combine(&[shares[2].clone(), shares[0].clone()]).unwrap();
        assert_eq!(
            got.transition_signing_key().verifying_key(),
            engine.transition_signing_key().verifying_key()
        );
    }

    #[test]
    fn shares_are_random_and_not_the_seed() {
        // With zero coefficients every share would equal the seed; with reused coefficients
        // two splits would be equal.
        let engine = golden_engine();
        let a = split(&engine, DEPLOYMENT, 2, 4).unwrap();
        let b = split(&engine, DEPLOYMENT, 2, 4).unwrap();
        for (x, y) in a.iter().zip(b.iter()) {
            assert_ne!(x.value.as_ref(), engine.seed().as_bytes());
            assert_ne!(x.value, y.value);
        }
        assert_eq!(a.iter().map(|s| s.index).collect::<Vec<_>>(), [1, 2, 3, 4]);
    }

    #[test]
    fn edge_thresholds() {
        let engine = golden_engine();
        // 1-of-n: each share is the seed itself, as documented.
        let one = split(&engine, DEPLOYMENT, 1, 3).unwrap();
        assert!(
            one.iter()
                .all(|s| s.value.as_ref() == engine.seed().as_bytes())
        );
        assert_eq!(
            recovered_seed(&one[1..2]).unwrap(),
            *engine.seed().as_bytes()
        );
        // 255-of-255: the largest split recovers only with all shares.
        let all = split(&engine, DEPLOYMENT, 255, 255).unwrap();
        assert_eq!(all.last().unwrap().index, 255);
        assert_eq!(recovered_seed(&all).unwrap(), *engine.seed().as_bytes());
        assert!(matches!(
            combine(&all[1..]),
            Err(MeshCaError::NotEnoughShares {
                have: 254,
                need: 255
            })
        ));
    }

    #[test]
    fn split_rejects_impossible_parameters() {
        let engine = golden_engine();
        for (threshold, n) in [(0, 3), (0, 0), (4, 3), (1, 0)] {
            assert!(
                matches!(
                    split(&engine, DEPLOYMENT, threshold, n),
                    Err(MeshCaError::InvalidShareParameters { .. })
                ),
                "{threshold}-of-{n}"
            );
        }
    }

    #[test]
    fn combine_names_what_is_wrong_with_the_shares() {
        let engine = golden_engine();
        let shares = split(&engine, DEPLOYMENT, 2, 3).unwrap();

        let err = combine(&[shares[0].clone(), shares[0].clone()]).unwrap_err();
        assert!(
            matches!(err, MeshCaError::DuplicateShareIndex { index: 1 }),
            "{err}"
        );

        let other_deployment = split(&engine, [0x22; 32], 2, 3).unwrap();
        let err = combine(&[shares[0].clone(), other_deployment[1].clone()]).unwrap_err();
        assert!(
            matches!(err, MeshCaError::ShareDeploymentMismatch { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&hex::encode([0x22; 32])), "{err}");

        let other_threshold = split(&engine, DEPLOYMENT, 3, 3).unwrap();
        let err = combine(&[shares[0].clone(), other_threshold[1].clone()]).unwrap_err();
        assert!(
            matches!(
                err,
                MeshCaError::ShareThresholdMismatch { first: 2, other: 3 }
            ),
            "{err}"
        );

        let other_seed = split(&SeedEngine::generate().unwrap(), DEPLOYMENT, 2, 3).unwrap();
        let err = combine(&[shares[0].clone(), other_seed[1].clone()]).unwrap_err();
        assert!(matches!(err, MeshCaError::ShareSaltMismatch), "{err}");

        let mut zero_index = shares[0].clone();
        zero_index.index = 0;
        let err = combine(&[zero_index, shares[1].clone()]).unwrap_err();
        assert!(matches!(err, MeshCaError::MalformedShare { .. }), "{err}");
    }

    #[test]
    fn share_bytes_round_trip_in_the_documented_layout() {
        let engine = golden_engine();
        let share = split(&engine, DEPLOYMENT, 2, 3).unwrap().remove(1);
        let bytes = share.to_bytes();
        assert_eq!(bytes.len(), SHARE_LEN);
        assert_eq!(&bytes[..16], b"concord-share-v1");
        assert_eq!(&bytes[16..48], &DEPLOYMENT);
        assert_eq!(bytes[48], 2);
        assert_eq!(bytes[49], 2);
        assert_eq!(&bytes[50..82], engine.salt().as_bytes());
        assert_eq!(&bytes[82..], share.value.as_ref());

        let parsed = SeedShare::from_bytes(&bytes).unwrap();
        assert_eq!(parsed.deployment, share.deployment);
        assert_eq!(parsed.threshold, share.threshold);
        assert_eq!(parsed.index, share.index);
        assert_eq!(parsed.salt, share.salt);
        assert_eq!(parsed.value, share.value);
    }

    #[test]
    fn malformed_share_bytes_are_refused_with_a_reason() {
        let share = split(&golden_engine(), DEPLOYMENT, 2, 3).unwrap().remove(0);
        let good = share.to_bytes();
        let reason = |bytes: &[u8]| match SeedShare::from_bytes(bytes) {
            Err(MeshCaError::MalformedShare { reason }) => reason,
            other => panic!("expected MalformedShare, got {other:?}"),
        };

        assert!(reason(&good[..SHARE_LEN - 1]).contains("113 bytes"));
        let mut long = good.to_vec();
        long.push(0);
        assert!(reason(&long).contains("115 bytes"));
        assert!(reason(b"").contains("bytes"));

        let mut wrong_magic = good.to_vec();
        wrong_magic[..16].copy_from_slice(b"something-else!!");
        assert!(reason(&wrong_magic).contains("not a Concord seed share"));

        let mut newer = good.to_vec();
        newer[15] = b'2';
        assert!(reason(&newer).contains("version"));

        let mut zero_threshold = good.to_vec();
        zero_threshold[48] = 0;
        assert!(reason(&zero_threshold).contains("threshold"));

        let mut zero_index = good.to_vec();
        zero_index[49] = 0;
        assert!(reason(&zero_index).contains("index"));
    }

    #[test]
    fn hpke_round_trip_and_full_recovery() {
        let engine = SeedEngine::generate().unwrap();
        let owners: Vec<ShareOwnerKeyPair> = (0..3)
            .map(|_| ShareOwnerKeyPair::generate().unwrap())
            .collect();
        let encrypted: Vec<EncryptedShare> = split(&engine, DEPLOYMENT, 2, 3)
            .unwrap()
            .iter()
            .zip(&owners)
            .map(|(share, owner)| encrypt_share(&owner.public_key(), share).unwrap())
            .collect();
        for enc in &encrypted {
            assert_eq!(enc.encapsulated_key.len(), 32);
            assert_eq!(enc.ciphertext.len(), SHARE_LEN + 16);
        }

        // Owners 1 and 3 recover; their key pairs were reloaded from stored secrets.
        let decrypted: Vec<SeedShare> = [0, 2]
            .iter()
            .map(|&i| {
                let reloaded = ShareOwnerKeyPair::from_secret_bytes(*owners[i].secret_bytes());
                assert_eq!(reloaded.public_key(), owners[i].public_key());
                decrypt_share(&reloaded, &encrypted[i]).unwrap()
            })
            .collect();
        let recovered = combine(&decrypted).unwrap();
        assert_eq!(recovered.seed().as_bytes(), engine.seed().as_bytes());
        assert_eq!(
            recovered.root_ca_key().unwrap().to_bytes(),
            engine.root_ca_key().unwrap().to_bytes()
        );
    }

    #[test]
    fn decrypting_with_the_wrong_key_or_tampered_data_fails_cleanly() {
        let share = split(&golden_engine(), DEPLOYMENT, 2, 3).unwrap().remove(0);
        let owner = ShareOwnerKeyPair::generate().unwrap();
        let stranger = ShareOwnerKeyPair::generate().unwrap();
        let enc = encrypt_share(&owner.public_key(), &share).unwrap();

        let err = decrypt_share(&stranger, &enc).unwrap_err();
        assert!(
            matches!(err, MeshCaError::ShareNotForThisKey { .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("this share was not encrypted to this key"),
            "{err}"
        );

        // The unauthenticated header rewritten to name the stranger: the AEAD still refuses.
        let mut relabelled = enc.clone();
        relabelled.owner_public_key = stranger.public_key();
        assert!(matches!(
            decrypt_share(&stranger, &relabelled),
            Err(MeshCaError::ShareDecryptionFailed)
        ));

        for i in [0, SHARE_LEN / 2, enc.ciphertext.len() - 1] {
            let mut flipped = enc.clone();
            flipped.ciphertext[i] ^= 0x01;
            assert!(
                matches!(
                    decrypt_share(&owner, &flipped),
                    Err(MeshCaError::ShareDecryptionFailed)
                ),
                "ciphertext byte {i}"
            );
        }
        let mut flipped_key = enc.clone();
        flipped_key.encapsulated_key[3] ^= 0x01;
        assert!(matches!(
            decrypt_share(&owner, &flipped_key),
            Err(MeshCaError::ShareDecryptionFailed)
        ));
        let mut short_key = enc.clone();
        short_key.encapsulated_key.pop();
        assert!(matches!(
            decrypt_share(&owner, &short_key),
            Err(MeshCaError::MalformedEncryptedShare { .. })
        ));
        let mut truncated = enc.clone();
        truncated.ciphertext.truncate(10);
        assert!(matches!(
            decrypt_share(&owner, &truncated),
            Err(MeshCaError::ShareDecryptionFailed)
        ));

        // And the untouched share still opens.
        decrypt_share(&owner, &enc).unwrap();
    }

    // Interoperability vector, made outside this crate with Python `cryptography` 48:
    //   suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
    //   sk = X25519PrivateKey.from_private_bytes(bytes([0x42] * 32))
    //   share = b"concord-share-v1" + bytes([0x11] * 32) + bytes([2, 1]) + bytes(range(32, 64))
    //           + bytes([0x55] * 32)
    //   out = suite.encrypt(share, sk.public_key(), info=b"concord/v1/seed-share")
    //   enc, ct = out[:32], out[32:]
    // It pins the suite, the info label, the empty AAD and the share layout at once.
    const PY_OWNER_PUBLIC: &str =
        "132c442be010fbd57e72603328aa76e71fccc1503aae219327d14d9c9993f472";
    const PY_ENC: &str = "ec0a008a6e1823d0055156bbc7d3d8b59aae9f657ef202a14c20bbfba2dd0e6c";
    const PY_CT: &str = "2d5dd859dc8d1f90f5518b4280cb2e8154ba47f35a3768fcca2a23ade615a599\
                         1668d8622f58308850bea48d8085956ca5a3851e5e5a9419efb61d84daea1234\
                         e68bd0d4f7354fe4ff8e537c311155493d1099974667048d1f8b57e6807b33cb\
                         7ff9762cebb04103483c83d8e92b8325ecde0d113e4be2e14f2f0cd8221d998f\
                         106a";

    #[test]
    fn decrypts_a_share_encrypted_by_an_independent_hpke_implementation() {
        let owner = ShareOwnerKeyPair::from_secret_bytes([0x42; 32]);
        assert_eq!(hex::encode(owner.public_key()), PY_OWNER_PUBLIC);
        let enc = EncryptedShare {
            owner_public_key: owner.public_key(),
            encapsulated_key: hex::decode(PY_ENC).unwrap(),
            ciphertext: hex::decode(PY_CT).unwrap(),
        };
        let share = decrypt_share(&owner, &enc).unwrap();
        assert_eq!(share.deployment, [0x11; 32]);
        assert_eq!(share.threshold, 2);
        assert_eq!(share.index, 1);
        assert_eq!(share.salt, *golden_engine().salt());
        assert_eq!(*share.value, [0x55; 32]);
    }

    #[test]
    fn low_order_owner_keys_are_refused() {
        let share = split(&golden_engine(), DEPLOYMENT, 1, 1).unwrap().remove(0);
        let err = encrypt_share(&[0u8; 32], &share).unwrap_err();
        assert!(
            matches!(err, MeshCaError::InvalidOwnerPublicKey { .. }),
            "{err}"
        );
    }

    #[test]
    fn encrypted_share_json_uses_hex() {
        let owner = ShareOwnerKeyPair::generate().unwrap();
        let share = split(&golden_engine(), DEPLOYMENT, 1, 1).unwrap().remove(0);
        let enc = encrypt_share(&owner.public_key(), &share).unwrap();
        let json = serde_json::to_string(&enc).unwrap();
        assert!(json.contains(&hex::encode(owner.public_key())), "{json}");
        let back: EncryptedShare = serde_json::from_str(&json).unwrap();
        assert_eq!(back, enc);
        assert!(
            serde_json::from_str::<EncryptedShare>(
                r#"{"owner_public_key":"00","encapsulated_key":"","ciphertext":""}"#
            )
            .is_err()
        );
    }

    #[test]
    fn entropy_failure_is_an_error_not_a_panic() {
        let engine = golden_engine();
        let share = split(&engine, DEPLOYMENT, 1, 1).unwrap().remove(0);
        let owner = ShareOwnerKeyPair::generate().unwrap();
        assert!(matches!(
            split_with(&mut FailingRng, &engine, DEPLOYMENT, 2, 3),
            Err(MeshCaError::EntropyUnavailable { .. })
        ));
        // The first polynomial row drawn, the second not.
        assert!(matches!(
            split_with(
                &mut FailsAfter { good_bytes: 32 },
                &engine,
                DEPLOYMENT,
                3,
                3
            ),
            Err(MeshCaError::EntropyUnavailable { .. })
        ));
        assert!(matches!(
            ShareOwnerKeyPair::generate_with(&mut FailingRng),
            Err(MeshCaError::EntropyUnavailable { .. })
        ));
        // hpke asks through the infallible `fill_bytes`; FailingRng panics if that reached it.
        assert!(matches!(
            encrypt_share_with(&mut FailingRng, &owner.public_key(), &share),
            Err(MeshCaError::EntropyUnavailable { .. })
        ));
    }

    #[test]
    fn debug_never_shows_share_values_or_owner_secrets() {
        let share = split(&golden_engine(), DEPLOYMENT, 2, 3).unwrap().remove(0);
        let owner = ShareOwnerKeyPair::from_secret_bytes([0x42; 32]);
        let debug = format!("{share:?} {owner:?}");
        assert!(
            !debug.contains(&hex::encode(share.value.as_ref())),
            "{debug}"
        );
        assert!(!debug.contains(&hex::encode([0x42; 32])), "{debug}");
        assert!(!debug.contains("66, 66, 66"), "{debug}");
        assert!(debug.contains(&hex::encode(owner.public_key())), "{debug}");
    }
}
