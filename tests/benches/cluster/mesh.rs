//! Metric 7: NewMeshCert throughput of one replica, beside what its crypto alone allows.
//!
//! The replica: `clients` concurrent workloads, each dialing a new mutual-aTLS connection per
//! certificate (as an initializer does) with simulated evidence, and calling NewMeshCert. The
//! clients run in this process, on the same cores as the replica: their own evidence and the
//! verification of the replica's evidence compete with it for the CPU.
//!
//! The crypto alone, on one thread of this process: what one issuance cannot do without, as the
//! attestation and mesh-ca crates expose it: verifying the workload's evidence against the manifest
//! (`Verifier::verify`) and signing its leaf (`MeshCa::issue`).
//!
//! Both are also counted per second of CPU time (the replica's process, the crypto's thread), which
//! the workloads' and other programs' use of the cores does not skew: the target compares those.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use concord_attestation::{
    AtlsClient, ClientIdentity, EvidenceIssuer, PlatformTrust, Verifier, atls::binding,
};
use concord_coordinator::manifest::Manifest;
use concord_coordinator::transport::{ConnectError, connect_from};
use concord_mesh_ca::{MeshCa, RootCa, SeedEngine};
use concord_proto::v1 as pb;
use concord_proto::v1::mesh_api_client::MeshApiClient;
use concord_tests::{Env, Hash};
use rcgen::PublicKeyData as _;
use time::OffsetDateTime;

use crate::concord::{Dialer, Writer};
use crate::table::{Row, Verdict};

/// Issuances before the window opens are not counted (the first connections, the allocator).
pub(crate) const WARMUP: Duration = Duration::from_secs(1);

/// What the replica did in the window.
pub struct Issued {
    pub per_second: f64,
    /// The replica's CPU time in the window, per second of it (1.0: one core busy all along).
    pub cores: f64,
    /// The same for this process, where the workloads run.
    pub client_cores: f64,
    /// Connections the port closed before the handshake (its handshake rate: `transport/gate.rs`),
    /// each retried after a pause, as an initializer does.
    pub refused: u64,
}

/// Certificates per second one replica issued to `clients` concurrent workloads over `window`.
pub async fn replica(env: &Env, clients: usize, window: Duration) -> Result<Issued, String> {
    let mut node = env.start_coordinator("mesh-replica");
    let mut writer = Writer::new();
    let mut user = Dialer::new(env)?.user(node.user_addr).await?;
    writer.set(env, &mut user).await?;

    let start = Instant::now();
    let (open, close) = (start + WARMUP, start + WARMUP + window);
    let mut tasks = Vec::new();
    for (w, client) in workload_clients(env, clients)?.into_iter().enumerate() {
        let addr = node.mesh_addr.to_string();
        tasks.push(tokio::spawn(workload(addr, w, client, open, close, false)));
    }
    let (replica_stat, clients_stat) = (format!("/proc/{}/stat", node.pid()), "/proc/self/stat");
    let cpu = || -> Result<_, String> { Ok((cpu_time(&replica_stat)?, cpu_time(clients_stat)?)) };
    tokio::time::sleep_until(open.into()).await;
    let (replica_at_open, clients_at_open) = cpu()?;
    tokio::time::sleep_until(close.into()).await;
    let (replica_at_close, clients_at_close) = cpu()?;
    let Done {
        issued, refused, ..
    } = join(tasks).await?;
    // The workloads retry a connection the port shed; a replica that died would shed them all, which
    // must read as the error it is, not as a slow replica.
    if !node.is_running() {
        return Err(format!(
            "the replica exited during the run ({issued} certificates, {refused} connections \
             refused); see {}",
            node.log.display()
        ));
    }
    Ok(Issued {
        per_second: issued as f64 / window.as_secs_f64(),
        cores: (replica_at_close - replica_at_open).as_secs_f64() / window.as_secs_f64(),
        client_cores: (clients_at_close - clients_at_open).as_secs_f64() / window.as_secs_f64(),
        refused,
    })
}

