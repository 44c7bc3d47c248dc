//! Intel TDX quote verification with a real quote and Intel's collateral for it
//! (src/tdx/vectors/README.md): the quote is accepted at a pinned time inside the collateral's window
//! with reference values built for it, and every check rejects with its own reason, so that a check
//! switched off would fail the test that names it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use concord_attestation::reference::{RtmrIndex, TeeTcbSvn};
use concord_attestation::tdx::{self, Collateral, Expectations, Quote, VerifiedQuote};
use concord_attestation::{
    AttestationError, Measurement, RejectReason, TdxReference, TdxTcbStatus,
};

const QUOTE: &[u8] = include_bytes!("../src/tdx/vectors/tdx_quote");
const COLLATERAL: &[u8] = include_bytes!("../src/tdx/vectors/tdx_quote_collateral.json");

/// 2025-07-01T00:00:00Z: inside [2025-06-19T10:32:27Z, 2025-07-19T10:16:03Z].
fn pinned_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_751_328_000)
}

fn collateral() -> Collateral {
    Collateral::from_json(COLLATERAL).unwrap()
}

fn parsed() -> Quote {
    Quote::parse(QUOTE).unwrap()
}

/// The reference values entry that accepts the real quote: its own measurements, TCB SVN and
/// MRSEAM, and Intel's status for its platform at the pinned time.
fn matching_entry() -> TdxReference {
    let r = parsed().report;
    let rtmr: BTreeMap<RtmrIndex, Vec<Measurement>> = [
        (RtmrIndex::Rtmr0, r.rtmr[0]),
        (RtmrIndex::Rtmr1, r.rtmr[1]),
        (RtmrIndex::Rtmr2, r.rtmr[2]),
        (RtmrIndex::Rtmr3, r.rtmr[3]),
    ]
    .into_iter()
    .map(|(i, v)| (i, vec![Measurement(v)]))
    .collect();
    TdxReference {
        trusted_mrtd: vec![Measurement(r.mrtd)],
        rtmr: Some(rtmr),
        trusted_mrseam: Some(vec![Measurement(r.mrseam)]),
        minimum_tee_tcb_svn: Some(TeeTcbSvn(r.tee_tcb_svn)),
        allowed_tcb_statuses: vec![TdxTcbStatus::UpToDate, TdxTcbStatus::OutOfDate],
        allow_debug: false,
    }
}

fn policy_hash_of(report: &tdx::TdReport) -> [u8; 32] {
    report.mrconfigid[..32].try_into().unwrap()
}

fn verify_full(
    quote: &[u8],
    collateral: &Collateral,
    entry: &TdxReference,
    report_data: &[u8; 64],
    accept: &dyn Fn(&[u8; 32]) -> bool,
    at: SystemTime,
) -> Result<VerifiedQuote, AttestationError> {
    tdx::verify(
        quote,
        collateral,
        std::slice::from_ref(entry),
        &Expectations {
            report_data,
            accept_policy_hash: accept,
            now: at,
        },
    )
}

fn verify_entry(entry: &TdxReference) -> Result<VerifiedQuote, AttestationError> {
    let r = parsed().report;
    let hash = policy_hash_of(&r);
    verify_full(
        QUOTE,
        &collateral(),
        entry,
        &r.report_data,
        &|h| h == &hash,
        pinned_time(),
    )
}

