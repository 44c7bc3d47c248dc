//! The AMD certificate chain of a report's signer: ARK (self-signed) → ASK or ASVK → VCEK or VLEK,
//! every link RSASSA-PSS with SHA-384 under a 4096-bit RSA key, every certificate valid at the
//! time of check.
//!
//! Owns establishing the signer's P-384 key from the pinned roots of one product. Signatures are
//! checked link by link (no path builder: AMD's certificates have serial 0 and no key identifiers,
//! which strict X.509 path validation rejects on purpose); the RSA arithmetic is the `sev` crate's,
//! over a certificate it must read exactly as `x509-parser` does. It must never accept a root or
//! intermediate other than the pinned ones, and never judge the report: that is `snp::verify`'s.

use std::sync::OnceLock;
use std::time::SystemTime;

use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{OID_NIST_HASH_SHA384, OID_PKCS1_RSASSAPSS};
use x509_parser::public_key::PublicKey;
use x509_parser::signature_algorithm::SignatureAlgorithm;
use x509_parser::x509::AlgorithmIdentifier;

use crate::chain;
use crate::error::{AttestationError, CertRole, RejectReason};
use crate::reference::Product;
use crate::snp::roots::{self, PinnedChain};
use crate::snp::signer::SignerKind;

/// The RSA modulus length of AMD's ARK, ASK and ASVK.
const AMD_RSA_BITS: usize = 4096;
/// The PSS salt length AMD uses: the SHA-384 output length.
pub(crate) const PSS_SALT_LEN: u32 = 48;
/// id-mgf1 (RFC 8017).
const OID_MGF1: &str = "1.2.840.113549.1.1.8";

/// A signer certificate that chains to a pinned ARK, and its key.
#[derive(Debug)]
pub(crate) struct ChainedSigner<'a> {
    /// The VCEK or VLEK, parsed.
    pub(crate) cert: X509Certificate<'a>,
    /// Its ECDSA P-384 key, which must have signed the report.
    pub(crate) key: chain::P384Key,
    /// When the whole chain (ARK, intermediate, signer) is valid.
    pub(crate) window: chain::Window,
}

/// Checks `signer_der` (a VCEK for `kind` VCEK, a VLEK for VLEK) up to the ARK of `product` at
/// `now`. `sent` are the certificates the evidence carried after the signer: none, the
/// intermediate, or the intermediate and the ARK, each byte for byte the pinned one.
pub(crate) fn verify_signer<'a>(
    product: Product,
    kind: SignerKind,
    signer_der: &'a [u8],
    sent: &[Vec<u8>],
    now: SystemTime,
) -> Result<ChainedSigner<'a>, AttestationError> {
    let pinned = roots::pinned(product);
    check_sent_chain(pinned, kind, sent)?;
    let (ark_der, intermediate_der) = (pinned.ark, pinned.intermediate(kind));
    let ark = parse_pinned(ark_der)?;
    let intermediate = parse_pinned(intermediate_der)?;
    let signer = chain::parse_cert(signer_der, CertRole::Signer)?;

    check_pinned_links(
        product,
        kind,
        (ark_der, &ark),
        (intermediate_der, &intermediate),
    )?;
    check_link(
        (signer_der, &signer),
        CertRole::Signer,
        (intermediate_der, &intermediate),
    )?;
    chain::check_validity(&ark, CertRole::Root, now)?;
    chain::check_validity(&intermediate, CertRole::Intermediate, now)?;
    chain::check_validity(&signer, CertRole::Signer, now)?;

    let key = chain::p384_key(&signer, CertRole::Signer)?;
    let window = chain::Window::of(&ark)
        .and(chain::Window::of(&intermediate))
        .and(chain::Window::of(&signer));
    Ok(ChainedSigner {
        cert: signer,
        key,
        window,
    })
}

/// AMD's CRLs sent with the evidence (`crls`) revoke neither the pinned intermediate for `kind`
/// nor `signer`, as `expect.revocation` requires (`crl::check`).
pub(crate) fn check_revocation(
    product: Product,
    kind: SignerKind,
    signer: &ChainedSigner<'_>,
    crls: &[Vec<u8>],
    expect: &crate::snp::Expectations<'_>,
) -> Result<Option<i64>, AttestationError> {
    if expect.revocation == crate::snp::SnpRevocation::NotChecked {
        return Ok(None);
    }
    let pinned = roots::pinned(product);
    let ark = parse_pinned(pinned.ark)?;
    let intermediate = parse_pinned(pinned.intermediate(kind))?;
    crate::snp::crl::check(
        crls,
        &ark,
        &intermediate,
        &signer.cert,
        expect.now,
        expect.revocation,
    )
}

