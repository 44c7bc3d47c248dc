//! The aTLS certificate: its key, short-lived, evidence and the deployment id in extensions, and no
//! signature (docs/PROTOCOL.md §8).
//!
//! Nothing relies on an aTLS certificate's signature: the evidence binds the key, and TLS 1.3's
//! CertificateVerify proves the peer holds it. A self-signature cost every handshake one P-256
//! signature on each side, about 3.5 % of a replica's CPU per NewMeshCert (issue 11.1), so the
//! certificate's signature is an empty BIT STRING under the key's algorithm identifier. Verifiers
//! accept a self-signed certificate alike (peers from before the change, a rolling upgrade).

use rcgen::{
    CertificateParams, CustomExtension, DnType, KeyPair, PublicKeyData, SignatureAlgorithm,
    SigningKey,
};
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use super::batch::{BATCH_OID, BatchProof};
use super::{DEPLOYMENT_OID, DeploymentId, EVIDENCE_OID, NONCE_LEN, binding};
use crate::error::{AttestationError, RejectReason};
use crate::evidence::Evidence;
use crate::issuer::EvidenceIssuer;

const CN: &str = "Concord aTLS";

/// Issues evidence binding `key` to the peer's `nonce` and to `deployment`, and wraps it in a fresh
/// certificate that names `deployment`.
pub(crate) fn make_certificate(
    issuer: &dyn EvidenceIssuer,
    key: &KeyPair,
    nonce: &[u8; NONCE_LEN],
    deployment: &DeploymentId,
) -> Result<CertificateDer<'static>, AttestationError> {
    let evidence = issuer.issue(&binding(&key.subject_public_key_info(), nonce, deployment))?;
    certificate(key, &evidence, None, deployment)
}

/// A fresh certificate of `key` carrying `evidence`, the proof of its binding when the evidence
/// is a batch's (binding v3), and `deployment`.
pub(crate) fn certificate(
    key: &KeyPair,
    evidence: &Evidence,
    proof: Option<&BatchProof>,
    deployment: &DeploymentId,
) -> Result<CertificateDer<'static>, AttestationError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CN);
    // Freshness comes from the nonce, not from these dates; they are short so that a leaked
    // certificate is useless elsewhere too, with some slack for skewed clocks.
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::hours(1);
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            EVIDENCE_OID,
            evidence.to_bytes(),
        ));
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            DEPLOYMENT_OID,
            deployment.as_bytes().to_vec(),
        ));
    if let Some(proof) = proof {
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                BATCH_OID,
                proof.to_bytes(),
            ));
    }
    let cert = params
        .self_signed(&Unsigned(key))
        .map_err(|e| AttestationError::Issuer(format!("making the aTLS certificate: {e}")))?;
    Ok(cert.der().clone())
}

/// The certificate's key for rcgen, whose "signature" is empty.
struct Unsigned<'a>(&'a KeyPair);

impl PublicKeyData for Unsigned<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl SigningKey for Unsigned<'_> {
    fn sign(&self, _: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(Vec::new())
    }
}

fn is_oid(oid: &x509_parser::der_parser::oid::Oid<'_>, arcs: &[u64]) -> bool {
    oid.iter().is_some_and(|a| a.eq(arcs.iter().copied()))
}

fn is_evidence_oid(oid: &x509_parser::der_parser::oid::Oid<'_>) -> bool {
    is_oid(oid, EVIDENCE_OID)
}

/// What an aTLS certificate carries. Nothing in it is trusted until the evidence verified against
/// `binding(spki_der, nonce, deployment)`.
#[derive(Debug, Clone)]
pub struct AtlsCertificate {
    pub evidence: Evidence,
    /// SubjectPublicKeyInfo (DER) of the certificate key.
    pub spki_der: Vec<u8>,
    /// The deployment the certificate names.
    pub deployment: DeploymentId,
    /// Where the binding sits in the batch the evidence commits to (binding v3), if it is a batch's.
    pub batch: Option<BatchProof>,
}

impl AtlsCertificate {
    /// The report data the evidence must carry for the relying side's `nonce`: the binding v2 value,
    /// or, with a batch proof, the batch's report data computed from that binding (binding v3).
    pub fn expected_report_data(&self, nonce: &[u8; NONCE_LEN]) -> [u8; 64] {
        let binding = binding(&self.spki_der, nonce, &self.deployment);
        match &self.batch {
            None => binding,
            Some(proof) => proof.report_data(&binding),
        }
    }
}

