//! The simulated platform end to end: issue, encode, verify; and one test per check, each
//! expecting its own rejection reason.

use std::time::{Duration, SystemTime};

use concord_attestation::testing::{HOST_DATA, MEASUREMENT, SimFixture};
use concord_attestation::{
    AttestationError, CertRole, Evidence, EvidenceIssuer, Platform, PlatformTrust, REPORT_LEN,
    RejectReason, Report, Tcb, VerifiedReport, Verifier,
};

const REPORT_DATA: [u8; 64] = [0x33; 64];
const DAY: Duration = Duration::from_secs(24 * 3600);

fn issue(f: &SimFixture) -> Evidence {
    f.issuer.issue(&REPORT_DATA).unwrap()
}

fn verify_at(
    f: &SimFixture,
    evidence: &Evidence,
    now: SystemTime,
) -> Result<VerifiedReport, AttestationError> {
    f.verifier().verify(
        evidence,
        &f.reference(),
        &REPORT_DATA,
        &|h| h == &HOST_DATA,
        now,
    )
}

fn verify(f: &SimFixture, evidence: &Evidence) -> Result<VerifiedReport, AttestationError> {
    verify_at(f, evidence, SystemTime::now())
}

fn rejected(reason: RejectReason) -> Result<VerifiedReport, AttestationError> {
    Err(AttestationError::Rejected(reason))
}

/// Evidence whose report was changed by `edit` and signed again by the fixture's simulated VCEK,
/// so that only the check under test can fail.
fn edited(f: &SimFixture, edit: impl FnOnce(&mut [u8; REPORT_LEN])) -> Evidence {
    let mut evidence = issue(f);
    let mut raw: [u8; REPORT_LEN] = evidence.report.as_slice().try_into().unwrap();
    edit(&mut raw);
    f.issuer.resign(&mut raw);
    evidence.report = raw.to_vec();
    evidence
}

#[test]
fn issued_evidence_verifies_after_a_wire_round_trip() {
    let f = SimFixture::new();
    let evidence = Evidence::from_bytes(&issue(&f).to_bytes()).unwrap();
    assert_eq!(evidence.platform, Platform::Simulated);
    assert_eq!(evidence.report.len(), REPORT_LEN);
    assert_eq!(evidence.certificates.len(), 2);
    assert_eq!(evidence.certificates[1], f.root.cert_der());

    let verified = verify(&f, &evidence).unwrap();
    assert_eq!(verified.platform(), Platform::Simulated);
    assert_eq!(verified.version(), 3);
    assert_eq!(verified.vmpl(), 0);
    assert_eq!(verified.policy(), 0x30000);
    assert_eq!(verified.measurement(), &MEASUREMENT);
    assert_eq!(verified.host_data(), &HOST_DATA);
    assert_eq!(verified.report_data(), &REPORT_DATA);
    assert_eq!(verified.chip_id(), f.issuer.chip_id());
    assert_eq!(verified.reported_tcb(), Tcb::new(3, 0, 8, 115));

    let report = Report::parse(&evidence.report).unwrap();
    assert_eq!(
        Tcb::from_milan_genoa(report.current_tcb()),
        Tcb::new(3, 0, 8, 115)
    );
    assert_eq!(report.sig_algo(), 1);
    assert_eq!(report.signing_key(), 0);
}

#[test]
fn simulated_evidence_is_refused_when_the_launch_configuration_trusts_no_root() {
    let f = SimFixture::new();
    let verifier = Verifier::new(PlatformTrust::default());
    let result = verifier.verify(
        &issue(&f),
        &f.reference(),
        &REPORT_DATA,
        &|_| true,
        SystemTime::now(),
    );
    assert_eq!(result, rejected(RejectReason::SimulatedNotEnabled));
}

#[test]
fn a_root_other_than_the_launch_configurations_is_rejected() {
    let f = SimFixture::new();
    let other = SimFixture::new();
    // The launch configuration trusts another root; the reference values name ours.
    let verifier = other.verifier();
    let result = verifier.verify(
        &issue(&f),
        &f.reference(),
        &REPORT_DATA,
        &|_| true,
        SystemTime::now(),
    );
    assert_eq!(result, rejected(RejectReason::SimulatedRootNotTrusted));
}

#[test]
fn a_root_missing_from_the_reference_values_is_rejected() {
    let f = SimFixture::new();
    let other = SimFixture::new();
    let result = f.verifier().verify(
        &issue(&f),
        &other.reference(),
        &REPORT_DATA,
        &|_| true,
        SystemTime::now(),
    );
    assert_eq!(
        result,
        rejected(RejectReason::SimulatedRootNotInReferenceValues)
    );
}

#[test]
fn an_untrusted_measurement_is_rejected() {
    let f = SimFixture::new();
    let issuer = f.issuer_for([0x99; 48], HOST_DATA);
    let evidence = issuer.issue(&REPORT_DATA).unwrap();
    assert_eq!(
        verify(&f, &evidence),
        rejected(RejectReason::MeasurementNotTrusted)
    );
    // The same evidence passes once the reference values trust the measurement.
    let reference = f.reference_with(&[MEASUREMENT, [0x99; 48]]);
    f.verifier()
        .verify(
            &evidence,
            &reference,
            &REPORT_DATA,
            &|h| h == &HOST_DATA,
            SystemTime::now(),
        )
        .unwrap();
}

