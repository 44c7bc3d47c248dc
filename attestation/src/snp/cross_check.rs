//! A second reading of the report by the `sev` crate (virtee), which must agree with Concord's.
//!
//! Owns parsing the report with `sev` and comparing every field the policy judges with this crate's
//! reading. `sev` refuses reports with reserved bytes set, so it also catches fields Concord does not
//! read. It does not verify the signature a second time (issue 11): Concord's own check covers every
//! signed byte, as received, and one verification of the same bytes by the same key proves nothing
//! a second one would not. It must never be the only check of anything: Concord's own checks over the
//! raw bytes run first, and this module can only turn an acceptance into a rejection.

use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser as _;

use crate::error::{AttestationError, RejectReason};
use crate::reference::Product;
use crate::report::{Report, Tcb};

/// `sev` reads `report` as this crate does.
pub(crate) fn check_with_sev(report: &Report, product: Product) -> Result<(), AttestationError> {
    let reject = |what| AttestationError::from(RejectReason::ReportCrossCheck(what));
    let theirs = AttestationReport::from_bytes(report.raw())
        .map_err(|_| reject("it cannot parse the report"))?;
    match first_difference(report, product, &theirs) {
        Some(field) => Err(reject(field)),
        None => Ok(()),
    }
}

/// The name of the first judged field the two readings disagree on.
fn first_difference(
    ours: &Report,
    product: Product,
    theirs: &AttestationReport,
) -> Option<&'static str> {
    let tcb = Tcb::decode(ours.reported_tcb(), product);
    let their_tcb = &theirs.reported_tcb;
    let cpuid = (ours.version() >= 3).then(|| (ours.cpuid_family(), ours.cpuid_model()));
    let checks = [
        (ours.version() == theirs.version, "version"),
        (ours.guest_svn() == theirs.guest_svn, "guest_svn"),
        (
            ours.debug_allowed() == theirs.policy.debug_allowed(),
            "policy DEBUG",
        ),
        (
            ours.migrate_ma_allowed() == theirs.policy.migrate_ma_allowed(),
            "policy MIGRATE_MA",
        ),
        (ours.vmpl() == theirs.vmpl, "vmpl"),
        (ours.sig_algo() == theirs.sig_algo, "sig_algo"),
        (
            u32::from(ours.signing_key()) == theirs.key_info.signing_key(),
            "key_info",
        ),
        (ours.report_data() == &theirs.report_data, "report_data"),
        (ours.measurement() == &theirs.measurement, "measurement"),
        (ours.host_data() == &theirs.host_data, "host_data"),
        (ours.chip_id() == &theirs.chip_id, "chip_id"),
        (
            cpuid == theirs.cpuid_fam_id.zip(theirs.cpuid_mod_id),
            "cpuid",
        ),
        (
            (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode, tcb.fmc)
                == (
                    their_tcb.bootloader,
                    their_tcb.tee,
                    their_tcb.snp,
                    their_tcb.microcode,
                    their_tcb.fmc,
                ),
            "reported_tcb",
        ),
    ];
    checks
        .iter()
        .find(|(same, _)| !same)
        .map(|(_, field)| *field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::snp as vectors;

    #[test]
    fn sev_agrees_on_every_real_report() {
        for v in vectors::accepted() {
            check_with_sev(&v.report(), v.product).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        }
    }

    #[test]
    fn sev_refuses_reserved_bits_and_leaves_the_signature_to_concord() {
        // Concord's own checks over the raw bytes fail first in the verifier; these show the
        // second reading stands on its own.
        let v = vectors::virtee_milan();
        let flipped = |offset: usize| {
            let mut raw = *v.report().raw();
            raw[offset] ^= 1;
            check_with_sev(&Report::parse(&raw).unwrap(), Product::Milan)
        };
        // 0x4C..0x50 is reserved: sev requires it zero.
        assert_eq!(
            flipped(0x4C),
            Err(RejectReason::ReportCrossCheck("it cannot parse the report").into())
        );
        // A measurement bit: both read the same value; the signature is Concord's check alone
        // (snp::tests covers that a changed measurement fails it).
        assert_eq!(flipped(0x90), Ok(()));
    }

    #[test]
    fn a_layout_disagreement_is_a_rejection() {
        // A Genoa report read with Turin's TCB layout: the readings of reported_tcb differ.
        let v = vectors::trustee_genoa_e2e();
        assert_eq!(
            check_with_sev(&v.report(), Product::Turin),
            Err(RejectReason::ReportCrossCheck("reported_tcb").into())
        );
    }
}
