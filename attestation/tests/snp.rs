//! SEV-SNP verification with real reports from AMD hardware (testdata/README.md): every vector is
//! accepted with reference values built for it, and every check rejects with its own reason, so
//! that a check switched off would fail the test that names it.

use std::time::SystemTime;

use concord_attestation::snp::SnpRevocation;
use concord_attestation::testing::snp::{self as vectors, Vector};
use concord_attestation::{
    AttestationError, CertRole, ChipId, Evidence, Measurement, PlatformTrust, Product, REPORT_LEN,
    ReferenceValues, RejectReason, SIGNED_LEN, SnpReference, TcbComponent, VerifiedReport,
    Verifier,
};

/// No real AMD CRL is among the vectors (AMD's keys sign them, and none was published with the
/// reports): these tests judge everything but revocation, which `real_vectors_without_a_crl_*`
/// and `snp::crl`'s tests (a test AMD hierarchy) cover.
fn verifier() -> Verifier {
    Verifier::new(PlatformTrust::default()).with_snp_revocation(SnpRevocation::NotChecked)
}

#[test]
fn real_vectors_without_a_crl_are_refused_by_default_for_that_reason_only() {
    for v in vectors::accepted() {
        let by_default = Verifier::new(PlatformTrust::default()).verify(
            &v.evidence(),
            &v.reference_values(),
            &v.report_data(),
            &|_| true,
            v.at,
        );
        assert_eq!(
            by_default,
            Err(RejectReason::CrlMissing { sent: 0 }.into()),
            "{}",
            v.name
        );
        verify(&v).unwrap_or_else(|e| panic!("{}: {e}", v.name));
    }
}

#[test]
fn a_crl_of_the_real_product_not_signed_by_amd_is_refused() {
    // A test ARK signs a CRL under the pinned Milan ARK's exact name.
    let v = vectors::virtee_milan();
    let forged = concord_attestation::testing::amd::milan().crl_as_pinned_ark(Product::Milan, &[]);
    let mut evidence = v.evidence();
    evidence.crls.push(forged);
    let result = Verifier::new(PlatformTrust::default()).verify(
        &evidence,
        &v.reference_values(),
        &v.report_data(),
        &|_| true,
        concord_attestation::testing::amd::now(),
    );
    assert_eq!(result, Err(RejectReason::CrlSignature.into()));
}

/// Verifies `evidence` as `v`'s verifier would: `v`'s report data, any host data, at `at`.
fn verify_with(
    v: &Vector,
    evidence: &Evidence,
    reference: &ReferenceValues,
    at: SystemTime,
) -> Result<VerifiedReport, AttestationError> {
    verifier().verify(evidence, reference, &v.report_data(), &|_| true, at)
}

fn verify(v: &Vector) -> Result<VerifiedReport, AttestationError> {
    verify_with(v, &v.evidence(), &v.reference_values(), v.at)
}

fn verify_entry(v: &Vector, entry: SnpReference) -> Result<VerifiedReport, AttestationError> {
    let reference = ReferenceValues {
        snp: vec![entry],
        simulated: vec![],
        tdx: vec![],
    };
    verify_with(v, &v.evidence(), &reference, v.at)
}

fn with_report(v: &Vector, edit: impl FnOnce(&mut Vec<u8>)) -> Evidence {
    let mut evidence = v.evidence();
    edit(&mut evidence.report);
    evidence
}

fn rejected(reason: RejectReason) -> Result<VerifiedReport, AttestationError> {
    Err(AttestationError::Rejected(reason))
}

