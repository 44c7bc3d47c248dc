//! The order and the reasons of `snp::verify`. The chain is tested with real AMD certificates in
//! `amd_chain` and `tests/snp.rs`; here the checks after it run with a fake AMD-shaped signer, so
//! that each can be made to fail on its own, and Turin can be tested without a Turin report.

use std::time::SystemTime;

use super::*;
use crate::chain;
use crate::error::{CertRole, TcbComponent};
use crate::reference::{ChipId, Measurement, MinimumTcb};
use crate::report::{ReportBuilder, Tcb};
use crate::testing::snp::FakeAmdSigner;

fn e(reason: RejectReason) -> AttestationError {
    reason.into()
}

#[test]
fn the_rejection_of_the_own_product_entry_wins_whatever_the_order() {
    let rejections = || {
        vec![
            (Product::Genoa, e(RejectReason::MeasurementNotTrusted)),
            (Product::Milan, e(RejectReason::DebugAllowed)),
            (Product::Milan, e(RejectReason::ChipIdNotAllowed)),
        ]
    };
    assert_eq!(
        pick_rejection(Some(Product::Milan), rejections()),
        e(RejectReason::DebugAllowed)
    );
    assert_eq!(
        pick_rejection(Some(Product::Genoa), rejections()),
        e(RejectReason::MeasurementNotTrusted)
    );
    // No entry for the report's product, or no product known: the first entry's reason.
    assert_eq!(
        pick_rejection(Some(Product::Turin), rejections()),
        e(RejectReason::MeasurementNotTrusted)
    );
    assert_eq!(
        pick_rejection(None, rejections()),
        e(RejectReason::MeasurementNotTrusted)
    );
}

const MEASUREMENT: [u8; 48] = [0x4D; 48];
const HOST_DATA: [u8; 32] = [0x48; 32];
const REPORT_DATA: [u8; 64] = [0x52; 64];

/// A report of `product` as the firmware would write it, for the fake signer to sign.
struct Case {
    product: Product,
    kind: SignerKind,
    tcb: Tcb,
    chip_id: [u8; 64],
    builder: ReportBuilder,
    entry: SnpReference,
}

impl Case {
    fn new(product: Product, kind: SignerKind) -> Self {
        let (cpuid, tcb) = match product {
            Product::Milan => ((0x19, 0x01), Tcb::new(3, 0, 8, 115)),
            Product::Genoa => ((0x19, 0x11), Tcb::new(10, 0, 23, 84)),
            Product::Turin => ((0x1A, 0x02), Tcb::turin(1, 2, 0, 3, 77)),
        };
        let chip_id = match (kind, product) {
            (SignerKind::Vlek, _) => [0; 64],
            // Turin's chip ID is 8 bytes long, zero-padded in the report.
            (SignerKind::Vcek, Product::Turin) => {
                let mut id = [0; 64];
                id[..8].copy_from_slice(&[0xC1; 8]);
                id
            }
            (SignerKind::Vcek, _) => [0xC1; 64],
        };
        let raw_tcb = match product {
            Product::Turin => tcb.to_turin(),
            _ => tcb.to_milan_genoa(),
        };
        let key_info = match kind {
            SignerKind::Vcek => 0,
            SignerKind::Vlek => 1 << 2,
        };
        let builder = ReportBuilder::new()
            .version(3)
            .cpuid(cpuid.0, cpuid.1, 1)
            .key_info(key_info)
            .reported_tcb_raw(raw_tcb)
            .measurement(&MEASUREMENT)
            .host_data(&HOST_DATA)
            .report_data(&REPORT_DATA)
            .chip_id(&chip_id);
        let entry = SnpReference {
            product,
            trusted_measurements: vec![Measurement(MEASUREMENT)],
            minimum_tcb: MinimumTcb::from(tcb),
            allow_debug: false,
            allow_migration_agent: false,
            allowed_chip_ids: None,
        };
        Self {
            product,
            kind,
            tcb,
            chip_id,
            builder,
            entry,
        }
    }

    /// The length of a VCEK's hwID: 8 bytes on Turin, 64 elsewhere.
    fn hw_id_len(&self) -> usize {
        if self.product == Product::Turin {
            8
        } else {
            64
        }
    }

