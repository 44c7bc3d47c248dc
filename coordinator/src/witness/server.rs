//! The witness's HTTP listener: `POST /add-checkpoint` of C2SP tlog-witness, plain HTTP/1.1.
//!
//! What an unauthenticated caller can cost: at most [`MAX_CONNECTIONS`] sockets (more are closed at
//! once, unread), each for at most [`CONNECTION_DEADLINE`]; request heads within [`HEADER_TIMEOUT`] and
//! [`MAX_HEAD_BYTES`]; bodies of at most [`MAX_BODY_BYTES`]; then one Ed25519 verification of the log's
//! signature before anything else (a proof of at most 63 hashes), and one fsync per cosignature. One
//! log line per refused request, at INFO, naming the refusal (never key material).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::{debug, info, warn};

use super::{AddCheckpoint, Refusal, Witness, WitnessState};

pub const MAX_CONNECTIONS: usize = 64;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A checkpoint with a few hundred signature lines and 63 proof lines fits easily.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

struct Shared {
    witness: Witness,
    state_dir: PathBuf,
    state: Mutex<WitnessState>,
}

/// Serves until the process ends. `state_dir` holds the fsynced state; it is loaded before binding.
pub async fn serve(
    witness: Witness,
    state_dir: PathBuf,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let state = WitnessState::load(&state_dir).map_err(|e| anyhow::anyhow!(e))?;
    let shared = Arc::new(Shared {
        witness,
        state_dir,
        state: Mutex::new(state),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "witness accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%remote, "witness connection refused: all slots taken");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                // One request per connection: coordinators dial per request, and an idle kept-alive
                // socket would hold a slot for nothing.
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            match tokio::time::timeout(CONNECTION_DEADLINE, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%remote, error = %e, "witness connection ended with an error"),
                Err(_) => debug!(%remote, "witness connection closed at its deadline"),
            }
            drop(slot);
        });
    }
}

type Answer = Response<Full<Bytes>>;

async fn handle(shared: Arc<Shared>, req: Request<hyper::body::Incoming>) -> Answer {
    if req.method() != Method::POST || req.uri().path() != "/add-checkpoint" {
        return text(
            StatusCode::NOT_FOUND,
            "this witness serves POST /add-checkpoint only (C2SP tlog-witness)\n",
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body refused: {e} (at most {MAX_BODY_BYTES} bytes)\n"),
            );
        }
    };
    // Verification, decision and fsync off the runtime's threads, under one lock: the check of the
    // old size and the update of the state are atomic (tlog-witness).
    let answer = tokio::task::spawn_blocking(move || decide(&shared, &body)).await;
    match answer {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "the witness task failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

fn decide(shared: &Shared, body: &[u8]) -> Answer {
    let req = match AddCheckpoint::parse(body) {
        Ok(r) => r,
        Err(refusal) => return refused(&refusal),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    let (origin, cosigned, lines) = match shared.witness.add_checkpoint(&state, &req, now) {
        Ok(ok) => ok,
        Err(refusal) => return refused(&refusal),
    };
    let mut next = state.clone();
    next.logs.insert(origin.clone(), cosigned.clone());
    // Persisted before the cosignature leaves; on failure nothing changes and nothing is signed out.
    if let Err(e) = next.save(&shared.state_dir) {
        warn!(error = %e, dir = %shared.state_dir.display(), "cannot persist the witness state");
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the witness cannot persist its state; try again later\n",
        );
    }
    *state = next;
    info!(%origin, size = cosigned.size, root = %cosigned.root, "cosigned");
    text(StatusCode::OK, &lines)
}

fn refused(r: &Refusal) -> Answer {
    info!(refusal = %r, "checkpoint not cosigned");
    match r {
        Refusal::OldSizeMismatch { latest, .. } => {
            let mut a = text(StatusCode::CONFLICT, &format!("{latest}\n"));
            a.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/x.tlog.size"),
            );
            a
        }
        r => text(
            StatusCode::from_u16(r.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
            &format!("{r}\n"),
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The address a witness listens on by default.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7380))
}
