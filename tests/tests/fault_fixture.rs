//! The fault fixture (`concord_tests::fault`) against echo servers on loopback: what every cluster
//! test relies on when it cuts, delays or blackholes the traffic between replicas.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use concord_tests::fault::{Mesh, Proxy};

/// How long a test waits for what should happen at once (a close, a released echo): a guard
/// against hangs, never a timing assertion.
const PROMPTLY: Duration = Duration::from_secs(5);
/// How long a connection must stay silent to count as "nothing forwarded".
const SILENCE: Duration = Duration::from_millis(300);

/// An echo server that first sends `greeting`, on threads that live as long as the test process.
fn echo_server(greeting: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            thread::spawn(move || {
                let mut from = conn.try_clone().unwrap();
                if conn.write_all(greeting).is_ok() {
                    // Echoes until the client's EOF, then closes.
                    let _ = std::io::copy(&mut from, &mut conn);
                }
            });
        }
    });
    addr
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PROMPTLY)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    assert_eq!(read_n(s, msg.len()), msg);
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// The connection is closed: a read ends in EOF or a reset, not in data or a timeout.
fn assert_closed(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(PROMPTLY)).unwrap();
    match s.read(&mut [0; 64]) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: read {n} bytes from a connection that should be closed"),
        Err(e) if is_timeout(&e) => panic!("{what}: still open after {PROMPTLY:?}"),
        Err(_) => {} // a reset
    }
}

/// The connection is open but nothing arrives on it.
fn assert_silent(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(SILENCE)).unwrap();
    match s.read(&mut [0; 64]) {
        Err(e) if is_timeout(&e) => {}
        Ok(0) => panic!("{what}: closed instead of hung"),
        Ok(n) => panic!("{what}: {n} bytes forwarded"),
        Err(e) => panic!("{what}: {e} instead of a hang"),
    }
    s.set_read_timeout(Some(PROMPTLY)).unwrap();
}

#[test]
fn forwards_both_ways_and_passes_half_close_on() {
    let proxy = Proxy::start(echo_server(b"")).unwrap();
    let mut small = connect(proxy.addr());
    round_trip(&mut small, b"hello");

    // Larger than every buffer on the way, written while the echo is read back.
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let mut big = connect(proxy.addr());
    let mut writer = big.try_clone().unwrap();
    let sent = payload.clone();
    let writing = thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        // The half-close travels to the echo server, which closes; that close travels back.
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut echoed = Vec::new();
    big.read_to_end(&mut echoed).unwrap();
    writing.join().unwrap();
    assert!(echoed == payload, "the echo differs from what was sent");

    let total = (5 + payload.len()) as u64;
    let stats = proxy.stats();
    assert_eq!(stats.client_to_upstream, total, "{stats:?}");
    assert_eq!(stats.upstream_to_client, total, "{stats:?}");
    assert_eq!(stats.connections, 2, "{stats:?}");
    assert_eq!(stats.rejected, 0, "{stats:?}");
}

#[test]
fn cut_closes_live_connections_and_new_ones_until_heal() {
    let proxy = Proxy::start(echo_server(b"")).unwrap();
    let mut live = connect(proxy.addr());
    round_trip(&mut live, b"before");

    proxy.cut();
    assert_eq!(proxy.stats().live, 0, "cut returned with connections open");
    assert_closed(&mut live, "a connection open at the cut");

    let mut during = connect(proxy.addr());
    let _ = during.write_all(b"lost"); // may already fail: the proxy closed it
    assert_closed(&mut during, "a connection made during the cut");
    let stats = proxy.stats();
    assert_eq!(stats.rejected, 1, "{stats:?}");
    assert_eq!(
        stats.client_to_upstream, 6,
        "bytes crossed a cut: {stats:?}"
    );

    proxy.heal();
    let mut after = connect(proxy.addr());
    round_trip(&mut after, b"after");
    assert_eq!(proxy.stats().connections, 2);
}

#[test]
fn delay_slows_live_and_new_connections_both_ways() {
    let delay = Duration::from_millis(200);
    let proxy = Proxy::start(echo_server(b"")).unwrap();
    let mut live = connect(proxy.addr());
    round_trip(&mut live, b"warm up"); // the upstream connection exists before timing

    proxy.delay(delay);
    let start = Instant::now();
    round_trip(&mut live, b"slow");
    let took = start.elapsed();
    assert!(took >= 2 * delay, "a live round trip took {took:?}");

    let mut new = connect(proxy.addr());
    let start = Instant::now();
    round_trip(&mut new, b"slow too");
    let took = start.elapsed();
    assert!(
        took >= 2 * delay,
        "a new connection's round trip took {took:?}"
    );
}

