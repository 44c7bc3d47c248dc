//! Sealed mesh CA keys: how the leader hands a new mesh CA key to the other replicas inside the Raft
//! entry that commits it, so that the key survives the leader's death (issue 11.5).
//!
//! Every replica process makes a [`SealKey`] at start: a random X25519 key held only in memory, never
//! written, never derived from the seed (so no seed holder, and nobody who reads a disk, can open
//! what is sealed to it; a restart makes a new one). Peers learn its public half only with fresh
//! evidence whose report data commits to it and to the asking peer's nonce
//! ([`seal_key_report_data`]): the evidence checked against the manifest is the evidence of the
//! process that holds the key, whatever connection carried the answer. The leader
//! seals the new mesh CA key with HPKE (RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305) with `info = "concord/v1/mesh-ca-seal"` and an AAD that names the deployment,
//! the transition, the mesh CA certificate, the recipient's node id and its public key
//! ([`SealContext::aad`]): a copy opens only for that recipient process, for that transition and
//! that certificate (PROTOCOL.md, "Sealed mesh CA keys").
//!
//! This module owns the format and both of its ends. It must never put key bytes in an error or in
//! `Debug`, and never return a key that did not authenticate under the full context.

use std::fmt;

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable as _, OpModeR, OpModeS, Serializable as _};
use rand::rngs::OsRng;
use rand::{CryptoRng, RngCore};
use sha2::{Digest as _, Sha256, Sha512};
use zeroize::Zeroizing;

use crate::rng::{self, FailureRecordingRng};
use crate::shares::x25519_private_key;
use crate::{MeshCaError, labels};

type Kem = X25519HkdfSha256;
type Kdf = HkdfSha256;
type Aead = ChaCha20Poly1305;

/// What a sealed copy is bound to, besides the recipient's key. Every field is public.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealContext {
    /// The deployment id (SHA-256 of the first manifest's deployment binding).
    pub deployment: [u8; 32],
    /// The transition whose mesh CA this is.
    pub transition: [u8; 32],
    /// The mesh CA certificate (DER) the key belongs to.
    pub mesh_ca_der_sha256: [u8; 32],
    /// The recipient replica's node id.
    pub recipient: u64,
}

impl SealContext {
    /// `deployment || transition || SHA-256(mesh CA DER) || u64be(recipient) || recipient key`.
    pub fn aad(&self, recipient_key: &[u8; 32]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(32 * 4 + 8);
        aad.extend_from_slice(&self.deployment);
        aad.extend_from_slice(&self.transition);
        aad.extend_from_slice(&self.mesh_ca_der_sha256);
        aad.extend_from_slice(&self.recipient.to_be_bytes());
        aad.extend_from_slice(recipient_key);
        aad
    }

    /// SHA-256 of a mesh CA certificate, for [`SealContext::mesh_ca_der_sha256`].
    pub fn cert_hash(mesh_ca_der: &[u8]) -> [u8; 32] {
        Sha256::digest(mesh_ca_der).into()
    }
}

/// A mesh CA key sealed to one replica's seal key. Public: only that process can open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKey {
    /// HPKE's encapsulated key, 32 bytes.
    pub encapsulated_key: Vec<u8>,
    /// The 32-byte P-256 scalar of the mesh CA key, sealed, with its 16-byte tag.
    pub ciphertext: Vec<u8>,
}

/// A replica process's X25519 key for sealed mesh CA keys: random, made at start, kept only in
/// memory (wiped on drop), never written or derived from the seed.
pub struct SealKey {
    secret: Zeroizing<[u8; 32]>,
    public_key: [u8; 32],
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealKey")
            .field("public_key", &hex::encode(self.public_key))
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl SealKey {
    /// A new key from the OS CSPRNG.
    pub fn generate() -> Result<SealKey, MeshCaError> {
        Self::generate_with(&mut OsRng)
    }

    pub(crate) fn generate_with<R: RngCore + CryptoRng + ?Sized>(
        rng: &mut R,
    ) -> Result<SealKey, MeshCaError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng::fill(rng, secret.as_mut(), "generating the mesh CA seal key")?;
        let public_key = <Kem as hpke::Kem>::sk_to_pk(&x25519_private_key(&secret))
            .to_bytes()
            .into();
        Ok(SealKey { secret, public_key })
    }

