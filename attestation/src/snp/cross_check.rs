//! A second reading of the report by the `sev` crate (virtee), which must agree with Concord's.
//!
//! Owns parsing the report with `sev`, comparing every field the policy judges with this crate's
//! reading, and having `sev` verify the signature too. `sev` refuses reports with reserved bytes
//! set and verifies over its own re-encoding of the report, so it also catches fields Concord
//! does not read. It must never
//! be the only check of anything: Concord's own checks over the raw bytes run first, and this
//! module can only turn an acceptance into a rejection.

use sev::certs::snp::{Certificate, Verifiable as _};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser as _;

use crate::error::{AttestationError, RejectReason};
use crate::reference::Product;
use crate::report::{Report, Tcb};

const SIGNATURE_FAILS: &str = "its signature check fails";

/// `sev` reads `report` as this crate does, and verifies its signature with `signer_der`'s key.
pub(crate) fn check_with_sev(
    report: &Report,
    product: Product,
    signer_der: &[u8],
) -> Result<(), AttestationError> {
    let reject = |what| AttestationError::from(RejectReason::ReportCrossCheck(what));
    let theirs = AttestationReport::from_bytes(report.raw())
        .map_err(|_| reject("it cannot parse the report"))?;
    if let Some(field) = first_difference(report, product, &theirs) {
        return Err(reject(field));
    }
    let signer = Certificate::from_der(signer_der)
        .map_err(|_| reject("it cannot parse the signer certificate"))?;
    (&signer, &theirs)
        .verify()
        .map_err(|_| reject(SIGNATURE_FAILS))
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
            check_with_sev(&v.report(), v.product, &v.cert)
                .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        }
    }

    #[test]
    fn sev_refuses_reserved_bits_and_checks_the_signature_on_its_own() {
        // Concord's own checks over the raw bytes fail first in the verifier; these show the
        // second reading stands on its own.
        let v = vectors::virtee_milan();
        let flipped = |offset: usize| {
            let mut raw = *v.report().raw();
            raw[offset] ^= 1;
            check_with_sev(&Report::parse(&raw).unwrap(), Product::Milan, &v.cert)
        };
        // 0x4C..0x50 is reserved: sev requires it zero.
        assert_eq!(
            flipped(0x4C),
            Err(RejectReason::ReportCrossCheck("it cannot parse the report").into())
        );
        // A measurement bit: both read the same value, and sev's signature check fails.
        assert_eq!(
            flipped(0x90),
            Err(RejectReason::ReportCrossCheck(SIGNATURE_FAILS).into())
        );
    }

    #[test]
    fn a_layout_disagreement_is_a_rejection() {
        // A Genoa report read with Turin's TCB layout: the readings of reported_tcb differ.
        let v = vectors::trustee_genoa_e2e();
        assert_eq!(
            check_with_sev(&v.report(), Product::Turin, &v.cert),
            Err(RejectReason::ReportCrossCheck("reported_tcb").into())
        );
    }
}
