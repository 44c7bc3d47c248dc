//! `HealthServer`: the plain-HTTP port (9102) with `/probe/startup`, `/probe/liveness`,
//! `/probe/readiness`, `/health` and `/metrics`, served by hyper on a thread of its own.
//!
//! Its own thread and runtime: a probe must be answered even when the replica's runtime is wedged, so
//! that liveness can report it (the samples stop) instead of timing out along with everything else.
//!
//! Owns routing and HTTP. Must never serve anything but GET on these paths, never read the replica's
//! core directly (only the [`Beacon`]), and never keep an idle connection open for long.
//!
//! What a caller of this unauthenticated port can cost: at most [`MAX_CONNECTIONS`] sockets, each for
//! at most [`CONNECTION_DEADLINE`] and [`MAX_REQUEST_BYTES`] of request buffer; a new connection
//! always gets a slot (the oldest is closed), so idle or slowloris sockets cannot delay a probe. No
//! log line above DEBUG per connection. The chart's NetworkPolicy narrows who can reach it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::beacon::{Beacon, Phase};
use super::exposition::CONTENT_TYPE;
use super::{metrics, probe, sample};
use crate::api::Node;
use crate::raft::LogStore;
use crate::store::Store;

/// Connections open at once. Probes and scrapes are a handful per period; when all are taken, the
/// oldest is closed to make room, so idle or slow sockets can never make a new probe wait.
const MAX_CONNECTIONS: usize = 32;
/// A client that has not sent its request headers within this is dropped (the chart's probes time
/// out at 5 s; a probe's request arrives in one packet).
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// No connection lives longer than this, request and answer included (answers come from memory).
const CONNECTION_DEADLINE: Duration = Duration::from_secs(4);
/// The request head (line and headers) is read into at most this many bytes.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// The open connections, oldest first, each with the signal that closes it.
#[derive(Debug, Default)]
struct Slots {
    next: u64,
    open: BTreeMap<u64, Arc<Notify>>,
}

impl Slots {
    /// Takes a slot for a new connection, closing the oldest if all are taken.
    fn take(slots: &Arc<Mutex<Slots>>) -> Slot {
        let mut s = slots.lock().unwrap_or_else(PoisonError::into_inner);
        if s.open.len() >= MAX_CONNECTIONS
            && let Some((_, oldest)) = s.open.pop_first()
        {
            oldest.notify_one();
        }
        let id = s.next;
        s.next += 1;
        let evicted = Arc::new(Notify::new());
        s.open.insert(id, evicted.clone());
        Slot {
            slots: slots.clone(),
            id,
            evicted,
        }
    }
}

/// One connection's place in [`Slots`], given back when dropped.
#[derive(Debug)]
struct Slot {
    slots: Arc<Mutex<Slots>>,
    id: u64,
    evicted: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        s.open.remove(&self.id);
    }
}

