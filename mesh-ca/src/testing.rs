//! Test helpers shared by every test module of the crate.
//!
//! This module owns the golden seed, failing entropy sources and the `openssl` runner. It must
//! never be compiled outside tests.

use std::path::Path;
use std::process::Command;

use p256::pkcs8::EncodePublicKey as _;
use rand::rngs::OsRng;
use rand::{CryptoRng, RngCore};
use time::OffsetDateTime;

use crate::{Salt, Seed, SeedEngine};

/// The golden-vector engine: seed = bytes 0x00..=0x1f, salt = bytes 0x20..=0x3f.
pub(crate) fn golden_engine() -> SeedEngine {
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    let salt: [u8; 32] = std::array::from_fn(|i| 0x20 + i as u8);
    SeedEngine::new(Seed::from_bytes(seed), Salt::from_bytes(salt))
}

/// An engine unrelated to the golden one: another deployment.
pub(crate) fn other_engine() -> SeedEngine {
    SeedEngine::new(Seed::from_bytes([0x77; 32]), Salt::from_bytes([0x88; 32]))
}

/// A fixed "now", so validity dates in tests do not depend on the machine's clock.
pub(crate) fn fixed_now() -> OffsetDateTime {
    // 2025-01-01T00:00:00Z
    OffsetDateTime::from_unix_timestamp(1_735_689_600).expect("valid timestamp")
}

/// A CSPRNG whose source has failed: `try_fill_bytes` errors, and `fill_bytes` (the call that
/// would have to panic) fails the test if anything reaches it.
pub(crate) struct FailingRng;

impl RngCore for FailingRng {
    fn next_u32(&mut self) -> u32 {
        panic!("code under test used an infallible RNG call")
    }
    fn next_u64(&mut self) -> u64 {
        panic!("code under test used an infallible RNG call")
    }
    fn fill_bytes(&mut self, _dest: &mut [u8]) {
        panic!("code under test used an infallible RNG call")
    }
    fn try_fill_bytes(&mut self, _dest: &mut [u8]) -> Result<(), rand::Error> {
        Err(rand::Error::new("simulated getrandom failure"))
    }
}

impl CryptoRng for FailingRng {}

/// A CSPRNG that works for the first `good_bytes` bytes and then fails, to reach the later
/// random draws of an operation.
pub(crate) struct FailsAfter {
    pub(crate) good_bytes: usize,
}

impl RngCore for FailsAfter {
    fn next_u32(&mut self) -> u32 {
        panic!("code under test used an infallible RNG call")
    }
    fn next_u64(&mut self) -> u64 {
        panic!("code under test used an infallible RNG call")
    }
    fn fill_bytes(&mut self, _dest: &mut [u8]) {
        panic!("code under test used an infallible RNG call")
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        if dest.len() > self.good_bytes {
            return Err(rand::Error::new("simulated getrandom failure"));
        }
        self.good_bytes -= dest.len();
        OsRng.try_fill_bytes(dest)
    }
}

impl CryptoRng for FailsAfter {}

/// A fresh P-256 SubjectPublicKeyInfo, as a workload would present.
pub(crate) fn p256_spki() -> Vec<u8> {
    p256::SecretKey::random(&mut OsRng)
        .public_key()
        .to_public_key_der()
        .expect("encode P-256 SPKI")
        .into_vec()
}

/// A fresh P-384 SubjectPublicKeyInfo.
pub(crate) fn p384_spki() -> Vec<u8> {
    p384::SecretKey::random(&mut OsRng)
        .public_key()
        .to_public_key_der()
        .expect("encode P-384 SPKI")
        .into_vec()
}

/// Runs the real `openssl` binary in `dir`; returns whether it succeeded, and its output.
pub(crate) fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl binary must be installed to run these tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}
