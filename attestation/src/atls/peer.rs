//! What both sides do with the other's certificate: check its evidence against the nonce this
//! side chose, then check the handshake signature with the same certificate, and only then
//! publish the [`VerifiedPeer`].

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, DigitallySignedStruct, OtherError};

use super::{AcceptPolicy, NONCE_LEN, VerifiedPeer, extract_evidence};
use crate::error::AttestationError;

/// One connection's verification state, shared by its rustls callbacks and its caller.
#[derive(Debug, Default)]
pub(crate) struct PeerSlot {
    /// The certificate whose evidence passed, waiting for its handshake signature.
    pending: Mutex<Option<(Vec<u8>, VerifiedPeer)>>,
    /// Set once the handshake signature by the attested key verified.
    verified: Arc<OnceLock<VerifiedPeer>>,
    /// Why attestation failed, for the caller (rustls only reports an alert).
    error: Mutex<Option<AttestationError>>,
}

impl PeerSlot {
    pub(crate) fn verified(&self) -> &Arc<OnceLock<VerifiedPeer>> {
        &self.verified
    }

    pub(crate) fn record_error(&self, error: AttestationError) {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(error);
    }

    pub(crate) fn take_error(&self) -> Option<AttestationError> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Checks the certificate's evidence against `binding(its SPKI, nonce, the deployment it names)`
    /// with the policy, then the named (and so bound) deployment against the policy's pin.
    pub(crate) fn check_certificate(
        &self,
        policy: &dyn AcceptPolicy,
        nonce: &[u8; NONCE_LEN],
        end_entity: &CertificateDer<'_>,
    ) -> Result<(), rustls::Error> {
        // Before the verification: a policy that changes during it cannot lend its new
        // fingerprint to a verdict reached under the old one.
        let fingerprint = policy.fingerprint();
        let checked = extract_evidence(end_entity).and_then(|cert| {
            // Binding v2, or v3 when the certificate carries a batch proof: computed from this
            // side's nonce either way, so evidence for another nonce cannot match.
            let binding = cert.expected_report_data(nonce);
            let report = policy.verify(&cert.evidence, &binding)?;
            // Only now is the id known to be the one the evidence binds.
            policy.deployment_pin().check(&cert.deployment)?;
            Ok(VerifiedPeer {
                report,
                spki_der: cert.spki_der,
                evidence: cert.evidence,
                binding,
                deployment: cert.deployment,
                fingerprint,
            })
        });
        match checked {
            Ok(peer) => {
                *self.pending.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((end_entity.to_vec(), peer));
                Ok(())
            }
            Err(error) => {
                tracing::debug!(%error, "aTLS peer certificate rejected");
                self.record_error(error.clone());
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(error)),
                )))
            }
        }
    }

    /// Checks the TLS 1.3 handshake signature with the attested certificate's key; on success
    /// the peer is verified.
    pub(crate) fn check_signature(
        &self,
        provider: &CryptoProvider,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let valid = rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider.signature_verification_algorithms,
        )?;
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match pending {
            Some((der, peer)) if der == cert.as_ref() => {
                self.verified.set(peer).map_err(|_| {
                    rustls::Error::General("aTLS peer verified twice on one connection".into())
                })?;
                Ok(valid)
            }
            _ => Err(rustls::Error::General(
                "the handshake signature is not by the attested certificate".into(),
            )),
        }
    }
}

/// TLS 1.2 is never configured; refuse if rustls ever asks.
pub(crate) fn refuse_tls12() -> rustls::Error {
    rustls::Error::General("aTLS requires TLS 1.3".into())
}

#[cfg(test)]
mod tests {
    //! The binding v2 rule: the deployment a certificate names counts only if the evidence binds it.
    #![allow(clippy::unwrap_used)]

    use rcgen::{CertificateParams, CustomExtension, KeyPair, PublicKeyData as _};

    use super::*;
    use crate::atls::{DEPLOYMENT_OID, DeploymentId, DeploymentPin, EVIDENCE_OID, binding};
    use crate::error::RejectReason;
    use crate::issuer::EvidenceIssuer as _;
    use crate::testing::SimFixture;

    const NONCE: [u8; NONCE_LEN] = [6; NONCE_LEN];