    /// The signer the firmware would have used: hwID and TCB of this case.
    fn signer(&self) -> FakeAmdSigner {
        match self.kind {
            SignerKind::Vcek => FakeAmdSigner::vcek(&self.chip_id[..self.hw_id_len()], self.tcb),
            SignerKind::Vlek => FakeAmdSigner::vlek(self.tcb),
        }
    }

    /// Signs the report with `signer` and runs the checks after the chain.
    fn check_with(&self, signer: &FakeAmdSigner) -> Result<VerifiedReport, AttestationError> {
        let mut raw = self.builder.clone().build_unsigned();
        signer.sign(&mut raw);
        let report = Report::parse(&raw).unwrap();
        let chained = ChainedSigner {
            cert: chain::parse_cert(&signer.der, CertRole::Signer).unwrap(),
            key: crate::chain::P384Key::from_p384(signer.key.verifying_key()),
            window: crate::chain::Window::of(
                &chain::parse_cert(&signer.der, CertRole::Signer).unwrap(),
            ),
        };
        let expect = Expectations {
            report_data: &REPORT_DATA,
            accept_host_data: &|h| h == &HOST_DATA,
            now: SystemTime::now(),
            revocation: SnpRevocation::NotChecked,
        };
        let kind = SignerKind::of_report(&report)?;
        check_signed_report(&report, kind, &chained, &self.entry, &expect)
    }

    fn check(&self) -> Result<VerifiedReport, AttestationError> {
        self.check_with(&self.signer())
    }

    fn edit(mut self, f: impl FnOnce(ReportBuilder) -> ReportBuilder) -> Self {
        self.builder = f(self.builder);
        self
    }
}

#[test]
fn a_consistent_report_passes_for_each_product_and_key_kind() {
    for product in roots::PRODUCTS {
        for kind in [SignerKind::Vcek, SignerKind::Vlek] {
            let case = Case::new(product, kind);
            let verified = case
                .check()
                .unwrap_or_else(|e| panic!("{product:?} {kind}: {e}"));
            assert_eq!(verified.product(), Some(product));
            assert_eq!(verified.reported_tcb(), case.tcb);
        }
    }
}

#[test]
fn turin_reports_carry_an_fmc_and_it_has_a_minimum() {
    let case = Case::new(Product::Turin, SignerKind::Vcek);
    assert_eq!(case.check().unwrap().reported_tcb().fmc, Some(1));
    let mut strict = Case::new(Product::Turin, SignerKind::Vcek);
    strict.entry.minimum_tcb.fmc = Some(2);
    assert_eq!(
        strict.check(),
        Err(e(RejectReason::TcbBelowMinimum {
            component: TcbComponent::Fmc,
            reported: 1,
            minimum: 2
        }))
    );
}

#[test]
fn a_vcek_for_another_chip_is_rejected() {
    for product in roots::PRODUCTS {
        let case = Case::new(product, SignerKind::Vcek);
        let other = FakeAmdSigner::vcek(&[0xC2; 64][..case.hw_id_len()], case.tcb);
        assert_eq!(
            case.check_with(&other),
            Err(e(RejectReason::ChipIdMismatch)),
            "{product:?}"
        );
    }
}

#[test]
fn a_key_issued_for_another_tcb_is_rejected() {
    for kind in [SignerKind::Vcek, SignerKind::Vlek] {
        let case = Case::new(Product::Milan, kind);
        let newer = Tcb::new(3, 0, 9, 115);
        let signer = match kind {
            SignerKind::Vcek => FakeAmdSigner::vcek(&case.chip_id, newer),
            SignerKind::Vlek => FakeAmdSigner::vlek(newer),
        };
        assert_eq!(
            case.check_with(&signer),
            Err(e(RejectReason::CertificateTcbMismatch {
                component: TcbComponent::Snp
            })),
            "{kind}"
        );
    }
    let turin = Case::new(Product::Turin, SignerKind::Vcek);
    let other_fmc = FakeAmdSigner::vcek(&turin.chip_id[..8], Tcb::turin(0, 2, 0, 3, 77));
    assert_eq!(
        turin.check_with(&other_fmc),
        Err(e(RejectReason::CertificateTcbMismatch {
            component: TcbComponent::Fmc
        }))
    );
}

