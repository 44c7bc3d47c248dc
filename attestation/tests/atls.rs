//! aTLS over real loopback TCP: mutual attestation, policy rejections on both sides, replayed
//! certificates, clients without a nonce, and bytes that are not TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use concord_attestation::atls::{
    AtlsAcceptor, AtlsClient, ClientAuth, ClientIdentity, HANDSHAKE_TIMEOUT, VerifiedPeer,
};
use concord_attestation::testing::{DEPLOYMENT, HOST_DATA, MEASUREMENT, SimFixture, tls_key};
use concord_attestation::{AttestationError, DeploymentId, DeploymentPin, RejectReason};
use rcgen::{KeyPair, PublicKeyData as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The client workload's identity in these tests.
const CLIENT_MEASUREMENT: [u8; 48] = [0x55; 48];
const CLIENT_HOST_DATA: [u8; 32] = [0x66; 32];

struct Served {
    peer: Option<VerifiedPeer>,
    peer_certificate: Option<CertificateDer<'static>>,
}

/// Accepts one connection with `acceptor`, echoes four bytes, and reports what it saw.
async fn serve_once(
    acceptor: AtlsAcceptor,
) -> (SocketAddr, JoinHandle<Result<Served, AttestationError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut tls, peer) = acceptor.accept(tcp).await?;
        let peer_certificate = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        let mut buf = [0u8; 4];
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut buf)).await
        {
            tls.write_all(&buf).await.unwrap();
            tls.flush().await.unwrap();
        }
        Ok(Served {
            peer,
            peer_certificate,
        })
    });
    (addr, task)
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("coordinator").unwrap()
}

/// Everything a test needs: one simulated root; a server attesting MEASUREMENT/HOST_DATA; a client
/// attesting CLIENT_MEASUREMENT/CLIENT_HOST_DATA.
struct Setup {
    f: SimFixture,
    server_key: Arc<KeyPair>,
    client_key: Arc<KeyPair>,
}

impl Setup {
    fn new() -> Self {
        Self {
            f: SimFixture::new(),
            server_key: tls_key(),
            client_key: tls_key(),
        }
    }

    fn acceptor(&self, client_auth: ClientAuth) -> AtlsAcceptor {
        AtlsAcceptor::new(
            self.f.issuer.clone(),
            self.server_key.clone(),
            Arc::new(DEPLOYMENT),
            client_auth,
        )
        .unwrap()
    }

    fn mutual_acceptor(&self) -> AtlsAcceptor {
        let policy = self
            .f
            .policy_with(&[CLIENT_MEASUREMENT], &[CLIENT_HOST_DATA]);
        self.acceptor(ClientAuth::Required(Arc::new(policy)))
    }

    fn identity(&self, measurement: [u8; 48]) -> ClientIdentity {
        ClientIdentity {
            issuer: self.f.issuer_for(measurement, CLIENT_HOST_DATA),
            key: self.client_key.clone(),
            deployment: Arc::new(DeploymentId::UNPINNED),
        }
    }

    fn client(&self, identity: Option<ClientIdentity>) -> AtlsClient {
        AtlsClient::new(Arc::new(self.f.policy()), identity).unwrap()
    }

    fn mutual_client(&self) -> AtlsClient {
        self.client(Some(self.identity(CLIENT_MEASUREMENT)))
    }
}