fn rejected(result: Result<VerifiedQuote, AttestationError>) -> RejectReason {
    match result {
        Err(AttestationError::Rejected(reason)) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn the_real_quote_is_accepted_at_a_pinned_time() {
    let verified = verify_entry(&matching_entry()).unwrap();
    assert_eq!(verified.version, 4);
    assert_eq!(verified.fmspc, "b0c06f000000");
    let claims = verified.claims();
    assert_eq!(claims.td_attributes, "0000001000000000");
    assert_eq!(claims.mrtd, hex::encode(parsed().report.mrtd));
    assert_eq!(claims.fmspc.as_deref(), Some("b0c06f000000"));
    assert!(claims.tcb_status.is_some());
    eprintln!(
        "TCB status {:?}, advisories {:?}",
        verified.tcb_status, verified.advisory_ids
    );
}

#[test]
fn mrtd_not_trusted() {
    let mut e = matching_entry();
    e.trusted_mrtd = vec![Measurement([7; 48])];
    assert_eq!(rejected(verify_entry(&e)), RejectReason::TdxMrtdNotTrusted);
}

#[test]
fn an_rtmr_not_allowed() {
    for (index, n) in [(RtmrIndex::Rtmr0, 0), (RtmrIndex::Rtmr3, 3)] {
        let mut e = matching_entry();
        e.rtmr
            .as_mut()
            .unwrap()
            .insert(index, vec![Measurement([1; 48])]);
        assert_eq!(
            rejected(verify_entry(&e)),
            RejectReason::TdxRtmrNotAllowed(n)
        );
    }
    // A register not named is not checked.
    let mut e = matching_entry();
    e.rtmr.as_mut().unwrap().remove(&RtmrIndex::Rtmr2);
    verify_entry(&e).unwrap();
}

#[test]
fn mrseam_not_trusted() {
    let mut e = matching_entry();
    e.trusted_mrseam = Some(vec![Measurement([2; 48])]);
    assert_eq!(
        rejected(verify_entry(&e)),
        RejectReason::TdxMrseamNotTrusted
    );
}

#[test]
fn mrconfigid_naming_no_policy() {
    let r = parsed().report;
    let result = verify_full(
        QUOTE,
        &collateral(),
        &matching_entry(),
        &r.report_data,
        &|_| false,
        pinned_time(),
    );
    assert_eq!(rejected(result), RejectReason::TdxMrConfigIdNotAccepted);
}

#[test]
fn tee_tcb_svn_below_the_minimum() {
    let mut e = matching_entry();
    let mut min = parsed().report.tee_tcb_svn;
    let index = min.iter().position(|&b| b < 255).unwrap();
    min[index] += 1;
    e.minimum_tee_tcb_svn = Some(TeeTcbSvn(min));
    assert_eq!(
        rejected(verify_entry(&e)),
        RejectReason::TdxTeeTcbSvnBelowMinimum {
            index: index as u8,
            reported: min[index] - 1,
            minimum: min[index],
        }
    );
}

#[test]
fn a_tcb_status_not_allowed() {
    let status = verify_entry(&matching_entry()).unwrap().tcb_status;
    let mut e = matching_entry();
    e.allowed_tcb_statuses.retain(|s| *s != status);
    if e.allowed_tcb_statuses.is_empty() {
        e.allowed_tcb_statuses = vec![TdxTcbStatus::ConfigurationNeeded];
    }
    assert_eq!(
        rejected(verify_entry(&e)),
        RejectReason::TdxTcbStatusNotAllowed(status.as_str().to_owned())
    );
}

#[test]
fn collateral_after_next_update_or_before_issue_date() {
    let r = parsed().report;
    let hash = policy_hash_of(&r);
    let at = |secs| {
        verify_full(
            QUOTE,
            &collateral(),
            &matching_entry(),
            &r.report_data,
            &|h| h == &hash,
            UNIX_EPOCH + Duration::from_secs(secs),
        )
    };
    // One second after the TCB info's nextUpdate (2025-07-19T10:16:03Z).
    assert_eq!(
        rejected(at(1_752_920_164)),
        RejectReason::TdxCollateralExpired("TCB info")
    );
    // One second before the TCB info's issueDate (2025-06-19T10:16:03Z).
    assert_eq!(
        rejected(at(1_750_328_162)),
        RejectReason::TdxCollateralNotYetValid("TCB info")
    );
    // Between the two issue dates: the QE identity is not valid yet.
    assert_eq!(
        rejected(at(1_750_329_000)),
        RejectReason::TdxCollateralNotYetValid("QE identity")
    );
    // The window opens at the QE identity's issueDate. It closes before the TCB info's nextUpdate:
    // a CRL of the vector is stale from 2025-07-19T10:00:35Z (its nextUpdate), and a stale CRL
    // rejects too.
    at(1_750_329_147).unwrap();
    at(1_752_919_234).unwrap();
    assert!(matches!(
        rejected(at(1_752_919_235)),
        RejectReason::TdxCrl(message) if message.contains("CrlExpired")
    ));
}

/// Replaces the first `from` in a JSON text field by `to` (same length, so the JSON stays valid).
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from} not in the collateral");
    text.replacen(from, to, 1)
}

