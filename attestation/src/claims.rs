//! The checks on a report's contents, shared by every platform's verification path.
//!
//! Owns one function per claim (format, signature, guest policy, measurement, host data, report
//! data, allowed chips), each returning its own [`RejectReason`], so the simulated path and the SNP path judge
//! reports with the same code and differ only in how they establish the signing key. It must
//! never establish trust in a key or read certificates: callers pass an already-chained key.

use crate::chain::P384Key;
use crate::error::{AttestationError, RejectReason};
use crate::reference::{ChipId, Measurement};
use crate::report::{Report, SIG_ALGO_ECDSA_P384_SHA384};

/// Report versions this verifier understands.
const SUPPORTED_VERSIONS: std::ops::RangeInclusive<u32> = 2..=5;
/// Length of a P-384 scalar; the rest of each 72-byte signature field must be zero.
const P384_SCALAR_LEN: usize = 48;

/// Version 2 to 5 and `sig_algo` 1: anything else may mean fields we would misread.
pub(crate) fn check_format(report: &Report) -> Result<(), AttestationError> {
    if !SUPPORTED_VERSIONS.contains(&report.version()) {
        return Err(RejectReason::UnsupportedVersion(report.version()).into());
    }
    if report.sig_algo() != SIG_ALGO_ECDSA_P384_SHA384 {
        return Err(RejectReason::UnsupportedSignatureAlgorithm(report.sig_algo()).into());
    }
    Ok(())
}

/// The ECDSA P-384/SHA-384 signature over the raw received bytes `[..0x2A0]`. The signature
/// field must hold nothing else: its padding and reserved bytes are unsigned, so anything there
/// would be a change nobody can detect.
pub(crate) fn check_report_signature(
    report: &Report,
    key: &P384Key,
) -> Result<(), AttestationError> {
    let bad = || AttestationError::from(RejectReason::ReportSignature);
    if report.signature_reserved().iter().any(|&b| b != 0) {
        return Err(bad());
    }
    let mut r_s = [0u8; 2 * P384_SCALAR_LEN];
    let (r, s) = r_s.split_at_mut(P384_SCALAR_LEN);
    scalar_from_le(report.signature_r(), r).ok_or_else(bad)?;
    scalar_from_le(report.signature_s(), s).ok_or_else(bad)?;
    // ring refuses r or s of zero or not below the group order, as `p384` did.
    if !key.verify_fixed(report.signed_bytes(), &r_s) {
        return Err(bad());
    }
    Ok(())
}

/// Writes a little-endian, zero-padded 72-byte field into `be` as a big-endian P-384 scalar;
/// `None` when the padding is not zero (a signature with junk there is not one the hardware
/// produced).
fn scalar_from_le(field: &[u8; 72], be: &mut [u8]) -> Option<()> {
    let (value, padding) = field.split_at(P384_SCALAR_LEN);
    if padding.iter().any(|&b| b != 0) {
        return None;
    }
    for (dst, src) in be.iter_mut().zip(value.iter().rev()) {
        *dst = *src;
    }
    Some(())
}

/// What the reference values allow about the guest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuestRules {
    pub(crate) allow_debug: bool,
    pub(crate) allow_migration_agent: bool,
}

/// VMPL 0, and debug and migration agent off unless allowed.
pub(crate) fn check_guest(report: &Report, rules: GuestRules) -> Result<(), AttestationError> {
    if report.vmpl() != 0 {
        return Err(RejectReason::Vmpl(report.vmpl()).into());
    }
    if report.debug_allowed() && !rules.allow_debug {
        return Err(RejectReason::DebugAllowed.into());
    }
    if report.migrate_ma_allowed() && !rules.allow_migration_agent {
        return Err(RejectReason::MigrationAgentAllowed.into());
    }
    Ok(())
}

/// The measurement is one of the trusted ones.
pub(crate) fn check_measurement<'a>(
    report: &Report,
    trusted: impl IntoIterator<Item = &'a Measurement>,
) -> Result<(), AttestationError> {
    if trusted
        .into_iter()
        .any(|m| m.as_bytes() == report.measurement())
    {
        Ok(())
    } else {
        Err(RejectReason::MeasurementNotTrusted.into())
    }
}