async fn echo(tls: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin)) {
    tls.write_all(b"ping").await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

fn rejected(result: Result<impl std::fmt::Debug, AttestationError>) -> RejectReason {
    match result {
        Err(AttestationError::Rejected(reason)) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn mutual_attestation_gives_both_sides_the_verified_peer() {
    let s = Setup::new();
    let (addr, server) = serve_once(s.mutual_acceptor()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tls, server_peer) = s.mutual_client().connect(tcp, server_name()).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    echo(&mut tls).await;

    assert_eq!(server_peer.report().host_data(), &HOST_DATA);
    assert_eq!(server_peer.report().measurement(), &MEASUREMENT);
    assert_eq!(
        server_peer.spki_der(),
        s.server_key.subject_public_key_info()
    );

    assert_eq!(server_peer.deployment(), DEPLOYMENT);

    let served = server.await.unwrap().unwrap();
    let client_peer = served.peer.expect("client authentication was required");
    assert_eq!(client_peer.report().host_data(), &CLIENT_HOST_DATA);
    assert_eq!(client_peer.deployment(), DeploymentId::UNPINNED);
    assert_eq!(client_peer.report().measurement(), &CLIENT_MEASUREMENT);
    assert_eq!(
        client_peer.spki_der(),
        s.client_key.subject_public_key_info()
    );
}

/// A policy whose fingerprint the test sets, counting its verifications.
#[derive(Debug)]
struct Fingerprinted {
    inner: concord_attestation::StaticPolicy,
    fingerprint: std::sync::Mutex<Option<[u8; 32]>>,
    verifications: std::sync::atomic::AtomicUsize,
}

impl concord_attestation::AcceptPolicy for Fingerprinted {
    fn verify(
        &self,
        evidence: &concord_attestation::Evidence,
        expected_report_data: &[u8; 64],
    ) -> Result<concord_attestation::VerifiedReport, AttestationError> {
        self.verifications
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.verify(evidence, expected_report_data)
    }
    fn deployment_pin(&self) -> DeploymentPin {
        self.inner.deployment_pin()
    }
    fn fingerprint(&self) -> Option<[u8; 32]> {
        *self.fingerprint.lock().unwrap()
    }
}

/// Issue 11: a NewMeshCert on a fresh connection checks the evidence once. Reverifying under the
/// fingerprint the handshake was verified under reuses its verdict; any other fingerprint, or none,
/// verifies afresh, and a policy that changed its verdict is heard.
#[tokio::test]
async fn reverify_reuses_the_verdict_only_under_the_same_fingerprint() {
    use concord_attestation::AcceptPolicy as _;
    use std::sync::atomic::Ordering::SeqCst;
    let s = Setup::new();
    let policy = Arc::new(Fingerprinted {
        inner: s.f.policy_with(&[CLIENT_MEASUREMENT], &[CLIENT_HOST_DATA]),
        fingerprint: std::sync::Mutex::new(Some([1; 32])),
        verifications: Default::default(),
    });
    let (addr, server) = serve_once(s.acceptor(ClientAuth::Required(policy.clone()))).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tls, _) = s.mutual_client().connect(tcp, server_name()).await.unwrap();
    echo(&mut tls).await;
    let peer = server.await.unwrap().unwrap().peer.unwrap();
    assert_eq!(policy.verifications.load(SeqCst), 1, "the handshake");

    assert_eq!(&peer.reverify(&*policy).unwrap(), peer.report());
    assert_eq!(policy.verifications.load(SeqCst), 1, "reused");

    // Another fingerprint: verified afresh (and still accepted by the unchanged inner policy).
    *policy.fingerprint.lock().unwrap() = Some([2; 32]);
    peer.reverify(&*policy).unwrap();
    assert_eq!(policy.verifications.load(SeqCst), 2);
    // No fingerprint: afresh too.
    *policy.fingerprint.lock().unwrap() = None;
    peer.reverify(&*policy).unwrap();
    assert_eq!(policy.verifications.load(SeqCst), 3);

    // A policy that now refuses, under a fingerprint of its own, is heard.
    let dropped = Fingerprinted {
        inner: s.f.policy_with(&[[0x77; 48]], &[CLIENT_HOST_DATA]),
        fingerprint: std::sync::Mutex::new(Some([3; 32])),
        verifications: Default::default(),
    };
    assert_eq!(
        rejected(peer.reverify(&dropped)),
        RejectReason::MeasurementNotTrusted
    );
    // And the pin is checked on reuse too.
    let mut pinned = s.f.policy_with(&[CLIENT_MEASUREMENT], &[CLIENT_HOST_DATA]);
    pinned.deployment = DeploymentPin::Exactly(DeploymentId([9; 32]));
    let pinned = Fingerprinted {
        inner: pinned,
        fingerprint: std::sync::Mutex::new(Some([1; 32])),
        verifications: Default::default(),
    };
    assert!(pinned.fingerprint().is_some());
    assert!(peer.reverify(&pinned).is_err());
    assert_eq!(pinned.verifications.load(SeqCst), 0, "reused, pin refused");
}

/// A kept connection is only as trusted as its evidence under the policy as it is now: the
/// handshake's evidence is checked again, and a policy that dropped the peer's measurement or
/// policy rejects it, while the unchanged policy still accepts it.
#[tokio::test]
async fn a_verified_peer_is_checked_again_under_a_changed_policy() {
    let s = Setup::new();
    let (addr, server) = serve_once(s.mutual_acceptor()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tls, _) = s.mutual_client().connect(tcp, server_name()).await.unwrap();
    echo(&mut tls).await;
    let client_peer = server.await.unwrap().unwrap().peer.unwrap();

    let same = s.f.policy_with(&[CLIENT_MEASUREMENT], &[CLIENT_HOST_DATA]);
    let report = client_peer
        .reverify(&same)
        .expect("the same policy accepts it");
    assert_eq!(&report, client_peer.report());
    let measurement_dropped = s.f.policy_with(&[[0x77; 48]], &[CLIENT_HOST_DATA]);
    assert_eq!(
        rejected(client_peer.reverify(&measurement_dropped)),
        RejectReason::MeasurementNotTrusted
    );
    let policy_dropped = s.f.policy_with(&[CLIENT_MEASUREMENT], &[[0x78; 32]]);
    assert_eq!(
        rejected(client_peer.reverify(&policy_dropped)),
        RejectReason::HostDataNotAccepted
    );
}

#[tokio::test]
async fn handshake_config_publishes_the_verified_server() {
    let s = Setup::new();
    let (addr, server) = serve_once(s.acceptor(ClientAuth::None)).await;
    let client = s.client(None);
    let (config, cell) = client.handshake().unwrap();
    assert!(cell.get().is_none());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name(), tcp)
        .await
        .unwrap();
    echo(&mut tls).await;
    let peer = cell.get().expect("set by the handshake");
    assert_eq!(peer.report().host_data(), &HOST_DATA);
    assert_eq!(peer.spki_der(), s.server_key.subject_public_key_info());
    assert!(server.await.unwrap().unwrap().peer.is_none());
}

#[tokio::test]
async fn an_attested_client_may_connect_to_a_server_that_does_not_ask() {
    let s = Setup::new();
    let (addr, server) = serve_once(s.acceptor(ClientAuth::None)).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tls, _) = s.mutual_client().connect(tcp, server_name()).await.unwrap();
    echo(&mut tls).await;
    let served = server.await.unwrap().unwrap();
    assert!(served.peer.is_none());
    assert!(
        served.peer_certificate.is_none(),
        "no certificate was requested"
    );
}

