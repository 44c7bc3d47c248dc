//! The transit API's port (8200 by default): mutual TLS with mesh certificates, HTTP/1.1 (what Vault's
//! clients speak), within the limits every Concord port has.
//!
//! Owns the TLS configuration (a server certificate from the current mesh CA; client certificates
//! chained to the current mesh CA, or to the previous one for the grace period after it changed) and
//! the thin HTTP shell around [`super::vault::handle`]. Must never read a request body before the
//! client's certificate verified, and never log a body or an answer.
//!
//! What a client can cost: the port's [`ListenerLimits`] (connections per source and in all, a 5 s
//! handshake deadline, the idle timeout), then per connection one request at a time of at most
//! `max_message_bytes` of body and 64 KiB of headers, each read within the request timeout; and when
//! the connection ends, at most [`LINGER_TIME`] and `4 × max_message_bytes` read and discarded after
//! the last answer ([`linger_close`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::RootCertStore;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::vault;
use crate::api::Replica;
use crate::hash::Hash;
use crate::store::Store;
use crate::transport::{AtlsIo, FailureLog, Gate, ListenerLimits};

/// How long a workload's certificate from the previous mesh CA is still accepted after this replica
/// adopted a new one, unless `--transit-mesh-ca-grace` says otherwise.
pub const DEFAULT_MESH_CA_GRACE: Duration = Duration::from_secs(3600);

/// The OID of the policy hash (HOST_DATA) in a leaf from the mesh CA (docs/PROTOCOL.md §7).
const POLICY_OID: &str = "1.3.6.1.4.1.58270.2.3";

/// The transit API's settings.
#[derive(Debug, Clone)]
pub struct TransitSettings {
    /// The names (DNS names or IP addresses) its server certificate carries: what clients dial.
    pub sans: Vec<String>,
    /// How long certificates from the previous mesh CA are still accepted after a change.
    pub mesh_ca_grace: Duration,
}

/// The transit API of one replica.
pub struct TransitServer<S> {
    replica: Arc<Replica<S>>,
    settings: TransitSettings,
    tls: Mutex<TlsState>,
}

impl<S> std::fmt::Debug for TransitServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitServer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct TlsState {
    current: Option<Served>,
    previous: Option<Previous>,
}

/// The configuration built for one mesh CA.
struct Served {
    mesh_ca_der: Vec<u8>,
    mesh_ca_id: Hash,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    config: Arc<ServerConfig>,
    /// Whether `config` also accepts the previous mesh CA (rebuilt without it when the grace ends).
    with_previous: bool,
}

struct Previous {
    mesh_ca_der: Vec<u8>,
    mesh_ca_id: Hash,
    until: Instant,
}

/// Who a connection's client is: its policy and the mesh CA that issued its certificate.
#[derive(Debug, Clone, Copy)]
struct Client {
    policy: Option<Hash>,
    issuer: Hash,
}

