//! The fault fixture every multi-replica test shares: a TCP [`Proxy`] placed in front of a replica's
//! port, which the test can cut, delay, blackhole and heal, and a [`Mesh`] of them, one per ordered
//! pair of replicas, so a test can partition a cluster.
//!
//! It owns the proxies' listeners, the connections they forward, and one tokio runtime per `Proxy`
//! or `Mesh` on threads of its own, so sync `#[test]`s and `#[tokio::test]`s use it alike. Every
//! control call is synchronous and has taken effect when it returns.
//!
//! It must never look into or change the bytes it forwards (aTLS runs end to end through it), and
//! never outlive its owner: dropping a `Proxy` closes its port and all its connections before `drop`
//! returns.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long a control call waits for the proxy's tasks to close connections. Closing takes
/// microseconds; the bound only turns a fixture bug into a test failure instead of a hang.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest chunk read at once.
const CHUNK: usize = 16 * 1024;
/// Chunks one direction holds while delayed or blackholed before it stops reading, so the sender
/// feels TCP backpressure instead of the proxy buffering without bound.
const CHUNKS_IN_FLIGHT: usize = 64;

/// One proxy on its own runtime, forwarding to `upstream` until dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    // Kept until the proxy's tasks are gone (see `Drop`); shared by every proxy of a `Mesh`.
    _runtime: Arc<FixtureRuntime>,
}

/// What a proxy has forwarded so far, for assertions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes handed to the upstream (counted as each chunk's write starts).
    pub client_to_upstream: u64,
    /// Bytes handed back to the clients (counted as each chunk's write starts).
    pub upstream_to_client: u64,
    /// Connections accepted for forwarding (including those cut later).
    pub connections: u64,
    /// Connections accepted and closed at once because the proxy was cut.
    pub rejected: u64,
    /// Connections open now.
    pub live: usize,
}

impl Proxy {
    /// Listens on a fresh 127.0.0.1 port and forwards every connection to `upstream`, on a runtime
    /// of its own.
    pub fn start(upstream: SocketAddr) -> io::Result<Proxy> {
        Proxy::start_on(FixtureRuntime::new()?, upstream)
    }

    fn start_on(runtime: Arc<FixtureRuntime>, upstream: SocketAddr) -> io::Result<Proxy> {
        // Bound here rather than in the task so the port listens before `start` returns.
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = {
            let _inside = runtime.handle.enter();
            TcpListener::from_std(listener)?
        };
        let settings = Settings {
            mode: Mode::Forward,
            delay: Duration::ZERO,
        };
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State {
                settings,
                accepting: true,
                live: 0,
                connections: 0,
                rejected: 0,
            }),
            ended: Condvar::new(),
            settings: watch::Sender::new(settings),
            client_to_upstream: AtomicU64::new(0),
            upstream_to_client: AtomicU64::new(0),
        });
        runtime.handle.spawn(accept(listener, shared.clone()));
        Ok(Proxy {
            addr,
            shared,
            _runtime: runtime,
        })
    }

    /// The address to dial instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address this proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// A partition: closes every live connection (both ends see EOF or a reset) and, until
    /// [`heal`](Self::heal), accepts new connections only to close them. Returns once every
    /// connection is closed.
    ///
    /// # Panics
    /// If the proxy's tasks have not closed them within 5 s (a fixture bug).
    pub fn cut(&self) {
        self.begin_cut();
        self.finish_cut();
    }

    fn begin_cut(&self) {
        drop(self.shared.update(|s| s.mode = Mode::Cut));
    }

    fn finish_cut(&self) {
        let live = self.shared.wait_for(|s| s.live == 0).live;
        assert!(
            live == 0,
            "proxy {} -> {}: {live} connections still open {SETTLE_TIMEOUT:?} after the cut",
            self.addr,
            self.shared.upstream
        );
    }

    /// Ends a cut or a blackhole: new connections are forwarded again, and chunks a blackhole held
    /// go out now. Leaves the delay as it is.
    pub fn heal(&self) {
        drop(self.shared.update(|s| s.mode = Mode::Forward));
    }

    /// Delays every chunk, in both directions, on live and new connections, by `delay` after the
    /// proxy received it. `Duration::ZERO` removes the delay, and chunks already waiting go out at
    /// once. Per direction, chunks stay in order and pipelined: this is latency, not a bandwidth cap.
    pub fn delay(&self, delay: Duration) {
        drop(self.shared.update(|s| s.delay = delay));
    }

    /// A hung network, as opposed to a refused one: connections stay open and new ones are
    /// accepted (the kernel completes the handshake), but nothing is forwarded in either direction
    /// and new connections do not reach the upstream, until [`heal`](Self::heal) releases what was
    /// held. A chunk whose write had already begun when this is called may still arrive.
    pub fn blackhole(&self) {
        drop(self.shared.update(|s| s.mode = Mode::Blackhole));
    }

    /// Bytes forwarded each way and connection counts.
    pub fn stats(&self) -> Stats {
        let state = self.shared.lock();
        Stats {
            client_to_upstream: self.shared.client_to_upstream.load(Ordering::Relaxed),
            upstream_to_client: self.shared.upstream_to_client.load(Ordering::Relaxed),
            connections: state.connections,
            rejected: state.rejected,
            live: state.live,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        drop(self.shared.update(|s| s.mode = Mode::Stop));
        // Not asserted: a panic in drop would abort a test that is already failing.
        drop(self.shared.wait_for(|s| s.live == 0 && !s.accepting));
    }
}

