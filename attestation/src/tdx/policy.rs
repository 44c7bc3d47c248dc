//! Concord's policy on a TDX quote that passed Intel's checks: the manifest's `reference_values.tdx`.
//!
//! Owns [`check`]: Intel's TCB status against `allowed_tcb_statuses` (`Revoked` never), MRSEAM,
//! the TEE TCB SVN minimum (per byte), MRTD, the RTMRs, the debug and profiling bits of the TD
//! attributes, MRCONFIGID (a policy hash of the manifest, then 16 zero bytes: Kata's initdata
//! layout, HOST_DATA's role on SNP) and REPORTDATA. Pure: no I/O, no time. It must never accept a
//! quote one of these checks refuses.

use crate::error::RejectReason;
use crate::reference::{TdxReference, TdxTcbStatus};

use super::Expectations;
use super::quote::TdReport;

/// TD attributes bit 0: the TD is debuggable.
pub const TD_ATTRIBUTE_DEBUG: u64 = 1;
/// TD attributes bits 4 to 6 (TUD): performance monitoring and profiling, which also expose the TD.
pub const TD_ATTRIBUTES_PROFILING: u64 = 0x70;

/// Checks `report` (whose platform Intel's collateral rated `tcb_status`) against one entry.
pub fn check(
    report: &TdReport,
    tcb_status: TdxTcbStatus,
    entry: &TdxReference,
    expect: &Expectations<'_>,
) -> Result<(), RejectReason> {
    if tcb_status == TdxTcbStatus::Revoked {
        return Err(RejectReason::TdxTcbRevoked);
    }
    if !entry.allowed_tcb_statuses.contains(&tcb_status) {
        return Err(RejectReason::TdxTcbStatusNotAllowed(
            tcb_status.as_str().to_owned(),
        ));
    }
    if let Some(mrseams) = &entry.trusted_mrseam
        && !mrseams.iter().any(|m| m.as_bytes() == &report.mrseam)
    {
        return Err(RejectReason::TdxMrseamNotTrusted);
    }
    if let Some(minimum) = &entry.minimum_tee_tcb_svn {
        for (index, (&reported, &minimum)) in report
            .tee_tcb_svn
            .iter()
            .zip(minimum.as_bytes())
            .enumerate()
        {
            if reported < minimum {
                return Err(RejectReason::TdxTeeTcbSvnBelowMinimum {
                    // At most 15: the arrays have 16 bytes.
                    index: u8::try_from(index).unwrap_or(u8::MAX),
                    reported,
                    minimum,
                });
            }
        }
    }
    if !entry
        .trusted_mrtd
        .iter()
        .any(|m| m.as_bytes() == &report.mrtd)
    {
        return Err(RejectReason::TdxMrtdNotTrusted);
    }
    for (index, allowed) in entry.rtmr.iter().flatten() {
        let value = &report.rtmr[index.number()];
        if !allowed.iter().any(|m| m.as_bytes() == value) {
            // At most 3.
            return Err(RejectReason::TdxRtmrNotAllowed(index.number() as u8));
        }
    }
    if !entry.allow_debug
        && report.td_attributes & (TD_ATTRIBUTE_DEBUG | TD_ATTRIBUTES_PROFILING) != 0
    {
        return Err(RejectReason::TdxDebug);
    }
    let (hash, padding) = report.mrconfigid.split_at(32);
    let accepted = padding.iter().all(|&b| b == 0)
        && <&[u8; 32]>::try_from(hash).is_ok_and(|h| (expect.accept_policy_hash)(h));
    if !accepted {
        return Err(RejectReason::TdxMrConfigIdNotAccepted);
    }
    if &report.report_data != expect.report_data {
        return Err(RejectReason::ReportDataMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Measurement;
    use std::time::SystemTime;

    fn report() -> TdReport {
        TdReport {
            tee_tcb_svn: [3; 16],
            mrseam: [1; 48],
            mrsignerseam: [0; 48],
            seam_attributes: 0,
            td_attributes: 0x1000_0000,
            xfam: 0xe7,
            mrtd: [2; 48],
            mrconfigid: {
                let mut m = [0; 48];
                m[..32].copy_from_slice(&[9; 32]);
                m
            },
            mrowner: [0; 48],
            mrownerconfig: [0; 48],
            rtmr: [[4; 48], [5; 48], [6; 48], [7; 48]],
            report_data: [8; 64],
        }
    }

    fn entry() -> TdxReference {
        TdxReference {
            trusted_mrtd: vec![Measurement([2; 48])],
            rtmr: None,
            trusted_mrseam: None,
            minimum_tee_tcb_svn: None,
            allowed_tcb_statuses: vec![TdxTcbStatus::UpToDate],
            allow_debug: false,
        }
    }

    fn check_with(
        r: &TdReport,
        status: TdxTcbStatus,
        e: &TdxReference,
    ) -> Result<(), RejectReason> {
        check(
            r,
            status,
            e,
            &Expectations {
                report_data: &[8; 64],
                accept_policy_hash: &|h| h == &[9; 32],
                now: SystemTime::now(),
            },
        )
    }

    #[test]
    fn each_check_names_its_reason() {
        check_with(&report(), TdxTcbStatus::UpToDate, &entry()).unwrap();
        assert_eq!(
            check_with(&report(), TdxTcbStatus::OutOfDate, &entry()),
            Err(RejectReason::TdxTcbStatusNotAllowed("OutOfDate".into()))
        );
        // Revoked is refused even when an entry lists it (validate refuses such an entry too).
        let mut listing = entry();
        listing.allowed_tcb_statuses.push(TdxTcbStatus::Revoked);
        assert_eq!(
            check_with(&report(), TdxTcbStatus::Revoked, &listing),
            Err(RejectReason::TdxTcbRevoked)
        );
        for attributes in [1, 0x10, 0x40] {
            let mut r = report();
            r.td_attributes |= attributes;
            assert_eq!(
                check_with(&r, TdxTcbStatus::UpToDate, &entry()),
                Err(RejectReason::TdxDebug)
            );
        }
        // MRCONFIGID: the right hash with a non-zero padding byte names no policy.
        let mut r = report();
        r.mrconfigid[47] = 1;
        assert_eq!(
            check_with(&r, TdxTcbStatus::UpToDate, &entry()),
            Err(RejectReason::TdxMrConfigIdNotAccepted)
        );
        let mut r = report();
        r.report_data[0] = 0;
        assert_eq!(
            check_with(&r, TdxTcbStatus::UpToDate, &entry()),
            Err(RejectReason::ReportDataMismatch)
        );
        let mut e = entry();
        e.minimum_tee_tcb_svn = Some(crate::reference::TeeTcbSvn([3; 16]));
        check_with(&report(), TdxTcbStatus::UpToDate, &e).unwrap();
        let mut min = [0; 16];
        min[15] = 4;
        e.minimum_tee_tcb_svn = Some(crate::reference::TeeTcbSvn(min));
        assert_eq!(
            check_with(&report(), TdxTcbStatus::UpToDate, &e),
            Err(RejectReason::TdxTeeTcbSvnBelowMinimum {
                index: 15,
                reported: 3,
                minimum: 4
            })
        );
    }
}
