//! `HealthServer`: the plain-HTTP port (9102) with `/probe/startup`, `/probe/liveness`,
//! `/probe/readiness`, `/health` and `/metrics`, served by hyper on a thread of its own.
//!
//! Its own thread and runtime: a probe must be answered even when the replica's runtime is wedged, so
//! that liveness can report it (the samples stop) instead of timing out along with everything else.
//!
//! Owns routing and HTTP. Must never serve anything but GET on these paths, never read the replica's
//! core directly (only the [`Beacon`]), and never keep an idle connection open for long.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use super::beacon::{Beacon, Phase};
use super::exposition::CONTENT_TYPE;
use super::{metrics, probe, sample};
use crate::api::Node;
use crate::raft::LogStore;
use crate::store::Store;

/// Connections served at once; more wait. Probes and scrapes are a handful per period.
const MAX_CONNECTIONS: usize = 32;
/// A client that sends no request headers within this is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

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
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let beacon = beacon.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let answer = route(&beacon, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                debug!(%remote, error = %e, "health connection ended with an error");
            }
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