#[tokio::test]
async fn server_rejects_a_client_with_an_untrusted_measurement() {
    let s = Setup::new();
    let (addr, server) = serve_once(s.mutual_acceptor()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    // TLS 1.3: the client finishes before the server judges its certificate.
    let _client = s
        .client(Some(s.identity([0x77; 48])))
        .connect(tcp, server_name())
        .await;
    let result = server.await.unwrap();
    assert_eq!(
        rejected(result.map(|_| ())),
        RejectReason::MeasurementNotTrusted
    );
}

#[tokio::test]
async fn server_rejects_a_client_without_a_certificate() {
    let s = Setup::new();
    let (addr, server) = serve_once(s.mutual_acceptor()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let _client = s.client(None).connect(tcp, server_name()).await;
    let result = server.await.unwrap();
    assert!(
        matches!(result, Err(AttestationError::Handshake(_))),
        "{:?}",
        result.map(|_| ())
    );
}

#[tokio::test]
async fn client_rejects_a_server_its_policy_does_not_accept() {
    let s = Setup::new();
    // Measurement not trusted by the client's policy.
    let (addr, _server) = serve_once(s.acceptor(ClientAuth::None)).await;
    let policy = s.f.policy_with(&[[0x88; 48]], &[HOST_DATA]);
    let client = AtlsClient::new(Arc::new(policy), None).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        rejected(client.connect(tcp, server_name()).await),
        RejectReason::MeasurementNotTrusted
    );
    // Host data (policy hash) not accepted.
    let (addr, _server) = serve_once(s.acceptor(ClientAuth::None)).await;
    let policy = s.f.policy_with(&[MEASUREMENT], &[[0x99; 32]]);
    let client = AtlsClient::new(Arc::new(policy), None).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        rejected(client.connect(tcp, server_name()).await),
        RejectReason::HostDataNotAccepted
    );
    // A simulated root the client's launch configuration does not trust.
    let (addr, _server) = serve_once(s.acceptor(ClientAuth::None)).await;
    let client = AtlsClient::new(Arc::new(SimFixture::new().policy()), None).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        rejected(client.connect(tcp, server_name()).await),
        RejectReason::SimulatedRootNotTrusted
    );
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pkcs8(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(key.serialize_der().into())
}

