//! The aTLS server: attests to each client with evidence bound to the client's nonce, and
//! verifies the client's evidence when client authentication is required.

use std::sync::Arc;

use rcgen::KeyPair;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{Acceptor, NoServerSessionStorage};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;

use super::batch::Batcher;
use super::peer::{PeerSlot, refuse_tls12};
use super::{
    ALPN_H2, AcceptPolicy, DeploymentSource, HANDSHAKE_TIMEOUT, NONCE_LEN, VerifiedPeer, binding,
    cert, load_signing_key, nonce, provider,
};
use crate::error::AttestationError;
use crate::issuer::EvidenceIssuer;

/// Whether the server requires clients to attest.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// Any client may connect (user API: the server attests, the client need not).
    None,
    /// Clients must present evidence this policy accepts (mesh and peer APIs).
    Required(Arc<dyn AcceptPolicy>),
}

/// Accepts aTLS connections.
#[derive(Debug)]
pub struct AtlsAcceptor {
    /// Makes the evidence of each handshake, batched (binding v3) unless turned off.
    batcher: Arc<Batcher>,
    key: Arc<KeyPair>,
    deployment: Arc<dyn DeploymentSource>,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    client_auth: ClientAuth,
    provider: Arc<CryptoProvider>,
}

impl AtlsAcceptor {
    /// A server attesting with `issuer` for the TLS key `key`, naming (and binding) the deployment
    /// `deployment` gives at each handshake. Fails if the key is not usable for TLS. Handshakes
    /// that wait for evidence together share one report (binding v3, [`super::batch`]); see
    /// [`Self::one_report_per_handshake`].
    pub fn new(
        issuer: Arc<dyn EvidenceIssuer>,
        key: Arc<KeyPair>,
        deployment: Arc<dyn DeploymentSource>,
        client_auth: ClientAuth,
    ) -> Result<Self, AttestationError> {
        let provider = provider();
        let signing_key = load_signing_key(&provider, &key)?;
        Ok(Self {
            batcher: Arc::new(Batcher::new(issuer, true)),
            key,
            deployment,
            signing_key,
            client_auth,
            provider,
        })
    }

    /// One issuer call per handshake, every certificate with binding v2 evidence: what verifiers
    /// from before batching require, at the cost of an issuer call (on SEV-SNP, a secure-processor
    /// call) per client.
    pub fn one_report_per_handshake(mut self) -> Self {
        self.batcher = Arc::new(Batcher::new(self.batcher.issuer(), false));
        self
    }

    /// Performs the server side of the handshake, within [`HANDSHAKE_TIMEOUT`]. Returns the
    /// verified client when client authentication is required.
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> Result<(tokio_rustls::server::TlsStream<IO>, Option<VerifiedPeer>), AttestationError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.accept_inner(io)).await {
            Ok(result) => result,
            Err(_) => Err(AttestationError::Handshake(format!(
                "no handshake within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            ))),
        };
        if let Err(error) = &result {
            tracing::debug!(%error, "aTLS connection refused");
        }
        result
    }

    async fn accept_inner<IO>(
        &self,
        io: IO,
    ) -> Result<(tokio_rustls::server::TlsStream<IO>, Option<VerifiedPeer>), AttestationError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(Acceptor::default(), io)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => AttestationError::ClosedBeforeHandshake,
                _ => AttestationError::Handshake(format!("reading the ClientHello: {e}")),
            })?;
        let client_nonce = nonce::from_alpn(start.client_hello().alpn().into_iter().flatten())?;
        // Evidence is a device call (and, for the simulated platform, a signature): off the
        // runtime's workers (the batcher's blocking task), so a slow device cannot stall other
        // connections, and within the handshake's deadline, which can fire while it runs.
        let deployment = self.deployment.deployment();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&*self.key);
        let (evidence, proof) = self
            .batcher
            .evidence(binding(&spki, &client_nonce, &deployment))
            .await?;
        let certificate = cert::certificate(&self.key, &evidence, proof.as_ref(), &deployment)?;

        let slot = Arc::new(PeerSlot::default());
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| AttestationError::Config(format!("aTLS server configuration: {e}")))?;
        let builder = match &self.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Required(policy) => {
                let server_nonce = nonce::fresh()?;
                builder.with_client_cert_verifier(Arc::new(ClientVerifier {
                    policy: policy.clone(),
                    nonce: server_nonce,
                    hints: vec![nonce::hint(&server_nonce)],
                    provider: self.provider.clone(),
                    slot: slot.clone(),
                }))
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(
            CertifiedKey::new(vec![certificate], self.signing_key.clone()),
        )));
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        // The provider's order (TLS_AES_128_GCM_SHA256 first, `provider`), whatever the client's.
        config.ignore_client_order = true;
        // A resumed session would skip the client's evidence check.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;

        let stream = start.into_stream(Arc::new(config)).await.map_err(|e| {
            slot.take_error()
                .unwrap_or_else(|| AttestationError::Handshake(e.to_string()))
        })?;
        let peer = match self.client_auth {
            ClientAuth::None => None,
            ClientAuth::Required(_) => Some(slot.verified().get().cloned().ok_or_else(|| {
                AttestationError::Handshake("the client was not attested".into())
            })?),
        };
        Ok((stream, peer))
    }
}

#[derive(Debug)]
struct ClientVerifier {
    policy: Arc<dyn AcceptPolicy>,
    nonce: [u8; NONCE_LEN],
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
    slot: Arc<PeerSlot>,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.slot
            .check_certificate(&*self.policy, &self.nonce, end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(refuse_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.slot
            .check_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