/// The ARK is self-signed and signs the intermediate. Both are pinned bytes, so the outcome cannot
/// change while the process runs: checked once per product and key kind, then remembered.
fn check_pinned_links(
    product: Product,
    kind: SignerKind,
    ark: (&[u8], &X509Certificate<'_>),
    intermediate: (&[u8], &X509Certificate<'_>),
) -> Result<(), AttestationError> {
    static CHECKED: [[OnceLock<Result<(), AttestationError>>; 2]; 3] =
        [const { [const { OnceLock::new() }; 2] }; 3];
    let product_index = match product {
        Product::Milan => 0,
        Product::Genoa => 1,
        Product::Turin => 2,
    };
    let kind_index = match kind {
        SignerKind::Vcek => 0,
        SignerKind::Vlek => 1,
    };
    CHECKED[product_index][kind_index]
        .get_or_init(|| {
            check_link(ark, CertRole::Root, ark)?;
            check_link(intermediate, CertRole::Intermediate, ark)
        })
        .clone()
}

/// Certificates sent after the signer must be the pinned intermediate, then the pinned ARK.
fn check_sent_chain(
    pinned: &PinnedChain,
    kind: SignerKind,
    sent: &[Vec<u8>],
) -> Result<(), AttestationError> {
    let expected = [
        (pinned.intermediate(kind), CertRole::Intermediate),
        (pinned.ark, CertRole::Root),
    ];
    if sent.len() > expected.len() {
        return Err(AttestationError::malformed(format!(
            "SNP evidence carries {} certificates; at most 3 are expected (VCEK or VLEK, ASK or ASVK, ARK)",
            sent.len() + 1
        )));
    }
    for (cert, (pinned_der, role)) in sent.iter().zip(expected) {
        if cert.as_slice() != pinned_der {
            return Err(RejectReason::CertificateNotPinned { role }.into());
        }
    }
    Ok(())
}

fn parse_pinned(der: &'static [u8]) -> Result<X509Certificate<'static>, AttestationError> {
    chain::parse_cert(der, CertRole::Root).map_err(|e| {
        AttestationError::Config(format!("a pinned AMD certificate does not parse: {e}"))
    })
}

/// `child` names `issuer` as its issuer and carries its RSASSA-PSS/SHA-384 signature. A success is
/// remembered by both certificates' bytes (`chain::VERIFIED_LINKS`): the RSA check of a VCEK runs
/// once, not at every handshake.
pub(crate) fn check_link(
    (child_der, child): (&[u8], &X509Certificate<'_>),
    role: CertRole,
    (issuer_der, issuer): (&[u8], &X509Certificate<'_>),
) -> Result<(), AttestationError> {
    chain::VERIFIED_LINKS.check(issuer_der, child_der, || {
        check_link_now((child_der, child), role, (issuer_der, issuer))
    })
}

fn check_link_now(
    (child_der, child): (&[u8], &X509Certificate<'_>),
    role: CertRole,
    (issuer_der, issuer): (&[u8], &X509Certificate<'_>),
) -> Result<(), AttestationError> {
    if child.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(RejectReason::CertificateChain { role }.into());
    }
    let bad_signature = || AttestationError::from(RejectReason::CertificateSignature { role });
    if !is_amd_pss(child) || !is_rsa_4096(issuer) {
        return Err(bad_signature());
    }
    let child_sev = sev_certificate(child_der, role)?;
    let issuer_sev = sev_certificate(issuer_der, role)?;
    use sev::certs::snp::Verifiable as _;
    (&issuer_sev, &child_sev)
        .verify()
        .map_err(|_| bad_signature())
}

/// Both algorithm identifiers say RSASSA-PSS with SHA-384, MGF1 with SHA-384, a 48-byte salt.
fn is_amd_pss(cert: &X509Certificate<'_>) -> bool {
    is_amd_pss_pair(&cert.signature_algorithm, &cert.tbs_certificate.signature)
}

/// The outer and the signed algorithm identifiers of a certificate or CRL are equal and say
/// RSASSA-PSS with SHA-384, MGF1 with SHA-384, a 48-byte salt.
pub(crate) fn is_amd_pss_pair(
    outer: &AlgorithmIdentifier<'_>,
    signed: &AlgorithmIdentifier<'_>,
) -> bool {
    if outer != signed || outer.algorithm != OID_PKCS1_RSASSAPSS {
        return false;
    }
    let Ok(SignatureAlgorithm::RSASSA_PSS(params)) = SignatureAlgorithm::try_from(outer) else {
        return false;
    };
    let mgf_ok = params
        .mask_gen_algorithm()
        .is_ok_and(|mgf| mgf.mgf.to_id_string() == OID_MGF1 && mgf.hash == OID_NIST_HASH_SHA384);
    *params.hash_algorithm_oid() == OID_NIST_HASH_SHA384
        && mgf_ok
        && params.salt_length() == PSS_SALT_LEN
        && params.trailer_field() == 1
}

pub(crate) fn is_rsa_4096(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.public_key().parsed(), Ok(PublicKey::RSA(key)) if key.key_size() == AMD_RSA_BITS)
}

/// The same certificate read by the `sev` crate, which must encode it back to the same bytes: so
/// that the signature it checks covers what `x509-parser` read (no parser differential).
fn sev_certificate(
    der: &[u8],
    role: CertRole,
) -> Result<sev::certs::snp::Certificate, AttestationError> {
    let cert = sev::certs::snp::Certificate::from_der(der)
        .map_err(|e| AttestationError::malformed(format!("{role} certificate: {e}")))?;
    match cert.to_der() {
        Ok(again) if again == der => Ok(cert),
        _ => Err(AttestationError::malformed(format!(
            "{role} certificate: not in canonical DER (two parsers read it differently)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::snp as vectors;

    #[test]
    fn every_pinned_chain_verifies_for_both_key_kinds() {
        for product in roots::PRODUCTS {
            let pinned = roots::pinned(product);
            let ark = parse_pinned(pinned.ark).unwrap();
            check_link((pinned.ark, &ark), CertRole::Root, (pinned.ark, &ark)).unwrap();
            for kind in [SignerKind::Vcek, SignerKind::Vlek] {
                let der = pinned.intermediate(kind);
                let intermediate = parse_pinned(der).unwrap();
                check_link(
                    (der, &intermediate),
                    CertRole::Intermediate,
                    (pinned.ark, &ark),
                )
                .unwrap_or_else(|e| panic!("{product:?} {kind}: {e}"));
            }
        }
    }

    #[test]
    fn an_intermediate_does_not_verify_under_another_products_ark() {
        let milan = roots::pinned(Product::Milan);
        let genoa = roots::pinned(Product::Genoa);
        let genoa_ark_cert = parse_pinned(genoa.ark).unwrap();
        let milan_ask_cert = parse_pinned(milan.ask).unwrap();
        // The names differ, and the signature would not verify either.
        assert_eq!(
            check_link(
                (milan.ask, &milan_ask_cert),
                CertRole::Intermediate,
                (genoa.ark, &genoa_ark_cert)
            ),
            Err(RejectReason::CertificateChain {
                role: CertRole::Intermediate
            }
            .into())
        );
        let genoa_ark = sev_certificate(genoa.ark, CertRole::Root).unwrap();
        let milan_ask = sev_certificate(milan.ask, CertRole::Intermediate).unwrap();
        use sev::certs::snp::Verifiable as _;
        assert!((&genoa_ark, &milan_ask).verify().is_err());
    }

    #[test]
    fn the_turin_vcek_chains_to_the_turin_ark() {
        let der = vectors::read("virtee-sev-vcek_turin.der");
        let at = vectors::time("2026-01-01T00:00:00Z");
        verify_signer(Product::Turin, SignerKind::Vcek, &der, &[], at).unwrap();
        assert_eq!(
            verify_signer(Product::Genoa, SignerKind::Vcek, &der, &[], at).map(|_| ()),
            Err(RejectReason::CertificateChain {
                role: CertRole::Signer
            }
            .into())
        );
    }

    #[test]
    fn a_vcek_is_not_accepted_where_a_vlek_is_expected() {
        let v = vectors::virtee_milan();
        assert_eq!(
            verify_signer(Product::Milan, SignerKind::Vlek, &v.cert, &[], v.at).map(|_| ()),
            Err(RejectReason::CertificateChain {
                role: CertRole::Signer
            }
            .into())
        );
    }

    #[test]
    fn sent_certificates_must_be_the_pinned_ones_in_order() {
        let milan = roots::pinned(Product::Milan);
        let genoa = roots::pinned(Product::Genoa);
        let check = |sent: &[&[u8]]| {
            let sent: Vec<Vec<u8>> = sent.iter().map(|c| c.to_vec()).collect();
            check_sent_chain(milan, SignerKind::Vcek, &sent)
        };
        check(&[]).unwrap();
        check(&[milan.ask]).unwrap();
        check(&[milan.ask, milan.ark]).unwrap();
        let not_pinned = |role| Err(RejectReason::CertificateNotPinned { role }.into());
        assert_eq!(check(&[genoa.ask]), not_pinned(CertRole::Intermediate));
        assert_eq!(check(&[milan.asvk]), not_pinned(CertRole::Intermediate));
        assert_eq!(
            check(&[milan.ark, milan.ask]),
            not_pinned(CertRole::Intermediate)
        );
        assert_eq!(check(&[milan.ask, genoa.ark]), not_pinned(CertRole::Root));
        assert!(matches!(
            check(&[milan.ask, milan.ark, milan.ark]),
            Err(AttestationError::Malformed { .. })
        ));
    }

    #[test]
    fn the_amd_signature_parameters_are_required() {
        let pinned = roots::pinned(Product::Milan);
        let ask = parse_pinned(pinned.ask).unwrap();
        assert!(is_amd_pss(&ask));
        assert!(is_rsa_4096(&ask));
        // A VCEK is signed the AMD way but its own key is P-384, so it can sign no certificate.
        let vcek_der = vectors::virtee_milan().cert;
        let vcek = chain::parse_cert(&vcek_der, CertRole::Signer).unwrap();
        assert!(is_amd_pss(&vcek));
        assert!(!is_rsa_4096(&vcek));
        // An ECDSA-signed certificate (the simulated platform's) is not.
        let sim = crate::simulated::SimulatedRoot::generate().unwrap();
        let sim_der = sim.cert_der();
        let sim_cert = chain::parse_cert(sim_der, CertRole::Root).unwrap();
        assert!(!is_amd_pss(&sim_cert));
    }
}
