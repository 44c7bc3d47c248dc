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
    /// The collateral sent with every quote, and when it was made: made again once an hour old (it
    /// is current for a week), as a PCCS serves the same collateral to every quote, not per quote.
    collateral: std::sync::Mutex<Option<(OffsetDateTime, Vec<u8>)>>,
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
            collateral: std::sync::Mutex::new(None),
            root_der: root.cert_der().to_vec(),
            mrtd,
            policy_hash,
        })
    }
}

impl SimulatedTdxIssuer {
    /// The collateral to send at `now`: the one made within the last hour, else a new one, current
    /// from an hour before `now` for a week (Intel's is current for a month).
    fn collateral_json(&self, now: OffsetDateTime) -> Result<Vec<u8>, AttestationError> {
        let mut cached = self
            .collateral
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((made, json)) = cached.as_ref()
            && now >= *made
            && now - *made < Duration::hours(1)
        {
            return Ok(json.clone());
        }
        let json = self
            .hierarchy
            .collateral(now - Duration::hours(1), now + Duration::days(7), false)?
            .to_json();
        *cached = Some((now, json.clone()));
        Ok(json)
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
        let collateral = self.collateral_json(OffsetDateTime::now_utc())?;
        let endorsement = self.hierarchy.endorsement_der().ok_or_else(|| {
            AttestationError::Issuer("the simulated TDX root is not endorsed".into())
        })?;
        Ok(Evidence {
            platform: Platform::Tdx,
            report: quote,
            certificates: vec![
                collateral,
                self.hierarchy.root_der().to_vec(),
                endorsement.to_vec(),
                self.root_der.clone(),
            ],
            crls: Vec::new(),
        })
    }
}