impl<S: Store> TransitServer<S> {
    pub fn new(replica: Arc<Replica<S>>, settings: TransitSettings) -> Arc<TransitServer<S>> {
        Arc::new(TransitServer {
            replica,
            settings,
            tls: Mutex::new(TlsState::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TlsState> {
        // Replaced whole or not at all: a poisoned lock still holds a usable state.
        self.tls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The TLS configuration for a new connection: rebuilt when the mesh CA changed or the grace of
    /// the previous one ended. `None` while this replica was never ready since it started (it has no
    /// certificate a workload would trust); a replica that was ready keeps serving its last
    /// configuration, and answers 503 until it is ready again.
    fn tls_config(&self) -> Option<Arc<ServerConfig>> {
        let now = Instant::now();
        let ready_ca = self
            .replica
            .read()
            .ok()
            .and_then(|c| c.current_mesh_ca_der());
        let mut st = self.lock();
        if let Some(ca) = ready_ca
            && st.current.as_ref().is_none_or(|c| c.mesh_ca_der != ca)
        {
            // The previous mesh CA: the one this replica served until now, else (first use since
            // start) the one of the transition before the latest, checked against the root CA.
            let previous = match st.current.take() {
                Some(old) => Some(old.mesh_ca_der),
                None => self
                    .replica
                    .read()
                    .ok()
                    .and_then(|c| c.previous_mesh_ca_der()),
            };
            st.previous = previous.filter(|p| *p != ca).map(|der| Previous {
                mesh_ca_id: Hash::of(&der),
                mesh_ca_der: der,
                until: now + self.settings.mesh_ca_grace,
            });
            match self.serve_new(&ca, st.previous.as_ref()) {
                Ok(served) => {
                    info!(
                        mesh_ca = %served.mesh_ca_id,
                        "transit API: serving with a certificate from the current mesh CA"
                    );
                    st.current = Some(served);
                }
                Err(e) => warn!(error = %e, "transit API: cannot make a server certificate"),
            }
        }
        if st.previous.as_ref().is_some_and(|p| p.until <= now) {
            st.previous = None;
        }
        let previous_live = st.previous.is_some();
        if let Some(cur) = st.current.as_mut()
            && cur.with_previous
            && !previous_live
        {
            match config(
                &cur.mesh_ca_der,
                None,
                cur.chain.clone(),
                cur.key.clone_key(),
            ) {
                Ok(c) => {
                    cur.config = c;
                    cur.with_previous = false;
                }
                Err(e) => warn!(error = %e, "transit API: cannot rebuild the TLS configuration"),
            }
        }
        st.current.as_ref().map(|c| c.config.clone())
    }

    fn serve_new(&self, ca: &[u8], previous: Option<&Previous>) -> Result<Served, String> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| e.to_string())?;
        let cert = self
            .replica
            .read()
            .and_then(|c| {
                c.issue_service_cert(
                    &rcgen::PublicKeyData::subject_public_key_info(&key),
                    "Concord transit API",
                    &self.settings.sans,
                    time::OffsetDateTime::now_utc(),
                )
            })
            .map_err(|e| e.to_string())?;
        if cert.mesh_ca_der != ca {
            return Err("the mesh CA changed while the certificate was issued; retrying".into());
        }
        let chain = vec![
            CertificateDer::from(cert.leaf_der),
            CertificateDer::from(cert.intermediate_der),
        ];
        let key = PrivatePkcs8KeyDer::from(key.serialize_der());
        let config = config(
            ca,
            previous.map(|p| p.mesh_ca_der.as_slice()),
            chain.clone(),
            key.clone_key(),
        )?;
        Ok(Served {
            mesh_ca_der: ca.to_vec(),
            mesh_ca_id: Hash::of(ca),
            chain,
            key,
            config,
            with_previous: previous.is_some(),
        })
    }

    /// Whether a certificate from the mesh CA `issuer` is accepted now (the current one, or the
    /// previous one within its grace): checked at every request, so a kept connection does not
    /// outlive the grace.
    fn accepts(&self, issuer: &Hash) -> bool {
        let st = self.lock();
        st.current.as_ref().is_some_and(|c| c.mesh_ca_id == *issuer)
            || st
                .previous
                .as_ref()
                .is_some_and(|p| p.mesh_ca_id == *issuer && p.until > Instant::now())
    }

    /// Which accepted mesh CA issued `leaf` (the handshake verified that one did).
    fn issuer_of(&self, leaf: &x509_parser::certificate::X509Certificate<'_>) -> Option<Hash> {
        let st = self.lock();
        let cas = st
            .current
            .iter()
            .map(|c| (&c.mesh_ca_der, c.mesh_ca_id))
            .chain(st.previous.iter().map(|p| (&p.mesh_ca_der, p.mesh_ca_id)));
        for (der, id) in cas {
            if let Ok((_, ca)) = x509_parser::parse_x509_certificate(der)
                && leaf.verify_signature(Some(ca.public_key())).is_ok()
            {
                return Some(id);
            }
        }
        None
    }

    /// Serves on `listener` until `stop` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        limits: ListenerLimits,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let gate = Gate::new(limits.gate, std::time::Instant::now());
        let log = FailureLog::start("transit", &tokio::runtime::Handle::current());
        tokio::pin!(stop);
        loop {
            let (tcp, remote) = tokio::select! {
                () = &mut stop => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        log.failure(listener.local_addr().unwrap_or(([0, 0, 0, 0], 0).into()), "accept", &e);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (ticket, handshake) = match gate.admit(remote.ip(), std::time::Instant::now()) {
                Ok(t) => t,
                Err(refusal) => {
                    drop(tcp);
                    log.refused(remote, refusal.label());
                    continue;
                }
            };
            let Some(config) = self.tls_config() else {
                // Never ready since start: no certificate a workload would trust.
                drop(tcp);
                log.refused(remote, "not_ready");
                continue;
            };
            let server = self.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let outcome = tokio::select! {
                    r = tokio::time::timeout(limits.handshake_deadline, acceptor.accept(tcp)) => match r {
                        Ok(Ok(s)) => Ok(s),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no handshake within {} s", limits.handshake_deadline.as_secs())),
                    },
                    () = handshake.evicted() => Err("evicted: the port's handshake slots were full and this was the oldest".into()),
                };
                drop(handshake);
                let tls = match outcome {
                    Ok(s) => s,
                    Err(e) => {
                        log.failure(remote, "tls", &e);
                        return;
                    }
                };
                let client = {
                    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                    let parsed = leaf.and_then(|l| x509_parser::parse_x509_certificate(l).ok());
                    parsed.and_then(|(_, cert)| {
                        server.issuer_of(&cert).map(|issuer| Client {
                            policy: policy_of(&cert),
                            issuer,
                        })
                    })
                };
                let Some(client) = client else {
                    log.failure(
                        remote,
                        "tls",
                        &"no client certificate from an accepted mesh CA",
                    );
                    return;
                };
                let io = AtlsIo::established(tls, remote, ticket, limits.idle_timeout);
                server.serve_connection(io, remote, client, limits).await;
            });
        }
    }

    async fn serve_connection(
        self: Arc<Self>,
        io: AtlsIo,
        remote: SocketAddr,
        client: Client,
        limits: ListenerLimits,
    ) {
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let server = self.clone();
            async move { Ok::<_, Infallible>(server.answer(req, remote, client, limits).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.handshake_deadline)
            .max_buf_size(64 * 1024)
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), service)
            .without_shutdown();
        match conn.await {
            Ok(parts) => linger_close(parts.io.into_inner(), &limits).await,
            Err(e) => debug!(%remote, error = %e, "transit connection ended with an error"),
        }
    }