#[test]
fn host_data_the_caller_does_not_accept_is_rejected() {
    let f = SimFixture::new();
    let result = f.verifier().verify(
        &issue(&f),
        &f.reference(),
        &REPORT_DATA,
        &|h| h == &[0x44; 32],
        SystemTime::now(),
    );
    assert_eq!(result, rejected(RejectReason::HostDataNotAccepted));
}

#[test]
fn report_data_other_than_expected_is_rejected() {
    let f = SimFixture::new();
    let evidence = f.issuer.issue(&[0x34; 64]).unwrap();
    let result = verify(&f, &evidence);
    assert_eq!(result, rejected(RejectReason::ReportDataMismatch));
    assert!(
        result
            .unwrap_err()
            .to_string()
            .contains("replayed or foreign evidence")
    );
}

#[test]
fn a_flipped_bit_in_the_signed_part_breaks_the_signature() {
    let f = SimFixture::new();
    // report_data, measurement, host_data, the last signed byte: none may change unnoticed.
    for offset in [0x50, 0x90, 0xC0, 0x29F] {
        let mut evidence = issue(&f);
        evidence.report[offset] ^= 0x01;
        assert_eq!(
            verify(&f, &evidence),
            rejected(RejectReason::ReportSignature),
            "offset {offset:#x}"
        );
    }
}

#[test]
fn a_flipped_signature_bit_is_rejected() {
    let f = SimFixture::new();
    // In r, in s, and in the zero padding after r.
    for offset in [0x2A0, 0x2E8 + 10, 0x2A0 + 60] {
        let mut evidence = issue(&f);
        evidence.report[offset] ^= 0x04;
        assert_eq!(
            verify(&f, &evidence),
            rejected(RejectReason::ReportSignature),
            "offset {offset:#x}"
        );
    }
}

#[test]
fn a_report_of_the_wrong_length_is_malformed() {
    let f = SimFixture::new();
    for len in [REPORT_LEN - 1, REPORT_LEN + 1, 0] {
        let mut evidence = issue(&f);
        evidence.report.resize(len, 0);
        let err = verify(&f, &evidence).unwrap_err();
        assert!(
            matches!(&err, AttestationError::Malformed { what } if what.contains("1184")),
            "{err}"
        );
    }
}

#[test]
fn unsupported_versions_are_rejected() {
    let f = SimFixture::new();
    for version in [1u32, 6, 0, u32::MAX] {
        let evidence = edited(&f, |raw| raw[0..4].copy_from_slice(&version.to_le_bytes()));
        assert_eq!(
            verify(&f, &evidence),
            rejected(RejectReason::UnsupportedVersion(version))
        );
    }
    for version in [2u32, 5] {
        let evidence = edited(&f, |raw| raw[0..4].copy_from_slice(&version.to_le_bytes()));
        verify(&f, &evidence).unwrap();
    }
}

#[test]
fn an_unknown_signature_algorithm_is_rejected() {
    let f = SimFixture::new();
    let evidence = edited(&f, |raw| {
        raw[0x34..0x38].copy_from_slice(&2u32.to_le_bytes())
    });
    assert_eq!(
        verify(&f, &evidence),
        rejected(RejectReason::UnsupportedSignatureAlgorithm(2))
    );
}

#[test]
fn vmpl_other_than_zero_is_rejected() {
    let f = SimFixture::new();
    let evidence = edited(&f, |raw| {
        raw[0x30..0x34].copy_from_slice(&1u32.to_le_bytes())
    });
    assert_eq!(verify(&f, &evidence), rejected(RejectReason::Vmpl(1)));
}

#[test]
fn a_debuggable_guest_is_rejected() {
    let f = SimFixture::new();
    let evidence = edited(&f, |raw| {
        raw[0x08..0x10].copy_from_slice(&(0x30000u64 | 1 << 19).to_le_bytes())
    });
    assert_eq!(verify(&f, &evidence), rejected(RejectReason::DebugAllowed));
}

#[test]
fn a_guest_with_a_migration_agent_is_rejected() {
    let f = SimFixture::new();
    let evidence = edited(&f, |raw| {
        raw[0x08..0x10].copy_from_slice(&(0x30000u64 | 1 << 18).to_le_bytes())
    });
    assert_eq!(
        verify(&f, &evidence),
        rejected(RejectReason::MigrationAgentAllowed)
    );
}