/// A plain rustls server configuration that presents `cert` and signs the handshake with `key`,
/// whether or not `key` is the certificate's.
fn presenting(cert: CertificateDer<'static>, key: &KeyPair) -> Arc<rustls::ServerConfig> {
    let signer = rustls::crypto::ring::sign::any_supported_type(&pkcs8(key)).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(CertifiedKey::new(
            vec![cert],
            signer,
        ))));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A plain rustls server that presents `cert` with `key` to one client, for the handshake alone.
async fn replaying_server(cert: CertificateDer<'static>, key: &KeyPair) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(presenting(cert, key));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    addr
}

/// A plain rustls client that offers `alpn` and accepts any server certificate whose key signed the
/// handshake: for tests about what a server does, not whom it is.
fn any_server_client(alpn: Vec<Vec<u8>>) -> Arc<rustls::ClientConfig> {
    let provider = ring();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    Arc::new(config)
}

#[tokio::test]
async fn client_rejects_a_server_replaying_a_certificate_made_for_another_nonce() {
    let s = Setup::new();
    let client = s.client(None);
    // A genuine handshake; the certificate it carried was bound to that connection's nonce.
    let (addr, _server) = serve_once(s.acceptor(ClientAuth::None)).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (tls, _) = client.connect(tcp, server_name()).await.unwrap();
    let old = tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    drop(tls);

    // Replayed by a server that even holds the key: the evidence is for another nonce.
    let addr = replaying_server(old, &s.server_key).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        rejected(client.connect(tcp, server_name()).await),
        RejectReason::ReportDataMismatch
    );
}

#[tokio::test]
async fn client_rejects_a_server_whose_handshake_key_is_not_the_attested_one() {
    let s = Setup::new();
    let client = s.client(None);
    let (addr, _server) = serve_once(s.acceptor(ClientAuth::None)).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (tls, _) = client.connect(tcp, server_name()).await.unwrap();
    let old = tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    drop(tls);

    // The attested certificate, but the handshake signed by another key.
    let addr = replaying_server(old, &tls_key()).await;
    let (config, cell) = client.handshake().unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let result = tokio_rustls::TlsConnector::from(config)
        .connect(server_name(), tcp)
        .await;
    assert!(result.is_err());
    assert!(
        cell.get().is_none(),
        "no verified peer without a valid handshake signature"
    );
}

#[tokio::test]
async fn server_rejects_a_client_replaying_a_certificate_made_for_another_nonce() {
    let s = Setup::new();
    // A genuine mutual handshake; the server records the client's certificate.
    let (addr, server) = serve_once(s.mutual_acceptor()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tls, _) = s.mutual_client().connect(tcp, server_name()).await.unwrap();
    echo(&mut tls).await;
    let old = server.await.unwrap().unwrap().peer_certificate.unwrap();

    // A client that presents that certificate again (with the right key).
    let (config, _) = s.client(None).handshake().unwrap();
    let mut config = (*config).clone();
    let signer = rustls::crypto::ring::sign::any_supported_type(&pkcs8(&s.client_key)).unwrap();
    config.client_auth_cert_resolver =
        Arc::new(SingleCertAndKey::from(CertifiedKey::new(vec![old], signer)));
    let (addr, server) = serve_once(s.mutual_acceptor()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let _client = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name(), tcp)
        .await;
    let result = server.await.unwrap();
    assert_eq!(
        rejected(result.map(|_| ())),
        RejectReason::ReportDataMismatch
    );
}