/// One proxy per ordered pair of nodes: node `from` reaches node `to` through
/// [`addr_for(from, to)`](Self::addr_for), so links can be cut one direction at a time.
#[derive(Debug)]
pub struct Mesh {
    /// `links[from][to]`; `None` on the diagonal, as a node does not dial itself through the network.
    links: Vec<Vec<Option<Proxy>>>,
}

impl Mesh {
    /// Proxies between every ordered pair of `upstreams` (node `i` listens on `upstreams[i]`), on
    /// one runtime shared by all of them.
    pub fn new(upstreams: &[SocketAddr]) -> io::Result<Mesh> {
        let runtime = FixtureRuntime::new()?;
        let mut links = Vec::with_capacity(upstreams.len());
        for from in 0..upstreams.len() {
            let mut row = Vec::with_capacity(upstreams.len());
            for (to, upstream) in upstreams.iter().enumerate() {
                row.push(if from == to {
                    None
                } else {
                    Some(Proxy::start_on(runtime.clone(), *upstream)?)
                });
            }
            links.push(row);
        }
        Ok(Mesh { links })
    }

    /// How many nodes the mesh connects.
    pub fn nodes(&self) -> usize {
        self.links.len()
    }

    /// The address node `from` must dial to reach node `to`.
    ///
    /// # Panics
    /// If either is not a node of the mesh, or `from == to`.
    pub fn addr_for(&self, from: usize, to: usize) -> SocketAddr {
        self.proxy(from, to).addr()
    }

    /// The proxy carrying node `from`'s connections to node `to`, to delay or blackhole one link.
    ///
    /// # Panics
    /// If either is not a node of the mesh, or `from == to`.
    pub fn proxy(&self, from: usize, to: usize) -> &Proxy {
        let n = self.nodes();
        assert!(
            from < n && to < n,
            "the mesh has {n} nodes: there is no link {from} -> {to}"
        );
        match &self.links[from][to] {
            Some(proxy) => proxy,
            None => panic!("node {from} does not dial itself through the mesh"),
        }
    }

    /// Cuts every link between a node of `a` and a node of `b`, in both directions; links within
    /// each side stay as they are. All those links are cut before any connection is closed, and
    /// every connection over them is closed when this returns.
    ///
    /// # Panics
    /// If a node is on both sides, or not a node of the mesh.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        let mut crossing = Vec::new();
        for &x in a {
            for &y in b {
                assert!(x != y, "node {x} is on both sides of the partition");
                crossing.push(self.proxy(x, y));
                crossing.push(self.proxy(y, x));
            }
        }
        crossing.iter().for_each(|p| p.begin_cut());
        crossing.iter().for_each(|p| p.finish_cut());
    }

    /// [`heal`](Proxy::heal) on every link. Delays stay as they are.
    pub fn heal_all(&self) {
        self.links.iter().flatten().flatten().for_each(Proxy::heal);
    }
}

/// What a proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Blackhole,
    Cut,
    /// The `Proxy` is being dropped: the listener closes too.
    Stop,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    mode: Mode,
    delay: Duration,
}

/// The state a proxy's handle and its tasks share.
#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Signalled when a connection or the acceptor ends, for `cut` and `drop` to wait on.
    ended: Condvar,
    /// `State::settings` for the tasks to await; written only with `state` locked, so the two agree.
    settings: watch::Sender<Settings>,
    client_to_upstream: AtomicU64,
    upstream_to_client: AtomicU64,
}

#[derive(Debug)]
struct State {
    settings: Settings,
    accepting: bool,
    live: usize,
    connections: u64,
    rejected: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // `State` holds flags and counters, each written in one step, so a panic elsewhere while
        // the lock was held cannot have left it half-updated: a poisoned lock is still good.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the settings and wakes every task; returns the lock so a caller can wait on it.
    fn update(&self, change: impl FnOnce(&mut Settings)) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        change(&mut state.settings);
        self.settings.send_replace(state.settings);
        state
    }

    /// Waits until `done` holds or `SETTLE_TIMEOUT` passes; the caller checks which.
    fn wait_for(&self, done: impl Fn(&State) -> bool) -> MutexGuard<'_, State> {
        self.ended
            .wait_timeout_while(self.lock(), SETTLE_TIMEOUT, |s| !done(s))
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }
}

/// A connection's place in `State::live`. Dropped only after both of its sockets are closed, so
/// `cut` returning means the peers have seen the close.
struct Registration(Arc<Shared>);

