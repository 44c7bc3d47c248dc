//! The server side: accept TCP within the port's limits, run the aTLS handshake off the accept loop
//! within a deadline, hand tonic the survivors, and close them when idle.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use concord_attestation::{AtlsAcceptor, AttestationError, VerifiedPeer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::debug;

use super::failure_log::FailureLog;
use super::gate::{Activity, ConnectionTicket, Gate};
use super::limits::ListenerLimits;

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

/// An established aTLS connection. It counts towards its port's connection limits until dropped, and
/// fails with `TimedOut` once no byte moved either way for the port's idle timeout.
#[derive(Debug)]
pub struct AtlsIo {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    idle: Idle,
    _ticket: ConnectionTicket,
}

impl Connected for AtlsIo {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

/// The idle timer of a connection: reset by every byte read or written, checked whenever a read or a
/// write has to wait (hyper always has a read pending on a connection, so an idle one is noticed).
/// The gate may also close the connection for a newer one ([`Activity`]) when it idled the longest.
#[derive(Debug)]
struct Idle {
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    activity: Option<Arc<Activity>>,
}

impl Idle {
    fn new(timeout: Duration, activity: Option<Arc<Activity>>) -> Idle {
        Idle {
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            activity,
        }
    }

    fn moved(&mut self) {
        let now = Instant::now();
        let next = now + self.timeout;
        // Resetting a timer on every read is cheap, but skip it when the deadline barely moved.
        if next.saturating_duration_since(self.deadline.deadline()) > Duration::from_millis(100) {
            self.deadline.as_mut().reset(next);
            if let Some(a) = &self.activity {
                a.moved(now.into_std());
            }
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self
            .activity
            .as_ref()
            .is_some_and(|a| a.evicted(cx.waker()))
        {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room for a new connection (this one was the idlest)",
            ));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("idle for {} s", self.timeout.as_secs()),
            )),
            Poll::Pending => Ok(()),
        }
    }
}

