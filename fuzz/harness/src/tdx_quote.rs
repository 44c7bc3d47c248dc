//! `tdx_quote`: an Intel TDX quote through Concord's reader (`tdx::Quote::parse`, the claims, the
//! PCK certificate's FMSPC and CA) and the whole verification (`tdx::verify`: the quote layout, the
//! certification data, the PCK chain to Intel's pinned root with the real collateral's CRLs, the QE
//! report, the quote signature, TCB matching, then Concord's policy) with the real collateral of
//! `attestation/src/tdx/vectors/` at a time inside its window. The reference values accept the
//! input's own MRTD with every TCB status and debugging allowed, so the real quote passes and a
//! mutated one reaches as far as its bytes allow.

use concord_attestation::tdx::{self, Collateral, Expectations};
use concord_attestation::{Measurement, TdxReference, TdxTcbStatus};

use crate::times;

/// The real collateral of the TDX vector, parsed once.
fn collateral() -> Option<&'static Collateral> {
    static COLLATERAL: std::sync::OnceLock<Option<Collateral>> = std::sync::OnceLock::new();
    COLLATERAL
        .get_or_init(|| {
            Collateral::from_json(include_bytes!(
                "../../../attestation/src/tdx/vectors/tdx_quote_collateral.json"
            ))
            .ok()
        })
        .as_ref()
}

pub fn run(data: &[u8]) {
    let parsed = tdx::Quote::parse(data).ok();
    let _ = tdx::read_claims(data);
    let _ = tdx::pcs_query(data);
    let Some(collateral) = collateral() else {
        return;
    };
    let (mrtd, report_data) = parsed.as_ref().map_or(([0; 48], [0; 64]), |q| {
        (q.report.mrtd, q.report.report_data)
    });
    let entry = TdxReference {
        trusted_mrtd: vec![Measurement(mrtd)],
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
        ],
        allow_debug: true,
    };
    let _ = tdx::verify(
        data,
        collateral,
        &[entry],
        &Expectations {
            report_data: &report_data,
            accept_policy_hash: &|_| true,
            now: times::tdx(),
        },
    );
}
