//! Entry points for the fuzz targets (`fuzz/`, feature `fuzzing`) into parsers that are private
//! here: the SEV-SNP checks that run only after the signer chains to a pinned AMD root (the VCEK
//! extensions, the `sev` crate's second reading, TCB decoding), and the aTLS peer certificate check.
//!
//! A fuzzer cannot forge an AMD chain or a report signature, so through [`crate::Verifier`] alone
//! it would never reach the code behind them; these functions run that code on unchained input.
//! They must never be used to accept anything: they return nothing but whether they panicked.

use std::time::SystemTime;

use rustls::pki_types::CertificateDer;

use crate::atls::peer::PeerSlot;
use crate::atls::{AcceptPolicy, NONCE_LEN};
use crate::chain;
use crate::claims::{self, GuestRules};
use crate::error::CertRole;
use crate::reference::{MinimumTcb, SnpReference};
use crate::report::Report;
use crate::snp::{self, SignerKind, cross_check, extensions, roots, tcb};

/// Every check of an SNP report that follows the chain, on `report` and `signer_der` as given:
/// the checks in the verifier's order for each entry of `entries` (stopping at the report
/// signature, as the verifier does), then each parser on its own so the fuzzer reaches them
/// without a valid signature.
pub fn snp_unchained(
    report: &[u8],
    signer_der: &[u8],
    entries: &[SnpReference],
    report_data: &[u8; 64],
    now: SystemTime,
) {
    let Ok(report) = Report::parse(report) else {
        return;
    };
    let _ = claims::check_format(&report);
    let _ = snp::reported_product(&report);
    let kind = SignerKind::of_report(&report).unwrap_or(SignerKind::Vcek);
    let Ok(cert) = chain::parse_cert(signer_der, CertRole::Signer) else {
        return;
    };
    if let Ok(key) = chain::p384_key(&cert, CertRole::Signer) {
        let signer = snp::amd_chain::ChainedSigner {
            window: chain::Window::of(&cert),
            cert: cert.clone(),
            key,
        };
        for entry in entries {
            let _ = snp::check_signed_report(
                &report,
                kind,
                &signer,
                entry,
                &snp::Expectations {
                    report_data,
                    accept_host_data: &|_| true,
                    now,
                    revocation: snp::SnpRevocation::NotChecked,
                },
            );
        }
    }
    let _ = roots::product_issuing(kind, signer_der);
    for product in roots::PRODUCTS {
        let reported = tcb::reported(&report, product);
        let _ = extensions::check_hw_id(&cert, &report, product);
        let _ = extensions::check_tcb(&cert, reported, product);
        let _ = cross_check::check_with_sev(&report, product);
        let _ = tcb::check_minimum(reported, &MinimumTcb::from(reported));
    }
    let _ = claims::check_guest(
        &report,
        GuestRules {
            allow_debug: false,
            allow_migration_agent: false,
        },
    );
}

/// What an aTLS client or server does with the peer's certificate before the handshake signature:
/// extract the evidence, bind it to the SPKI and `nonce`, and verify it with `policy`. Whether the
/// certificate passed.
pub fn atls_peer_certificate(
    policy: &dyn AcceptPolicy,
    nonce: &[u8; NONCE_LEN],
    cert_der: &[u8],
) -> bool {
    PeerSlot::default()
        .check_certificate(policy, nonce, &CertificateDer::from(cert_der))
        .is_ok()
}

/// An aTLS certificate for `key` carrying `issuer`'s evidence bound to `nonce`, as a server or
/// client presents it: for seed inputs of the aTLS target.
pub fn atls_certificate(
    issuer: &dyn crate::EvidenceIssuer,
    key: &rcgen::KeyPair,
    nonce: &[u8; NONCE_LEN],
) -> Result<Vec<u8>, crate::AttestationError> {
    crate::atls::cert::make_certificate(issuer, key, nonce, &crate::atls::DeploymentId::UNPINNED)
        .map(|c| c.to_vec())
}

/// AMD's CRL check (`snp::crl`) on `crl` as given, against the pinned Milan ARK and ASK, with the
/// ASK standing in for the signer: parsing, the issuer and signature checks, the revoked-serial
/// scan and the freshness check, at `now`. Reaching past the ARK's signature is not possible for a
/// fuzzer (AMD's key), so [`crate::fuzzing`]'s rule holds: nothing is accepted here.
pub fn amd_crl(crl: &[u8], now: SystemTime) {
    let _ = snp::crl::parse(crl);
    let [ark, ask] = snp::pinned_chain(crate::Product::Milan, SignerKind::Vcek);
    let (Ok((_, ark)), Ok((_, ask))) = (
        x509_parser::parse_x509_certificate(ark),
        x509_parser::parse_x509_certificate(ask),
    ) else {
        return;
    };
    for accept_stale_for in [
        std::time::Duration::ZERO,
        std::time::Duration::from_secs(86_400),
    ] {
        let _ = snp::crl::check(
            &[crl.to_vec()],
            &ark,
            &ask,
            &ask,
            now,
            snp::SnpRevocation::Required { accept_stale_for },
        );
    }
}