    async fn answer(
        &self,
        req: Request<hyper::body::Incoming>,
        remote: SocketAddr,
        client: Client,
        limits: ListenerLimits,
    ) -> Response<Full<Bytes>> {
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        if !self.accepts(&client.issuer) {
            return json_response(
                403,
                br#"{"errors":["permission denied: the client certificate is from a mesh CA this coordinator no longer accepts; renew it (run the initializer again)"]}"#.to_vec(),
            );
        }
        let too_large = || {
            json_response(
                413,
                format!(
                    r#"{{"errors":["the request body is larger than the {} bytes Concord accepts, or broken; split the batch"]}}"#,
                    limits.max_message_bytes
                )
                .into_bytes(),
            )
        };
        // A declared length over the limit is refused before any of the body is read: hyper then sends
        // no `100 Continue`, so a client that waits for one sends nothing more, and the answer is not
        // lost to a reset of a connection closed with the body still unread.
        if hyper::body::Body::size_hint(req.body()).lower() > limits.max_message_bytes as u64 {
            return too_large();
        }
        let body = Limited::new(req.into_body(), limits.max_message_bytes);
        let body = match tokio::time::timeout(limits.request_timeout, body.collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => return too_large(),
            Err(_) => {
                return json_response(
                    408,
                    br#"{"errors":["the request body did not arrive in time"]}"#.to_vec(),
                );
            }
        };
        let Some(policy) = client.policy else {
            return json_response(
                403,
                br#"{"errors":["permission denied: the client certificate names no attested policy"]}"#.to_vec(),
            );
        };
        let started = Instant::now();
        let large = body.len() > 64 * 1024;
        let replica = self.replica.clone();
        let run = move || {
            vault::handle(&method, &path, &body, &policy, || {
                replica.read().and_then(|c| c.transit_material())
            })
        };
        // Small requests are a few microseconds of AES; a large batch goes off the runtime's threads.
        let reply = if large {
            match tokio::task::spawn_blocking(run).await {
                Ok(r) => r,
                Err(_) => {
                    return json_response(500, br#"{"errors":["internal error"]}"#.to_vec());
                }
            }
        } else {
            run()
        };
        crate::observe::global().transit_request(reply.op, reply.key.as_deref(), reply.status);
        let key = reply.key.as_deref().unwrap_or("-");
        if reply.status == 403 {
            info!(%remote, op = reply.op, key, policy = %policy, "transit request refused: the policy is not allowed this key or operation");
        } else {
            debug!(%remote, op = reply.op, key, policy = %policy, status = reply.status, micros = started.elapsed().as_micros() as u64, "transit request");
        }
        json_response(reply.status, reply.body)
    }
}

/// The longest a connection is kept, after its last answer, to read and discard what the client still
/// sends.
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Closes a connection hyper is done with without losing its last answer (a lingering close, as
/// Apache and nginx do): the write side first (TLS `close_notify`, then the TCP FIN), then what the
/// client still sends is read and discarded until it closes too, for at most [`LINGER_TIME`] and
/// `4 × max_message_bytes`. Vault's clients (`requests`, Go's `net/http`) send a whole body before
/// they read the answer: after a 413 for a body over the limit, a connection closed with that body
/// unread would be reset, and the reset can reach the client before the answer (or while it still
/// sends, so it never reads it). The connection keeps its place in the port's limits meanwhile.
async fn linger_close(mut io: AtlsIo, limits: &ListenerLimits) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if io.shutdown().await.is_err() {
        return;
    }
    let budget = 4 * limits.max_message_bytes;
    let drain = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut read = 0;
        while read < budget {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

fn json_response(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

/// The policy hash a mesh leaf carries (docs/PROTOCOL.md §7), if it carries one.
fn policy_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<Hash> {
    cert.extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == POLICY_OID)
        .and_then(|e| match e.value {
            // DER OCTET STRING of 32 bytes.
            [0x04, 0x20, rest @ ..] => <[u8; 32]>::try_from(rest).ok().map(Hash),
            _ => None,
        })
}

/// A server configuration: `chain` and `key` as the server's identity; client certificates must
/// chain to `mesh_ca` (or `previous`).
fn config(
    mesh_ca: &[u8],
    previous: Option<&[u8]>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // One verifier per mesh CA: every mesh CA has the same subject, so a single store of both would
    // let path building stop at the first anchor whose name matches.
    let verifiers = std::iter::once(mesh_ca)
        .chain(previous)
        .map(|der| {
            let mut roots = RootCertStore::empty();
            roots.add(CertificateDer::from(der.to_vec())).map_err(|e| {
                format!("the mesh CA certificate is not a usable trust anchor: {e}")
            })?;
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(AnyMeshCa(verifiers)))
        .with_single_cert(chain, PrivateKeyDer::Pkcs8(key))
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts a client certificate that one of its verifiers (one per accepted mesh CA) accepts.
#[derive(Debug)]
struct AnyMeshCa(Vec<Arc<dyn ClientCertVerifier>>);

impl AnyMeshCa {
    fn first(&self) -> Result<&Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.0
            .first()
            .ok_or_else(|| rustls::Error::General("no mesh CA to verify against".into()))
    }
}

impl ClientCertVerifier for AnyMeshCa {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Every mesh CA has the same subject: the first one's hint names them all.
        self.0.first().map_or(&[], |v| v.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut last = rustls::Error::General("no mesh CA to verify against".into());
        for v in &self.0 {
            match v.verify_client_cert(end_entity, intermediates, now) {
                Ok(ok) => return Ok(ok),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.first()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.first()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .first()
            .map_or_else(Vec::new, |v| v.supported_verify_schemes())
    }
}
