//! What both sides do with the other's certificate: check its evidence against the nonce this
//! side chose, then check the handshake signature with the same certificate, and only then
//! publish the [`VerifiedPeer`].

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, DigitallySignedStruct, OtherError};

use super::{AcceptPolicy, NONCE_LEN, VerifiedPeer, binding, extract_evidence};
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

    /// Checks the certificate's evidence against `binding(its SPKI, nonce)` with the policy.
    pub(crate) fn check_certificate(
        &self,
        policy: &dyn AcceptPolicy,
        nonce: &[u8; NONCE_LEN],
        end_entity: &CertificateDer<'_>,
    ) -> Result<(), rustls::Error> {
        let checked = extract_evidence(end_entity).and_then(|(evidence, spki_der)| {
            let binding = binding(&spki_der, nonce);
            let report = policy.verify(&evidence, &binding)?;
            Ok(VerifiedPeer {
                report,
                spki_der,
                evidence,
                binding,
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