/// The running health server. Dropping it stops it.
#[derive(Debug)]
pub struct HealthServer {
    beacon: Arc<Beacon>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl HealthServer {
    /// Binds `addr` and serves at once (startup and readiness answer 503 until [`Self::serving`]).
    /// Fails if the port cannot be bound, so a port conflict stops the replica before it opens its store.
    pub fn start(addr: SocketAddr) -> anyhow::Result<HealthServer> {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr} (health and metrics, --health-listen): {e}")
        })?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let beacon = Arc::new(Beacon::default());
        let (stop, stopped) = watch::channel(false);
        let serve_beacon = beacon.clone();
        std::thread::Builder::new()
            .name("concord-health".into())
            .spawn(move || serve_on_own_runtime(listener, serve_beacon, stopped))
            .map_err(|e| anyhow::anyhow!("cannot start the health thread: {e}"))?;
        info!(health = %local_addr, "probes and metrics listening");
        Ok(HealthServer {
            beacon,
            local_addr,
            stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The replica verified its store and listens on every API port: publish a first sample, pass the
    /// startup probe, and keep sampling on the current (the replica's) runtime.
    pub fn serving<S: Store>(&self, node: Arc<Node<S>>, log: LogStore) {
        self.beacon.publish(sample::take(&node, &log));
        self.beacon.set_phase(Phase::Serving);
        tokio::spawn(sample::keep_sampling(node, log, self.beacon.clone()));
    }

    /// `shutdown`, which also fails readiness as soon as it resolves, so the replica leaves its
    /// Services while it drains.
    pub fn draining_on(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let beacon = self.beacon.clone();
        async move {
            shutdown.await;
            beacon.set_phase(Phase::Stopping);
        }
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn serve_on_own_runtime(
    listener: std::net::TcpListener,
    beacon: Arc<Beacon>,
    stopped: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot start the health server's runtime; probes will fail");
            return;
        }
    };
    runtime.block_on(accept_loop(listener, beacon, stopped));
}

async fn accept_loop(
    listener: std::net::TcpListener,
    beacon: Arc<Beacon>,
    mut stopped: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot use the health listener; probes will fail");
            return;
        }
    };
    let slots = Arc::new(Mutex::new(Slots::default()));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let (tcp, remote) = match accepted {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "health accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Never waits: a full table closes its oldest connection instead.
        let slot = Slots::take(&slots);
        let beacon = beacon.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = route(&beacon, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_REQUEST_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                r = tokio::time::timeout(CONNECTION_DEADLINE, conn) => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(%remote, error = %e, "health connection ended with an error"),
                    Err(_) => debug!(%remote, "health connection closed at its deadline"),
                },
                () = slot.evicted.notified() => debug!(%remote, "health connection closed to make room"),
            }
            drop(slot);
        });
    }
}

type Answer = Response<Full<Bytes>>;

fn route(beacon: &Beacon, method: &Method, path: &str) -> Answer {
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served here".into(),
        );
    }
    let view = beacon.view();
    let now = Instant::now();
    match path {
        "/probe/startup" => verdict(probe::startup(&view)),
        "/probe/liveness" => verdict(probe::liveness(&view, now)),
        "/probe/readiness" => verdict(probe::readiness(&view, now)),
        "/health" => match &view.latest {
            Some((s, _)) => json(StatusCode::OK, sample::health_json(s)),
            None => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "state": "starting" }),
            ),
        },
        "/metrics" => {
            let body = metrics::render(
                view.latest.as_ref().map(|(s, _)| s),
                &metrics::global().counters(),
            );
            respond(StatusCode::OK, CONTENT_TYPE, body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /probe/startup, /probe/liveness, /probe/readiness, /health or /metrics"
                .into(),
        ),
    }
}

fn verdict(v: probe::Verdict) -> Answer {
    let status = if v.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, v.reason)
}

fn text(status: StatusCode, mut body: String) -> Answer {
    body.push('\n');
    respond(status, "text/plain; charset=utf-8", body)
}

fn json(status: StatusCode, value: serde_json::Value) -> Answer {
    respond(status, "application/json", format!("{value}\n"))
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::sample::tests::sample;
    use crate::state::ReplicaState;

    #[test]
    fn routes_answer_by_phase_and_state() {
        let b = Beacon::default();
        let get = |p: &str| route(&b, &Method::GET, p).status();
        assert_eq!(get("/probe/startup"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get("/probe/liveness"), StatusCode::OK);
        assert_eq!(get("/health"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get("/metrics"), StatusCode::OK);
        b.publish(sample(ReplicaState::Ready));
        b.set_phase(Phase::Serving);
        let get = |p: &str| route(&b, &Method::GET, p).status();
        assert_eq!(get("/probe/startup"), StatusCode::OK);
        assert_eq!(get("/probe/readiness"), StatusCode::OK);
        assert_eq!(get("/health"), StatusCode::OK);
        assert_eq!(get("/nope"), StatusCode::NOT_FOUND);
        assert_eq!(
            route(&b, &Method::POST, "/metrics").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
