//! The fixed times of check: a target must give the same answer for the same bytes on every run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2026-01-01T00:00:00Z: every certificate of the real SEV-SNP vectors (`attestation/testdata/`) is
/// valid then (the vectors' own time of check).
pub(crate) fn snp() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

/// 2027-01-01T00:00:00Z: inside the validity of the simulated roots and mesh CAs the seed corpus was
/// made with (December 2026, ten years).
pub(crate) fn simulated() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_798_761_600)
}

/// 2025-07-01T00:00:00Z: inside the window of the real TDX collateral (`attestation/src/tdx/vectors/`).
pub(crate) fn tdx() -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_751_328_000)
}
