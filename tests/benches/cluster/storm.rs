//! Issue 11 items 2 and 6: initializers that all start at once against three replicas.
//!
//! Each initializer is a task of this process with its own key and its own source address on
//! loopback (127.1.x.y, as pods have their own IPs: the listeners' per-source limits apply to each
//! alone), dialing the replicas' mesh API round robin as the `coordinator-ready` Service spreads
//! them, with a full mutual aTLS handshake (simulated evidence) and one NewMeshCert. Like the real
//! initializer, it tries again after a refusal or a failed handshake (50 to 150 ms later). The
//! result: the time until the last one is certified, and each one's time from the start.
//!
//! Item 2 runs it with a stand-in for the secure processor (`--insecure-simulated-issuer-delay-ms
//! 20`: 20 ms per report, one at a time) twice: with batched evidence (binding v3) and with one
//! report per handshake (`--evidence per-handshake`). Item 6 runs 1,000 initializers with the
//! simulated issuer's own cost.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use concord_attestation::{AtlsClient, ClientIdentity, EvidenceIssuer, PlatformTrust};
use concord_cli::process::{Addrs, CoordinatorProcess};
use concord_coordinator::manifest::Manifest;
use concord_coordinator::transport::connect_from;
use concord_proto::v1 as pb;
use concord_proto::v1::mesh_api_client::MeshApiClient;
use concord_tests::Env;
use rand::Rng as _;

use crate::concord::{Dialer, Writer};
use crate::table::{Row, Samples, Verdict};

/// No initializer tries longer than this; past it, it counts as not certified.
const GIVE_UP: Duration = Duration::from_secs(60);

/// What a storm measured.
pub struct Storm {
    pub initializers: usize,
    /// From the start to the last certificate.
    pub all: Duration,
    /// Each certified initializer's time from the start to its certificate.
    pub each: Samples,
    /// Initializers that gave up (no certificate within [`GIVE_UP`]), and the last error one saw.
    pub gave_up: usize,
    pub last_error: Option<String>,
    /// Attempts that failed and were made again.
    pub retries: usize,
}

/// Three replicas started with `extra` flags, a first manifest, then `initializers` at once.
pub async fn run(initializers: usize, extra: &[&str]) -> Result<Storm, String> {
    let env = Env::new();
    let addrs: Vec<Addrs> = (0..3)
        .map(|_| Addrs::free().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let peers: Vec<(u64, std::net::SocketAddr)> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u64, a.peer))
        .collect();
    let mut flags = env.flags("coordinator.policy");
    flags.extra = extra.iter().map(|s| s.to_string()).collect();
    let nodes: Vec<CoordinatorProcess> = addrs
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            CoordinatorProcess::start_member(
                &env.path(&format!("node-{i}")),
                &env.path(&format!("node-{i}.log")),
                &flags,
                a,
                i as u64,
                &peers,
            )
            .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let dialer = Dialer::new(&env)?;
    let leader = dialer.leader(&nodes).await?;
    let mut user = dialer.user(nodes[leader].user_addr).await?;
    let mut writer = Writer::new();
    writer.set(&env, &mut user).await?;
    for node in &nodes {
        dialer
            .wait_ready(
                node.user_addr,
                writer.transitions(),
                Duration::from_millis(10),
                Duration::from_secs(30),
            )
            .await?;
    }

    let manifest = Manifest::parse(&env.d.manifest(1)).map_err(|e| e.to_string())?;
    let trust = PlatformTrust {
        insecure_simulated_root: Some(env.d.root.hash()),
    };
    let policy = Arc::new(
        concord_cli::remote::coordinator_policy(&manifest, trust).map_err(|e| e.to_string())?,
    );
    let issuer: Arc<dyn EvidenceIssuer> = Arc::new(env.d.issuer(&env.d.workload_policy));
    let mut clients = Vec::with_capacity(initializers);
    for _ in 0..initializers {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let identity = ClientIdentity {
            issuer: issuer.clone(),
            key: Arc::new(key),
            deployment: Arc::new(concord_attestation::DeploymentId::UNPINNED),
        };
        clients.push(Arc::new(
            AtlsClient::new(policy.clone(), Some(identity)).map_err(|e| e.to_string())?,
        ));
    }
    let mesh: Vec<String> = nodes.iter().map(|n| n.mesh_addr.to_string()).collect();
    let retries = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let addr = mesh[i % mesh.len()].clone();
            let source = IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250) as u8 + 1));
            tokio::spawn(initializer(addr, source, client, start, retries.clone()))
        })
        .collect();
    let (mut each, mut gave_up, mut last_error) = (Vec::with_capacity(initializers), 0, None);
    for task in tasks {
        match task
            .await
            .map_err(|e| format!("an initializer failed: {e}"))?
        {
            Ok(took) => each.push(took),
            Err(e) => {
                gave_up += 1;
                last_error = Some(e);
            }
        }
    }
    let all = each.iter().max().copied().unwrap_or_default();
    drop(nodes);
    Ok(Storm {
        initializers,
        all,
        each: Samples::new(each),
        gave_up,
        last_error,
        retries: retries.load(Ordering::Relaxed),
    })
}