#[test]
fn certificates_outside_their_validity_are_rejected() {
    let f = SimFixture::new();
    let evidence = issue(&f);
    let now = SystemTime::now();
    // The simulated VCEK starts an hour ago, the root a day ago.
    assert_eq!(
        verify_at(&f, &evidence, now - 2 * Duration::from_secs(3600)),
        rejected(RejectReason::CertificateNotYetValid {
            role: CertRole::Signer
        })
    );
    assert_eq!(
        verify_at(&f, &evidence, now - 2 * DAY),
        rejected(RejectReason::CertificateNotYetValid {
            role: CertRole::Root
        })
    );
    // The root lasts 3650 days, the VCEK one day less.
    assert_eq!(
        verify_at(&f, &evidence, now + 3649 * DAY + DAY / 2),
        rejected(RejectReason::CertificateExpired {
            role: CertRole::Signer
        })
    );
    assert_eq!(
        verify_at(&f, &evidence, now + 3651 * DAY),
        rejected(RejectReason::CertificateExpired {
            role: CertRole::Root
        })
    );
    verify_at(&f, &evidence, now + 3000 * DAY).unwrap();
}

#[test]
fn a_signer_certified_by_another_root_is_rejected() {
    let f = SimFixture::new();
    let other = SimFixture::new();
    // Another root's VCEK, presented beside the trusted root: same names, wrong signature.
    let mut evidence = other.issuer.issue(&REPORT_DATA).unwrap();
    evidence.certificates[1] = f.root.cert_der().to_vec();
    assert_eq!(
        verify(&f, &evidence),
        rejected(RejectReason::CertificateSignature {
            role: CertRole::Signer
        })
    );
}

#[test]
fn a_report_signed_by_another_vcek_of_the_same_root_is_rejected() {
    let f = SimFixture::new();
    let sibling = f.issuer_for(MEASUREMENT, HOST_DATA);
    let mut evidence = sibling.issue(&REPORT_DATA).unwrap();
    evidence.certificates[0] = f.issuer.vcek_der().to_vec();
    assert_eq!(
        verify(&f, &evidence),
        rejected(RejectReason::ReportSignature)
    );
}

#[test]
fn a_wrong_certificate_count_or_garbage_certificates_are_malformed() {
    let f = SimFixture::new();
    for certificates in [vec![], vec![f.root.cert_der().to_vec()], {
        let e = issue(&f);
        vec![
            e.certificates[0].clone(),
            e.certificates[1].clone(),
            e.certificates[1].clone(),
        ]
    }] {
        let mut evidence = issue(&f);
        evidence.certificates = certificates;
        assert!(matches!(
            verify(&f, &evidence),
            Err(AttestationError::Malformed { .. })
        ));
    }
    let mut evidence = issue(&f);
    evidence.certificates[0] = b"not a certificate".to_vec();
    assert!(matches!(
        verify(&f, &evidence),
        Err(AttestationError::Malformed { .. })
    ));
    // Swapped order: the "root" position holds the VCEK, whose hash is not trusted.
    let mut evidence = issue(&f);
    evidence.certificates.swap(0, 1);
    assert_eq!(
        verify(&f, &evidence),
        rejected(RejectReason::SimulatedRootNotTrusted)
    );
}

#[test]
fn simulated_evidence_labelled_snp_is_judged_by_the_snp_rules_and_rejected() {
    let f = SimFixture::new();
    let mut evidence = issue(&f);
    evidence.platform = Platform::Snp;
    // The fixture's reference values have no SNP entry.
    assert_eq!(
        verify(&f, &evidence),
        rejected(RejectReason::NoSnpReferenceValues)
    );
    // With one, the simulated signer does not chain to AMD's pinned root.
    let mut reference = f.reference();
    reference.snp.push(concord_attestation::SnpReference {
        product: concord_attestation::Product::Milan,
        trusted_measurements: vec![concord_attestation::Measurement(MEASUREMENT)],
        minimum_tcb: concord_attestation::MinimumTcb {
            bootloader: 0,
            tee: 0,
            snp: 0,
            microcode: 0,
            fmc: None,
        },
        allow_debug: false,
        allow_migration_agent: false,
        allowed_chip_ids: None,
    });
    // The simulated report is version 3 with zero CPUID fields: no known product.
    assert_eq!(
        f.verifier().verify(
            &evidence,
            &reference,
            &REPORT_DATA,
            &|h| h == &HOST_DATA,
            SystemTime::now()
        ),
        rejected(RejectReason::UnknownProduct {
            family: 0,
            model: 0
        })
    );
    let mut raw: [u8; REPORT_LEN] = evidence.report.as_slice().try_into().unwrap();
    raw[0x188] = 0x19; // CPUID family 19h, model 0: Milan
    f.issuer.resign(&mut raw);
    evidence.report = raw.to_vec();
    let verify_snp = |evidence: &Evidence| {
        f.verifier().verify(
            evidence,
            &reference,
            &REPORT_DATA,
            &|h| h == &HOST_DATA,
            SystemTime::now(),
        )
    };
    // The simulated root sent after the signer is not AMD's pinned ASK...
    assert_eq!(
        verify_snp(&evidence),
        rejected(RejectReason::CertificateNotPinned {
            role: CertRole::Intermediate
        })
    );
    // ...and without it, the simulated signer is not issued by the ASK.
    evidence.certificates.truncate(1);
    assert_eq!(
        verify_snp(&evidence),
        rejected(RejectReason::CertificateChain {
            role: CertRole::Signer
        })
    );
}