#[test]
fn a_vcek_without_the_amd_extensions_is_rejected() {
    let case = Case::new(Product::Milan, SignerKind::Vcek);
    // The VLEK-shaped certificate has no hwID; a VCEK report needs one.
    assert_eq!(
        case.check_with(&FakeAmdSigner::vlek(case.tcb)),
        Err(e(RejectReason::SignerExtension("hwID")))
    );
}

#[test]
fn a_report_with_reserved_bits_set_is_refused_by_the_second_reading() {
    // Signed over the raw bytes, so Concord's own signature check passes; sev refuses it.
    let case = Case::new(Product::Genoa, SignerKind::Vcek);
    let signer = case.signer();
    let mut raw = case.builder.clone().build_unsigned();
    raw[0x4C] = 1;
    signer.sign(&mut raw);
    let report = Report::parse(&raw).unwrap();
    let chained = ChainedSigner {
        cert: chain::parse_cert(&signer.der, CertRole::Signer).unwrap(),
        key: crate::chain::P384Key::from_p384(signer.key.verifying_key()),
        window: crate::chain::Window::of(
            &chain::parse_cert(&signer.der, CertRole::Signer).unwrap(),
        ),
    };
    let expect = Expectations {
        report_data: &REPORT_DATA,
        accept_host_data: &|_| true,
        now: SystemTime::now(),
        revocation: SnpRevocation::NotChecked,
    };
    assert_eq!(
        check_signed_report(&report, SignerKind::Vcek, &chained, &case.entry, &expect),
        Err(e(RejectReason::ReportCrossCheck(
            "it cannot parse the report"
        )))
    );
}

#[test]
fn each_guest_and_reference_check_names_its_reason() {
    let case = || Case::new(Product::Genoa, SignerKind::Vcek);
    let expect = |c: Case, reason: RejectReason| assert_eq!(c.check(), Err(e(reason)));

    expect(case().edit(|b| b.vmpl(2)), RejectReason::Vmpl(2));
    expect(
        case().edit(|b| b.policy(0x30000 | 1 << 19)),
        RejectReason::DebugAllowed,
    );
    expect(
        case().edit(|b| b.policy(0x30000 | 1 << 18)),
        RejectReason::MigrationAgentAllowed,
    );
    let mut debug_allowed = case().edit(|b| b.policy(0x30000 | 1 << 19 | 1 << 18));
    debug_allowed.entry.allow_debug = true;
    debug_allowed.entry.allow_migration_agent = true;
    debug_allowed.check().unwrap();

    let mut old_microcode = case();
    old_microcode.entry.minimum_tcb.microcode = 85;
    expect(
        old_microcode,
        RejectReason::TcbBelowMinimum {
            component: TcbComponent::Microcode,
            reported: 84,
            minimum: 85,
        },
    );
    expect(
        case().edit(|b| b.measurement(&[0; 48])),
        RejectReason::MeasurementNotTrusted,
    );
    expect(
        case().edit(|b| b.host_data(&[0; 32])),
        RejectReason::HostDataNotAccepted,
    );
    expect(
        case().edit(|b| b.report_data(&[0; 64])),
        RejectReason::ReportDataMismatch,
    );
    let mut other_chips = case();
    other_chips.entry.allowed_chip_ids = Some(vec![ChipId([0xC2; 64])]);
    expect(other_chips, RejectReason::ChipIdNotAllowed);
    let mut this_chip = case();
    this_chip.entry.allowed_chip_ids = Some(vec![ChipId([0xC1; 64])]);
    this_chip.check().unwrap();
}

#[test]
fn a_vlek_report_with_a_zero_chip_id_fails_an_allowed_chip_list() {
    let mut case = Case::new(Product::Milan, SignerKind::Vlek);
    case.check().unwrap();
    case.entry.allowed_chip_ids = Some(vec![ChipId([0xC1; 64])]);
    assert_eq!(case.check(), Err(e(RejectReason::ChipIdNotAllowed)));
}