/// One initializer: attempts until it holds a certificate; its time from `start`.
async fn initializer(
    addr: String,
    source: IpAddr,
    client: Arc<AtlsClient>,
    start: Instant,
    retries: Arc<AtomicUsize>,
) -> Result<Duration, String> {
    loop {
        match attempt(&addr, source, client.clone()).await {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) if start.elapsed() > GIVE_UP => {
                return Err(format!("not certified within {} s: {e}", GIVE_UP.as_secs()));
            }
            Err(_) => {
                retries.fetch_add(1, Ordering::Relaxed);
                let pause = rand::thread_rng().gen_range(50..150);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }
}

async fn attempt(addr: &str, source: IpAddr, client: Arc<AtlsClient>) -> Result<(), String> {
    let (channel, _) = connect_from(addr, Some(source), client)
        .await
        .map_err(|e| e.to_string())?;
    let answer = MeshApiClient::new(channel)
        .new_mesh_cert(pb::NewMeshCertRequest {})
        .await
        .map_err(|s| format!("NewMeshCert failed ({:?}): {}", s.code(), s.message()))?
        .into_inner();
    if answer.cert_chain.is_empty() {
        return Err("NewMeshCert answered without a certificate".into());
    }
    Ok(())
}

fn summary(s: &Storm) -> String {
    if s.each.len() == 0 {
        return format!(
            "none of {} certified within {} s ({} retries; {})",
            s.initializers,
            GIVE_UP.as_secs(),
            s.retries,
            s.last_error.as_deref().unwrap_or("")
        );
    }
    let all = if s.gave_up == 0 {
        format!("all in {:.2} s", s.all.as_secs_f64())
    } else {
        format!(
            "only {} of {} within {} s",
            s.each.len(),
            s.initializers,
            GIVE_UP.as_secs()
        )
    };
    format!(
        "{all}; each p50 {:.2} s, p99 {:.2} s; {} retries",
        s.each.median().as_secs_f64(),
        s.each.percentile(99.0).as_secs_f64(),
        s.retries
    )
}

/// Item 2's rows: batched evidence against one report per handshake, 20 ms per report.
pub fn evidence_rows(
    batched: &Result<Storm, String>,
    per_handshake: &Result<Storm, String>,
    bound: Duration,
) -> Vec<Row> {
    let what = |s: &Storm| {
        format!(
            "{} initializers at once, 3 replicas, 20 ms per report: until all certified",
            s.initializers
        )
    };
    match (batched, per_handshake) {
        (Ok(b), reference) => vec![Row::new(
            what(b),
            summary(b),
            match reference {
                Ok(r) => format!("one report per handshake: {}", summary(r)),
                Err(e) => format!("one report per handshake: error: {e}"),
            },
            format!("all < {} s", bound.as_secs()),
            Verdict::of(b.gave_up == 0 && b.all < bound),
        )],
        (Err(e), _) => vec![Row::error("initializers against a 20 ms issuer", e)],
    }
}

/// Item 6's row: the pod-start storm beside the crypto floor.
pub fn storm_rows(storm: &Result<Storm, String>, floor_per_cpu_second: f64) -> Vec<Row> {
    match storm {
        Ok(s) => {
            // What the floor allows for the whole storm on the 3 replicas' share of this machine's
            // cores, if they did nothing but the signatures and key exchanges: a reference, not a target.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let floor_time = s.initializers as f64 / (floor_per_cpu_second * cores);
            vec![Row::new(
                format!(
                    "pod-start storm: {} initializers, 3 replicas round robin, simulated evidence",
                    s.initializers
                ),
                summary(s),
                format!(
                    "crypto floor: {floor_per_cpu_second:.0} per CPU second, {floor_time:.2} s for all on {cores:.0} cores"
                ),
                "-",
                Verdict::Info,
            )]
        }
        Err(e) => vec![Row::error("pod-start storm", e)],
    }
}
