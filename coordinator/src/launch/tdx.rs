//! `--platform tdx`: an Intel TDX guest. Quotes come from configfs-tsm; Intel's collateral, sent with
//! every quote, from the file `--tdx-collateral` (Intel PCS v4 layout, PROTOCOL.md). Fetching and
//! refreshing it from Intel's PCS or a PCCS is not built here.
//!
//! Owns the launch: the issuer, one quote of its own verified against Intel's pinned root with that
//! collateral (so a broken platform or stale collateral shows at start, not at a peer), and the own
//! reference values derived from it (this replica's MRTD, its TCB status, debug off). It must never
//! start a replica whose own quote does not verify.

use std::sync::Arc;

use concord_attestation::tdx::{self, Collateral, TdxGuestIssuer};
use concord_attestation::{
    EvidenceIssuer, Measurement, PlatformTrust, ReferenceValues, TdxReference, TdxTcbStatus,
};

use super::{LaunchError, LaunchedPlatform, PlatformArgs};
use crate::hash::Hash;

/// Checks the flags without reading the files (`--check-config`).
pub(super) fn check(args: &PlatformArgs) -> Result<(), String> {
    args.tdx_collateral
        .as_ref()
        .map(|_| ())
        .ok_or_else(|| "--platform tdx needs --tdx-collateral (Intel's collateral for this platform, the PCS v4 JSON layout)".into())
}

fn collateral(args: &PlatformArgs) -> Result<Collateral, LaunchError> {
    check(args).map_err(LaunchError::Usage)?;
    let path = args
        .tdx_collateral
        .as_ref()
        .ok_or_else(|| LaunchError::Usage("--platform tdx needs --tdx-collateral".into()))?;
    // The collateral document: TCB info, QE identity, CRLs and chains; 1 MiB is far more than Intel's.
    let bytes = crate::input_file::read_input_file(path, 1 << 20)
        .map_err(|e| LaunchError::Usage(format!("--tdx-collateral: {e}")))?;
    Collateral::from_json(&bytes).map_err(|e| {
        LaunchError::Usage(format!(
            "--tdx-collateral {}: not Intel's collateral in the PCS v4 layout: {e}",
            path.display()
        ))
    })
}

/// The issuer alone (the initializer).
pub(super) fn issuer(args: &PlatformArgs) -> Result<Arc<dyn EvidenceIssuer>, LaunchError> {
    let issuer = TdxGuestIssuer::open_default(&collateral(args)?)
        .map_err(|e| LaunchError::Unavailable(e.to_string()))?;
    Ok(Arc::new(issuer))
}

/// A replica: the issuer, its own quote verified, and its own reference values.
pub(super) fn launch(args: &PlatformArgs) -> Result<LaunchedPlatform, LaunchError> {
    let collateral = collateral(args)?;
    let issuer = TdxGuestIssuer::open_default(&collateral)
        .map_err(|e| LaunchError::Unavailable(e.to_string()))?;
    let mut probe = [0u8; 64];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut probe);
    let evidence = issuer
        .issue(&probe)
        .map_err(|e| LaunchError::Unavailable(e.to_string()))?;
    let own = tdx::Quote::parse(&evidence.report)
        .map_err(|e| LaunchError::Unavailable(format!("this replica's own TDX quote: {e}")))?;
    let policy_hash: [u8; 32] = own.report.mrconfigid[..32]
        .try_into()
        .map_err(|_| LaunchError::Unavailable("MRCONFIGID is shorter than 32 bytes".into()))?;
    let any_status = TdxReference {
        trusted_mrtd: vec![Measurement(own.report.mrtd)],
        rtmr: None,
        trusted_mrseam: None,
        minimum_tee_tcb_svn: None,
        allowed_tcb_statuses: vec![
            TdxTcbStatus::UpToDate,
            TdxTcbStatus::SWHardeningNeeded,
            TdxTcbStatus::ConfigurationNeeded,
            TdxTcbStatus::ConfigurationAndSWHardeningNeeded,
            TdxTcbStatus::OutOfDate,
            TdxTcbStatus::OutOfDateConfigurationNeeded,
            TdxTcbStatus::TDRelaunchAdvised,
            TdxTcbStatus::TDRelaunchAdvisedConfigurationNeeded,
        ],
        allow_debug: false,
    };
    let verified = tdx::verify(
        &evidence.report,
        &collateral,
        std::slice::from_ref(&any_status),
        &tdx::Expectations {
            report_data: &probe,
            accept_policy_hash: &|h| h == &policy_hash,
            now: std::time::SystemTime::now(),
        },
    )
    .map_err(|e| {
        LaunchError::Unavailable(format!(
            "this replica's own TDX quote does not verify with --tdx-collateral: {e}"
        ))
    })?;
    // Peers before the first manifest: this replica's MRTD and TCB status, its policy only.
    let own_reference = TdxReference {
        allowed_tcb_statuses: vec![verified.tcb_status],
        ..any_status
    };
    Ok(LaunchedPlatform {
        issuer: Arc::new(issuer),
        trust: PlatformTrust::default(),
        policy_hash: Hash(policy_hash),
        own_reference: ReferenceValues {
            tdx: vec![own_reference],
            ..ReferenceValues::default()
        },
    })
}