#[tokio::test]
async fn server_rejects_a_client_without_the_alpn_nonce() {
    let s = Setup::new();
    let (addr, server) = serve_once(s.acceptor(ClientAuth::None)).await;
    // An aTLS client configuration with the nonce taken out of ALPN: a plain h2 client.
    let (config, _) = s.client(None).handshake().unwrap();
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name(), tcp)
        .await;
    assert!(client.is_err(), "the server closes the connection");
    let err = server.await.unwrap().map(|_| ()).unwrap_err();
    assert_eq!(err, AttestationError::Rejected(RejectReason::MissingNonce));
    assert!(
        err.to_string()
            .contains("the client sent no aTLS nonce; connect with the concord CLI or initializer"),
        "{err}"
    );
}

#[tokio::test]
async fn bytes_that_are_not_tls_give_an_error_not_a_panic() {
    let s = Setup::new();
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: coordinator\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00, 0x00][..],
        &[0u8; 1][..],
        &[0xff; 4096][..],
    ] {
        let (addr, server) = serve_once(s.mutual_acceptor()).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let _ = tcp.write_all(garbage).await;
        let _ = tcp.shutdown().await;
        let result = server.await.expect("the acceptor task must not panic");
        assert!(
            matches!(result, Err(AttestationError::Handshake(_))),
            "{garbage:?}: {:?}",
            result.map(|_| ())
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_times_out() {
    let s = Setup::new();
    let (addr, server) = serve_once(s.mutual_acceptor()).await;
    let _tcp = TcpStream::connect(addr).await.unwrap();
    let err = server.await.unwrap().map(|_| ()).unwrap_err();
    assert!(
        matches!(&err, AttestationError::Handshake(m) if m.contains(&format!("{} s", HANDSHAKE_TIMEOUT.as_secs()))),
        "{err}"
    );
}

#[tokio::test]
async fn a_client_pinned_to_another_deployment_refuses_a_genuine_server() {
    let s = Setup::new();
    // Pinned to the server's deployment: accepted.
    let (addr, _server) = serve_once(s.acceptor(ClientAuth::None)).await;
    let mut policy = s.f.policy();
    policy.deployment = DeploymentPin::Exactly(DEPLOYMENT);
    let client = AtlsClient::new(Arc::new(policy), None).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (_, peer) = client.connect(tcp, server_name()).await.unwrap();
    assert_eq!(peer.deployment(), DEPLOYMENT);

    // Pinned to another: the same genuine evidence is refused, naming both.
    let other = DeploymentId([0x44; 32]);
    for pin in [
        DeploymentPin::Exactly(other),
        DeploymentPin::ThisOrUnpinned(other),
    ] {
        let (addr, _server) = serve_once(s.acceptor(ClientAuth::None)).await;
        let mut policy = s.f.policy();
        policy.deployment = pin;
        let client = AtlsClient::new(Arc::new(policy), None).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let reason = rejected(client.connect(tcp, server_name()).await);
        assert_eq!(
            reason,
            RejectReason::WrongDeployment {
                expected: other,
                found: DEPLOYMENT
            }
        );
        let message = reason.to_string();
        assert!(message.contains("serves deployment"), "{message}");
    }
}

#[tokio::test]
async fn a_kept_connection_is_checked_again_for_its_deployment() {
    let s = Setup::new();
    let (addr, _server) = serve_once(s.acceptor(ClientAuth::None)).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (_, peer) = s.client(None).connect(tcp, server_name()).await.unwrap();
    let mut pinned = s.f.policy();
    pinned.deployment = DeploymentPin::Exactly(DEPLOYMENT);
    assert!(peer.reverify(&pinned).is_ok());
    pinned.deployment = DeploymentPin::Exactly(DeploymentId([0x44; 32]));
    assert!(matches!(
        peer.reverify(&pinned),
        Err(AttestationError::Rejected(
            RejectReason::WrongDeployment { .. }
        ))
    ));
}

/// An issuer that takes 30 ms per report, one at a time, counting its calls (a secure processor).
#[derive(Debug)]
struct SlowIssuer {
    inner: Arc<dyn concord_attestation::EvidenceIssuer>,
    calls: std::sync::atomic::AtomicUsize,
    one_at_a_time: std::sync::Mutex<()>,
}

impl concord_attestation::EvidenceIssuer for SlowIssuer {
    fn platform(&self) -> concord_attestation::Platform {
        self.inner.platform()
    }
    fn issue(
        &self,
        report_data: &[u8; 64],
    ) -> Result<concord_attestation::Evidence, AttestationError> {
        let _one = self.one_at_a_time.lock().unwrap();
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        self.inner.issue(report_data)
    }
}

/// Accepts `n` connections concurrently and connects `n` clients at once; returns the issuer calls.
async fn storm(s: &Setup, n: usize, one_report_per_handshake: bool) -> usize {
    let issuer = Arc::new(SlowIssuer {
        inner: s.f.issuer.clone(),
        calls: Default::default(),
        one_at_a_time: Default::default(),
    });
    let mut acceptor = AtlsAcceptor::new(
        issuer.clone(),
        s.server_key.clone(),
        Arc::new(DEPLOYMENT),
        ClientAuth::None,
    )
    .unwrap();
    if one_report_per_handshake {
        acceptor = acceptor.one_report_per_handshake();
    }
    let acceptor = Arc::new(acceptor);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut served = Vec::new();
        for _ in 0..n {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            served.push(tokio::spawn(async move {
                let (mut tls, _) = acceptor.accept(tcp).await.unwrap();
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf).await.unwrap();
                tls.write_all(&buf).await.unwrap();
                tls.flush().await.unwrap();
            }));
        }
        for s in served {
            s.await.unwrap();
        }
    });
    let client = Arc::new(s.client(None));
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                // Each client checks the server's evidence against its own nonce.
                let (mut tls, peer) = client.connect(tcp, server_name()).await.unwrap();
                assert_eq!(peer.deployment(), DEPLOYMENT);
                echo(&mut tls).await;
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    server.await.unwrap();
    issuer.calls.load(std::sync::atomic::Ordering::SeqCst)
}

