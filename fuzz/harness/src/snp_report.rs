//! `snp_report`: an AMD SEV-SNP report and the VCEK or VLEK that signed it, through the verifier
//! (`Verifier::verify`: the report layout, the AMD chain to the pinned roots, the signature, the `sev`
//! crate's second reading, the certificate's TCB and hwID extensions, the reference values), and through
//! the checks behind the chain on their own, which a fuzzer could not reach past AMD's signatures.
//!
//! Input: the report (its first [`REPORT_LEN`] bytes), then the signer certificate's DER. The reference
//! values accept the input's own measurement on every product, with any TCB and debugging allowed, so
//! that a report a real signer signed gets through every check; the time of check is fixed.

use concord_attestation::fuzzing::snp_unchained;
use concord_attestation::snp::SnpRevocation;
use concord_attestation::{
    AttestationError, Evidence, Measurement, MinimumTcb, Platform, PlatformTrust, Product,
    REPORT_LEN, ReferenceValues, Report, SnpReference, VerifiedReport, Verifier,
};

use crate::times;

pub fn run(data: &[u8]) {
    let _ = verify(data);
    let (report, signer) = data.split_at(data.len().min(REPORT_LEN));
    let reference = accepting(report);
    let report_data = Report::parse(report).map_or([0; 64], |r| *r.report_data());
    snp_unchained(report, signer, &reference.snp, &report_data, times::snp());
}

/// The verifier's verdict on `data` under this target's reference values and time of check.
pub fn verify(data: &[u8]) -> Result<VerifiedReport, AttestationError> {
    let (report, signer) = data.split_at(data.len().min(REPORT_LEN));
    let reference = accepting(report);
    let report_data = Report::parse(report).map_or([0; 64], |r| *r.report_data());
    let evidence = Evidence {
        platform: Platform::Snp,
        report: report.to_vec(),
        certificates: if signer.is_empty() {
            vec![]
        } else {
            vec![signer.to_vec()]
        },
        crls: vec![],
    };
    // Revocation is the CRL's business (no real CRL is among the vectors): this target aims at
    // everything else, so it does not require one.
    Verifier::new(PlatformTrust::default())
        .with_snp_revocation(SnpRevocation::NotChecked)
        .verify(&evidence, &reference, &report_data, &|_| true, times::snp())
}

/// Reference values that accept `report` on every product if only its signer is genuine.
pub(crate) fn accepting(report: &[u8]) -> ReferenceValues {
    let measurement = Report::parse(report).map_or([0; 48], |r| *r.measurement());
    let entry = |product| SnpReference {
        product,
        trusted_measurements: vec![Measurement(measurement)],
        minimum_tcb: MinimumTcb {
            bootloader: 0,
            tee: 0,
            snp: 0,
            microcode: 0,
            fmc: (product == Product::Turin).then_some(0),
        },
        allow_debug: true,
        allow_migration_agent: false,
        allowed_chip_ids: None,
    };
    ReferenceValues {
        snp: [Product::Milan, Product::Genoa, Product::Turin]
            .into_iter()
            .map(entry)
            .collect(),
        simulated: vec![],
        tdx: vec![],
    }
}