/// Applies [`Idle`] to any stream (the server's TLS stream; in tests an in-memory pipe).
fn poll_read_idle<T: AsyncRead + Unpin>(
    inner: &mut T,
    idle: &mut Idle,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let before = buf.filled().len();
    match Pin::new(inner).poll_read(cx, buf) {
        Poll::Ready(Ok(())) => {
            if buf.filled().len() > before {
                idle.moved();
            }
            Poll::Ready(Ok(()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => match idle.expired(cx) {
            Ok(()) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        },
    }
}

fn poll_write_idle(
    result: Poll<io::Result<usize>>,
    idle: &mut Idle,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    match result {
        Poll::Ready(Ok(n)) => {
            if n > 0 {
                idle.moved();
            }
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => match idle.expired(cx) {
            Ok(()) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        },
    }
}

impl AsyncRead for AtlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        poll_read_idle(&mut this.inner, &mut this.idle, cx, buf)
    }
}

impl AsyncWrite for AtlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        poll_write_idle(result, &mut this.idle, cx)
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
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        poll_write_idle(result, &mut this.idle, cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl AtlsIo {
    /// A connection whose TLS handshake a listener other than [`incoming`] ran (the transit API's
    /// mutual TLS with mesh certificates): from here it counts towards `ticket`'s limits and closes
    /// after `idle_timeout` without traffic, as [`incoming`]'s do.
    pub(crate) fn established(
        inner: tokio_rustls::server::TlsStream<TcpStream>,
        remote: SocketAddr,
        mut ticket: ConnectionTicket,
        idle_timeout: Duration,
    ) -> AtlsIo {
        let activity = ticket.established(std::time::Instant::now());
        AtlsIo {
            inner,
            info: PeerInfo {
                remote,
                verified: None,
            },
            idle: Idle::new(idle_timeout, Some(activity)),
            _ticket: ticket,
        }
    }
}

/// The label a failed handshake is counted and logged under.
fn failure_label(e: &AttestationError) -> &'static str {
    match e {
        AttestationError::Rejected(r) => r.metric_label(),
        AttestationError::Malformed { .. } => "malformed_evidence",
        AttestationError::Issuer(_) => "issuer",
        AttestationError::Config(_) => "not_admitting",
        AttestationError::Transport(_) => "io",
        AttestationError::ClosedBeforeHandshake => "closed",
        _ => "tls",
    }
}

/// Accepts on `listener` until the process ends, within `limits`: the [`Gate`] decides before any
/// byte is read (excess connections are closed at once), each admitted handshake runs in its own
/// task within the handshake deadline (or until a newer connection evicts it), and only completed
/// handshakes reach tonic, as [`AtlsIo`] with the idle timeout. Failures and refusals go to the
/// port's [`FailureLog`], which bounds the log lines a flood can write.
///
/// The accept loop and every handshake task run on `on`, whatever runtime calls this: the ports
/// that face workloads pass the workload lane (`workload_lane`), so that their handshakes, each a
/// P-384 verification of the workload's evidence, run at its lower priority and not beside Raft.
pub fn incoming(
    listener: TcpListener,
    acceptor: Arc<AtlsAcceptor>,
    api: &'static str,
    limits: &ListenerLimits,
    on: &tokio::runtime::Handle,
) -> ReceiverStream<Result<AtlsIo, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let gate = Gate::new(limits.gate, std::time::Instant::now());
    let deadline = limits.handshake_deadline;
    let idle_timeout = limits.idle_timeout;
    let log = FailureLog::start(api, on);
    on.spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    log.failure(
                        listener.local_addr().unwrap_or(([0, 0, 0, 0], 0).into()),
                        "accept",
                        &e,
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (ticket, handshake) = match gate.admit(remote.ip(), std::time::Instant::now()) {
                Ok(t) => t,
                Err(refusal) => {
                    // Closed at once: nothing read, no evidence made.
                    drop(tcp);
                    log.refused(remote, refusal.label());
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let log = log.clone();
            // On `on`: this loop runs there.
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let outcome = tokio::select! {
                    r = tokio::time::timeout(deadline, acceptor.accept(tcp)) => match r {
                        Ok(r) => r,
                        Err(_) => Err(AttestationError::Transport(format!(
                            "no handshake within {} s", deadline.as_secs()
                        ))),
                    },
                    () = handshake.evicted() => Err(AttestationError::Transport(
                        "evicted: the port's handshake slots were full and this was the oldest".into(),
                    )),
                };
                drop(handshake);
                match outcome {
                    Ok((inner, verified)) => {
                        debug!(api, %remote, "aTLS handshake done");
                        let info = PeerInfo {
                            remote,
                            verified: verified.map(Arc::new),
                        };
                        let mut ticket = ticket;
                        let activity = ticket.established(std::time::Instant::now());
                        let io = AtlsIo {
                            inner,
                            info,
                            idle: Idle::new(idle_timeout, Some(activity)),
                            _ticket: ticket,
                        };
                        let _ = tx.send(Ok(io)).await;
                    }
                    Err(AttestationError::ClosedBeforeHandshake) => {
                        debug!(api, %remote, "connection closed before the handshake");
                    }
                    Err(e) => {
                        crate::observe::global().attestation_failed(api, &e);
                        log.failure(remote, failure_label(&e), &e);
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Verifies with `inner` and records the name of each thread that verified.
    #[derive(Debug)]
    struct ThreadRecording {
        inner: concord_attestation::StaticPolicy,
        threads: std::sync::Mutex<Vec<Option<String>>>,
    }

    impl concord_attestation::AcceptPolicy for ThreadRecording {
        fn verify(
            &self,
            evidence: &concord_attestation::Evidence,
            expected_report_data: &[u8; 64],
        ) -> Result<concord_attestation::VerifiedReport, AttestationError> {
            let name = std::thread::current().name().map(str::to_owned);
            self.threads.lock().unwrap().push(name);
            self.inner.verify(evidence, expected_report_data)
        }

        fn deployment_pin(&self) -> concord_attestation::DeploymentPin {
            self.inner.deployment_pin()
        }
    }

    /// The ports that face workloads are served on the workload lane, but `incoming` is called
    /// from the main runtime: a handshake (the workload's evidence verified inside it) must run on
    /// the runtime it was given, not on its caller's, where it would compete with Raft at the same
    /// priority (until the twenty-fourth pass on issue 11 every mesh handshake did).
    #[test]
    fn handshakes_run_on_the_runtime_given_not_on_the_callers() {
        use concord_attestation::testing::{DEPLOYMENT, SimFixture, tls_key};
        use tokio_stream::StreamExt as _;
        let runtime = |name: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(name)
                .enable_all()
                .build()
                .unwrap()
        };
        let (caller, lane) = (runtime("caller"), runtime("lane"));
        let f = SimFixture::new();
        let (measurement, host_data) = ([0x55; 48], [0x66; 32]);
        let policy = Arc::new(ThreadRecording {
            inner: f.policy_with(&[measurement], &[host_data]),
            threads: Default::default(),
        });
        let acceptor = AtlsAcceptor::new(
            f.issuer.clone(),
            tls_key(),
            Arc::new(DEPLOYMENT),
            concord_attestation::ClientAuth::Required(policy.clone()),
        )
        .unwrap();
        let client = concord_attestation::AtlsClient::new(
            Arc::new(f.policy()),
            Some(concord_attestation::ClientIdentity {
                issuer: f.issuer_for(measurement, host_data),
                key: tls_key(),
                deployment: Arc::new(concord_attestation::DeploymentId::UNPINNED),
            }),
        )
        .unwrap();
        let on = lane.handle().clone();
        caller.block_on(async move {
            // Bound on the lane, as the server binds the workload ports.
            let listener = on
                .spawn(TcpListener::bind("127.0.0.1:0"))
                .await
                .unwrap()
                .unwrap();
            let addr = listener.local_addr().unwrap();
            let limits = ListenerLimits::for_api("mesh");
            let mut accepted = incoming(listener, Arc::new(acceptor), "mesh", &limits, &on);
            for _ in 0..3 {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let server_name = rustls::pki_types::ServerName::try_from("coordinator").unwrap();
                let _tls = client.connect(tcp, server_name).await.unwrap();
                accepted.next().await.unwrap().unwrap();
            }
        });
        let threads = policy.threads.lock().unwrap().clone();
        assert_eq!(threads, vec![Some("lane".to_string()); 3]);
    }

    struct Pipe {
        inner: tokio::io::DuplexStream,
        idle: Idle,
    }

    impl Pipe {
        async fn read_some(&mut self) -> io::Result<usize> {
            let mut buf = [0u8; 16];
            let mut rb = ReadBuf::new(&mut buf);
            std::future::poll_fn(|cx| poll_read_idle(&mut self.inner, &mut self.idle, cx, &mut rb))
                .await?;
            Ok(rb.filled().len())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_and_traffic_keeps_it_open() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut pipe = Pipe {
            inner: a,
            idle: Idle::new(Duration::from_secs(60), None),
        };
        // Traffic every 50 s keeps it open past the timeout...
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            b.write_all(b"x").await.unwrap();
            assert_eq!(pipe.read_some().await.unwrap(), 1);
        }
        // ...silence closes it after 60 s.
        let started = Instant::now();
        let err = pipe.read_some().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(59) && waited <= Duration::from_secs(61),
            "{waited:?}"
        );
    }
}
