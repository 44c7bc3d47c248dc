//! The seed, the salt, and every key Concord derives from them.
//!
//! This module owns the HKDF-SHA256 derivations of DESIGN.md ("Cryptographic formats"): the
//! transition signing key, the root CA key and the workload secrets. It must never derive the
//! mesh CA key (Invariant 3: that key is random, see `ca.rs`), never reuse a label (they live in
//! `labels.rs`), and never let the seed out of a zeroize-on-drop type or into a `Debug` string.

use std::fmt;

use hkdf::Hkdf;
use rand::rngs::OsRng;
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{MeshCaError, labels, rng};

/// The deployment's root secret: 32 bytes from the OS CSPRNG. Wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Seed([u8; 32]);

impl Seed {
    /// Wraps seed bytes. The caller's copy of `bytes` is not wiped: pass them straight from
    /// a zeroizing buffer.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Seed(bytes)
    }

    /// The seed bytes, for splitting into shares or sending to an attested peer (Invariant 1).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lets `combine` interpolate straight into the wiped-on-drop seed, with no plain copy.
    pub(crate) fn as_mut_bytes(&mut self) -> &mut [u8; 32] {
        &mut self.0
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed([redacted])")
    }
}

/// The HKDF salt that goes with a seed. Not secret on its own, but wiped on drop anyway
/// because it travels inside seed shares next to secret values.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Salt([u8; 32]);

impl Salt {
    /// Wraps salt bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Salt(bytes)
    }

    /// The salt bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Salt {
    // The salt alone reveals nothing about the derived keys, and its hex lets an operator tell
    // which split a share belongs to.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Salt({})", hex::encode(self.0))
    }
}

/// Derives Concord's long-lived keys from a seed and salt.
#[derive(Clone)]
pub struct SeedEngine {
    seed: Seed,
    salt: Salt,
}

impl fmt::Debug for SeedEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeedEngine")
            .field("seed", &self.seed)
            .field("salt", &self.salt)
            .finish()
    }
}

impl SeedEngine {
    /// A fresh seed and salt from the OS CSPRNG. Refuses if the CSPRNG fails.
    pub fn generate() -> Result<SeedEngine, MeshCaError> {
        Self::generate_from(&mut OsRng)
    }

    pub(crate) fn generate_from<R: RngCore + CryptoRng + ?Sized>(
        rng: &mut R,
    ) -> Result<SeedEngine, MeshCaError> {
        let mut seed = Seed([0u8; 32]);
        rng::fill(rng, &mut seed.0, "generating the seed")?;
        let mut salt = Salt([0u8; 32]);
        rng::fill(rng, &mut salt.0, "generating the salt")?;
        Ok(SeedEngine { seed, salt })
    }

    /// An engine for a known seed and salt (recovery, tests).
    pub fn new(seed: Seed, salt: Salt) -> Self {
        SeedEngine { seed, salt }
    }

    /// The seed.
    pub fn seed(&self) -> &Seed {
        &self.seed
    }

    /// The salt.
    pub fn salt(&self) -> &Salt {
        &self.salt
    }

    /// HKDF-SHA256(ikm = seed, salt = salt, info) to 32 bytes.
    fn derive(&self, info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
        // hkdf 0.12 keeps the PRK in HMAC state that it does not wipe; the `Hkdf` value lives
        // only for this call.
        let hkdf = Hkdf::<Sha256>::new(Some(self.salt.as_bytes()), self.seed.as_bytes());
        let mut okm = Zeroizing::new([0u8; 32]);
        // Invariant: HKDF-SHA256 can expand up to 255 * 32 bytes; we ask for 32.
        hkdf.expand_multi_info(info, okm.as_mut())
            .expect("32 bytes is within HKDF-SHA256's output limit");
        okm
    }

