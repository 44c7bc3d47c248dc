//! Metrics 2 and 3: failover (kill -9 of the leader to the next acknowledged write, the client
//! retrying on a survivor) beside etcd's, and peer recovery (the killed replica's process started
//! again to `ready`, which needs Raft to catch it up and a ready peer to hand it the secrets).

use std::time::{Duration, Instant};

use crate::concord::Cluster;
use crate::etcd::EtcdCluster;
use crate::table::{Row, Samples, Verdict, ms};

/// A failover that takes longer than this is reported as an error, not waited for.
const GIVE_UP: Duration = Duration::from_secs(30);
/// The pause between a failed attempt and the next (a client's retry loop).
const RETRY: Duration = Duration::from_millis(5);
/// How often the restarted replica's status is polled.
const POLL: Duration = Duration::from_millis(5);
/// How long the etcd client waits for one put before it tries again. An etcd member holds a
/// proposal made while its leader is gone until its request timeout (7 s by default) instead of
/// failing it, so a client that waited for the answer would measure that timeout, not the failover.
/// A healthy put takes about a millisecond; the retry costs the measurement at most this much.
const ETCD_ATTEMPT: Duration = Duration::from_millis(50);

/// What the Concord rounds measured.
pub struct ConcordRounds {
    pub failover: Samples,
    pub restart_to_ready: Samples,
}

/// `rounds` times: kill the leader, time the next acknowledged SetManifest on a survivor, restart the
/// killed replica and time it from process start to ready.
pub async fn concord(cluster: &mut Cluster, rounds: usize) -> Result<ConcordRounds, String> {
    let mut failover = Vec::new();
    let mut restart = Vec::new();
    for _ in 0..rounds {
        let leader = cluster.dialer.leader(&cluster.nodes).await?;
        failover.push(concord_failover(cluster, leader).await?);
        restart.push(concord_restart(cluster, leader).await?);
        cluster.wait_all_ready().await?;
    }
    Ok(ConcordRounds {
        failover: Samples::new(failover),
        restart_to_ready: Samples::new(restart),
    })
}

async fn concord_failover(cluster: &mut Cluster, leader: usize) -> Result<Duration, String> {
    let survivor = (leader + 1) % cluster.nodes.len();
    let mut client = cluster
        .dialer
        .user(cluster.nodes[survivor].user_addr)
        .await?;
    let request = cluster.writer.next(&cluster.env);
    cluster.nodes[leader].kill();
    let killed = Instant::now();
    loop {
        match client.set_manifest(request.clone()).await {
            Ok(answer) => {
                let took = killed.elapsed();
                cluster.writer.acknowledged(&answer.into_inner())?;
                return Ok(took);
            }
            // Expected while the survivors elect a new leader: retry, as a client would.
            Err(_) if killed.elapsed() < GIVE_UP => tokio::time::sleep(RETRY).await,
            Err(s) => {
                return Err(format!(
                    "no SetManifest was acknowledged within {GIVE_UP:?} of killing the leader: {}",
                    s.message()
                ));
            }
        }
    }
}

/// Restarts replica `i` while a poller dials it, and returns the time from the process start to the
/// first status that says ready with the latest transition.
async fn concord_restart(cluster: &mut Cluster, i: usize) -> Result<Duration, String> {
    let addr = cluster.nodes[i].user_addr;
    let transitions = cluster.writer.transitions();
    let dialer = cluster.dialer.clone();
    let flags = cluster.env.flags("coordinator.policy");
    let started = Instant::now();
    // The poller runs on another worker while this one blocks in the restart, which returns only
    // once the process listens: the poller sees `ready` as early as the replica reports it.
    let poller =
        tokio::spawn(async move { dialer.wait_ready(addr, transitions, POLL, GIVE_UP).await });
    let node = &mut cluster.nodes[i];
    if let Err(e) = tokio::task::block_in_place(|| node.restart(&flags)) {
        poller.abort();
        return Err(e.to_string());
    }
    let ready = poller
        .await
        .map_err(|e| format!("the poller failed: {e}"))??;
    Ok(ready - started)
}

/// `rounds` times: kill the etcd leader, time the next acknowledged put on a survivor, restart the
/// killed member and wait until the cluster is whole again.
pub fn etcd(etcd: &mut EtcdCluster, rounds: usize, value: &[u8]) -> Result<Samples, String> {
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let leader = etcd.leader()?;
        let survivor = (leader + 1) % etcd.len();
        let mut client = etcd.client(survivor, ETCD_ATTEMPT);
        // Connected before the kill, as Concord's client is.
        (0..20)
            .find_map(|_| client.status().ok())
            .ok_or("the etcd member that survives does not answer")?;
        etcd.kill(leader);
        let killed = Instant::now();
        loop {
            match client.put(b"concord/manifest", value) {
                Ok(()) => break,
                Err(_) if killed.elapsed() < GIVE_UP => std::thread::sleep(RETRY),
                Err(e) => {
                    return Err(format!(
                        "no etcd put was acknowledged within {GIVE_UP:?} of killing the leader: {e}"
                    ));
                }
            }
        }
        samples.push(killed.elapsed());
        etcd.restart(leader)?;
    }
    Ok(Samples::new(samples))
}

/// Failover rows: the median against the target, the max for context, and (if measured) etcd with
/// Concord's election timeouts, which shows how much of the difference is configuration.
pub fn failover_rows(
    concord: &Samples,
    etcd: Result<&Samples, &str>,
    etcd_like_concord: Option<Result<&Samples, &str>>,
) -> Vec<Row> {
    let what = format!(
        "failover, leader kill -9 -> next ack ({} rounds)",
        concord.len()
    );
    let target = "< 1 s and < 1/2 of etcd's";
    let under_1s = |d: Duration| d < Duration::from_secs(1);
    let verdict = |c: Duration, e: Option<Duration>| match e {
        Some(e) => Verdict::of(under_1s(c) && c < e / 2),
        None if under_1s(c) => Verdict::NoReference("< 1 s: yes; etcd: none".into()),
        None => Verdict::Fail,
    };
    let reference = |f: fn(&Samples) -> Duration| match etcd {
        Ok(e) => format!("etcd (defaults): {}", ms(f(e))),
        Err(why) => why.to_string(),
    };
    let mut rows = vec![
        Row::new(
            format!("{what}: median"),
            ms(concord.median()),
            reference(Samples::median),
            target,
            verdict(concord.median(), etcd.ok().map(Samples::median)),
        ),
        Row::new(
            format!("{what}: max"),
            ms(concord.max()),
            reference(Samples::max),
            "-",
            Verdict::Info,
        ),
    ];
    if let Some(like) = etcd_like_concord {
        let reference = match like {
            Ok(e) => format!(
                "etcd (election 150-300 ms): {} / {}",
                ms(e.median()),
                ms(e.max())
            ),
            Err(why) => why.to_string(),
        };
        rows.push(Row::new(
            format!("{what}: median / max"),
            format!("{} / {}", ms(concord.median()), ms(concord.max())),
            reference,
            "-",
            Verdict::Info,
        ));
    }
    rows
}

/// The peer recovery row.
pub fn restart_rows(restart: &Samples) -> Vec<Row> {
    let what = format!(
        "peer recovery, process start -> ready ({} restarts)",
        restart.len()
    );
    vec![
        Row::new(
            format!("{what}: median"),
            ms(restart.median()),
            "-",
            "< 500 ms",
            Verdict::of(restart.median() < Duration::from_millis(500)),
        ),
        Row::new(
            format!("{what}: max"),
            ms(restart.max()),
            "-",
            "-",
            Verdict::Info,
        ),
    ]
}