fn reason(result: Result<VerifiedReport, AttestationError>) -> RejectReason {
    match result {
        Err(AttestationError::Rejected(reason)) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn every_real_report_is_accepted_with_its_own_signer_and_reference() {
    for v in vectors::accepted() {
        let verified = verify(&v).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let report = v.report();
        assert_eq!(verified.platform(), concord_attestation::Platform::Snp);
        assert_eq!(verified.product(), Some(v.product), "{}", v.name);
        assert_eq!(verified.version(), report.version());
        assert_eq!(verified.vmpl(), 0);
        assert_eq!(verified.measurement(), report.measurement());
        assert_eq!(verified.host_data(), report.host_data());
        assert_eq!(verified.report_data(), report.report_data());
        assert_eq!(verified.chip_id(), report.chip_id());
        assert_eq!(verified.reported_tcb(), v.reported_tcb());
        assert_eq!(
            verified.reported_tcb().fmc,
            None,
            "no Turin report among the vectors"
        );
    }
}

#[test]
fn the_vectors_read_as_their_sources_document() {
    use concord_attestation::Tcb;
    let tcb = |v: Vector| v.reported_tcb();
    assert_eq!(tcb(vectors::virtee_milan()), Tcb::new(3, 0, 8, 115));
    assert_eq!(tcb(vectors::trustee_milan()), Tcb::new(3, 0, 8, 115));
    assert_eq!(tcb(vectors::trustee_genoa_e2e()), Tcb::new(10, 0, 23, 25));
    assert_eq!(tcb(vectors::azure_genoa()), Tcb::new(10, 0, 23, 84));
    assert_eq!(tcb(vectors::go_sev_guest_debug()), Tcb::new(2, 0, 5, 68));
    assert_eq!(tcb(vectors::trustee_vlek()), Tcb::new(4, 0, 24, 217));
    assert_eq!(vectors::go_sev_guest_debug().report().policy(), 0xb0000);
    assert_eq!(vectors::trustee_milan().report().guest_svn(), 4);
}

#[test]
fn the_chain_sent_with_the_evidence_is_optional_and_must_be_the_pinned_one() {
    let v = vectors::azure_milan();
    assert_eq!(v.chain.len(), 2, "the PEM carries the ASK and the ARK");
    verify(&v).unwrap();
    let mut bare = v.evidence();
    bare.certificates.truncate(1);
    verify_with(&v, &bare, &v.reference_values(), v.at).unwrap();

    // Genoa's ASK in the ASK position: not Milan's pinned one.
    let mut foreign = v.evidence();
    foreign.certificates[1] = vectors::pem_certificates("trustee-az-vcek-genoa.pem")[0].clone();
    assert_eq!(
        verify_with(&v, &foreign, &v.reference_values(), v.at),
        rejected(RejectReason::CertificateNotPinned {
            role: CertRole::Intermediate
        })
    );
    // ARK and ASK swapped.
    let mut swapped = v.evidence();
    swapped.certificates.swap(1, 2);
    assert_eq!(
        verify_with(&v, &swapped, &v.reference_values(), v.at),
        rejected(RejectReason::CertificateNotPinned {
            role: CertRole::Intermediate
        })
    );
    let mut none = v.evidence();
    none.certificates.clear();
    assert!(matches!(
        verify_with(&v, &none, &v.reference_values(), v.at),
        Err(AttestationError::Malformed { .. })
    ));
}

#[test]
fn an_untrusted_measurement_is_rejected() {
    let v = vectors::virtee_milan();
    let entry = SnpReference {
        trusted_measurements: vec![Measurement([0x5A; 48])],
        ..v.reference()
    };
    assert_eq!(
        verify_entry(&v, entry),
        rejected(RejectReason::MeasurementNotTrusted)
    );
}

#[test]
fn a_minimum_one_above_the_reported_tcb_rejects_for_each_component() {
    for v in [vectors::virtee_milan(), vectors::trustee_genoa_e2e()] {
        let tcb = v.reported_tcb();
        let cases = [
            (TcbComponent::Bootloader, tcb.bootloader),
            (TcbComponent::Tee, tcb.tee),
            (TcbComponent::Snp, tcb.snp),
            (TcbComponent::Microcode, tcb.microcode),
        ];
        for (component, reported) in cases {
            let mut entry = v.reference();
            let minimum = reported + 1;
            match component {
                TcbComponent::Bootloader => entry.minimum_tcb.bootloader = minimum,
                TcbComponent::Tee => entry.minimum_tcb.tee = minimum,
                TcbComponent::Snp => entry.minimum_tcb.snp = minimum,
                TcbComponent::Microcode => entry.minimum_tcb.microcode = minimum,
                _ => unreachable!(),
            }
            assert_eq!(
                verify_entry(&v, entry),
                rejected(RejectReason::TcbBelowMinimum {
                    component,
                    reported,
                    minimum
                }),
                "{}",
                v.name
            );
        }
    }
}

#[test]
fn the_debug_report_is_rejected_unless_debug_is_allowed() {
    let v = vectors::go_sev_guest_debug();
    verify(&v).unwrap();
    let strict = SnpReference {
        allow_debug: false,
        ..v.reference()
    };
    assert_eq!(
        verify_entry(&v, strict),
        rejected(RejectReason::DebugAllowed)
    );
}

#[test]
fn the_vlek_report_chains_to_the_asvk_and_is_rejected_for_vmpl_1_then_for_expiry() {
    let v = vectors::trustee_vlek();
    // Within the VLEK's validity everything up to the VMPL passes: chain to the ASVK, signature,
    // the VLEK's TCB; no hwID check, so the zero chip_id is fine.
    assert_eq!(verify(&v), rejected(RejectReason::Vmpl(1)));
    let expired = RejectReason::CertificateExpired {
        role: CertRole::Signer,
    };
    let after = vectors::time("2025-12-10T22:14:22Z");
    assert_eq!(
        verify_with(&v, &v.evidence(), &v.reference_values(), after),
        rejected(expired.clone())
    );
    assert_eq!(
        verify_with(&v, &v.evidence(), &v.reference_values(), SystemTime::now()),
        rejected(expired)
    );
}

#[test]
fn a_flipped_bit_in_the_signed_fields_or_the_signature_is_rejected() {
    let v = vectors::virtee_milan();
    // report_data, measurement, host_data, reported_tcb, chip_id, the last signed byte; then r, s,
    // their zero padding, and the reserved rest of the signature field.
    for offset in [
        0x50, 0x90, 0xC0, 0x180, 0x1A0, 0x29F, 0x2A0, 0x2E7, 0x2E8, 0x32F, 0x330, 0x49F,
    ] {
        let evidence = with_report(&v, |r| r[offset] ^= 0x80);
        assert_eq!(
            verify_with(&v, &evidence, &v.reference_values(), v.at),
            rejected(RejectReason::ReportSignature),
            "bit flipped at {offset:#x}"
        );
    }
}

/// Offsets read before the report signature is checked, where a flip may be rejected for its
/// own reason first (version, sig_algo, key_info; CPUID from version 3).
fn read_before_signature(offset: usize, version: u32) -> bool {
    matches!(offset, 0x00..0x04 | 0x34..0x38 | 0x48..0x4C)
        || (version >= 3 && matches!(offset, 0x188..0x18A))
}

/// Flips each bit of `offsets` in `v`'s report: all must be rejected, and those outside the fields
/// read before the signature with the signature's reason. Returns how many were rejected for
/// another reason.
fn flip_each_bit(v: &Vector, offsets: std::ops::Range<usize>) -> usize {
    let version = v.report().version();
    let reference = v.reference_values();
    let mut by_other_reason = 0;
    for offset in offsets {
        for bit in 0..8 {
            let evidence = with_report(v, |r| r[offset] ^= 1 << bit);
            let reason = reason(verify_with(v, &evidence, &reference, v.at));
            if read_before_signature(offset, version) {
                by_other_reason += usize::from(reason != RejectReason::ReportSignature);
            } else {
                assert_eq!(
                    reason,
                    RejectReason::ReportSignature,
                    "{}: bit {bit} of byte {offset:#x}",
                    v.name
                );
            }
        }
    }
    by_other_reason
}

#[test]
fn every_single_bit_flip_in_the_signed_part_is_rejected() {
    // 0x2A0 bytes x 8 bits = 5376 full verifications of the version 2 report, plus the version 3
    // report's TCB and CPUID bytes (which version 3 reads before the signature). One ECDSA P-384
    // check dominates each case; two threads share them.
    let milan = vectors::virtee_milan();
    let genoa = vectors::trustee_genoa_e2e();
    let by_other_reason: usize = std::thread::scope(|s| {
        let workers = [
            s.spawn(|| flip_each_bit(&milan, 0..SIGNED_LEN / 2)),
            s.spawn(|| flip_each_bit(&milan, SIGNED_LEN / 2..SIGNED_LEN)),
            s.spawn(|| flip_each_bit(&genoa, 0x180..0x1A0)),
        ];
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert!(
        by_other_reason > 0,
        "the format checks run before the signature"
    );
}

#[test]
fn another_chips_vcek_does_not_verify_the_report() {
    let v = vectors::virtee_milan();
    let mut evidence = v.evidence();
    evidence.certificates[0] = vectors::trustee_milan().cert;
    assert_eq!(
        verify_with(&v, &evidence, &v.reference_values(), v.at),
        rejected(RejectReason::ReportSignature)
    );
}

#[test]
fn the_wrong_product_is_rejected() {
    // Version 3: the CPUID fields say Genoa.
    let genoa = vectors::trustee_genoa_e2e();
    let milan_entry = SnpReference {
        product: Product::Milan,
        ..genoa.reference()
    };
    assert_eq!(
        verify_entry(&genoa, milan_entry),
        rejected(RejectReason::WrongProduct {
            reported: Product::Genoa,
            expected: Product::Milan
        })
    );
    // Version 2 has no CPUID fields: the Milan VCEK does not chain to the Genoa or Turin ASK.
    let milan = vectors::virtee_milan();
    for product in [Product::Genoa, Product::Turin] {
        let entry = SnpReference {
            product,
            ..milan.reference()
        };
        assert_eq!(
            verify_entry(&milan, entry),
            rejected(RejectReason::CertificateChain {
                role: CertRole::Signer
            })
        );
    }
}

#[test]
fn certificates_are_checked_at_the_time_of_check() {
    let v = vectors::virtee_milan();
    // The VCEK was issued on 2023-04-03; Milan's ARK and ASK on 2020-10-22.
    let check = |at: &str| verify_with(&v, &v.evidence(), &v.reference_values(), vectors::time(at));
    assert_eq!(
        check("2023-04-03T19:23:42Z"),
        rejected(RejectReason::CertificateNotYetValid {
            role: CertRole::Signer
        })
    );
    check("2023-04-03T19:23:43Z").unwrap();
    assert_eq!(
        check("2020-01-01T00:00:00Z"),
        rejected(RejectReason::CertificateNotYetValid {
            role: CertRole::Root
        })
    );
    // Between the ARK's issue (17:23:05) and the ASK's (18:24:20) that day.
    assert_eq!(
        check("2020-10-22T18:00:00Z"),
        rejected(RejectReason::CertificateNotYetValid {
            role: CertRole::Intermediate
        })
    );
    assert_eq!(
        check("2030-04-03T19:23:44Z"),
        rejected(RejectReason::CertificateExpired {
            role: CertRole::Signer
        })
    );
}

#[test]
fn a_report_of_the_wrong_length_is_rejected() {
    let v = vectors::virtee_milan();
    for len in [0, REPORT_LEN - 1, REPORT_LEN + 1, 2 * REPORT_LEN] {
        let evidence = with_report(&v, |r| r.resize(len, 0));
        assert_eq!(
            verify_with(&v, &evidence, &v.reference_values(), v.at),
            rejected(RejectReason::ReportLength(len))
        );
    }
}

#[test]
fn vceks_with_invalid_signatures_are_rejected() {
    let v = vectors::trustee_milan();
    for file in [
        "trustee-test-vcek-invalid-legacy.der",
        "trustee-test-vcek-invalid-new.der",
    ] {
        let mut evidence = v.evidence();
        evidence.certificates[0] = vectors::read(file);
        assert_eq!(
            verify_with(&v, &evidence, &v.reference_values(), v.at),
            rejected(RejectReason::CertificateSignature {
                role: CertRole::Signer
            }),
            "{file}"
        );
    }
}

#[test]
fn only_allowed_chips_are_accepted_when_a_list_is_given() {
    let v = vectors::virtee_milan();
    let own = ChipId(*v.report().chip_id());
    let other = ChipId(*vectors::trustee_milan().report().chip_id());
    let entry = |chips: Vec<ChipId>| SnpReference {
        allowed_chip_ids: Some(chips),
        ..v.reference()
    };
    verify_entry(&v, entry(vec![other, own])).unwrap();
    assert_eq!(
        verify_entry(&v, entry(vec![other])),
        rejected(RejectReason::ChipIdNotAllowed)
    );
}

#[test]
fn report_data_other_than_the_expected_binding_is_rejected() {
    let v = vectors::trustee_genoa_e2e();
    let mut expected = v.report_data();
    expected[63] ^= 1;
    assert_eq!(
        verifier().verify(
            &v.evidence(),
            &v.reference_values(),
            &expected,
            &|_| true,
            v.at
        ),
        rejected(RejectReason::ReportDataMismatch)
    );
}

#[test]
fn host_data_the_caller_does_not_accept_is_rejected() {
    let v = vectors::azure_genoa();
    assert_eq!(
        verifier().verify(
            &v.evidence(),
            &v.reference_values(),
            &v.report_data(),
            &|_| false,
            v.at
        ),
        rejected(RejectReason::HostDataNotAccepted)
    );
}

#[test]
fn format_and_key_info_are_checked_first() {
    let v = vectors::virtee_milan();
    let check = |edit: fn(&mut Vec<u8>)| {
        verify_with(&v, &with_report(&v, edit), &v.reference_values(), v.at)
    };
    assert_eq!(
        check(|r| r[0x00] = 6),
        rejected(RejectReason::UnsupportedVersion(6))
    );
    assert_eq!(
        check(|r| r[0x00] = 1),
        rejected(RejectReason::UnsupportedVersion(1))
    );
    assert_eq!(
        check(|r| r[0x34] = 2),
        rejected(RejectReason::UnsupportedSignatureAlgorithm(2))
    );
    assert_eq!(
        check(|r| r[0x48] = 7 << 2),
        rejected(RejectReason::SigningKey(7))
    );
    // KEY_INFO says VLEK: the VCEK is not issued by the ASVK.
    assert_eq!(
        check(|r| r[0x48] = 1 << 2),
        rejected(RejectReason::CertificateChain {
            role: CertRole::Signer
        })
    );
}

#[test]
fn a_version_3_report_of_an_unknown_processor_is_rejected() {
    let v = vectors::trustee_genoa_e2e();
    let evidence = with_report(&v, |r| r[0x188] = 0x17);
    assert_eq!(
        verify_with(&v, &evidence, &v.reference_values(), v.at),
        rejected(RejectReason::UnknownProduct {
            family: 0x17,
            model: 0xA0
        })
    );
}

#[test]
fn one_accepting_entry_is_enough() {
    let milan = vectors::virtee_milan();
    let genoa = vectors::trustee_genoa_e2e();
    let reference = ReferenceValues {
        snp: vec![genoa.reference(), milan.reference()],
        simulated: vec![],
        tdx: vec![],
    };
    let verified = verify_with(&milan, &milan.evidence(), &reference, milan.at).unwrap();
    assert_eq!(verified.product(), Some(Product::Milan));
    let verified = verify_with(&genoa, &genoa.evidence(), &reference, genoa.at).unwrap();
    assert_eq!(verified.product(), Some(Product::Genoa));
}

#[test]
fn when_every_entry_rejects_the_own_product_entry_gives_the_reason() {
    let milan = vectors::virtee_milan();
    let genoa = vectors::trustee_genoa_e2e();
    let untrusted = SnpReference {
        trusted_measurements: vec![Measurement([0x5A; 48])],
        ..milan.reference()
    };
    let genoa_entry = genoa.reference();
    for snp in [
        vec![untrusted.clone(), genoa_entry.clone()],
        vec![genoa_entry.clone(), untrusted.clone()],
    ] {
        let reference = ReferenceValues {
            snp,
            simulated: vec![],
            tdx: vec![],
        };
        // Version 2: the product is the one whose ASK the VCEK names as issuer.
        assert_eq!(
            verify_with(&milan, &milan.evidence(), &reference, milan.at),
            rejected(RejectReason::MeasurementNotTrusted)
        );
    }
    // Version 3: the CPUID fields name the product.
    let strict_genoa = SnpReference {
        trusted_measurements: vec![Measurement([0x5A; 48])],
        ..genoa.reference()
    };
    let reference = ReferenceValues {
        snp: vec![milan.reference(), strict_genoa],
        simulated: vec![],
        tdx: vec![],
    };
    assert_eq!(
        verify_with(&genoa, &genoa.evidence(), &reference, genoa.at),
        rejected(RejectReason::MeasurementNotTrusted)
    );
    // No entry for the report's product: the first entry's reason.
    let turin = SnpReference {
        product: Product::Turin,
        ..milan.reference()
    };
    let reference = ReferenceValues {
        snp: vec![turin, genoa_entry],
        simulated: vec![],
        tdx: vec![],
    };
    assert_eq!(
        verify_with(&milan, &milan.evidence(), &reference, milan.at),
        rejected(RejectReason::CertificateChain {
            role: CertRole::Signer
        })
    );
}

#[test]
fn snp_evidence_needs_an_snp_entry() {
    let v = vectors::virtee_milan();
    assert_eq!(
        verify_with(&v, &v.evidence(), &ReferenceValues::default(), v.at),
        rejected(RejectReason::NoSnpReferenceValues)
    );
}

#[test]
fn snp_evidence_passes_a_static_policy_only_with_its_policy_hash_and_binding() {
    // What the CLI and the initializer check a coordinator with: the report's own report data as
    // the binding, its host data among the accepted policy hashes, at a pinned time.
    for v in [vectors::trustee_genoa_e2e(), vectors::virtee_milan()] {
        let own = *v.report().host_data();
        let mut other = own;
        other[0] ^= 1;
        let policy = |host_data: Vec<[u8; 32]>| concord_attestation::StaticPolicy {
            verifier: verifier(),
            reference: v.reference_values(),
            host_data,
            deployment: concord_attestation::DeploymentPin::Any,
        };
        let verified = policy(vec![other, own])
            .verify_at(&v.evidence(), &v.report_data(), v.at)
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(verified.host_data(), &own);
        assert_eq!(
            policy(vec![other]).verify_at(&v.evidence(), &v.report_data(), v.at),
            rejected(RejectReason::HostDataNotAccepted),
            "{}",
            v.name
        );
        let mut foreign = v.report_data();
        foreign[63] ^= 1;
        assert_eq!(
            policy(vec![own]).verify_at(&v.evidence(), &foreign, v.at),
            rejected(RejectReason::ReportDataMismatch),
            "{}",
            v.name
        );
    }
}