#[test]
fn a_flipped_byte_in_tcb_info_or_qe_identity() {
    let mut c = collateral();
    c.tcb_info = edit(
        &c.tcb_info,
        "\"tcbEvaluationDataNumber\":17",
        "\"tcbEvaluationDataNumber\":18",
    );
    assert_eq!(
        rejected(verify_entry_with(&c)),
        RejectReason::TdxCollateralSignature("TCB info")
    );
    let mut c = collateral();
    c.qe_identity = edit(
        &c.qe_identity,
        "\"tcbEvaluationDataNumber\":17",
        "\"tcbEvaluationDataNumber\":16",
    );
    assert_eq!(
        rejected(verify_entry_with(&c)),
        RejectReason::TdxCollateralSignature("QE identity")
    );
    // A flipped bit in a signature.
    let mut c = collateral();
    let mut sig = hex::decode(&c.tcb_info_signature).unwrap();
    sig[10] ^= 1;
    c.tcb_info_signature = hex::encode(sig);
    assert_eq!(
        rejected(verify_entry_with(&c)),
        RejectReason::TdxCollateralSignature("TCB info")
    );
    let mut c = collateral();
    let mut sig = hex::decode(&c.qe_identity_signature).unwrap();
    sig[40] ^= 0x80;
    c.qe_identity_signature = hex::encode(sig);
    assert_eq!(
        rejected(verify_entry_with(&c)),
        RejectReason::TdxCollateralSignature("QE identity")
    );
}

fn verify_entry_with(c: &Collateral) -> Result<VerifiedQuote, AttestationError> {
    let r = parsed().report;
    let hash = policy_hash_of(&r);
    verify_full(
        QUOTE,
        c,
        &matching_entry(),
        &r.report_data,
        &|h| h == &hash,
        pinned_time(),
    )
}

#[test]
fn other_report_data() {
    let r = parsed().report;
    let hash = policy_hash_of(&r);
    let mut other = r.report_data;
    other[63] ^= 1;
    let result = verify_full(
        QUOTE,
        &collateral(),
        &matching_entry(),
        &other,
        &|h| h == &hash,
        pinned_time(),
    );
    assert_eq!(rejected(result), RejectReason::ReportDataMismatch);
}

#[test]
fn a_truncated_quote_and_an_unknown_version() {
    let r = parsed().report;
    let hash = policy_hash_of(&r);
    let run = |q: &[u8]| {
        verify_full(
            q,
            &collateral(),
            &matching_entry(),
            &r.report_data,
            &|h| h == &hash,
            pinned_time(),
        )
    };
    for n in [0, 47, 100, 631, 632, 700, QUOTE.len() - 71] {
        assert_eq!(
            rejected(run(&QUOTE[..n])),
            RejectReason::TdxQuoteTruncated,
            "{n} bytes"
        );
    }
    for version in [0u16, 3, 6, 0xffff] {
        let mut q = QUOTE.to_vec();
        q[..2].copy_from_slice(&version.to_le_bytes());
        assert_eq!(rejected(run(&q)), RejectReason::TdxQuoteVersion(version));
    }
}

