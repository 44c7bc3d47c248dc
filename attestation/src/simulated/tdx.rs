//! The simulated TDX issuer: quotes in Intel's TDX layout, signed by a hierarchy the simulated
//! root endorses. INSECURE: for tests, CI and demos on machines without TDX.
//!
//! Owns [`SimulatedTdxIssuer`]. Its evidence is `platform = "tdx"` with `certificates = [collateral
//! JSON, hierarchy root, its endorsement by the simulated root, simulated root]` (PROTOCOL.md); a
//! verifier accepts it only when its launch configuration and the reference values both name the
//! simulated root, and a `reference_values.tdx` entry accepts the quote. It must never choose the
//! report data.

use time::{Duration, OffsetDateTime};

use super::SimulatedRoot;
use crate::error::AttestationError;
use crate::evidence::{Evidence, Platform};
use crate::issuer::EvidenceIssuer;
use crate::tdx::simulated::SimulatedTdx;

/// Issues simulated TDX evidence for one MRTD and one policy hash (in MRCONFIGID).
pub struct SimulatedTdxIssuer {
    hierarchy: SimulatedTdx,
    root_der: Vec<u8>,
    mrtd: [u8; 48],
    policy_hash: [u8; 32],
}

impl std::fmt::Debug for SimulatedTdxIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedTdxIssuer")
            .field("mrtd", &hex::encode(self.mrtd))
            .field("policy_hash", &hex::encode(self.policy_hash))
            .finish_non_exhaustive()
    }
}

impl SimulatedTdxIssuer {
    /// A fresh simulated TDX hierarchy endorsed by `root`, for TDs measuring `mrtd` and running
    /// the policy `policy_hash`.
    pub fn new(
        root: &SimulatedRoot,
        mrtd: [u8; 48],
        policy_hash: [u8; 32],
    ) -> Result<Self, AttestationError> {
        let hierarchy = SimulatedTdx::endorsed_by(root)?;
        tracing::warn!(
            simulated_root = %hex::encode(root.hash()),
            "INSECURE: simulated attestation: this process issues simulated TDX evidence"
        );
        Ok(Self {
            hierarchy,
            root_der: root.cert_der().to_vec(),
            mrtd,
            policy_hash,
        })
    }
}

impl EvidenceIssuer for SimulatedTdxIssuer {
    fn platform(&self) -> Platform {
        Platform::Tdx
    }

    fn issue(&self, report_data: &[u8; 64]) -> Result<Evidence, AttestationError> {
        let mut report = SimulatedTdx::template_report()?;
        report.mrtd = self.mrtd;
        report.mrconfigid = [0; 48];
        report.mrconfigid[..32].copy_from_slice(&self.policy_hash);
        report.mrowner = [0; 48];
        report.mrownerconfig = [0; 48];
        report.rtmr = [[0; 48]; 4];
        report.report_data = *report_data;
        let quote = self.hierarchy.quote(&report)?;
        // Fresh collateral with every quote: current for a week, as Intel's is for a month.
        let now = OffsetDateTime::now_utc();
        let collateral =
            self.hierarchy
                .collateral(now - Duration::hours(1), now + Duration::days(7), false)?;
        let endorsement = self.hierarchy.endorsement_der().ok_or_else(|| {
            AttestationError::Issuer("the simulated TDX root is not endorsed".into())
        })?;
        Ok(Evidence {
            platform: Platform::Tdx,
            report: quote,
            certificates: vec![
                collateral.to_json(),
                self.hierarchy.root_der().to_vec(),
                endorsement.to_vec(),
                self.root_der.clone(),
            ],
            crls: Vec::new(),
        })
    }
}