    /// A certificate whose evidence binds `report_data` and which names `named` (or nothing).
    fn certificate(
        f: &SimFixture,
        key: &KeyPair,
        report_data: &[u8; 64],
        named: Option<DeploymentId>,
    ) -> Vec<u8> {
        let evidence = f.issuer.issue(report_data).unwrap();
        let mut params = CertificateParams::default();
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                EVIDENCE_OID,
                evidence.to_bytes(),
            ));
        if let Some(id) = named {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    DEPLOYMENT_OID,
                    id.0.to_vec(),
                ));
        }
        params.self_signed(key).unwrap().der().to_vec()
    }

    fn check(f: &SimFixture, pin: DeploymentPin, der: &[u8]) -> Result<(), AttestationError> {
        let mut policy = f.policy();
        policy.deployment = pin;
        let slot = PeerSlot::default();
        let result = slot.check_certificate(&policy, &NONCE, &CertificateDer::from(der));
        match slot.take_error() {
            Some(e) => Err(e),
            None => result.map_err(|e| AttestationError::Handshake(e.to_string())),
        }
    }

    #[test]
    fn a_named_deployment_the_evidence_does_not_bind_is_rejected() {
        let f = SimFixture::new();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki = key.subject_public_key_info();
        let real = DeploymentId([0xa1; 32]);
        let claimed = DeploymentId([0xb2; 32]);

        // Honest: names what it binds.
        let honest = certificate(&f, &key, &binding(&spki, &NONCE, &real), Some(real));
        assert!(check(&f, DeploymentPin::Exactly(real), &honest).is_ok());

        // Evidence for `real`, certificate renamed to `claimed`: the binding fails before any pin
        // is looked at, whatever the pin.
        let renamed = certificate(&f, &key, &binding(&spki, &NONCE, &real), Some(claimed));
        for pin in [DeploymentPin::Exactly(claimed), DeploymentPin::Any] {
            assert_eq!(
                check(&f, pin, &renamed),
                Err(RejectReason::ReportDataMismatch.into())
            );
        }

        // Evidence that binds no deployment (the v1 binding) with a name added: refused.
        let mut v1 = spki.clone();
        v1.extend_from_slice(&NONCE);
        let v1: [u8; 64] = <sha2::Sha512 as sha2::Digest>::digest(&v1).into();
        let unbound = certificate(&f, &key, &v1, Some(claimed));
        assert_eq!(
            check(&f, DeploymentPin::Any, &unbound),
            Err(RejectReason::ReportDataMismatch.into())
        );
        // And without a name at all: refused as such.
        let unnamed = certificate(&f, &key, &v1, None);
        assert_eq!(
            check(&f, DeploymentPin::Any, &unnamed),
            Err(RejectReason::NoDeployment.into())
        );
    }

    /// A certificate naming `id` whose evidence carries `report_data`, with `proof` (raw bytes) in
    /// the batch extension.
    fn batched(
        f: &SimFixture,
        key: &KeyPair,
        report_data: &[u8; 64],
        id: DeploymentId,
        proof: &[u8],
    ) -> Vec<u8> {
        let evidence = f.issuer.issue(report_data).unwrap();
        let mut params = CertificateParams::default();
        for (oid, content) in [
            (EVIDENCE_OID, evidence.to_bytes()),
            (DEPLOYMENT_OID, id.0.to_vec()),
            (crate::atls::BATCH_OID, proof.to_vec()),
        ] {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(oid, content));
        }
        params.self_signed(key).unwrap().der().to_vec()
    }

    /// Binding v3: a batch's evidence passes for the nonce whose binding the proof places in the
    /// batch, and for nothing else.
    #[test]
    fn batched_evidence_is_accepted_only_for_its_own_nonce() {
        use crate::atls::batch::{BatchProof, build_batch};
        let f = SimFixture::new();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki = key.subject_public_key_info();
        let id = DeploymentId([0xa1; 32]);
        let other_nonce = [7; NONCE_LEN];
        let bindings = [
            binding(&spki, &[1; NONCE_LEN], &id),
            binding(&spki, &NONCE, &id),
            binding(&spki, &other_nonce, &id),
        ];
        let (report_data, proofs) = build_batch(&bindings);
        let ours = proofs[1].to_bytes();
        let pin = || DeploymentPin::Exactly(id);
        let mismatch = Err(RejectReason::ReportDataMismatch.into());

        check(&f, pin(), &batched(&f, &key, &report_data, id, &ours)).unwrap();
        // The proof of another nonce's binding, in a certificate presented to us.
        let theirs = proofs[2].to_bytes();
        assert_eq!(
            check(&f, pin(), &batched(&f, &key, &report_data, id, &theirs)),
            mismatch
        );
        // Our proof, shortened by a level or lengthened by one.
        let truncated = &ours[..ours.len() - 64];
        assert_eq!(
            check(&f, pin(), &batched(&f, &key, &report_data, id, truncated)),
            mismatch
        );
        let extended = [&ours[..], &[0u8; 64]].concat();
        assert_eq!(
            check(&f, pin(), &batched(&f, &key, &report_data, id, &extended)),
            mismatch
        );
        // Our proof, but the report carries another batch's root.
        let (elsewhere, _) = build_batch(&[bindings[0], bindings[2]]);
        assert_eq!(
            check(&f, pin(), &batched(&f, &key, &elsewhere, id, &ours)),
            mismatch
        );
        // Plain v2 evidence of our binding, with a proof added: refused (the proof makes it v3).
        assert_eq!(
            check(&f, pin(), &batched(&f, &key, &bindings[1], id, &ours)),
            mismatch
        );
        // A proof that is not one: malformed.
        assert!(matches!(
            check(&f, pin(), &batched(&f, &key, &report_data, id, &ours[..10])),
            Err(AttestationError::Malformed { .. })
        ));
        assert!(BatchProof::from_bytes(&ours).is_some());
    }
}