#[test]
fn the_quote_signature_and_the_qe_report() {
    // The signature data: u32 length at 632, then the 64-byte quote signature, the 64-byte attestation
    // key, then the certification data (type 6): the 384-byte QE report, its 64-byte signature, ...
    let sig_at = 632 + 4;
    let r = parsed().report;
    let hash = policy_hash_of(&r);
    let run = |q: &[u8]| {
        verify_full(
            q,
            &collateral(),
            &matching_entry(),
            &r.report_data,
            &|h| h == &hash,
            pinned_time(),
        )
    };
    let mut q = QUOTE.to_vec();
    q[sig_at + 5] ^= 1;
    assert_eq!(rejected(run(&q)), RejectReason::TdxQuoteSignature);
    // The attestation key: the QE report no longer binds it.
    let mut q = QUOTE.to_vec();
    q[sig_at + 64 + 3] ^= 1;
    assert_eq!(rejected(run(&q)), RejectReason::TdxAttestationKeyBinding);
    // The QE report (after the type-6 header: u16 type, u32 size).
    let qe_report_at = sig_at + 128 + 6;
    let mut q = QUOTE.to_vec();
    q[qe_report_at + 320 + 1] ^= 1; // its report data
    assert_eq!(rejected(run(&q)), RejectReason::TdxQeReportSignature);
}

/// Exhaustive: no single-bit flip in the signed header and TD report body is accepted.
#[test]
fn no_single_bit_flip_in_the_signed_part_is_accepted() {
    let signed_len = parsed().signed_len;
    let c = collateral();
    let entry = matching_entry();
    let r = parsed().report;
    let hash = policy_hash_of(&r);
    let mut q = QUOTE.to_vec();
    let mut reasons = BTreeMap::<&'static str, usize>::new();
    for byte in 0..signed_len {
        for bit in 0..8 {
            q[byte] ^= 1 << bit;
            let result = verify_full(
                &q,
                &c,
                &entry,
                &r.report_data,
                &|h| h == &hash,
                pinned_time(),
            );
            q[byte] ^= 1 << bit;
            let label = match result {
                Ok(_) => panic!("accepted with bit {bit} of byte {byte} flipped"),
                Err(AttestationError::Rejected(reason)) => reason.metric_label(),
                Err(AttestationError::Malformed { .. }) => "malformed",
                Err(other) => panic!("byte {byte} bit {bit}: {other}"),
            };
            *reasons.entry(label).or_default() += 1;
        }
    }
    eprintln!("{reasons:?}");
    assert_eq!(reasons.values().sum::<usize>(), signed_len * 8);
}

// A test hierarchy (tdx::simulated): Intel's keys cannot sign a CRL or a debug quote for a test,
// so these are made by keys the test holds, with the template platform's parts.

mod hierarchy {
    use super::*;
    use concord_attestation::tdx::simulated::SimulatedTdx;
    use time::OffsetDateTime;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn hierarchy() -> SimulatedTdx {
        SimulatedTdx::generate(
            now() - time::Duration::days(1),
            now() + time::Duration::days(30),
        )
        .unwrap()
    }

    fn report(debug: bool) -> tdx::TdReport {
        let mut r = SimulatedTdx::template_report().unwrap();
        r.mrtd = [0x11; 48];
        r.mrconfigid = [0; 48];
        r.mrconfigid[..32].copy_from_slice(&[0x22; 32]);
        r.report_data = [0x33; 64];
        if debug {
            r.td_attributes |= 1;
        }
        r
    }

    fn entry() -> TdxReference {
        TdxReference {
            trusted_mrtd: vec![Measurement([0x11; 48])],
            rtmr: None,
            trusted_mrseam: None,
            minimum_tee_tcb_svn: None,
            allowed_tcb_statuses: vec![TdxTcbStatus::UpToDate, TdxTcbStatus::OutOfDate],
            allow_debug: false,
        }
    }

    fn run(
        h: &SimulatedTdx,
        quote: &[u8],
        collateral: &Collateral,
        entry: &TdxReference,
    ) -> Result<VerifiedQuote, AttestationError> {
        tdx::verify_with_root(
            quote,
            collateral,
            h.root_der(),
            std::slice::from_ref(entry),
            &Expectations {
                report_data: &[0x33; 64],
                accept_policy_hash: &|h| h == &[0x22; 32],
                now: SystemTime::now(),
            },
        )
    }

