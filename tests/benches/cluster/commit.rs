//! Metric 1: SetManifest commit latency on 3 replicas with fsync, beside etcd's put latency.
//!
//! Both clients keep one connection to the leader and send one request at a time; each Concord
//! request is a new manifest version (a new transition), each etcd put a value of the same bytes.

use std::time::{Duration, Instant};

use crate::concord::Cluster;
use crate::etcd::EtcdCluster;
use crate::table::{Row, Samples, Verdict, ms};

/// Requests sent before timing starts (connections, caches, the allocator warm up).
const WARMUP: usize = 5;

/// Concord's latencies in the order of the calls, and the history's length before the first.
pub struct Commits {
    pub in_order: Vec<Duration>,
    pub history_before: u64,
}

/// `n` sequential SetManifest calls on the leader, each timed from send to acknowledgement.
pub async fn concord(cluster: &mut Cluster, n: usize) -> Result<Commits, String> {
    let mut client = cluster.leader_client().await?;
    let mut samples = Vec::with_capacity(n);
    let mut history_before = 0;
    for i in 0..WARMUP + n {
        let request = cluster.writer.next(&cluster.env);
        let start = Instant::now();
        let answer = client
            .set_manifest(request)
            .await
            .map_err(|s| format!("SetManifest failed ({:?}): {}", s.code(), s.message()))?
            .into_inner();
        let took = start.elapsed();
        cluster.writer.acknowledged(&answer)?;
        if i + 1 == WARMUP {
            history_before = cluster.writer.transitions();
        }
        if i >= WARMUP {
            samples.push(took);
        }
    }
    Ok(Commits {
        in_order: samples,
        history_before,
    })
}

/// `n` sequential puts on the etcd leader of the values `value(i)`.
pub fn etcd(
    etcd: &EtcdCluster,
    n: usize,
    value: impl Fn(usize) -> Vec<u8>,
) -> Result<Samples, String> {
    let mut client = etcd.client(etcd.leader()?, Duration::from_secs(10));
    let mut samples = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        let value = value(i);
        let start = Instant::now();
        client.put(b"concord/manifest", &value)?;
        if i >= WARMUP {
            samples.push(start.elapsed());
        }
    }
    Ok(Samples::new(samples))
}

/// The p50 row (the target), the p99 row, and how the p50 moves as the history grows.
pub fn rows(commits: &Commits, etcd: Result<&Samples, &str>, value_len: usize) -> Vec<Row> {
    let concord = &Samples::new(commits.in_order.clone());
    let what = format!(
        "SetManifest commit, 3 replicas, fsync ({} calls, {value_len} B)",
        concord.len()
    );
    let reference = |p: f64| match etcd {
        Ok(e) => format!("etcd put: {}", ms(e.percentile(p))),
        Err(why) => why.to_string(),
    };
    let p50 = match etcd {
        Ok(e) => Verdict::of(concord.median() <= e.median()),
        Err(_) => Verdict::NoReference("needs etcd".into()),
    };
    vec![
        Row::new(
            format!("{what}: p50"),
            ms(concord.median()),
            reference(50.0),
            "p50 <= etcd's p50",
            p50,
        ),
        Row::new(
            format!("{what}: p99"),
            ms(concord.percentile(99.0)),
            reference(99.0),
            "-",
            Verdict::Info,
        ),
        growth(commits),
    ]
}

/// The p50 of the first and of the last tenth of the calls, with the history lengths they ran at:
/// whether a write's cost depends on the length of the history.
fn growth(commits: &Commits) -> Row {
    let n = commits.in_order.len();
    let k = (n / 10).max(1).min(n);
    let p50 = |part: &[Duration]| Samples::new(part.to_vec()).median();
    let at = |start: usize| {
        let first = commits.history_before + start as u64;
        format!("{first}-{}", first + k as u64 - 1)
    };
    Row::new(
        format!(
            "SetManifest commit: p50 of first {k} vs last {k} (history {} vs {})",
            at(0),
            at(n - k)
        ),
        format!(
            "{} vs {}",
            ms(p50(&commits.in_order[..k])),
            ms(p50(&commits.in_order[n - k..]))
        ),
        "-",
        "-",
        Verdict::Info,
    )
}
