//! The client side: a tonic channel whose connections are aTLS, verified by the caller's policy.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_attestation::{AtlsClient, AttestationError, VerifiedPeer};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Why a connection could not be made, split by fault: the network, or the peer's evidence.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("cannot reach {addr}: {reason}")]
    Unavailable { addr: String, reason: String },
    #[error("{addr} failed attestation: {source}")]
    Attestation {
        addr: String,
        #[source]
        source: AttestationError,
    },
}

type Slot = Arc<Mutex<Option<Result<VerifiedPeer, AttestationError>>>>;

/// Dials `addr` (host:port) over aTLS and returns the channel and the server's verified evidence.
pub async fn connect(
    addr: &str,
    client: Arc<AtlsClient>,
) -> Result<(Channel, VerifiedPeer), ConnectError> {
    connect_from(addr, None, client).await
}

/// [`connect`] from the local address `local` (any port), or the system's choice for `None`: tests
/// use it to act as several hosts on loopback.
pub async fn connect_from(
    addr: &str,
    local: Option<std::net::IpAddr>,
    client: Arc<AtlsClient>,
) -> Result<(Channel, VerifiedPeer), ConnectError> {
    let slot: Slot = Arc::new(Mutex::new(None));
    let unavailable = |reason: String| ConnectError::Unavailable {
        addr: addr.to_string(),
        reason,
    };
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| unavailable(format!("not a host:port address: {e}")))?
        .connect_timeout(Duration::from_secs(10));
    let target = addr.to_string();
    let connector_slot = slot.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let client = client.clone();
        let target = target.clone();
        let slot = connector_slot.clone();
        async move {
            let tcp = match local {
                None => TcpStream::connect(&target).await?,
                Some(ip) => {
                    let remote =
                        tokio::net::lookup_host(&target)
                            .await?
                            .next()
                            .ok_or_else(|| {
                                std::io::Error::other(format!("{target} resolves to no address"))
                            })?;
                    let socket = if ip.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.bind(std::net::SocketAddr::new(ip, 0))?;
                    socket.connect(remote).await?
                }
            };
            let _ = tcp.set_nodelay(true);
            // The peer is identified by its evidence, not by a name: the name is only for SNI.
            let name = rustls::pki_types::ServerName::try_from("coordinator")
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            match client.connect(tcp, name).await {
                Ok((tls, peer)) => {
                    if let Ok(mut s) = slot.lock() {
                        *s = Some(Ok(peer));
                    }
                    Ok(TokioIo::new(tls))
                }
                Err(e) => {
                    crate::observe::global().attestation_failed("dial", &e);
                    let msg = e.to_string();
                    if let Ok(mut s) = slot.lock() {
                        *s = Some(Err(e));
                    }
                    Err(std::io::Error::other(msg))
                }
            }
        }
    });
    let channel = endpoint.connect_with_connector(connector).await;
    let outcome = slot.lock().ok().and_then(|mut s| s.take());
    match (channel, outcome) {
        (Ok(channel), Some(Ok(peer))) => Ok((channel, peer)),
        // Exit 3 and the metric are for evidence that was received and refused; a reset, a stall
        // or a peer that does not speak aTLS is an outage.
        (_, Some(Err(source))) if source.is_verdict_on_evidence() => {
            Err(ConnectError::Attestation {
                addr: addr.to_string(),
                source,
            })
        }
        (_, Some(Err(source))) => Err(unavailable(source.to_string())),
        (Err(e), _) => Err(unavailable(error_chain(&e))),
        (Ok(_), None) => Err(unavailable("the connection produced no handshake".into())),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