    fn fresh(h: &SimulatedTdx, revoke_pck: bool) -> Collateral {
        h.collateral(
            now() - time::Duration::hours(2),
            now() + time::Duration::days(1),
            revoke_pck,
        )
        .unwrap()
    }

    #[test]
    fn a_quote_of_the_test_hierarchy_is_accepted_and_intel_root_refuses_it() {
        let h = hierarchy();
        let quote = h.quote(&report(false)).unwrap();
        let c = fresh(&h, false);
        let verified = run(&h, &quote, &c, &entry()).unwrap();
        assert_eq!(verified.report.mrtd, [0x11; 48]);
        assert_eq!(verified.policy_hash(), [0x22; 32]);
        // Against Intel's pinned root, the same quote and collateral do not verify.
        let result = tdx::verify(
            &quote,
            &c,
            &[entry()],
            &Expectations {
                report_data: &[0x33; 64],
                accept_policy_hash: &|_| true,
                now: SystemTime::now(),
            },
        );
        assert!(
            matches!(result, Err(AttestationError::Rejected(_))),
            "{result:?}"
        );
    }

    #[test]
    fn a_version_5_quote_is_accepted_and_its_body_descriptor_is_signed() {
        let h = hierarchy();
        let quote = h.quote_of_version(&report(false), 5).unwrap();
        assert_eq!(u16::from_le_bytes([quote[0], quote[1]]), 5);
        let c = fresh(&h, false);
        let verified = run(&h, &quote, &c, &entry()).unwrap();
        assert_eq!(verified.version, 5);
        assert_eq!(verified.report.mrtd, [0x11; 48]);
        // The body descriptor and a byte of the body are covered by the signature.
        for at in [48, 50, 54 + 200] {
            let mut q = quote.clone();
            q[at] ^= 1;
            assert!(run(&h, &q, &c, &entry()).is_err(), "byte {at}");
        }
    }

    #[test]
    fn a_pck_listed_in_the_pck_crl_is_rejected() {
        let h = hierarchy();
        let quote = h.quote(&report(false)).unwrap();
        assert_eq!(
            rejected(run(&h, &quote, &fresh(&h, true), &entry())),
            RejectReason::TdxCertificateRevoked
        );
    }

    #[test]
    fn debug_when_not_allowed() {
        let h = hierarchy();
        let quote = h.quote(&report(true)).unwrap();
        let c = fresh(&h, false);
        assert_eq!(
            rejected(run(&h, &quote, &c, &entry())),
            RejectReason::TdxDebug
        );
        let mut allowing = entry();
        allowing.allow_debug = true;
        run(&h, &quote, &c, &allowing).unwrap();
    }

    #[test]
    fn stale_collateral_of_the_test_hierarchy_is_rejected() {
        let h = hierarchy();
        let quote = h.quote(&report(false)).unwrap();
        // Collateral whose nextUpdate was an hour ago.
        let c = h
            .collateral(
                now() - time::Duration::days(2),
                now() - time::Duration::hours(1),
                false,
            )
            .unwrap();
        let result = run(&h, &quote, &c, &entry());
        assert_eq!(
            rejected(result),
            RejectReason::TdxCollateralExpired("TCB info")
        );
    }
}

/// How many real quotes one thread verifies per second with their collateral (PCK chain and CRLs,
/// TCB info, QE identity, QE report, quote signature, TCB level, policy). A measurement, not a
/// check: `cargo test -p concord-attestation --test tdx throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput_of_real_quote_verification() {
    let entry = matching_entry();
    let c = collateral();
    let r = parsed().report;
    let hash = policy_hash_of(&r);
    let start = std::time::Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(3) {
        verify_full(
            QUOTE,
            &c,
            &entry,
            &r.report_data,
            &|h| h == &hash,
            pinned_time(),
        )
        .unwrap();
        n += 1;
    }
    let per_second = f64::from(n) / start.elapsed().as_secs_f64();
    eprintln!("{per_second:.0} TDX quote verifications per second (one thread)");
}