/// The evidence of an aTLS certificate, its SubjectPublicKeyInfo (DER) and the deployment it names.
///
/// A certificate without the evidence extension is rejected ([`RejectReason::NoEvidence`]), one
/// without a deployment id of 32 bytes too ([`RejectReason::NoDeployment`]); one that does not
/// parse, or carries an extension twice, is malformed.
pub fn extract_evidence(cert_der: &[u8]) -> Result<AtlsCertificate, AttestationError> {
    let cert = match X509Certificate::from_der(cert_der) {
        Ok(([], cert)) => cert,
        Ok(_) => {
            return Err(AttestationError::malformed(
                "aTLS certificate: trailing bytes after the DER",
            ));
        }
        Err(e) => {
            return Err(AttestationError::malformed(format!(
                "aTLS certificate: {e}"
            )));
        }
    };
    let mut found = cert
        .extensions()
        .iter()
        .filter(|ext| is_evidence_oid(&ext.oid));
    let extension = match (found.next(), found.next()) {
        (Some(ext), None) => ext,
        (None, _) => return Err(RejectReason::NoEvidence.into()),
        (Some(_), Some(_)) => {
            return Err(AttestationError::malformed(
                "aTLS certificate: more than one evidence extension",
            ));
        }
    };
    let evidence = Evidence::from_bytes(extension.value)?;
    let mut named = cert
        .extensions()
        .iter()
        .filter(|ext| is_oid(&ext.oid, DEPLOYMENT_OID));
    let deployment = match (named.next(), named.next()) {
        (Some(ext), None) => <[u8; 32]>::try_from(ext.value)
            .map(DeploymentId)
            .map_err(|_| AttestationError::from(RejectReason::NoDeployment))?,
        (None, _) => return Err(RejectReason::NoDeployment.into()),
        (Some(_), Some(_)) => {
            return Err(AttestationError::malformed(
                "aTLS certificate: more than one deployment extension",
            ));
        }
    };
    let mut proofs = cert
        .extensions()
        .iter()
        .filter(|ext| is_oid(&ext.oid, BATCH_OID));
    let batch = match (proofs.next(), proofs.next()) {
        (None, _) => None,
        (Some(ext), None) => Some(BatchProof::from_bytes(ext.value).ok_or_else(|| {
            AttestationError::malformed("aTLS certificate: the batch proof is not well-formed")
        })?),
        (Some(_), Some(_)) => {
            return Err(AttestationError::malformed(
                "aTLS certificate: more than one batch proof extension",
            ));
        }
    };
    Ok(AtlsCertificate {
        evidence,
        spki_der: cert.public_key().raw.to_vec(),
        deployment,
        batch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::Platform;

    #[derive(Debug)]
    struct FixedIssuer;

    impl EvidenceIssuer for FixedIssuer {
        fn platform(&self) -> Platform {
            Platform::Simulated
        }
        fn issue(&self, report_data: &[u8; 64]) -> Result<Evidence, AttestationError> {
            Ok(Evidence {
                platform: Platform::Simulated,
                report: report_data.to_vec(),
                certificates: vec![],
                crls: vec![],
            })
        }
    }

    #[test]
    fn certificate_carries_evidence_bound_to_its_key_and_the_nonce() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let nonce = [3u8; NONCE_LEN];
        let id = DeploymentId([4; 32]);
        let der = make_certificate(&FixedIssuer, &key, &nonce, &id).unwrap();
        let got = extract_evidence(&der).unwrap();
        assert_eq!(got.spki_der, key.subject_public_key_info());
        assert_eq!(got.deployment, id);
        assert_eq!(
            got.evidence.report,
            binding(&got.spki_der, &nonce, &id).to_vec()
        );

        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| is_evidence_oid(&e.oid))
            .unwrap();
        assert!(!ext.critical);
        assert_eq!(ext.oid.to_id_string(), "1.3.6.1.4.1.58270.1.1");
        // No signature: an empty BIT STRING under ecdsa-with-SHA256, the key's algorithm.
        assert!(cert.signature_value.data.is_empty());
        assert_eq!(cert.signature_value.unused_bits, 0);
        assert_eq!(
            cert.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.10045.4.3.2"
        );
        assert_eq!(
            cert.signature_algorithm, cert.tbs_certificate.signature,
            "the outer and inner algorithm identifiers agree"
        );
    }

    #[test]
    fn certificate_without_evidence_is_rejected_and_garbage_is_malformed() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let plain = CertificateParams::default().self_signed(&key).unwrap();
        assert_eq!(
            extract_evidence(plain.der()).unwrap_err(),
            RejectReason::NoEvidence.into()
        );
        assert!(matches!(
            extract_evidence(b"not a certificate"),
            Err(AttestationError::Malformed { .. })
        ));
    }
}
