//! The leader, then a follower, under a flood of handshakes on its mesh port. A follower campaigns
//! after 300 to 400 ms without a heartbeat (the twenty-first pass on issue 11 shortened the election
//! timeouts), so a leader whose runtime falls that far behind loses its term. Here workloads open
//! attested connections to one replica's mesh port as fast as this machine drives them (each one a
//! P-384 verification on a runtime worker of that replica) while a client writes to the leader: no
//! term may change, the writes go on, and no workload's NewMeshCert is refused while the manifest
//! changes under it (a follower takes each new mesh CA key from its sealed copy, the leader from its
//! own write).

use std::time::{Duration, Instant};

use crate::concord::Cluster;
use crate::mesh;
use crate::table::{Row, Samples, Verdict, ms};

/// The pause between two writes of the client beside the flood.
const WRITE_EVERY: Duration = Duration::from_millis(50);

/// Whose mesh port a flood is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Leader,
    /// A follower (the one after the leader), while the client writes to the leader.
    Follower,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Leader => "leader",
            Target::Follower => "follower",
        }
    }
}

/// What one flood did to the cluster.
pub struct Flood {
    pub target: Target,
    pub clients: usize,
    pub window: Duration,
    /// Each replica's Raft term right before and right after the flood.
    pub terms: Vec<(u64, u64)>,
    /// The leader before and after (indices into the cluster's replicas).
    pub leader: (usize, usize),
    /// Certificates issued in the window, and connections the port shed before their handshake.
    pub issued: u64,
    pub refused: u64,
    /// NewMeshCerts that failed on an established connection (each write changes the manifest and
    /// the mesh CA under the workloads; they retry, as initializers do).
    pub failed: u64,
    /// The first of them, as a workload saw it.
    pub first_failure: Option<String>,
    /// The flooded replica's CPU time in the window, per second of it.
    pub target_cores: f64,
    /// Each acknowledged SetManifest on the leader during the window, and the ones refused.
    pub writes: Samples,
    pub failed_writes: usize,
}

/// Floods `target`'s mesh port with `clients` workloads for `window` while writing to the leader.
pub async fn flood(
    cluster: &mut Cluster,
    clients: usize,
    window: Duration,
    target: Target,
) -> Result<Flood, String> {
    let leader = cluster.dialer.leader(&cluster.nodes).await?;
    let flooded = match target {
        Target::Leader => leader,
        Target::Follower => (leader + 1) % cluster.nodes.len(),
    };
    let before = terms(cluster).await?;
    let start = Instant::now();
    let (open, close) = (start + mesh::WARMUP, start + mesh::WARMUP + window);
    let addr = cluster.nodes[flooded].mesh_addr.to_string();
    let tasks: Vec<_> = mesh::workload_clients(&cluster.env, clients)?
        .into_iter()
        .enumerate()
        .map(|(w, client)| {
            let addr = addr.clone();
            tokio::spawn(mesh::workload(addr, w, client, open, close, true))
        })
        .collect();
    let stat = format!("/proc/{}/stat", cluster.nodes[flooded].pid());
    let mut client = cluster.dialer.user(cluster.nodes[leader].user_addr).await?;
    tokio::time::sleep_until(open.into()).await;
    let cpu_at_open = mesh::cpu_time(&stat)?;
    let (mut writes, mut failed_writes) = (Vec::new(), 0);
    while Instant::now() < close {
        let sent = Instant::now();
        match cluster.writer.set(&cluster.env, &mut client).await {
            Ok(_) => writes.push(sent.elapsed()),
            // A leader that lost its term refuses; counted, and the terms below say why.
            Err(_) => failed_writes += 1,
        }
        tokio::time::sleep(WRITE_EVERY).await;
    }
    let cpu_at_close = mesh::cpu_time(&stat)?;
    let done = mesh::join(tasks).await?;
    let after = terms(cluster).await?;
    let leader_after = cluster.dialer.leader(&cluster.nodes).await?;
    Ok(Flood {
        target,
        clients,
        window,
        terms: before.into_iter().zip(after).collect(),
        leader: (leader, leader_after),
        issued: done.issued,
        refused: done.refused,
        failed: done.failed,
        first_failure: done.first_failure,
        target_cores: (cpu_at_close - cpu_at_open).as_secs_f64() / window.as_secs_f64(),
        writes: Samples::new(writes),
        failed_writes,
    })
}

/// Every replica's term, in the order of the cluster's replicas.
async fn terms(cluster: &Cluster) -> Result<Vec<u64>, String> {
    let mut terms = Vec::new();
    for node in &cluster.nodes {
        terms.push(cluster.dialer.status(node.user_addr).await?.term);
    }
    Ok(terms)
}

/// The verdict (no term changed, one leader throughout, no NewMeshCert failed, no write refused)
/// and the writes beside the flood, against the sequential commit's p50 without it.
pub fn rows(flood: &Flood, sequential_p50: Result<Duration, &str>) -> Vec<Row> {
    let changed = flood.terms.iter().filter(|(b, a)| b != a).count();
    let terms: Vec<String> = flood
        .terms
        .iter()
        .map(|(b, a)| format!("{b}->{a}"))
        .collect();
    // Each write changes the manifest under the workloads: the leader adopts the mesh CA it made as
    // soon as a reload sees the write committed, a follower opens its sealed copy before it loads
    // the transition, so none of their calls is refused as "not ready".
    let steady = changed == 0
        && flood.leader.0 == flood.leader.1
        && flood.failed == 0
        && flood.failed_writes == 0;
    let writes = if flood.writes.len() == 0 {
        "none acknowledged".to_string()
    } else {
        format!(
            "{} / {} ({} writes, {} refused)",
            ms(flood.writes.median()),
            ms(flood.writes.percentile(99.0)),
            flood.writes.len(),
            flood.failed_writes
        )
    };
    vec![
        Row::new(
            format!(
                "{} under a handshake flood on its mesh port ({} workloads, {} s; {} {:.2} cores): replicas whose term changed",
                flood.target.name(),
                flood.clients,
                flood.window.as_secs(),
                flood.target.name(),
                flood.target_cores
            ),
            format!(
                "{changed} of {} (terms {}; leader {} -> {}; {} certificates, {} connections shed, {} NewMeshCerts failed)",
                flood.terms.len(),
                terms.join(", "),
                flood.leader.0,
                flood.leader.1,
                flood.issued,
                flood.refused,
                flood.failed
            ),
            match &flood.first_failure {
                None => "a follower campaigns after 300-400 ms without a heartbeat".to_string(),
                Some(f) => format!(
                    "a follower campaigns after 300-400 ms without a heartbeat; the first failed NewMeshCert: {f}"
                ),
            },
            "0, same leader, no NewMeshCert failed, no write refused",
            Verdict::of(steady),
        ),
        Row::new(
            format!(
                "SetManifest on the leader during the {} flood (one every {} ms): p50 / p99",
                flood.target.name(),
                WRITE_EVERY.as_millis()
            ),
            writes,
            match sequential_p50 {
                Ok(p50) => format!("sequential commit without the flood: p50 {}", ms(p50)),
                Err(e) => e.to_string(),
            },
            "-",
            Verdict::Info,
        ),
    ]
}