#[test]
fn delay_zero_releases_chunks_already_waiting() {
    let proxy = Proxy::start(echo_server(b"")).unwrap();
    let mut c = connect(proxy.addr());
    round_trip(&mut c, b"warm up");

    proxy.delay(Duration::from_secs(3600));
    c.write_all(b"held").unwrap();
    assert_silent(&mut c, "under an hour's delay");
    proxy.delay(Duration::ZERO);
    assert_eq!(read_n(&mut c, 4), b"held");
}

#[test]
fn blackhole_holds_connections_open_and_forwards_nothing_until_heal() {
    let proxy = Proxy::start(echo_server(b"")).unwrap();
    let mut live = connect(proxy.addr());
    round_trip(&mut live, b"before");

    proxy.blackhole();
    live.write_all(b"ping").unwrap();
    let mut new = connect(proxy.addr());
    new.write_all(b"pong").unwrap();
    assert_silent(&mut live, "a live connection in a blackhole");
    assert_silent(&mut new, "a new connection in a blackhole");
    let stats = proxy.stats();
    assert_eq!(
        stats.client_to_upstream, 6,
        "bytes left the blackhole: {stats:?}"
    );

    // Both connections survived and get what was held.
    proxy.heal();
    assert_eq!(read_n(&mut live, 4), b"ping");
    assert_eq!(read_n(&mut new, 4), b"pong");
    let stats = proxy.stats();
    assert_eq!(
        (stats.live, stats.connections, stats.rejected),
        (2, 2, 0),
        "{stats:?}"
    );
}

#[test]
fn dropping_the_proxy_closes_its_port_and_connections() {
    let proxy = Proxy::start(echo_server(b"")).unwrap();
    let addr = proxy.addr();
    let mut live = connect(addr);
    round_trip(&mut live, b"hello");

    drop(proxy);
    assert_closed(&mut live, "a connection of a dropped proxy");
    let err = TcpStream::connect(addr).expect_err("the dropped proxy's port still accepts");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}

/// The fixture runs on its own threads, so it is started, driven and dropped from inside a
/// runtime as well, with the upstream served by the test's own (single-threaded) runtime.
#[tokio::test]
async fn works_inside_a_tokio_test() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });

    let proxy = Proxy::start(upstream).unwrap();
    let mut c = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    c.write_all(b"async").await.unwrap();
    let mut buf = [0; 5];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"async");

    proxy.cut();
    let read = tokio::time::timeout(PROMPTLY, c.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the cut connection is not closed: {read:?}"
    );
    drop(proxy);
}

#[test]
fn mesh_partition_cuts_exactly_the_crossing_links() {
    // Each node greets with its number, so a test sees which node it reached.
    let nodes = [echo_server(b"0"), echo_server(b"1"), echo_server(b"2")];
    let mesh = Mesh::new(&nodes).unwrap();
    let links: Vec<(usize, usize)> = (0..3)
        .flat_map(|from| (0..3).map(move |to| (from, to)))
        .filter(|(from, to)| from != to)
        .collect();
    let mut addrs: Vec<SocketAddr> = links.iter().map(|&(f, t)| mesh.addr_for(f, t)).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 6, "every ordered pair has its own proxy");

    let reach = |from: usize, to: usize| {
        let mut c = connect(mesh.addr_for(from, to));
        assert_eq!(
            read_n(&mut c, 1),
            to.to_string().as_bytes(),
            "{from} -> {to}"
        );
        c
    };
    let mut open: Vec<TcpStream> = links.iter().map(|&(f, t)| reach(f, t)).collect();

    mesh.partition(&[0], &[1, 2]);
    for (&(from, to), conn) in links.iter().zip(open.iter_mut()) {
        let what = format!("{from} -> {to}");
        if (from == 0) != (to == 0) {
            assert_closed(conn, &format!("live {what} across the partition"));
            let mut new = connect(mesh.addr_for(from, to));
            assert_closed(&mut new, &format!("new {what} across the partition"));
        } else {
            round_trip(conn, what.as_bytes());
            reach(from, to);
        }
    }

    mesh.heal_all();
    for &(from, to) in &links {
        round_trip(&mut reach(from, to), b"healed");
    }
}
