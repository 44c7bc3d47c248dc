//! The server side: accept TCP, run the aTLS handshake off the accept loop, hand tonic the survivors.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use concord_attestation::{AtlsAcceptor, AttestationError, VerifiedPeer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

/// Who is on the other end of a request: its address and, on mutual aTLS, its verified evidence.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    pub verified: Option<Arc<VerifiedPeer>>,
}

/// The verified evidence of the peer of a request on a mutual aTLS port; PermissionDenied if the
/// connection carried none (which the acceptor for those ports never lets happen).
pub fn attested_peer<T>(
    request: &tonic::Request<T>,
    api: &str,
) -> Result<Arc<VerifiedPeer>, tonic::Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.verified.clone())
        .ok_or_else(|| {
            tonic::Status::permission_denied(format!(
                "the {api} needs an attested client certificate"
            ))
        })
}

/// An established aTLS connection.
#[derive(Debug)]
pub struct AtlsIo {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for AtlsIo {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for AtlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AtlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Handshakes in flight at once; more wait, so a flood of garbage cannot exhaust memory.
const MAX_HANDSHAKES: usize = 256;

/// Accepts on `listener` forever; each connection's handshake runs in its own task, and only the ones
/// that complete reach tonic. A failed handshake (garbage, wrong evidence) is logged and dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: Arc<AtlsAcceptor>,
    api: &'static str,
) -> ReceiverStream<Result<AtlsIo, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(api, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tcp.set_nodelay(true);
                match acceptor.accept(tcp).await {
                    Ok((inner, verified)) => {
                        debug!(api, %remote, "aTLS handshake done");
                        let info = PeerInfo {
                            remote,
                            verified: verified.map(Arc::new),
                        };
                        let _ = tx.send(Ok(AtlsIo { inner, info })).await;
                    }
                    Err(AttestationError::ClosedBeforeHandshake) => {
                        debug!(api, %remote, "connection closed before the handshake");
                    }
                    Err(e) => {
                        crate::observe::global().attestation_failed(api, &e);
                        warn!(api, %remote, error = %e, "aTLS handshake failed");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
