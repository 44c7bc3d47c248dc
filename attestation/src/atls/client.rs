//! The aTLS client: verifies the server's evidence, and attests itself when asked.

use std::sync::{Arc, OnceLock};

use rcgen::KeyPair;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};

use super::peer::{PeerSlot, refuse_tls12};
use super::{
    ALPN_H2, AcceptPolicy, DeploymentSource, HANDSHAKE_TIMEOUT, NONCE_LEN, VerifiedPeer, cert,
    load_signing_key, nonce, provider,
};
use crate::error::AttestationError;
use crate::issuer::EvidenceIssuer;

/// What a client needs to attest itself: an evidence issuer and its long-lived TLS key (the
/// initializer gets its mesh certificate for this key).
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// Produces the client's evidence.
    pub issuer: Arc<dyn EvidenceIssuer>,
    /// The client's TLS key; every connection gets a fresh certificate for it.
    pub key: Arc<KeyPair>,
    /// The deployment its certificates name (a workload: the one it was configured with, or
    /// unpinned; a replica: its own).
    pub deployment: Arc<dyn DeploymentSource>,
}

/// Connects to aTLS servers.
#[derive(Debug)]
pub struct AtlsClient {
    server_policy: Arc<dyn AcceptPolicy>,
    identity: Option<(ClientIdentity, Arc<dyn rustls::sign::SigningKey>)>,
    provider: Arc<CryptoProvider>,
}

impl AtlsClient {
    /// A client that accepts servers by `server_policy` and, with an identity, attests itself to
    /// servers that ask. Fails if the identity's key is not usable for TLS.
    pub fn new(
        server_policy: Arc<dyn AcceptPolicy>,
        identity: Option<ClientIdentity>,
    ) -> Result<Self, AttestationError> {
        let provider = provider();
        let identity = match identity {
            Some(id) => {
                let signing_key = load_signing_key(&provider, &id.key)?;
                Some((id, signing_key))
            }
            None => None,
        };
        Ok(Self {
            server_policy,
            identity,
            provider,
        })
    }

    /// A configuration for ONE connection and the cell where the verified server appears once
    /// the handshake succeeded (for connectors such as tonic's that drive rustls themselves).
    ///
    /// The configuration carries that connection's nonce: do not reuse it. A second handshake
    /// with it fails (the cell is already set), so reuse is refused rather than silently weaker.
    pub fn handshake(
        &self,
    ) -> Result<(Arc<ClientConfig>, Arc<OnceLock<VerifiedPeer>>), AttestationError> {
        let (config, slot) = self.prepare()?;
        Ok((config, slot.verified().clone()))
    }

    fn prepare(&self) -> Result<(Arc<ClientConfig>, Arc<PeerSlot>), AttestationError> {
        let nonce = nonce::fresh()?;
        let slot = Arc::new(PeerSlot::default());
        let verifier = Arc::new(ServerVerifier {
            policy: self.server_policy.clone(),
            nonce,
            provider: self.provider.clone(),
            slot: slot.clone(),
        });
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| AttestationError::Config(format!("aTLS client configuration: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.identity {
            Some((identity, signing_key)) => {
                builder.with_client_cert_resolver(Arc::new(ClientCertResolver {
                    identity: identity.clone(),
                    signing_key: signing_key.clone(),
                    slot: slot.clone(),
                }))
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec(), nonce::alpn_value(&nonce)];
        // A resumed session would skip the evidence check.
        config.resumption = Resumption::disabled();
        config.enable_early_data = false;
        Ok((Arc::new(config), slot))
    }

    /// Performs the handshake over `io` (within [`HANDSHAKE_TIMEOUT`]) and returns the stream and
    /// the verified server. `server_name` goes into SNI only: the server is trusted for its
    /// evidence, not its name. In TLS 1.3 the server judges the client's evidence after the
    /// client's side of the handshake is done: a server that rejects this client shows up as an
    /// error on the first read, not here.
    pub async fn connect<IO>(
        &self,
        io: IO,
        server_name: ServerName<'static>,
    ) -> Result<(tokio_rustls::client::TlsStream<IO>, VerifiedPeer), AttestationError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let (config, slot) = self.prepare()?;
        let connect = tokio_rustls::TlsConnector::from(config).connect(server_name, io);
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(slot.take_error().unwrap_or_else(|| classify(e))),
            Err(_) => {
                return Err(AttestationError::Transport(format!(
                    "no handshake within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                )));
            }
        };
        // Fail closed: a completed handshake without a verified server cannot happen with the
        // verifier above, but never hand out a stream without one.
        let peer = slot
            .verified()
            .get()
            .cloned()
            .ok_or_else(|| AttestationError::Handshake("the server was not attested".into()))?;
        Ok((stream, peer))
    }
}

/// A failed handshake that left no verdict on evidence in the slot: a TLS error (the peer spoke
/// something else than aTLS, or sent an alert) or an I/O error (reset, closed, refused: an outage).
/// tokio-rustls wraps rustls errors in `io::Error`; anything else came from the socket.
fn classify(e: std::io::Error) -> AttestationError {
    if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        AttestationError::Handshake(e.to_string())
    } else {
        AttestationError::Transport(e.to_string())
    }
}

#[derive(Debug)]
struct ServerVerifier {
    policy: Arc<dyn AcceptPolicy>,
    nonce: [u8; NONCE_LEN],
    provider: Arc<CryptoProvider>,
    slot: Arc<PeerSlot>,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.slot
            .check_certificate(&*self.policy, &self.nonce, end_entity)?;
        Ok(ServerCertVerified::assertion())
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

#[derive(Debug)]
struct ClientCertResolver {
    identity: ClientIdentity,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    slot: Arc<PeerSlot>,
}

impl ResolvesClientCert for ClientCertResolver {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let Some(server_nonce) = nonce::from_hints(root_hint_subjects) else {
            tracing::debug!(
                "the server asked for a client certificate without an aTLS nonce; sending none"
            );
            return None;
        };
        let deployment = self.identity.deployment.deployment();
        match cert::make_certificate(
            &*self.identity.issuer,
            &self.identity.key,
            &server_nonce,
            &deployment,
        ) {
            Ok(cert) => Some(Arc::new(CertifiedKey::new(
                vec![cert],
                self.signing_key.clone(),
            ))),
            Err(error) => {
                tracing::warn!(%error, "cannot attest to the aTLS server; sending no certificate");
                self.slot.record_error(error);
                None
            }
        }
    }

    fn has_certs(&self) -> bool {
        true
    }
}