/// `n` workloads' aTLS clients, each with its own key, attesting with the fixture's workload policy
/// and checking the coordinator against the first manifest's reference values.
pub(crate) fn workload_clients(env: &Env, n: usize) -> Result<Vec<Arc<AtlsClient>>, String> {
    let manifest = Manifest::parse(&env.d.manifest(1)).map_err(|e| e.to_string())?;
    let trust = PlatformTrust {
        insecure_simulated_root: Some(env.d.root.hash()),
    };
    let policy = Arc::new(
        concord_cli::remote::coordinator_policy(&manifest, trust).map_err(|e| e.to_string())?,
    );
    let issuer = workload_issuer(env);
    (0..n)
        .map(|_| {
            let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
            let identity = ClientIdentity {
                issuer: issuer.clone(),
                key: Arc::new(key),
                deployment: Arc::new(concord_attestation::DeploymentId::UNPINNED),
            };
            AtlsClient::new(policy.clone(), Some(identity))
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// What a workload attests with: TDX quotes on a TDX deployment, else simulated SNP reports.
fn workload_issuer(env: &Env) -> Arc<dyn EvidenceIssuer> {
    if env.tdx {
        Arc::new(env.d.tdx_issuer(&env.d.workload_policy))
    } else {
        Arc::new(env.d.issuer(&env.d.workload_policy))
    }
}

/// The CPU time (user and system) used so far by the process or thread of a `/proc` stat file
/// (`/proc/PID/stat`, `/proc/thread-self/stat`).
pub(crate) fn cpu_time(path: &str) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    // The fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
        return Err(format!("{path} has no CPU times"));
    };
    Ok(Duration::from_secs_f64(
        (user + system) as f64 / clock_ticks(),
    ))
}

/// Clock ticks per second of `/proc`'s CPU times (100 on Linux unless configured otherwise).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// What one workload's loop did.
pub(crate) struct Done {
    /// Certificates that arrived between `open` and `close`.
    pub issued: u64,
    /// Connections the port closed before the handshake.
    pub refused: u64,
    /// NewMeshCerts that failed on an established connection (only counted when asked to go on).
    pub failed: u64,
    /// The first of those failures, as the client saw it.
    pub first_failure: Option<String>,
}

/// What the workloads of `tasks` did together; the first failure they saw.
pub(crate) async fn join(
    tasks: Vec<tokio::task::JoinHandle<Result<Done, String>>>,
) -> Result<Done, String> {
    let mut all = Done {
        issued: 0,
        refused: 0,
        failed: 0,
        first_failure: None,
    };
    for task in tasks {
        let done = task
            .await
            .map_err(|e| format!("a workload failed: {e}"))??;
        all.issued += done.issued;
        all.refused += done.refused;
        all.failed += done.failed;
        all.first_failure = all.first_failure.or(done.first_failure);
    }
    Ok(all)
}

/// One workload's loop: a new attested connection and one NewMeshCert each time, until `close`;
/// returns what it did. A connection the port closed before the handshake is retried after
/// `REFUSED_PAUSE`, at most `MAX_REFUSED` times ([`replica`] then checks that the replica still
/// runs). A failed NewMeshCert ends the loop with its error, unless `go_on_after_failures` (a
/// cluster whose manifest changes meanwhile), when it is counted and retried like a refusal. Each connection comes from
/// another loopback address (127.2.W.x), as new pods would: one source would meet the listener's
/// per-source handshake rate (50/s), which is not what this measures.
pub(crate) async fn workload(
    addr: String,
    w: usize,
    client: Arc<AtlsClient>,
    open: Instant,
    close: Instant,
    go_on_after_failures: bool,
) -> Result<Done, String> {
    let (mut counted, mut refused, mut failed) = (0, 0, 0);
    let mut first_failure = None;
    let mut n = 0usize;
    while Instant::now() < close {
        n += 1;
        let source = IpAddr::V4(Ipv4Addr::new(127, 2, w as u8, (n % 250) as u8 + 1));
        let channel = match connect_from(&addr, Some(source), client.clone()).await {
            Ok((channel, _)) => channel,
            // The gate closes a connection over the port's handshake rate at once, before a byte
            // is read: the handshake meets the end of the stream, or a reset when the ClientHello
            // had arrived. Either is an outage to the client (`Unavailable`), never a verdict on
            // evidence (`Attestation`), which ends the run.
            Err(ConnectError::Unavailable { .. }) if refused < MAX_REFUSED => {
                refused += 1;
                tokio::time::sleep(REFUSED_PAUSE).await;
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        let answer = match MeshApiClient::new(channel)
            .new_mesh_cert(pb::NewMeshCertRequest {})
            .await
        {
            Ok(answer) => answer.into_inner(),
            Err(s) if go_on_after_failures && failed < MAX_REFUSED => {
                failed += 1;
                first_failure.get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                tokio::time::sleep(REFUSED_PAUSE).await;
                continue;
            }
            Err(s) => {
                return Err(format!(
                    "NewMeshCert failed ({:?}): {}",
                    s.code(),
                    s.message()
                ));
            }
        };
        if answer.cert_chain.is_empty() {
            return Err("NewMeshCert answered without a certificate".into());
        }
        let now = Instant::now();
        if now >= open && now < close {
            counted += 1;
        }
    }
    Ok(Done {
        issued: counted,
        refused,
        failed,
        first_failure,
    })
}

/// How long a workload waits after the port refused its connection.
const REFUSED_PAUSE: Duration = Duration::from_millis(20);
/// Refusals after which a workload gives up: something else is wrong.
const MAX_REFUSED: u64 = 10_000;

/// What the crypto alone did.
pub struct Crypto {
    /// Issuances per second of the window, on one thread.
    pub per_second: f64,
    /// Issuances per second of that thread's CPU time: what the crypto allows whatever else the
    /// machine runs.
    pub per_cpu_second: f64,
}

/// Issuances that evidence verification plus leaf signing allow on one thread, over `window`.
pub fn crypto_alone(env: &Env, window: Duration) -> Result<Crypto, String> {
    let crypto = |e: concord_mesh_ca::MeshCaError| e.to_string();
    let now = OffsetDateTime::now_utc();
    let engine = SeedEngine::generate().map_err(crypto)?;
    let root_ca = RootCa::create(&engine.root_ca_key().map_err(crypto)?, now).map_err(crypto)?;
    let mesh_ca = MeshCa::generate(&root_ca, now).map_err(crypto)?;
    let manifest = Manifest::parse(&env.d.manifest(1)).map_err(|e| e.to_string())?;
    let policy = manifest
        .policy(&env.d.workload_policy_hash())
        .ok_or("the manifest lists no workload policy")?;
    let sans: Vec<String> = policy.sans.iter().map(|s| s.as_string()).collect();
    let verifier = Verifier::new(PlatformTrust {
        insecure_simulated_root: Some(env.d.root.hash()),
    });
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let spki = key.subject_public_key_info();

    // Evidence as workloads send it, made beforehand: making it is the workload's work.
    let issuer = workload_issuer(env);
    let evidence = (0..32u8)
        .map(|i| {
            let report_data = binding(
                &spki,
                &[i; 32],
                &concord_attestation::DeploymentId::UNPINNED,
            );
            issuer.issue(&report_data).map(|e| (e, report_data))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;

    let start = Instant::now();
    let cpu_at_start = cpu_time("/proc/thread-self/stat")?;
    let mut done = 0usize;
    while start.elapsed() < window {
        let (e, report_data) = &evidence[done % evidence.len()];
        verifier
            .verify(
                e,
                manifest.reference_values(),
                report_data,
                &|h| manifest.policy(&Hash(*h)).is_some(),
                SystemTime::now(),
            )
            .map_err(|e| e.to_string())?;
        mesh_ca
            .issue(&spki, "web", &sans, OffsetDateTime::now_utc())
            .map_err(crypto)?;
        done += 1;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = (cpu_time("/proc/thread-self/stat")? - cpu_at_start).as_secs_f64();
    Ok(Crypto {
        per_second: done as f64 / wall,
        per_cpu_second: done as f64 / cpu.max(0.01),
    })
}

/// The target compares CPU time with CPU time: the replica's certificates per second of its own CPU
/// time against the floor (`floor`: what the signatures and the key exchange of one NewMeshCert's
/// handshake allow per CPU second, with the faster of ring and AWS-LC for each), the crypto
/// pipeline's per second of its thread's against the signatures alone (it makes no handshake); the judged 32-workload row against the mean of the measurements right before and right
/// after it, the other rows against the mean of the first two: `floor::References`). The workloads
/// share the cores with the replica (and other builds may too), so the certificates per wall-clock
/// second, shown beside, say as much about the machine as about the replica.
pub fn rows(
    (replica, clients): (&Issued, usize),
    (saturated, saturating): (&Issued, usize),
    crypto: &Crypto,
    floors: crate::floor::References,
) -> Vec<Row> {
    let what = |clients: usize| format!("NewMeshCert, 1 replica, {clients} workloads");
    let per_cpu = |r: &Issued| r.per_second / r.cores.max(0.01);
    let (floor, light_floor) = (floors.judged, floors.light);
    // Judged against the floor with the key exchange; the signatures alone printed beside.
    let against = |value: f64, r: crate::floor::Reference| {
        (
            format!("{value:.0} ({:.0}%)", 100.0 * value / r.handshake),
            format!(
                "floor: {:.0} per CPU second (signatures alone: {:.0}, {:.0}% of it)",
                r.handshake,
                r.signatures,
                100.0 * value / r.signatures
            ),
        )
    };
    let (light, full) = (per_cpu(replica), per_cpu(saturated));
    let (full_value, full_reference) = against(full, floor);
    let (light_value, light_reference) = against(light, light_floor);
    vec![
        Row::new(
            format!(
                "{}: certs per CPU second (replica {:.2} cores)",
                what(saturating),
                saturated.cores
            ),
            full_value,
            full_reference,
            ">= 50% of the floor",
            Verdict::of(full >= floor.handshake / 2.0),
        ),
        Row::new(
            format!(
                "{}: certs per CPU second (replica {:.2} cores)",
                what(clients),
                replica.cores
            ),
            light_value,
            light_reference,
            "-",
            Verdict::Info,
        ),
        // The pipeline makes no TLS handshake: judged against the signatures alone.
        Row::new(
            "NewMeshCert crypto, simulated evidence (verify + issue, 1 thread)",
            format!(
                "{:.0} per CPU second ({:.0}%)",
                crypto.per_cpu_second,
                100.0 * crypto.per_cpu_second / light_floor.signatures
            ),
            format!(
                "floor of the signatures alone: {:.0} per CPU second",
                light_floor.signatures
            ),
            ">= 50% of the floor",
            Verdict::of(crypto.per_cpu_second >= light_floor.signatures / 2.0),
        ),
        Row::new(
            format!(
                "{}: certs/s (replica {:.2} cores, workloads {:.2}; {} connections refused by the handshake rate, retried)",
                what(saturating),
                saturated.cores,
                saturated.client_cores,
                saturated.refused
            ),
            format!("{:.0} /s", saturated.per_second),
            format!("crypto alone, 1 thread: {:.0} /s", crypto.per_second),
            "-",
            Verdict::Info,
        ),
    ]
}

/// TDX quotes (issue 10's row): the target compares CPU time with CPU time: the replica's certificates per second of its own CPU
/// time against the crypto's per second of its thread's. The workloads share the cores with the
/// replica (and other builds may too), so the certificates per wall-clock second, shown beside,
/// say as much about the machine as about the replica.
pub fn rows_against_crypto(
    replica: &Issued,
    crypto: &Crypto,
    clients: usize,
    tdx: bool,
) -> Vec<Row> {
    let platform = if tdx { " (TDX quotes)" } else { "" };
    let what = format!("NewMeshCert{platform}, 1 replica, {clients} workloads");
    let per_cpu = replica.per_second / replica.cores.max(0.01);
    vec![
        Row::new(
            format!("{what}: certs per CPU second"),
            format!(
                "{per_cpu:.0} ({:.0}%)",
                100.0 * per_cpu / crypto.per_cpu_second
            ),
            format!("crypto alone: {:.0} per CPU second", crypto.per_cpu_second),
            ">= 50% of crypto alone",
            Verdict::of(per_cpu >= crypto.per_cpu_second / 2.0),
        ),
        Row::new(
            format!(
                "{what}: certs/s (replica {:.2} cores, workloads {:.2})",
                replica.cores, replica.client_cores
            ),
            format!("{:.0} /s", replica.per_second),
            format!("crypto alone, 1 thread: {:.0} /s", crypto.per_second),
            "-",
            Verdict::Info,
        ),
    ]
}
