//! The relying side's policy for aTLS peers.

use std::time::SystemTime;

use super::DeploymentPin;
use crate::error::AttestationError;
use crate::evidence::Evidence;
use crate::reference::ReferenceValues;
use crate::verify::{VerifiedReport, Verifier};

/// Decides whether a peer's evidence is acceptable. The coordinator implements it against its
/// current manifest (reference values, and host data naming a policy with the required role).
pub trait AcceptPolicy: Send + Sync + std::fmt::Debug {
    /// Verifies `evidence`, which must bind `expected_report_data`.
    fn verify(
        &self,
        evidence: &Evidence,
        expected_report_data: &[u8; 64],
    ) -> Result<VerifiedReport, AttestationError>;

    /// The deployments accepted for the peer, checked against the id its certificate names once
    /// [`AcceptPolicy::verify`] proved the evidence binds that id.
    fn deployment_pin(&self) -> DeploymentPin;

    /// A fingerprint of everything [`AcceptPolicy::verify`] and [`AcceptPolicy::deployment_pin`]
    /// judge by besides the evidence, the report data and the time: the reference values, the
    /// accepted host data, the pin, any revocation data. While it stays the same and the evidence's
    /// certificates stay valid, [`super::VerifiedPeer::reverify`] reuses the handshake's verdict,
    /// which a fresh verification would repeat, instead of verifying the signatures again. `None`
    /// (the default): always verify afresh. A policy must return `None` rather than a fingerprint
    /// that misses something its verdict depends on.
    fn fingerprint(&self) -> Option<[u8; 32]> {
        None
    }
}

/// A fixed policy: these reference values, these accepted host data, checked at the current time.
#[derive(Debug, Clone)]
pub struct StaticPolicy {
    /// The verifier with the launch configuration.
    pub verifier: Verifier,
    /// The reference values evidence must satisfy.
    pub reference: ReferenceValues,
    /// The accepted `host_data` values (policy hashes).
    pub host_data: Vec<[u8; 32]>,
    /// The accepted deployments.
    pub deployment: DeploymentPin,
}

impl StaticPolicy {
    /// [`AcceptPolicy::verify`] with certificates checked at `now` instead of the current time.
    pub fn verify_at(
        &self,
        evidence: &Evidence,
        expected_report_data: &[u8; 64],
        now: SystemTime,
    ) -> Result<VerifiedReport, AttestationError> {
        self.verifier.verify(
            evidence,
            &self.reference,
            expected_report_data,
            &|h| self.host_data.contains(h),
            now,
        )
    }
}

impl AcceptPolicy for StaticPolicy {
    fn verify(
        &self,
        evidence: &Evidence,
        expected_report_data: &[u8; 64],
    ) -> Result<VerifiedReport, AttestationError> {
        self.verify_at(evidence, expected_report_data, SystemTime::now())
    }

    fn deployment_pin(&self) -> DeploymentPin {
        self.deployment.clone()
    }
}
