//! Certificate checks for evidence chains: parsing, ECDSA P-384/SHA-384 signatures, validity.
//!
//! Owns the X.509 mechanics both paths share: parsing, validity, the P-384 key of a signer, and
//! the ECDSA links of the simulated chain (the RSA-PSS links of the AMD chain are
//! `snp::amd_chain`'s). It verifies signatures directly on the TBS bytes, as the AMD chain
//! requires (no path builder). It must never decide which root is trusted: callers pin the
//! anchor, this module only checks links.

use std::time::{SystemTime, UNIX_EPOCH};

use p384::ecdsa::signature::Verifier as _;
use p384::pkcs8::DecodePublicKey as _;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA384;
use x509_parser::prelude::FromDer as _;
use x509_parser::time::ASN1Time;

use crate::error::{AttestationError, CertRole, RejectReason};

/// Parses one DER certificate; trailing bytes are malformed.
pub(crate) fn parse_cert(
    der: &[u8],
    role: CertRole,
) -> Result<X509Certificate<'_>, AttestationError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(AttestationError::malformed(format!(
            "{role} certificate: trailing bytes after the DER"
        ))),
        Err(e) => Err(AttestationError::malformed(format!(
            "{role} certificate: {e}"
        ))),
    }
}

/// The certificate's key, which must be ECDSA on P-384.
pub(crate) fn p384_key(
    cert: &X509Certificate<'_>,
    role: CertRole,
) -> Result<p384::ecdsa::VerifyingKey, AttestationError> {
    p384::ecdsa::VerifyingKey::from_public_key_der(cert.public_key().raw).map_err(|e| {
        AttestationError::malformed(format!("{role} certificate: not an ECDSA P-384 key: {e}"))
    })
}

/// Checks that `child` names `issuer` as its issuer and carries an ECDSA P-384/SHA-384 signature
/// by `issuer_key` over its TBS bytes. For a self-signed root, pass the root twice.
pub(crate) fn check_issued_by(
    child: &X509Certificate<'_>,
    role: CertRole,
    issuer: &X509Certificate<'_>,
    issuer_key: &p384::ecdsa::VerifyingKey,
) -> Result<(), AttestationError> {
    if child.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(RejectReason::CertificateChain { role }.into());
    }
    let bad_signature = || AttestationError::from(RejectReason::CertificateSignature { role });
    // The outer and the signed algorithm identifiers must both say ECDSA with SHA-384.
    if child.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA384
        || child.tbs_certificate.signature.algorithm != OID_SIG_ECDSA_WITH_SHA384
        || child.signature_value.unused_bits != 0
    {
        return Err(bad_signature());
    }
    let signature = p384::ecdsa::Signature::from_der(&child.signature_value.data)
        .map_err(|_| bad_signature())?;
    issuer_key
        .verify(child.tbs_certificate.as_ref(), &signature)
        .map_err(|_| bad_signature())
}

/// Checks `not_before <= now <= not_after`.
pub(crate) fn check_validity(
    cert: &X509Certificate<'_>,
    role: CertRole,
    now: SystemTime,
) -> Result<(), AttestationError> {
    let now = asn1_time(now)?;
    let validity = cert.validity();
    if now < validity.not_before {
        return Err(RejectReason::CertificateNotYetValid { role }.into());
    }
    if now > validity.not_after {
        return Err(RejectReason::CertificateExpired { role }.into());
    }
    Ok(())
}

fn asn1_time(now: SystemTime) -> Result<ASN1Time, AttestationError> {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| AttestationError::Config("the time of check is before 1970".into()))?
        .as_secs();
    let secs = i64::try_from(secs)
        .map_err(|_| AttestationError::Config("the time of check is out of range".into()))?;
    ASN1Time::from_timestamp(secs)
        .map_err(|e| AttestationError::Config(format!("the time of check is out of range: {e}")))
}