    /// What the leader seals to; handed to peers only with evidence that binds it
    /// ([`seal_key_report_data`]).
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// Opens `sealed` under `context` (which must name this key's owner as the recipient): the mesh
    /// CA key, or an error that changes nothing. The caller still checks that the key matches the
    /// certificate it expects.
    pub fn open(
        &self,
        context: &SealContext,
        sealed: &SealedKey,
    ) -> Result<Zeroizing<[u8; 32]>, MeshCaError> {
        let rejected = |reason: &str| MeshCaError::SealedKeyRejected {
            reason: reason.into(),
        };
        let encapsulated_key =
            <Kem as hpke::Kem>::EncappedKey::from_bytes(&sealed.encapsulated_key)
                .map_err(|_| rejected("its encapsulated key is not 32 bytes"))?;
        let plaintext = Zeroizing::new(
            hpke::single_shot_open::<Aead, Kdf, Kem>(
                &OpModeR::Base,
                &x25519_private_key(&self.secret),
                &encapsulated_key,
                labels::MESH_CA_SEAL,
                &sealed.ciphertext,
                &context.aad(&self.public_key),
            )
            .map_err(|_| {
                rejected(
                    "the ciphertext does not verify under this process's seal key and the \
                     transition, mesh CA and recipient it names",
                )
            })?,
        );
        let key = <[u8; 32]>::try_from(plaintext.as_slice())
            .map_err(|_| rejected("the sealed key is not 32 bytes"))?;
        Ok(Zeroizing::new(key))
    }
}

/// The report data of the evidence that binds a replica's seal key (PROTOCOL.md §7.1):
///
/// ```text
/// SHA-512( u32be(19) || "concord/v1/seal-key" || u32be(32) || nonce
///          || u32be(32) || seal public key || u32be(32) || deployment id )
/// ```
///
/// `nonce` is the asking peer's, so the evidence is fresh; `deployment` the one the answering replica
/// serves. Every field is length-prefixed, so no two inputs meet; the first byte (0x00) differs from
/// that of every aTLS binding (an SPKI DER starts with 0x30, a batch label with `c`), so no evidence
/// made for a handshake passes as a seal key's or the other way round.
pub fn seal_key_report_data(
    nonce: &[u8; 32],
    public_key: &[u8; 32],
    deployment: &[u8; 32],
) -> [u8; 64] {
    let mut h = Sha512::new();
    for field in [labels::SEAL_KEY_BINDING, nonce, public_key, deployment] {
        // Each field is at most a few dozen bytes.
        h.update((field.len() as u32).to_be_bytes());
        h.update(field);
    }
    h.finalize().into()
}

/// The leader's side: seals the mesh CA key (`key`, a P-256 scalar) to `recipient_key` under `context`.
pub fn seal_mesh_ca_key(
    recipient_key: &[u8; 32],
    context: &SealContext,
    key: &[u8; 32],
) -> Result<SealedKey, MeshCaError> {
    seal_with(&mut OsRng, recipient_key, context, key)
}

pub(crate) fn seal_with<R: RngCore + CryptoRng + ?Sized>(
    rng: &mut R,
    recipient_key: &[u8; 32],
    context: &SealContext,
    key: &[u8; 32],
) -> Result<SealedKey, MeshCaError> {
    SealAhead::encapsulate_with(rng, recipient_key)?.seal(context, key)
}

/// The costly half of sealing a mesh CA key to one recipient, done before the key and the transition
/// are known: HPKE's encapsulation (an ephemeral X25519 key and its Diffie-Hellman with the
/// recipient's seal key, about 0.1 ms here), which depends on nothing but the recipient's key. The
/// leader makes these ahead of need on its background threads with the next mesh CA (issue 11.3);
/// [`SealAhead::seal`] then only encrypts, under the full [`SealContext`].
///
/// A `SealAhead` seals once (it is consumed), so no two copies share an encapsulation, and what it
/// makes is exactly what [`seal_mesh_ca_key`] makes: `seal_mesh_ca_key` is this, in one step. Its
/// secrets (HPKE's key schedule) are wiped on drop and never shown by `Debug`.
pub struct SealAhead {
    recipient_key: [u8; 32],
    encapsulated_key: [u8; 32],
    context: hpke::aead::AeadCtxS<Aead, Kdf, Kem>,
}

