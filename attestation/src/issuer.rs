//! The issuing side: something that can produce evidence binding 64 bytes of report data.
//!
//! Owns the [`EvidenceIssuer`] trait only; the simulated platform implements it in `simulated`,
//! `/dev/sev-guest` in `sev_guest`. Implementations must never choose the report data
//! themselves: the caller (aTLS, the audit bundle) fixes what the evidence binds.

use crate::error::AttestationError;
use crate::evidence::{Evidence, Platform};

/// Produces evidence whose report carries exactly `report_data`.
pub trait EvidenceIssuer: Send + Sync + std::fmt::Debug {
    /// The platform this issuer's evidence is for.
    fn platform(&self) -> Platform;

    /// Produces fresh evidence with `report_data` in the report.
    fn issue(&self, report_data: &[u8; 64]) -> Result<Evidence, AttestationError>;
}
