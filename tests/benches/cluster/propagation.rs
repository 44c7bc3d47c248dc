//! Metric 4: after a SetManifest is acknowledged, how long until every replica serves the new mesh
//! CA: its status says ready at the new transition (it holds the new mesh CA's key) and it hands out
//! the mesh CA the acknowledgement named. One poller per replica, each on a connection of its own
//! made beforehand, so the polling costs one small RPC per millisecond and no handshakes.

use std::time::{Duration, Instant};

use concord_proto::v1 as pb;

use crate::concord::{Cluster, UserClient, is_ready};
use crate::table::{Row, Samples, Verdict, ms};

/// How often each replica is polled.
const POLL: Duration = Duration::from_millis(1);
const GIVE_UP: Duration = Duration::from_secs(10);

/// `rounds` SetManifest calls on the leader, each followed by the time until every replica served
/// its mesh CA. The first round of a fresh cluster sets its first manifest.
pub async fn concord(cluster: &mut Cluster, rounds: usize) -> Result<Samples, String> {
    let mut clients = Clients::connect(cluster).await?;
    let mut samples = Vec::new();
    for _ in 0..rounds {
        samples.push(round(cluster, &mut clients).await?);
        // Let the cluster settle, so rounds do not overlap.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Samples::new(samples))
}

/// A connection to the leader for the writes, and one per replica for the polling.
struct Clients {
    leader: UserClient,
    pollers: Vec<UserClient>,
}

impl Clients {
    async fn connect(cluster: &Cluster) -> Result<Clients, String> {
        let mut pollers = Vec::new();
        for node in &cluster.nodes {
            pollers.push(cluster.dialer.user(node.user_addr).await?);
        }
        Ok(Clients {
            leader: cluster.leader_client().await?,
            pollers,
        })
    }
}

/// One SetManifest, and the time from its acknowledgement until every replica served its mesh CA.
async fn round(cluster: &mut Cluster, clients: &mut Clients) -> Result<Duration, String> {
    let answer = cluster
        .writer
        .set(&cluster.env, &mut clients.leader)
        .await?;
    let acknowledged = Instant::now();
    let transitions = cluster.writer.transitions();
    let tasks: Vec<_> = clients
        .pollers
        .iter()
        .map(|client| {
            let (client, mesh_ca) = (client.clone(), answer.mesh_ca.clone());
            tokio::spawn(serving(client, transitions, mesh_ca))
        })
        .collect();
    let mut last = acknowledged;
    for task in tasks {
        let at = task.await.map_err(|e| format!("a poller failed: {e}"))??;
        last = last.max(at);
    }
    Ok(last - acknowledged)
}

/// When the replica was first seen serving `mesh_ca` at `transitions` transitions.
async fn serving(
    mut client: UserClient,
    transitions: u64,
    mesh_ca: String,
) -> Result<Instant, String> {
    let start = Instant::now();
    loop {
        if is_ready(&mut client, transitions).await {
            let current = client
                .get_manifests(pb::GetManifestsRequest {
                    allow_stale: true,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().mesh_ca);
            if current.is_ok_and(|c| c == mesh_ca) {
                return Ok(Instant::now());
            }
        }
        if start.elapsed() > GIVE_UP {
            return Err(format!(
                "a replica did not serve the new mesh CA within {GIVE_UP:?}"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The first manifest of a fresh cluster (also a new seed, root CA and seed shares): for context.
pub fn first_row(took: Duration) -> Row {
    Row::new(
        "first SetManifest ack -> all ready with its mesh CA",
        ms(took),
        "-",
        "-",
        Verdict::Info,
    )
}

pub fn rows(samples: &Samples, history_len: u64) -> Vec<Row> {
    let what = format!(
        "SetManifest ack -> all on new mesh CA ({} rounds, history <= {history_len})",
        samples.len()
    );
    vec![
        Row::new(
            format!("{what}: median"),
            ms(samples.median()),
            "-",
            "< 100 ms",
            Verdict::of(samples.median() < Duration::from_millis(100)),
        ),
        Row::new(
            format!("{what}: max"),
            ms(samples.max()),
            "-",
            "-",
            Verdict::Info,
        ),
    ]
}