/// Issue 11 item 2: handshakes that arrive together share reports (binding v3), each client still
/// verifying evidence bound to its own nonce; turned off, one report per handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handshakes_share_reports_and_each_verifies_its_own_nonce() {
    let s = Setup::new();
    let n = 40;
    let batched = storm(&s, n, false).await;
    // 40 clients at once, 30 ms per report: a handful of reports, not 40 (a loaded machine may
    // spread the arrivals).
    assert!(batched <= n / 4, "{batched} reports for {n} handshakes");
    assert_eq!(storm(&s, n, true).await, n);
}

/// Accepts any server certificate: only for a test about what the server picks, not whom it is.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Both sides prefer TLS_AES_128_GCM_SHA256 (the connection's keys give 128-bit security anyway,
/// and SHA-256 has instructions of its own where SHA-384 has none), and the server picks it even
/// for a client that lists AES-256 first, as ring's default order does.
#[tokio::test]
async fn the_server_picks_aes_128_gcm_sha256_whatever_the_clients_order() {
    let s = Setup::new();
    let (addr, _server) = serve_once(s.mutual_acceptor()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (tls, _) = s.mutual_client().connect(tcp, server_name()).await.unwrap();
    let ours = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
    assert_eq!(ours, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    drop(tls);

    let provider = ring();
    assert_eq!(
        provider.cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
        "this test needs a client that prefers AES-256"
    );
    // A nonce as PROTOCOL.md §8 carries it, in the ALPN list.
    let config = any_server_client(vec![
        b"h2".to_vec(),
        format!("concord-atls-v1:{}", "07".repeat(32)).into_bytes(),
    ]);
    let (addr, _server) = serve_once(s.acceptor(ClientAuth::None)).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name(), tcp)
        .await;
    match tls {
        Ok(tls) => assert_eq!(
            tls.get_ref().1.negotiated_cipher_suite().unwrap().suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        ),
        Err(e) => panic!("the handshake failed before the suite could be seen: {e}"),
    }
}

/// A relay between a client and a genuine coordinator: it reads the client's ClientHello, dials the
/// coordinator with the client's own ALPN list (its nonce), and so obtains a genuine certificate
/// whose evidence is bound to that nonce; it then presents that certificate to the client and signs
/// the handshake with `key`. Only the holder of the attested key can finish the handshake.
async fn relaying_server(genuine: SocketAddr, key: Arc<KeyPair>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
            .await
            .unwrap();
        let alpn: Vec<Vec<u8>> = start
            .client_hello()
            .alpn()
            .into_iter()
            .flatten()
            .map(<[u8]>::to_vec)
            .collect();
        let upstream = TcpStream::connect(genuine).await.unwrap();
        let upstream = tokio_rustls::TlsConnector::from(any_server_client(alpn))
            .connect(server_name(), upstream)
            .await
            .unwrap();
        let certificate = upstream.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned();
        if let Ok(mut tls) = start.into_stream(presenting(certificate, &key)).await {
            let mut buf = [0u8; 4];
            if tls.read_exact(&mut buf).await.is_ok() {
                let _ = tls.write_all(&buf).await;
                let _ = tls.flush().await;
            }
        }
    });
    addr
}