    /// The Ed25519 key that signs every transition:
    /// `info = "concord/v1/transition-signing"`.
    pub fn transition_signing_key(&self) -> ed25519_dalek::SigningKey {
        let secret = self.derive(&[labels::TRANSITION_SIGNING]);
        ed25519_dalek::SigningKey::from_bytes(&secret)
    }

    /// The Ed25519 key that signs checkpoints of the transparency log:
    /// `info = "concord/v1/checkpoint-signing"`.
    pub fn checkpoint_signing_key(&self) -> ed25519_dalek::SigningKey {
        let secret = self.derive(&[labels::CHECKPOINT_SIGNING]);
        ed25519_dalek::SigningKey::from_bytes(&secret)
    }

    /// The root CA's P-256 key: `info = "concord/v1/root-ca-key" || u32be(counter)`, for the
    /// first counter from 0 whose output is a valid scalar (nonzero, below the group order).
    pub fn root_ca_key(&self) -> Result<p256::SecretKey, MeshCaError> {
        self.root_ca_key_and_counter().map(|(key, _)| key)
    }

    pub(crate) fn root_ca_key_and_counter(&self) -> Result<(p256::SecretKey, u32), MeshCaError> {
        first_valid_scalar(|counter| self.derive(&[labels::ROOT_CA_KEY, &counter.to_be_bytes()]))
    }

    /// The secret a workload receives with its certificate:
    /// `info = "concord/v1/workload-secret/" || workload_secret_id`.
    pub fn workload_secret(&self, workload_secret_id: &str) -> Zeroizing<[u8; 32]> {
        self.derive(&[labels::WORKLOAD_SECRET, workload_secret_id.as_bytes()])
    }

    /// The AES-256-GCM key of transit key `name` at `version`:
    /// `info = "concord/v1/transit-key/" || u32be(version) || name`. It never leaves the replica: the
    /// transit API answers with results, never with key material.
    pub fn transit_key(&self, name: &str, version: u32) -> Zeroizing<[u8; 32]> {
        self.derive(&[labels::TRANSIT_KEY, &version.to_be_bytes(), name.as_bytes()])
    }
}

