//! A VCEK lookup miss must not stall the replica: after the host changes the reported TCB, with
//! AMD's KDS unreachable, many clients handshake at once. The SEV-SNP issuer runs on a stand-in
//! device (reporting a TCB no source has a VCEK for) behind the real aTLS acceptor, on a runtime of
//! two worker threads like a replica's; the KDS stand-in accepts connections and never answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use concord_attestation::atls::{AtlsAcceptor, AtlsClient, ClientAuth};
use concord_attestation::testing::device::StandInDevice;
use concord_attestation::testing::kds::{KdsStub, StubMode};
use concord_attestation::testing::{DEPLOYMENT, SimFixture, tls_key};
use concord_attestation::vcek::{KdsClient, KdsConfig, VcekResolver};
use concord_attestation::{ReportBuilder, SevGuestIssuer, Tcb};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

/// Clients handshaking at once, besides the one measured.
const CLIENTS: usize = 50;

/// A Genoa report (version 3, so one product to look up) of a chip at a TCB nobody has the VCEK of,
/// carrying whatever report data the issuer asks for.
fn device_after_a_tcb_change() -> StandInDevice {
    StandInDevice::built(
        ReportBuilder::new()
            .version(3)
            .cpuid(0x19, 0x11, 0)
            .chip_id(&[0x42; 64])
            .reported_tcb(Tcb::new(9, 0, 23, 213)),
    )
}

/// The time one handshake takes to end (it can only fail: no VCEK, no evidence), seen from a
/// runtime of the client's own; `None` when it did not end within `limit`.
async fn handshake_time(addr: std::net::SocketAddr, limit: Duration) -> Option<Duration> {
    let client = AtlsClient::new(Arc::new(SimFixture::new().policy()), None).unwrap();
    let start = Instant::now();
    let attempt = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        client
            .connect(tcp, ServerName::try_from("coordinator").unwrap())
            .await
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(_)) => panic!("a handshake succeeded without a VCEK"),
        Ok(Err(_)) => Some(start.elapsed()),
        Err(_) => None,
    }
}

#[test]
fn a_vcek_lookup_miss_fails_handshakes_at_once_with_one_kds_fetch_and_a_live_runtime() {
    // The KDS stand-in never answers; the client waits 60 s per request, as long as it is allowed to.
    let kds = KdsStub::start(vec![], StubMode::Silent);
    let resolver = VcekResolver::new(
        Some(
            KdsClient::new(KdsConfig {
                timeout: Duration::from_secs(60),
                attempts: 1,
                ..KdsConfig::new(kds.base_url())
            })
            .unwrap(),
        ),
        None,
        None,
    );
    let issuer = Arc::new(SevGuestIssuer::with_device(
        Box::new(device_after_a_tcb_change()),
        resolver,
    ));

    // The replica's runtime: two workers, the aTLS acceptor, and a timer task that records how
    // late its ticks come.
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let worst_tick_lateness_ms = Arc::new(AtomicU64::new(0));
    let addr = server.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = Arc::new(
            AtlsAcceptor::new(
                issuer.clone(),
                tls_key(),
                Arc::new(DEPLOYMENT),
                ClientAuth::None,
            )
            .unwrap(),
        );
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(tcp).await;
                });
            }
        });
        let worst = worst_tick_lateness_ms.clone();
        tokio::spawn(async move {
            let period = Duration::from_millis(50);
            loop {
                let due = Instant::now() + period;
                tokio::time::sleep(period).await;
                let late = Instant::now().saturating_duration_since(due).as_millis() as u64;
                worst.fetch_max(late, Ordering::SeqCst);
            }
        });
        addr
    });

    // The clients, on a runtime of their own.
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let limit = Duration::from_secs(20);
    let (crowd, legitimate) = clients.block_on(async {
        let crowd: Vec<_> = (0..CLIENTS)
            .map(|_| tokio::spawn(handshake_time(addr, limit)))
            .collect();
        // The legitimate client comes while the crowd is handshaking.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let legitimate = handshake_time(addr, limit).await;
        let mut times = Vec::new();
        for client in crowd {
            times.push(client.await.unwrap());
        }
        (times, legitimate)
    });

    let slowest = crowd
        .iter()
        .map(|t| t.unwrap_or(limit))
        .max()
        .unwrap_or_default();
    // The lookup's connection reaches the KDS stand-in on threads of their own; on a loaded
    // machine give it time to show before counting.
    let deadline = Instant::now() + Duration::from_secs(10);
    while kds.requests() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let worst_tick = worst_tick_lateness_ms.load(Ordering::SeqCst);
    eprintln!(
        "legitimate handshake failed after {legitimate:?}; slowest of {CLIENTS}: {slowest:?}; \
         KDS connections: {}; worst timer lateness: {worst_tick} ms",
        kds.requests()
    );
    let legitimate = legitimate.expect("the legitimate handshake did not end within 20 s");
    assert!(
        legitimate < Duration::from_secs(5),
        "the legitimate handshake took {legitimate:?} to fail"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "a handshake of the crowd took {slowest:?} to fail"
    );
    assert_eq!(
        kds.requests(),
        1,
        "one KDS fetch for the chip and TCB, however many handshakes wait"
    );
    assert!(
        worst_tick < 1000,
        "the runtime's timer task was {worst_tick} ms late: its workers were blocked"
    );
    // The replica's runtime is dropped without waiting for the lookup thread.
    server.shutdown_background();
}