/// aTLS certificates carry no signature (PROTOCOL.md §8): the handshake's CertificateVerify is the
/// only proof that the peer holds the attested key. A relay that obtained a genuine certificate for
/// the client's own nonce passes every evidence check and is refused on that signature alone.
#[tokio::test]
async fn client_refuses_a_relay_holding_a_certificate_for_its_nonce_but_not_the_key() {
    let s = Setup::new();
    let client = s.client(None);

    // The relay with the attested key: the certificate it relays is accepted, so what follows
    // is refused for its handshake signature and for nothing else.
    let (genuine, _server) = serve_once(s.acceptor(ClientAuth::None)).await;
    let addr = relaying_server(genuine, s.server_key.clone()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tls, peer) = client
        .connect(tcp, server_name())
        .await
        .expect("a relay holding the attested key is indistinguishable from the coordinator");
    echo(&mut tls).await;
    assert_eq!(peer.report().measurement(), &MEASUREMENT);

    let (genuine, _server) = serve_once(s.acceptor(ClientAuth::None)).await;
    let addr = relaying_server(genuine, tls_key()).await;
    let (config, cell) = client.handshake().unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let result = tokio_rustls::TlsConnector::from(config)
        .connect(server_name(), tcp)
        .await;
    let err = result.map(|_| ()).unwrap_err();
    assert!(
        err.to_string().contains("BadSignature"),
        "refused for the handshake signature, not for the evidence: {err}"
    );
    assert!(cell.get().is_none(), "no verified peer from a relay");
}

/// Resolves the genuine client certificate for the server's nonce, as a relay could obtain it from
/// a genuine workload, but signs the handshake with another key.
#[derive(Debug)]
struct SwappedSigner {
    genuine: Arc<dyn rustls::client::ResolvesClientCert>,
    signer: Arc<dyn rustls::sign::SigningKey>,
}

impl rustls::client::ResolvesClientCert for SwappedSigner {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let genuine = self.genuine.resolve(root_hint_subjects, sigschemes)?;
        Some(Arc::new(CertifiedKey::new(
            genuine.cert.clone(),
            self.signer.clone(),
        )))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn server_refuses_a_client_certificate_for_its_nonce_signed_by_another_key() {
    let s = Setup::new();
    let (config, _) = s.mutual_client().handshake().unwrap();
    let mut config = (*config).clone();
    config.client_auth_cert_resolver = Arc::new(SwappedSigner {
        genuine: config.client_auth_cert_resolver.clone(),
        signer: rustls::crypto::ring::sign::any_supported_type(&pkcs8(&tls_key())).unwrap(),
    });
    let (addr, server) = serve_once(s.mutual_acceptor()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let _client = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name(), tcp)
        .await;
    let err = server.await.unwrap().map(|_| ()).unwrap_err();
    assert!(
        err.to_string().contains("BadSignature"),
        "refused for the handshake signature, not for the evidence: {err}"
    );

    // The same resolver with the genuine key is accepted: the certificate was bound to the
    // server's nonce, so the refusal above was the signature's alone.
    let (config, _) = s.mutual_client().handshake().unwrap();
    let mut config = (*config).clone();
    config.client_auth_cert_resolver = Arc::new(SwappedSigner {
        genuine: config.client_auth_cert_resolver.clone(),
        signer: rustls::crypto::ring::sign::any_supported_type(&pkcs8(&s.client_key)).unwrap(),
    });
    let (addr, server) = serve_once(s.mutual_acceptor()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name(), tcp)
        .await
        .unwrap();
    echo(&mut tls).await;
    let served = server.await.unwrap().unwrap();
    assert_eq!(
        served.peer.unwrap().report().measurement(),
        &CLIENT_MEASUREMENT
    );
}