/// Tries candidates for counters 0, 1, 2, ... and returns the first that is a valid P-256
/// scalar, with its counter. Separate from the HKDF so that tests can feed invalid candidates:
/// a real seed needs counter 1 only with probability about 2^-32.
pub(crate) fn first_valid_scalar(
    mut candidate: impl FnMut(u32) -> Zeroizing<[u8; 32]>,
) -> Result<(p256::SecretKey, u32), MeshCaError> {
    for counter in 0..=u32::MAX {
        let bytes = candidate(counter);
        // `from_bytes` rejects zero and anything at or above the group order, which is
        // exactly "a valid scalar" in DESIGN.md.
        if let Ok(key) = p256::SecretKey::from_bytes(bytes.as_ref().into()) {
            return Ok((key, counter));
        }
    }
    Err(MeshCaError::RootCaKeyDerivationExhausted)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::Signer as _;

    use super::*;
    use crate::testing::{FailingRng, FailsAfter, golden_engine};

    // Golden vectors for seed = 00 01 .. 1f, salt = 20 21 .. 3f (see `testing::golden_engine`).
    // They were computed outside this crate, not by running it:
    //
    // HKDF outputs with OpenSSL 3.0:
    //   openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt hexkey:<seed> -kdfopt hexsalt:<salt> \
    //     -kdfopt hexinfo:<hex of the label, plus 00000000 for root CA counter 0> HKDF
    // The root CA output is below the P-256 order n = ffffffff00000000ffff...fc632551 and nonzero,
    // so counter 0 is used. Its public key is from Python `cryptography` 48
    // (`ec.derive_private_key(d, SECP256R1())`, uncompressed X9.62 point).
    // The Ed25519 public key and the signature over "concord/v1/transition" || 0xAA * 32 are from
    // Python `cryptography` 48 (`Ed25519PrivateKey.from_private_bytes`) and were checked to be
    // identical with `openssl pkey -pubout` and `openssl pkeyutl -sign -rawin`.
    const TRANSITION_SECRET: &str =
        "668faf6755c79f07951a02259dbf2a277bd419d9e734f9bd879263593246b6e7";
    const TRANSITION_PUBLIC: &str =
        "11448b55e3cce6e23eb25e988c4c4723721e6e65bfa1ec8de81cc68502f9b311";
    const TRANSITION_SIGNATURE: &str = "14e47febadc166997ca47196868a6f6498d54e8ca77e6eae0e58a3f59bb7\
                                        9b3b5b4bbd0cddd899d323d91d016d4346f2ca7cf8672fb2bf556dbf24\
                                        9910170d05";
    const ROOT_CA_SCALAR: &str = "af3f8d0151530082cb6bafdea8cd776d1221eb25c29a0b601d9d8c9324f68547";
    const ROOT_CA_COUNTER: u32 = 0;
    const ROOT_CA_PUBLIC: &str = "0494e134b5081eabd8c9e52e1a8178e9920a9da9940698f881da2160521edb24\
                                  60cae91b3c2c5340f15d7e5436f450618b938889a93eb8037eb2435c1cec8ff1\
                                  65";
    const WORKLOAD_SECRET_DEFAULT_WEB: &str =
        "9b354533aa71cc0272ff31cab72f55c7a7a37511b3a25242a8917b65c1f2ce3b";

    #[test]
    fn transition_signing_key_matches_golden_vector() {
        let key = golden_engine().transition_signing_key();
        assert_eq!(hex::encode(key.to_bytes()), TRANSITION_SECRET);
        assert_eq!(
            hex::encode(key.verifying_key().to_bytes()),
            TRANSITION_PUBLIC
        );

        let mut message = b"concord/v1/transition".to_vec();
        message.extend_from_slice(&[0xaa; 32]);
        let signature = key.sign(&message);
        assert_eq!(hex::encode(signature.to_bytes()), TRANSITION_SIGNATURE);
    }

    /// Computed with Python `cryptography` 48 (HKDF-SHA256 with the label, then
    /// `Ed25519PrivateKey.from_private_bytes`), not by this crate.
    #[test]
    fn checkpoint_signing_key_matches_golden_vector() {
        let key = golden_engine().checkpoint_signing_key();
        assert_eq!(
            hex::encode(key.to_bytes()),
            "0ef061bfa9c0b09e2c4b3a42efb80eea84bc6659dde42138636602d941139786"
        );
        assert_eq!(
            hex::encode(key.verifying_key().to_bytes()),
            "832b9fade6a8e23d9426c88710ea2f8abc4cd4945b2a7b4c28dad1d9d21704a3"
        );
    }

    #[test]
    fn root_ca_key_matches_golden_vector() {
        let engine = golden_engine();
        let (key, counter) = engine.root_ca_key_and_counter().unwrap();
        assert_eq!(counter, ROOT_CA_COUNTER);
        assert_eq!(hex::encode(key.to_bytes()), ROOT_CA_SCALAR);
        assert_eq!(
            hex::encode(
                p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
                    &key.public_key(),
                    false
                )
                .as_bytes()
            ),
            ROOT_CA_PUBLIC
        );
        assert_eq!(engine.root_ca_key().unwrap().to_bytes(), key.to_bytes());
    }

    #[test]
    fn workload_secret_matches_golden_vector() {
        let engine = golden_engine();
        assert_eq!(
            hex::encode(engine.workload_secret("default/web").as_ref()),
            WORKLOAD_SECRET_DEFAULT_WEB
        );
        assert_ne!(
            engine.workload_secret("default/web").as_ref(),
            engine.workload_secret("default/db").as_ref()
        );
        // The id is appended without a separator; "default/web" must not collide with the
        // transition key or with an empty id either.
        assert_ne!(
            engine.workload_secret("").as_ref(),
            engine.workload_secret("default/web").as_ref()
        );
    }

    #[test]
    fn transit_keys_match_golden_vectors_and_differ_per_name_and_version() {
        // openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt hexkey:<seed> -kdfopt hexsalt:<salt>
        //   -kdfopt hexinfo:<hex of "concord/v1/transit-key/" || u32be(version) || "orders"> HKDF
        let engine = golden_engine();
        assert_eq!(
            hex::encode(engine.transit_key("orders", 1).as_ref()),
            "3f7d6057f86710ffdabafe2f22a2cab358feaf4a9e12747e25a93dd7e8359d12"
        );
        assert_eq!(
            hex::encode(engine.transit_key("orders", 2).as_ref()),
            "b0cbbb460060b38033a93e926fe93d9fca0305e17fba98f700a4aaf30fa4f5c4"
        );
        assert_ne!(
            engine.transit_key("orders", 1).as_ref(),
            engine.transit_key("order", 1).as_ref()
        );
        // Never the workload secret of an id that spells the same bytes.
        assert_ne!(
            engine.transit_key("web", 1).as_ref(),
            engine.workload_secret("web").as_ref()
        );
    }

    #[test]
    fn root_ca_counter_skips_invalid_scalars() {
        // P-256 group order n: itself, zero and all-ones are not valid scalars.
        let order = hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551")
            .unwrap();
        let mut asked = Vec::new();
        let (key, counter) = first_valid_scalar(|counter| {
            asked.push(counter);
            let mut bytes = Zeroizing::new([0u8; 32]);
            match counter {
                0 => bytes.copy_from_slice(&order),
                1 => {}
                2 => bytes.fill(0xff),
                _ => bytes[31] = 7,
            }
            bytes
        })
        .unwrap();
        assert_eq!(counter, 3);
        assert_eq!(asked, [0, 1, 2, 3]);
        assert_eq!(key.to_bytes()[31], 7);

        // n - 1 is the largest valid scalar and must be accepted at once.
        let mut below_order = order.clone();
        below_order[31] -= 1;
        let (_, counter) = first_valid_scalar(|_| {
            let mut bytes = Zeroizing::new([0u8; 32]);
            bytes.copy_from_slice(&below_order);
            bytes
        })
        .unwrap();
        assert_eq!(counter, 0);
    }

    #[test]
    fn generated_engines_differ() {
        let a = SeedEngine::generate().unwrap();
        let b = SeedEngine::generate().unwrap();
        assert_ne!(a.seed().as_bytes(), b.seed().as_bytes());
        assert_ne!(a.salt().as_bytes(), b.salt().as_bytes());
        assert_ne!(a.seed().as_bytes(), a.salt().as_bytes());
    }

    #[test]
    fn entropy_failure_is_an_error_not_a_panic() {
        let err = SeedEngine::generate_from(&mut FailingRng).unwrap_err();
        assert!(
            matches!(
                err,
                MeshCaError::EntropyUnavailable {
                    purpose: "generating the seed"
                }
            ),
            "{err}"
        );
        // The seed draw works, the salt draw fails: still refused.
        let err = SeedEngine::generate_from(&mut FailsAfter { good_bytes: 32 }).unwrap_err();
        assert!(
            matches!(
                err,
                MeshCaError::EntropyUnavailable {
                    purpose: "generating the salt"
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("refusing"));
    }

    #[test]
    fn debug_never_shows_the_seed() {
        let engine = golden_engine();
        let debug = format!("{engine:?} {:?}", engine.seed());
        assert!(debug.contains("redacted"), "{debug}");
        assert!(
            !debug.contains(&hex::encode(engine.seed().as_bytes())),
            "{debug}"
        );
        // The array's own Debug form: "[0, 1, 2, ...".
        assert!(!debug.contains("0, 1, 2, 3"), "{debug}");
    }
}
