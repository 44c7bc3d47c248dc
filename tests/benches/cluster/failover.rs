//! Metrics 2 and 3: failover (kill -9 of the leader to the next acknowledged write, the client
//! retrying on a survivor) beside etcd's, and peer recovery (the killed replica's process started
//! again to `ready`, which needs Raft to catch it up and a ready peer to hand it the secrets).

use std::time::{Duration, Instant};

use concord_proto::v1 as pb;
use concord_tests::Hash;

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
                "etcd (election 100-200 ms): {} / {}",
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

/// Concurrent writers of the failover-under-load rounds (issue 11.5).
const WRITERS: usize = 3;

/// What the rounds under concurrent writers measured.
pub struct ConcurrentRounds {
    /// Leader killed to the next acknowledged write of any writer.
    pub failover: Samples,
    /// Writes acknowledged over all rounds (to show the writers kept writing).
    pub writes: u64,
}

/// `rounds` times, with [`WRITERS`] writers each sending SetManifests to random replicas: kill -9 the
/// leader, time it to the next acknowledged write (of any writer), restart the killed replica and wait
/// until all three replicas were seen ready again.
pub async fn concurrent(rounds: usize) -> Result<ConcurrentRounds, String> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    let mut cluster = Cluster::start(3)?;
    let mut first = cluster.leader_client().await?;
    cluster.writer.set(&cluster.env, &mut first).await?;
    cluster.wait_all_ready().await?;
    let addrs: Vec<std::net::SocketAddr> = cluster.nodes.iter().map(|n| n.user_addr).collect();
    let last_ack: Arc<Mutex<Option<Instant>>> = Arc::default();
    let writes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let env = cluster.env.clone();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (dialer, addrs, env) = (cluster.dialer.clone(), addrs.clone(), env.clone());
        let (last_ack, writes, stop) = (last_ack.clone(), writes.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut clients: Vec<Option<crate::concord::UserClient>> = vec![None; addrs.len()];
            let mut version = 1_000_000 + 100_000 * w as u32;
            while !stop.load(Ordering::Relaxed) {
                let i = rand::random::<usize>() % addrs.len();
                if clients[i].is_none() {
                    clients[i] = dialer.user(addrs[i]).await.ok();
                }
                let Some(client) = clients[i].as_mut() else {
                    tokio::time::sleep(RETRY).await;
                    continue;
                };
                let latest = match client.get_status(pb::GetStatusRequest {}).await {
                    Ok(s) => s.into_inner().latest,
                    Err(_) => {
                        clients[i] = None;
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                };
                let Ok(latest) = Hash::from_slice(&latest) else {
                    tokio::time::sleep(RETRY).await;
                    continue;
                };
                version += 1;
                match client
                    .set_manifest(env.set_manifest_request(version, latest))
                    .await
                {
                    Ok(a) if !a.get_ref().unchanged => {
                        *last_ack.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    // A lost compare-and-swap race, or the leader gone: retry, as a client would.
                    Err(s) => {
                        if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown
                        {
                            clients[i] = None;
                        }
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        }));
    }
    let acked_after = |t: Instant| {
        last_ack
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|a| a > t)
    };
    let mut samples = Vec::new();
    let mut outcome = Ok(());
    for _ in 0..rounds {
        // The writers are writing before the kill.
        let warm = Instant::now();
        while !acked_after(warm) && warm.elapsed() < GIVE_UP {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let leader = match cluster.dialer.leader(&cluster.nodes).await {
            Ok(l) => l,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        };
        cluster.nodes[leader].kill();
        let killed = Instant::now();
        while !acked_after(killed) && killed.elapsed() < GIVE_UP {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let Some(ack) = *last_ack.lock().unwrap_or_else(|p| p.into_inner()) else {
            outcome = Err("no write was acknowledged".into());
            break;
        };
        if ack <= killed {
            outcome = Err(format!(
                "no write was acknowledged within {GIVE_UP:?} of killing the leader; see {}",
                cluster.nodes[(leader + 1) % 3].log.display()
            ));
            break;
        }
        samples.push(ack - killed);
        let flags = cluster.env.flags("coordinator.policy");
        let node = &mut cluster.nodes[leader];
        if let Err(e) = tokio::task::block_in_place(|| node.restart(&flags)) {
            outcome = Err(e.to_string());
            break;
        }
        // All three ready again (each seen ready once: the writers keep moving the latest).
        for node in &cluster.nodes {
            let start = Instant::now();
            loop {
                let ready = cluster
                    .dialer
                    .status(node.user_addr)
                    .await
                    .is_ok_and(|s| s.state == "ready");
                if ready {
                    break;
                }
                if start.elapsed() > GIVE_UP {
                    outcome = Err(format!(
                        "replica {} was not ready again within {GIVE_UP:?}; see {}",
                        node.node_id,
                        node.log.display()
                    ));
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
        }
        if outcome.is_err() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    outcome?;
    Ok(ConcurrentRounds {
        failover: Samples::new(samples),
        writes: writes.load(Ordering::Relaxed),
    })
}

/// The rows of the failover under concurrent writers, beside the sequential failover of the same run
/// (when the `cluster` section ran).
pub fn concurrent_rows(rounds: &ConcurrentRounds, sequential: Result<&Samples, &str>) -> Vec<Row> {
    let what = format!(
        "failover under {WRITERS} writers on random replicas, leader kill -9 -> next ack ({} kills, {} writes)",
        rounds.failover.len(),
        rounds.writes
    );
    let reference = |f: fn(&Samples) -> Duration| match sequential {
        Ok(s) => format!("sequential failover: {}", ms(f(s))),
        Err(why) => format!("sequential failover: {why}"),
    };
    vec![
        Row::new(
            format!("{what}: median"),
            ms(rounds.failover.median()),
            reference(Samples::median),
            "< 1 s",
            Verdict::of(rounds.failover.median() < Duration::from_secs(1)),
        ),
        Row::new(
            format!("{what}: max"),
            ms(rounds.failover.max()),
            reference(Samples::max),
            "-",
            Verdict::Info,
        ),
    ]
}
