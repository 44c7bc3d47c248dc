//! Randomness for keys, serial numbers and Shamir coefficients.
//!
//! This module owns the one rule of the design about entropy: if the operating system's CSPRNG
//! fails, refuse. It must never fall back to a weaker source, never retry with a seeded PRNG of
//! its own, and never let a caller's operation finish with output it made while the source was
//! failing. Callers pass the source in (production code passes `OsRng`) so that tests can prove
//! a failing source becomes an error and not a panic.

use rand::{CryptoRng, RngCore};

use crate::MeshCaError;

/// Fills `buf` from `rng`, or says what could not be done. `purpose` completes the sentence
/// "the random number generator failed while ...".
pub(crate) fn fill<R: RngCore + CryptoRng + ?Sized>(
    rng: &mut R,
    buf: &mut [u8],
    purpose: &'static str,
) -> Result<(), MeshCaError> {
    rng.try_fill_bytes(buf)
        .map_err(|_| MeshCaError::EntropyUnavailable { purpose })
}

/// Wraps a CSPRNG for libraries (hpke) that call the infallible `fill_bytes`, whose only way
/// to report a failing source is to panic. Instead this records the failure and hands out zeros,
/// and the caller must call [`FailureRecordingRng::check`] before it uses anything the library
/// returned: output made from those zeros is then thrown away, never released.
pub(crate) struct FailureRecordingRng<'a, R: ?Sized> {
    inner: &'a mut R,
    failed: bool,
}

impl<'a, R: RngCore + CryptoRng + ?Sized> FailureRecordingRng<'a, R> {
    pub(crate) fn new(inner: &'a mut R) -> Self {
        Self {
            inner,
            failed: false,
        }
    }

    /// Errors if any request for randomness failed since this wrapper was made.
    pub(crate) fn check(&self, purpose: &'static str) -> Result<(), MeshCaError> {
        if self.failed {
            Err(MeshCaError::EntropyUnavailable { purpose })
        } else {
            Ok(())
        }
    }
}

impl<R: RngCore + CryptoRng + ?Sized> RngCore for FailureRecordingRng<'_, R> {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        self.fill_bytes(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill_bytes(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if self.inner.try_fill_bytes(dest).is_err() {
            self.failed = true;
            dest.fill(0);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        let result = self.inner.try_fill_bytes(dest);
        if result.is_err() {
            self.failed = true;
        }
        result
    }
}

// The wrapper yields the inner CSPRNG's output unchanged, or nothing usable (see `check`).
impl<R: RngCore + CryptoRng + ?Sized> CryptoRng for FailureRecordingRng<'_, R> {}