impl Registration {
    /// Checks the mode and counts the connection under one lock, so a connection is either counted
    /// before a cut (and closed by it) or refused after it: none slips between.
    fn new(shared: &Arc<Shared>) -> Option<Registration> {
        let mut state = shared.lock();
        match state.settings.mode {
            Mode::Forward | Mode::Blackhole => {
                state.live += 1;
                state.connections += 1;
                Some(Registration(shared.clone()))
            }
            Mode::Cut | Mode::Stop => {
                state.rejected += 1;
                None
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.0.lock().live -= 1;
        self.0.ended.notify_all();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut settings = shared.settings.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = settings.wait_for(|s| s.mode == Mode::Stop) => break,
        };
        match accepted {
            Ok((client, _)) => {
                // Refused connections are dropped here: the client sees the close at once.
                if let Some(registration) = Registration::new(&shared) {
                    tokio::spawn(async move {
                        serve(client, &registration.0).await;
                        drop(registration);
                    });
                }
            }
            // Out of descriptors, say: the connection waits in the backlog, so retrying at once
            // would spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    drop(listener);
    shared.lock().accepting = false;
    shared.ended.notify_all();
}

/// Forwards one connection until either end closes it or the proxy is cut; both sockets are closed
/// when this returns.
async fn serve(client: TcpStream, shared: &Shared) {
    let mut settings = shared.settings.subscribe();
    tokio::select! {
        _ = settings.wait_for(|s| matches!(s.mode, Mode::Cut | Mode::Stop)) => {}
        _ = forward(client, shared) => {}
    }
}

async fn forward(client: TcpStream, shared: &Shared) -> io::Result<()> {
    // A hung network does not carry the handshake either: reach the upstream only once traffic flows.
    let _ = shared
        .settings
        .subscribe()
        .wait_for(|s| s.mode == Mode::Forward)
        .await;
    let server = TcpStream::connect(shared.upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::try_join!(
        pipe(
            client_read,
            server_write,
            &shared.client_to_upstream,
            shared.settings.subscribe()
        ),
        pipe(
            server_read,
            client_write,
            &shared.upstream_to_client,
            shared.settings.subscribe()
        ),
    )?;
    Ok(())
}

/// One direction. Reading and writing are decoupled by a queue of timestamped chunks so a delay
/// holds each chunk from the moment it arrived, without holding up the reads behind it.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    forwarded: &AtomicU64,
    mut settings: watch::Receiver<Settings>,
) -> io::Result<()> {
    let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let read = async move {
        let mut buf = vec![0; CHUNK];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                // Dropping `queue` lets the writer drain it and pass the EOF on.
                return Ok::<_, io::Error>(());
            }
            if queue
                .send((Instant::now(), buf[..n].to_vec()))
                .await
                .is_err()
            {
                // The writer failed, and `try_join` reports its error.
                return Ok(());
            }
        }
    };
    let write = async move {
        while let Some((received, chunk)) = queued.recv().await {
            release(received, &mut settings).await;
            // Counted before the write so that a peer that has read the bytes finds them counted.
            forwarded.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            to.write_all(&chunk).await?;
        }
        // A half-close (the peer's shutdown of its write side) reaches the other end.
        to.shutdown().await
    };
    tokio::try_join!(read, write)?;
    Ok(())
}

/// Waits until a chunk that arrived at `received` may go out: traffic flows and its delay has
/// passed. Looks again at every change, so `heal` and `delay(ZERO)` release held chunks at once.
async fn release(received: Instant, settings: &mut watch::Receiver<Settings>) {
    loop {
        let now = *settings.borrow_and_update();
        match (now.mode, received.checked_add(now.delay)) {
            (Mode::Forward, Some(due)) if Instant::now() >= due => return,
            (Mode::Forward, Some(due)) => tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = changed(settings) => {}
            },
            // Blackholed, or a delay too long to represent: hold. Cut and stopped: `serve` drops
            // this future.
            _ => changed(settings).await,
        }
    }
}

async fn changed(settings: &mut watch::Receiver<Settings>) {
    if settings.changed().await.is_err() {
        // The sender lives in `Shared`, which the task borrows, so this cannot happen; were it
        // to, forwarding nothing more is the safe reading.
        std::future::pending::<()>().await;
    }
}

/// A tokio runtime on threads of its own. Shut down without waiting when the last proxy using it
/// is dropped: dropping a `Runtime` the usual way panics inside a `#[tokio::test]`.
#[derive(Debug)]
struct FixtureRuntime {
    handle: Handle,
    runtime: Option<Runtime>,
}

impl FixtureRuntime {
    fn new() -> io::Result<Arc<FixtureRuntime>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("concord-fault")
            .enable_all()
            .build()?;
        Ok(Arc::new(FixtureRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        }))
    }
}

impl Drop for FixtureRuntime {
    fn drop(&mut self) {
        // Every proxy has already closed its connections and listener (`Proxy::drop`), so nothing
        // is left to wait for.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