/// The relying side accepts `host_data` (for Concord: it names a policy of the manifest).
pub(crate) fn check_host_data(
    report: &Report,
    accept: &dyn Fn(&[u8; 32]) -> bool,
) -> Result<(), AttestationError> {
    if accept(report.host_data()) {
        Ok(())
    } else {
        Err(RejectReason::HostDataNotAccepted.into())
    }
}

/// `report_data` equals the binding the relying side computed, compared in constant time.
pub(crate) fn check_report_data(
    report: &Report,
    expected: &[u8; 64],
) -> Result<(), AttestationError> {
    if constant_time_eq(report.report_data(), expected) {
        Ok(())
    } else {
        Err(RejectReason::ReportDataMismatch.into())
    }
}

/// When the reference values list chips, `chip_id` is one of them.
pub(crate) fn check_chip_id_allowed(
    report: &Report,
    allowed: Option<&[ChipId]>,
) -> Result<(), AttestationError> {
    match allowed {
        Some(chips) if !chips.iter().any(|c| c.as_bytes() == report.chip_id()) => {
            Err(RejectReason::ChipIdNotAllowed.into())
        }
        _ => Ok(()),
    }
}

fn constant_time_eq(a: &[u8; 64], b: &[u8; 64]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain;
    use crate::error::CertRole;

    /// Real hardware reports and the VCEKs that signed them (origins in testdata/README.md).
    fn vector(report: &str, vcek: &str) -> (Report, P384Key) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/");
        let report = Report::parse(&std::fs::read(format!("{dir}{report}")).unwrap()).unwrap();
        let der = std::fs::read(format!("{dir}{vcek}")).unwrap();
        let cert = chain::parse_cert(&der, CertRole::Signer).unwrap();
        let key = chain::p384_key(&cert, CertRole::Signer).unwrap();
        (report, key)
    }

    #[test]
    fn real_milan_report_signature_verifies_and_claims_read_right() {
        let (report, key) = vector("virtee-sev-report_milan.bin", "virtee-sev-vcek_milan.der");
        check_format(&report).unwrap();
        check_report_signature(&report, &key).unwrap();
        assert_eq!(report.version(), 2);
        assert_eq!(report.policy(), 0x30000);
        check_guest(
            &report,
            GuestRules {
                allow_debug: false,
                allow_migration_agent: false,
            },
        )
        .unwrap();
        assert_eq!(
            crate::report::Tcb::from_milan_genoa(report.reported_tcb()),
            crate::report::Tcb::new(3, 0, 8, 115)
        );
    }

    #[test]
    fn real_debug_report_is_rejected_unless_allowed() {
        let (report, key) = vector("go-sev-guest-attestation.bin", "go-sev-guest-vcek.der");
        check_report_signature(&report, &key).unwrap();
        assert_eq!(&report.report_data()[..6], &[1, 2, 3, 4, 5, 0]);
        let strict = GuestRules {
            allow_debug: false,
            allow_migration_agent: false,
        };
        assert_eq!(
            check_guest(&report, strict),
            Err(RejectReason::DebugAllowed.into())
        );
        let lenient = GuestRules {
            allow_debug: true,
            ..strict
        };
        check_guest(&report, lenient).unwrap();
    }

    #[test]
    fn real_report_with_one_flipped_bit_fails_its_signature() {
        let (report, key) = vector("virtee-sev-report_milan.bin", "virtee-sev-vcek_milan.der");
        for offset in [
            0x00,
            0x90,
            0x29F,
            0x2A0,
            0x2E8,
            0x2E7,
            0x32F,
            0x330,
            0x4A0 - 1,
        ] {
            let mut raw = *report.raw();
            raw[offset] ^= 0x01;
            let flipped = Report::parse(&raw).unwrap();
            assert_eq!(
                check_report_signature(&flipped, &key),
                Err(RejectReason::ReportSignature.into()),
                "bit flipped at {offset:#x}"
            );
        }
        // The signature of another key does not verify either.
        let (_, other_key) = vector("go-sev-guest-attestation.bin", "go-sev-guest-vcek.der");
        assert_eq!(
            check_report_signature(&report, &other_key),
            Err(RejectReason::ReportSignature.into())
        );
    }

    #[test]
    fn constant_time_eq_compares_every_byte() {
        let a = [7u8; 64];
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[63] ^= 0x80;
        assert!(!constant_time_eq(&a, &b));
    }
}
