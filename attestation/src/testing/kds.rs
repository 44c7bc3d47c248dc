//! A stand-in for AMD's KDS on loopback: plain HTTP on 127.0.0.1, serving given bodies at given
//! paths, counting requests, and misbehaving on demand (503s with Retry-After, or never answering).
//! Nothing it serves leaves the machine, and it stops when dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// How the stub answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StubMode {
    /// Each route's body with 200; 404 elsewhere.
    Serve,
    /// The first `count` requests get `status` (with `Retry-After: retry_after` when given), then
    /// as [`StubMode::Serve`].
    FailFirst {
        /// How many requests fail.
        count: usize,
        /// Their status.
        status: u16,
        /// Their Retry-After, in seconds.
        retry_after: Option<u64>,
    },
    /// Accepts connections and never answers.
    Silent,
}

/// A KDS stand-in, running on a thread of its own until dropped.
#[derive(Debug)]
pub struct KdsStub {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A route's body and extra response headers.
type Route = (Vec<u8>, Vec<(String, String)>);

/// A path with its query, the body served there, and extra response headers.
pub type RouteWithHeaders = (String, Vec<u8>, Vec<(String, String)>);

struct State {
    routes: HashMap<String, Route>,
    mode: StubMode,
    seen: Arc<Mutex<Vec<String>>>,
}

impl KdsStub {
    /// Serves `routes` (path with query → body) as `mode` says.
    pub fn start(routes: Vec<(String, Vec<u8>)>, mode: StubMode) -> Self {
        Self::start_with_headers(
            routes
                .into_iter()
                .map(|(path, body)| (path, body, Vec::new()))
                .collect(),
            mode,
        )
    }

    /// Serves `routes` (path with query → body and extra headers) as `mode` says.
    pub fn start_with_headers(routes: Vec<RouteWithHeaders>, mode: StubMode) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State {
            routes: routes
                .into_iter()
                .map(|(path, body, headers)| (path, (body, headers)))
                .collect(),
            mode,
            seen: seen.clone(),
        });
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(serve(std_listener, state, stopped));
        });
        Self {
            addr,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, the base URL to give the KDS client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests (or, when silent, connections) arrived.
    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The path and query of every request, in order.
    pub fn paths(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for KdsStub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    std_listener: std::net::TcpListener,
    state: Arc<State>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(std_listener).unwrap();
    // Silent mode keeps its connections open, unanswered, until the stub stops.
    let mut held = Vec::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted.unwrap(),
            _ = &mut stopped => return,
        };
        if state.mode == StubMode::Silent {
            state.seen.lock().unwrap().push("(connection)".into());
            held.push(stream);
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&state, &request)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(state: &State, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let index = {
        let mut seen = state.seen.lock().unwrap();
        seen.push(path.clone());
        seen.len()
    };
    if let StubMode::FailFirst {
        count,
        status,
        retry_after,
    } = &state.mode
        && index <= *count
    {
        let mut response = Response::builder().status(*status);
        if let Some(seconds) = retry_after {
            response = response.header("Retry-After", seconds.to_string());
        }
        return response.body(Full::new(Bytes::new())).unwrap();
    }
    match state.routes.get(&path) {
        Some((body, headers)) => {
            let mut response = Response::builder().header("Content-Type", "application/pkix-cert");
            for (name, value) in headers {
                response = response.header(name.as_str(), value.as_str());
            }
            response.body(Full::new(Bytes::from(body.clone()))).unwrap()
        }
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    }
}
