//! `--platform tdx`: an Intel TDX guest. Quotes come from configfs-tsm; Intel's collateral, sent with
//! every quote, from the file `--tdx-collateral` (Intel PCS v4 layout, PROTOCOL.md) when the operator
//! gives one, else from the collateral source of `--pccs-url`, `--tdx-collateral-cache-dir` and
//! `--tdx-collateral-dir` (`concord_attestation::intel_pcs`), asked for the FMSPC and CA of this
//! platform's own quote at start and again every hour in the background, so the collateral sent stays
//! current past its `nextUpdate` without a restart.
//!
//! Owns the launch: the issuer, one quote of its own verified against Intel's pinned root with that
//! collateral (so a broken platform or stale collateral shows at start, not at a peer), and the own
//! reference values derived from it (this replica's MRTD, its TCB status, debug off). It must never
//! start a replica whose own quote does not verify.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use concord_attestation::intel_pcs::{Ca, CollateralSource, Fmspc};
use concord_attestation::sev_guest::{TSM_REPORT_DIR, TsmReports};

use concord_attestation::tdx::{self, Collateral, TdxGuestIssuer};
use concord_attestation::{
    EvidenceIssuer, Measurement, PlatformTrust, ReferenceValues, TdxReference, TdxTcbStatus,
};

use super::{LaunchError, LaunchedPlatform, PlatformArgs};
use crate::hash::Hash;

/// How often the collateral source is asked again while the replica runs (a cached copy is
/// served until its `nextUpdate`, so most refreshes read the cache).
const COLLATERAL_REFRESH: Duration = Duration::from_secs(3600);

/// The longest the launch waits for the collateral source (the source bounds each request to 10 s
/// and 4 attempts per piece).
const COLLATERAL_WAIT: Duration = Duration::from_secs(120);

/// Checks the flags without reading the files (`--check-config`).
pub(super) fn check(args: &PlatformArgs) -> Result<(), String> {
    if args.tdx_collateral.is_none()
        && args.pccs_url == super::PCCS_OFF
        && args.tdx_collateral_dir.is_none()
    {
        return Err(
            "--platform tdx needs Intel's collateral: --tdx-collateral FILE, or a PCS/PCCS \
                    (--pccs-url, not off), or an operator directory (--tdx-collateral-dir)"
                .into(),
        );
    }
    args.tdx_collateral_source().map(|_| ())
}

fn collateral(args: &PlatformArgs) -> Result<Collateral, LaunchError> {
    check(args).map_err(LaunchError::Usage)?;
    let Some(path) = args.tdx_collateral.as_ref() else {
        return fetched_collateral(args);
    };
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

/// The collateral of this platform from the collateral source: the FMSPC and CA come from the PCK
/// certificate of a quote of this TD's own.
fn fetched_collateral(args: &PlatformArgs) -> Result<Collateral, LaunchError> {
    let source = args.tdx_collateral_source().map_err(LaunchError::Usage)?;
    let tsm = TsmReports::find(Path::new(TSM_REPORT_DIR)).ok_or_else(|| {
        LaunchError::Unavailable(format!(
            "no configfs-tsm report interface at {TSM_REPORT_DIR}; {}",
            tdx::issuer::WHAT_TO_DO
        ))
    })?;
    let quote = tsm
        .request_tdx_quote(&[0u8; 64])
        .map_err(|e| LaunchError::Unavailable(format!("configfs-tsm TDX quote: {e}")))?;
    let (fmspc, ca) =
        tdx::pcs_query(&quote).map_err(|e| LaunchError::Unavailable(e.to_string()))?;
    fetch_blocking(source, fmspc, ca).map_err(LaunchError::Unavailable)
}

/// Asks `source` on a thread of its own (the caller may be on the async runtime), at most
/// [`COLLATERAL_WAIT`].
fn fetch_blocking(source: CollateralSource, fmspc: Fmspc, ca: Ca) -> Result<Collateral, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("tdx-collateral".into())
        .spawn(move || {
            let fetched = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| {
                    rt.block_on(source.collateral(fmspc, ca))
                        .map_err(|e| e.to_string())
                });
            let _ = tx.send(fetched);
        })
        .map_err(|e| format!("cannot start the TDX collateral fetch: {e}"))?;
    let bytes = rx
        .recv_timeout(COLLATERAL_WAIT)
        .map_err(|_| {
            format!(
                "no TDX collateral for FMSPC {fmspc} ({}) within {} s: check --pccs-url and the \
                 network to it, or put {fmspc}-{}.json into --tdx-collateral-dir",
                ca.as_str(),
                COLLATERAL_WAIT.as_secs(),
                ca.as_str()
            )
        })?
        .map_err(|e| {
            format!(
                "TDX collateral for FMSPC {fmspc} ({}): {e}; check --pccs-url, or put \
                 {fmspc}-{}.json into --tdx-collateral-dir",
                ca.as_str(),
                ca.as_str()
            )
        })?;
    Collateral::from_json(&bytes).map_err(|e| {
        format!("the TDX collateral for FMSPC {fmspc} is not in the PCS v4 layout: {e}")
    })
}

/// Keeps the issuer's collateral current: asks the source every [`COLLATERAL_REFRESH`] (the cache
/// answers until `nextUpdate`) and hands a new document to the issuer. A failed refresh keeps the
/// last collateral and says so; relying parties judge its freshness themselves.
fn refresh_in_background(args: &PlatformArgs, issuer: Arc<TdxGuestIssuer>, quote: Vec<u8>) {
    if args.tdx_collateral.is_some() {
        return;
    }
    let Ok(source) = args.tdx_collateral_source() else {
        return;
    };
    let Ok((fmspc, ca)) = tdx::pcs_query(&quote) else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("tdx-collateral-refresh".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                tracing::error!("TDX collateral refresh: cannot start its runtime; collateral stays as fetched at start");
                return;
            };
            loop {
                std::thread::sleep(COLLATERAL_REFRESH);
                match rt.block_on(source.collateral(fmspc, ca)) {
                    Ok(bytes) => match Collateral::from_json(&bytes) {
                        Ok(c) => issuer.set_collateral(&c),
                        Err(e) => tracing::warn!(error = %e, "TDX collateral refresh: not in the PCS v4 layout; keeping the last one"),
                    },
                    Err(e) => tracing::warn!(error = %e, "TDX collateral refresh failed; keeping the last one (check --pccs-url)"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the TDX collateral refresh; collateral stays as fetched at start");
    }
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
    let issuer = Arc::new(
        TdxGuestIssuer::open_default(&collateral)
            .map_err(|e| LaunchError::Unavailable(e.to_string()))?,
    );
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
    tracing::info!(
        mrtd = %hex::encode(own.report.mrtd),
        policy_hash = %hex::encode(policy_hash),
        tcb_status = ?verified.tcb_status,
        "Intel TDX: this replica's MRTD and policy hash (MRCONFIGID); the manifest must list the policy \
         hash with \"role\": \"coordinator\" and the MRTD in reference_values.tdx"
    );
    refresh_in_background(args, Arc::clone(&issuer), evidence.report.clone());
    Ok(LaunchedPlatform {
        issuer,
        trust: PlatformTrust::default(),
        policy_hash: Hash(policy_hash),
        own_reference: ReferenceValues {
            tdx: vec![own_reference],
            ..ReferenceValues::default()
        },
        // A TDX replica verifies SNP peers too when the manifest lists both (a mixed deployment).
        snp_revocation: args.snp_revocation(),
    })
}