impl fmt::Debug for SealAhead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealAhead")
            .field("recipient_key", &hex::encode(self.recipient_key))
            .field("key_schedule", &"[redacted]")
            .finish()
    }
}

impl SealAhead {
    /// The encapsulation to `recipient_key`, from the OS CSPRNG.
    pub fn encapsulate(recipient_key: &[u8; 32]) -> Result<SealAhead, MeshCaError> {
        Self::encapsulate_with(&mut OsRng, recipient_key)
    }

    pub(crate) fn encapsulate_with<R: RngCore + CryptoRng + ?Sized>(
        rng: &mut R,
        recipient_key: &[u8; 32],
    ) -> Result<SealAhead, MeshCaError> {
        let recipient = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient_key).map_err(|_| {
            MeshCaError::SealFailed {
                reason: "the recipient's seal key is not 32 bytes".into(),
            }
        })?;
        let mut rng = FailureRecordingRng::new(rng);
        let setup = hpke::setup_sender::<Aead, Kdf, Kem, _>(
            &OpModeS::Base,
            &recipient,
            labels::MESH_CA_SEAL,
            &mut rng,
        );
        rng.check("sealing a mesh CA key")?;
        let (encapsulated_key, context) = setup.map_err(|e| MeshCaError::SealFailed {
            reason: match e {
                hpke::HpkeError::EncapError => {
                    "the recipient's seal key is a low-order X25519 point, which no key pair produces"
                        .into()
                }
                other => other.to_string(),
            },
        })?;
        Ok(SealAhead {
            recipient_key: *recipient_key,
            encapsulated_key: encapsulated_key.to_bytes().into(),
            context,
        })
    }

    /// The seal key this encapsulation is to.
    pub fn recipient_key(&self) -> &[u8; 32] {
        &self.recipient_key
    }

    /// HPKE's encapsulated key (public): what the sealed copy will carry.
    pub fn encapsulated_key(&self) -> &[u8; 32] {
        &self.encapsulated_key
    }

    /// Seals the mesh CA key (`key`, a P-256 scalar) under `context`: the second half of
    /// [`seal_mesh_ca_key`].
    pub fn seal(mut self, context: &SealContext, key: &[u8; 32]) -> Result<SealedKey, MeshCaError> {
        let ciphertext = self
            .context
            .seal(key, &context.aad(&self.recipient_key))
            .map_err(|e| MeshCaError::SealFailed {
                reason: e.to_string(),
            })?;
        Ok(SealedKey {
            encapsulated_key: self.encapsulated_key.to_vec(),
            ciphertext,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binding is normative (PROTOCOL.md §7.1): this vector pins it, and each input changes it.
    #[test]
    fn the_seal_key_binding_commits_to_every_field() {
        let (nonce, key, deployment) = ([1; 32], [2; 32], [3; 32]);
        let bound = seal_key_report_data(&nonce, &key, &deployment);
        let mut by_hand = Vec::new();
        by_hand.extend_from_slice(&[0, 0, 0, 19]);
        by_hand.extend_from_slice(b"concord/v1/seal-key");
        for field in [nonce, key, deployment] {
            by_hand.extend_from_slice(&[0, 0, 0, 32]);
            by_hand.extend_from_slice(&field);
        }
        assert_eq!(bound, <[u8; 64]>::from(Sha512::digest(&by_hand)));
        assert_ne!(bound, seal_key_report_data(&[9; 32], &key, &deployment));
        assert_ne!(bound, seal_key_report_data(&nonce, &[9; 32], &deployment));
        assert_ne!(bound, seal_key_report_data(&nonce, &key, &[9; 32]));
        // The fields are not interchangeable.
        assert_ne!(bound, seal_key_report_data(&key, &nonce, &deployment));
    }

    fn context() -> SealContext {
        SealContext {
            deployment: [1; 32],
            transition: [2; 32],
            mesh_ca_der_sha256: [3; 32],
            recipient: 2,
        }
    }

    #[test]
    fn the_recipient_opens_its_copy() {
        let key = SealKey::generate().unwrap();
        let sealed = seal_mesh_ca_key(&key.public_key(), &context(), &[9; 32]).unwrap();
        assert_eq!(*key.open(&context(), &sealed).unwrap(), [9; 32]);
        assert_eq!(sealed.encapsulated_key.len(), 32);
        assert_eq!(sealed.ciphertext.len(), 48);
    }

    #[test]
    fn another_context_key_or_byte_does_not_open() {
        let key = SealKey::generate().unwrap();
        let sealed = seal_mesh_ca_key(&key.public_key(), &context(), &[9; 32]).unwrap();
        let other_contexts = [
            SealContext {
                recipient: 3,
                ..context()
            },
            SealContext {
                transition: [7; 32],
                ..context()
            },
            SealContext {
                deployment: [7; 32],
                ..context()
            },
            SealContext {
                mesh_ca_der_sha256: [7; 32],
                ..context()
            },
        ];
        for c in &other_contexts {
            assert!(matches!(
                key.open(c, &sealed),
                Err(MeshCaError::SealedKeyRejected { .. })
            ));
        }
        let restarted = SealKey::generate().unwrap();
        assert!(restarted.open(&context(), &sealed).is_err());
        for i in 0..sealed.ciphertext.len() {
            let mut bad = sealed.clone();
            bad.ciphertext[i] ^= 1;
            assert!(key.open(&context(), &bad).is_err());
        }
        for i in 0..sealed.encapsulated_key.len() {
            let mut bad = sealed.clone();
            bad.encapsulated_key[i] ^= 1;
            assert!(key.open(&context(), &bad).is_err());
        }
        let mut short = sealed.clone();
        short.encapsulated_key.pop();
        assert!(key.open(&context(), &short).is_err());
    }

    #[test]
    fn a_copy_sealed_ahead_opens_as_one_sealed_at_once_and_only_under_its_context() {
        let key = SealKey::generate().unwrap();
        let ahead = SealAhead::encapsulate(&key.public_key()).unwrap();
        assert_eq!(ahead.recipient_key(), &key.public_key());
        let text = format!("{ahead:?}");
        assert!(text.contains("redacted"), "{text}");
        let encapsulated = *ahead.encapsulated_key();
        let sealed = ahead.seal(&context(), &[9; 32]).unwrap();
        assert_eq!(*key.open(&context(), &sealed).unwrap(), [9; 32]);
        assert_eq!(sealed.encapsulated_key, encapsulated);
        assert_eq!(sealed.ciphertext.len(), 48);
        let other = SealContext {
            transition: [7; 32],
            ..context()
        };
        assert!(key.open(&other, &sealed).is_err());
        assert!(
            SealKey::generate()
                .unwrap()
                .open(&context(), &sealed)
                .is_err()
        );
        // Two encapsulations to the same key never share an ephemeral key.
        let a = SealAhead::encapsulate(&key.public_key()).unwrap();
        let b = SealAhead::encapsulate(&key.public_key()).unwrap();
        assert_ne!(a.encapsulated_key, b.encapsulated_key);
    }

    #[test]
    fn seal_keys_are_random_per_process() {
        // No input: nothing (no seed, no disk) determines the key, so two processes never share one.
        let a = SealKey::generate().unwrap();
        let b = SealKey::generate().unwrap();
        assert_ne!(a.public_key(), b.public_key());
        assert_ne!(*a.secret, *b.secret);
        let text = format!("{a:?}");
        assert!(text.contains("redacted"));
        assert!(!text.contains(&hex::encode(a.secret.as_ref())));
    }

    #[test]
    fn a_failing_random_source_is_an_error() {
        struct Failing;
        impl RngCore for Failing {
            fn next_u32(&mut self) -> u32 {
                0
            }
            fn next_u64(&mut self) -> u64 {
                0
            }
            fn fill_bytes(&mut self, _: &mut [u8]) {}
            fn try_fill_bytes(&mut self, _: &mut [u8]) -> Result<(), rand::Error> {
                Err(rand::Error::new("no entropy"))
            }
        }
        impl CryptoRng for Failing {}
        assert!(matches!(
            SealKey::generate_with(&mut Failing),
            Err(MeshCaError::EntropyUnavailable { .. })
        ));
        let key = SealKey::generate().unwrap();
        assert!(matches!(
            seal_with(&mut Failing, &key.public_key(), &context(), &[9; 32]),
            Err(MeshCaError::EntropyUnavailable { .. })
        ));
    }
}
