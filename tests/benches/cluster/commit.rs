//! Metric 1: SetManifest commit latency on 3 replicas with fsync, beside etcd's put latency.
//!
//! Both clients keep one connection to the leader and send one request at a time; each Concord
//! request is a new manifest version (a new transition), each etcd put a value of the same bytes.
//! The reference's puts (etcd with TLS, gRPC) are made between the Concord calls, [`BLOCK`] at a
//! time, both clusters running: a change on the machine during the run weighs on both alike.

use std::time::{Duration, Instant};

use crate::concord::Cluster;
use crate::etcd::EtcdCluster;
use crate::table::{Row, Samples, Verdict, ms};

/// Requests sent before timing starts (connections, caches, the allocator warm up).
const WARMUP: usize = 5;

/// Concord's latencies in the order of the calls, the history's length before the first, and where
/// the time went (from the replicas' `/metrics`).
pub struct Commits {
    pub in_order: Vec<Duration>,
    pub history_before: u64,
    pub phases: Result<Vec<Phase>, String>,
    /// Round trips of a trivial RPC on the same connection, back to back and after an idle pause.
    pub wake_ups: Result<WakeUps, String>,
    /// The CPU the timed calls cost, per call (the etcd puts between them run in other processes;
    /// their client's share is in the clients' part).
    pub cpu: Result<crate::cpu::CpuPerWrite, String>,
}

/// What the machine charges a round trip for waking idle cores: a trivial RPC (GetStatus) timed back
/// to back, and again after each of [`IDLE_PAUSE`] without traffic, as a commit's hops come after its
/// disk syncs. Context for the commit's row, not a target.
pub struct WakeUps {
    pub back_to_back: Samples,
    pub after_pause: Samples,
}

/// The pause before each of the second set of round trips: about a commit's length.
const IDLE_PAUSE: Duration = Duration::from_millis(2);

/// The mean time of one phase over the timed calls, on the leader or over the followers
/// (`concord_set_manifest_phase_seconds`, the difference of its sum and count before and after).
pub struct Phase {
    pub name: String,
    pub on_leader: bool,
    pub mean: Duration,
    pub count: u64,
}

/// (sum in seconds, count) by phase, from one replica's `/metrics`.
pub type PhaseTotals = std::collections::BTreeMap<String, (f64, u64)>;

const PHASE_METRIC: &str = "concord_set_manifest_phase_seconds";
/// What became of the early checks of the transitions a replica applied, by outcome.
const EARLY_METRIC: &str = "concord_early_checks_total{outcome=\"";
/// The outcomes of [`EARLY_METRIC`], as `raft::early` counts them.
const EARLY_OUTCOMES: [&str; 3] = ["used", "running", "none"];
/// The name the rows give the server side of the SetManifest RPC (`concord_rpc_duration_seconds`).
const SERVER_RPC: &str = "SetManifest RPC, server side";

fn phase_totals(addr: std::net::SocketAddr) -> Result<PhaseTotals, String> {
    let (status, body) = concord_tests::http_get(addr, "/metrics")?;
    if status != 200 {
        return Err(format!("{addr}/metrics answered {status}"));
    }
    let mut totals = PhaseTotals::new();
    for line in body.lines() {
        // The whole SetManifest on the server, from the request to the response headers: what the
        // client's time adds to it is the client's, the network's, TLS's and gRPC's.
        let line = &line.replace(
            "concord_rpc_duration_seconds_sum{method=\"concord.v1.UserApi/SetManifest\"}",
            &format!("{PHASE_METRIC}_sum{{phase=\"{SERVER_RPC}\"}}"),
        );
        let line = &line.replace(
            "concord_rpc_duration_seconds_count{method=\"concord.v1.UserApi/SetManifest\"}",
            &format!("{PHASE_METRIC}_count{{phase=\"{SERVER_RPC}\"}}"),
        );
        // Counted as a phase of no duration, `early <outcome>`.
        if let Some((outcome, value)) = line
            .strip_prefix(EARLY_METRIC)
            .and_then(|rest| rest.split_once("\"} "))
        {
            let n: f64 = value
                .trim()
                .parse()
                .map_err(|e| format!("{addr}/metrics: {line:?}: {e}"))?;
            totals.insert(format!("early {outcome}"), (0.0, n as u64));
            continue;
        }
        let Some(rest) = line.strip_prefix(PHASE_METRIC) else {
            continue;
        };
        let (is_sum, rest) = if let Some(r) = rest.strip_prefix("_sum{phase=\"") {
            (true, r)
        } else if let Some(r) = rest.strip_prefix("_count{phase=\"") {
            (false, r)
        } else {
            continue;
        };
        let Some((phase, value)) = rest.split_once("\"}") else {
            continue;
        };
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|e| format!("{addr}/metrics: {line:?}: {e}"))?;
        let entry = totals.entry(phase.to_string()).or_insert((0.0, 0));
        if is_sum {
            entry.0 = value;
        } else {
            entry.1 = value as u64;
        }
    }
    Ok(totals)
}

pub fn all_totals(cluster: &Cluster) -> Result<Vec<PhaseTotals>, String> {
    cluster
        .nodes
        .iter()
        .map(|n| phase_totals(n.health_addr))
        .collect()
}

/// The per-phase means between two scrapes: the leader is the replica whose `raft_write` count grew.
/// The early checks' outcomes come as phases named `early <outcome>`, of a mean of zero.
pub fn phases(before: &[PhaseTotals], after: &[PhaseTotals]) -> Vec<Phase> {
    let grew = |b: &PhaseTotals, a: &PhaseTotals, phase: &str| {
        let (sum_b, n_b) = b.get(phase).copied().unwrap_or((0.0, 0));
        let (sum_a, n_a) = a.get(phase).copied().unwrap_or((0.0, 0));
        (sum_a - sum_b, n_a.saturating_sub(n_b))
    };
    let mut out = Vec::new();
    for on_leader in [true, false] {
        let early = EARLY_OUTCOMES.map(|o| format!("early {o}"));
        for name in concord_coordinator::observe::COMMIT_PHASES
            .iter()
            .copied()
            .chain([SERVER_RPC])
            .chain(early.iter().map(String::as_str))
        {
            let (mut sum, mut count) = (0.0, 0);
            for (b, a) in before.iter().zip(after) {
                let leads = grew(b, a, "raft_write").1 > 0;
                if leads == on_leader {
                    let (s, n) = grew(b, a, name);
                    sum += s;
                    count += n;
                }
            }
            if count > 0 {
                out.push(Phase {
                    name: name.to_string(),
                    on_leader,
                    mean: Duration::from_secs_f64(sum.max(0.0) / count as f64),
                    count,
                });
            }
        }
    }
    out
}

/// The Concord calls and the reference's etcd puts alternate in blocks of this many, so that what
/// changes on the machine during a run (the disk's sync regime, which moves a commit's p50 by about
/// 0.4 ms from one minute to the next here, or another process) weighs on both alike. Blocks rather
/// than single calls, so that each side still runs back to back as it would alone.
pub const BLOCK: usize = 10;

/// The reference measured between the Concord calls: puts of `value(i)` on the leader of `etcd`, a
/// cluster started with TLS ([`EtcdCluster::start_tls`]), over its gRPC API on one kept connection:
/// the same client stack and link security as the Concord client's SetManifest calls.
pub struct Interleaved<'a> {
    pub etcd: &'a EtcdCluster,
    pub value: &'a dyn Fn(usize) -> Vec<u8>,
}

/// What the interleaved etcd puts measured.
pub struct EtcdPuts {
    pub samples: Samples,
    /// etcd's own mean WAL fsync over the timed puts, and how many it counted (its metrics).
    pub wal_fsync: Result<(Duration, u64), String>,
}

/// The etcd side of an interleaved run, until it fails.
struct EtcdSide<'a> {
    client: crate::etcd_grpc::EtcdGrpc,
    reference: Interleaved<'a>,
    made: usize,
    samples: Vec<Duration>,
    fsyncs_before: Result<(f64, u64), String>,
}

impl<'a> EtcdSide<'a> {
    async fn connect(reference: Interleaved<'a>) -> Result<EtcdSide<'a>, String> {
        let client = reference.etcd.grpc_client(reference.etcd.leader()?).await?;
        Ok(EtcdSide {
            client,
            reference,
            made: 0,
            samples: Vec::new(),
            fsyncs_before: Err("no scrape before the timed puts".into()),
        })
    }

    /// `count` sequential puts; timed ones are kept, and etcd's fsync totals taken before the first.
    async fn puts(&mut self, count: usize, timed: bool) -> Result<(), String> {
        if timed && self.samples.is_empty() {
            self.fsyncs_before = etcd_wal_fsync_totals(self.reference.etcd);
        }
        for _ in 0..count {
            let value = (self.reference.value)(self.made);
            self.made += 1;
            let start = Instant::now();
            self.client.put(b"concord/manifest", &value).await?;
            if timed {
                self.samples.push(start.elapsed());
            }
        }
        Ok(())
    }

    fn finish(self) -> EtcdPuts {
        let after = etcd_wal_fsync_totals(self.reference.etcd);
        EtcdPuts {
            samples: Samples::new(self.samples),
            wal_fsync: etcd_wal_fsync_mean(self.fsyncs_before, after),
        }
    }
}

/// `n` sequential SetManifest calls on the leader, each timed from send to acknowledgement; with a
/// `reference`, `n` etcd puts too, [`BLOCK`] after each [`BLOCK`] Concord calls (and as many warm-up
/// puts as warm-up calls). A failure of etcd ends its side only.
pub async fn concord(
    cluster: &mut Cluster,
    n: usize,
    reference: Option<Interleaved<'_>>,
) -> (Result<Commits, String>, Option<Result<EtcdPuts, String>>) {
    let mut etcd = match reference {
        Some(r) => Some(EtcdSide::connect(r).await),
        None => None,
    };
    let commits = concord_calls(cluster, n, &mut etcd).await;
    (commits, etcd.map(|side| side.map(EtcdSide::finish)))
}

async fn concord_calls(
    cluster: &mut Cluster,
    n: usize,
    etcd: &mut Option<Result<EtcdSide<'_>, String>>,
) -> Result<Commits, String> {
    let mut client = cluster.leader_client().await?;
    let wake_ups = wake_ups(&mut client, n).await;
    let mut samples = Vec::with_capacity(n);
    let mut history_before = 0;
    let mut before = Err("no scrape before the timed calls".to_string());
    let mut cpu_mark = None;
    for i in 0..WARMUP + n {
        if i == WARMUP {
            before = all_totals(cluster);
            cpu_mark = Some(crate::cpu::CpuMark::start(cluster));
        }
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
        // The etcd puts of this block: after the warm-up calls, and after each block of timed ones.
        let due = match i + 1 {
            done if done == WARMUP => Some((WARMUP, false)),
            done if done > WARMUP
                && ((done - WARMUP).is_multiple_of(BLOCK) || done == WARMUP + n) =>
            {
                Some(((done - WARMUP - 1) % BLOCK + 1, true))
            }
            _ => None,
        };
        if let (Some((count, timed)), Some(Ok(side))) = (due, etcd.as_mut())
            && let Err(e) = side.puts(count, timed).await
        {
            *etcd = Some(Err(e));
        }
    }
    let phases = before.and_then(|b| Ok(phases(&b, &all_totals(cluster)?)));
    let cpu = match cpu_mark {
        Some(Ok(mark)) => mark.per_write(cluster, n),
        Some(Err(e)) => Err(e),
        None => Err("no mark before the timed calls".to_string()),
    };
    Ok(Commits {
        in_order: samples,
        history_before,
        phases,
        wake_ups,
        cpu,
    })
}

/// `n` GetStatus round trips back to back, then `n` each after [`IDLE_PAUSE`].
async fn wake_ups(client: &mut crate::concord::UserClient, n: usize) -> Result<WakeUps, String> {
    let mut back_to_back = Vec::with_capacity(n);
    let mut after_pause = Vec::with_capacity(n);
    for pause in [false, true] {
        for _ in 0..WARMUP + n {
            if pause {
                tokio::time::sleep(IDLE_PAUSE).await;
            }
            let start = Instant::now();
            client
                .get_status(concord_proto::v1::GetStatusRequest {})
                .await
                .map_err(|s| format!("GetStatus failed ({:?}): {}", s.code(), s.message()))?;
            let samples = if pause {
                &mut after_pause
            } else {
                &mut back_to_back
            };
            samples.push(start.elapsed());
        }
    }
    // The first calls of each set warm up.
    Ok(WakeUps {
        back_to_back: Samples::new(back_to_back.split_off(WARMUP)),
        after_pause: Samples::new(after_pause.split_off(WARMUP)),
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

/// etcd's own WAL fsync time, summed over its members: (seconds, count) of
/// `etcd_disk_wal_fsync_duration_seconds`, from each member's `/metrics`.
pub fn etcd_wal_fsync_totals(etcd: &EtcdCluster) -> Result<(f64, u64), String> {
    let mut totals = (0.0, 0);
    for i in 0..etcd.len() {
        let text = etcd.client(i, Duration::from_secs(10)).metrics()?;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(name)?
                        .strip_prefix(' ')?
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
                .ok_or_else(|| format!("etcd member {i}'s /metrics has no {name}"))
        };
        totals.0 += value("etcd_disk_wal_fsync_duration_seconds_sum")?;
        totals.1 += value("etcd_disk_wal_fsync_duration_seconds_count")? as u64;
    }
    Ok(totals)
}

/// The mean of etcd's WAL fsyncs between two [`etcd_wal_fsync_totals`].
pub fn etcd_wal_fsync_mean(
    before: Result<(f64, u64), String>,
    after: Result<(f64, u64), String>,
) -> Result<(Duration, u64), String> {
    let ((sum_b, n_b), (sum_a, n_a)) = (before?, after?);
    let n = n_a.saturating_sub(n_b);
    if n == 0 {
        return Err("etcd counted no WAL fsync during the puts".into());
    }
    Ok((
        Duration::from_secs_f64((sum_a - sum_b).max(0.0) / n as f64),
        n,
    ))
}

/// The row that sets etcd's own WAL fsync time (its metrics, over the TLS puts made between the
/// Concord calls) beside Concord's log appends over the calls: on this virtual machine a sync's cost depends on how long the core
/// was idle before it, so the two show what each write path pays for the same disk.
pub fn fsync_row(commits: &Commits, etcd_fsync: Result<&(Duration, u64), &str>) -> Row {
    let mean = |name: &str, leader: bool| {
        commits.phases.as_ref().ok().and_then(|phases| {
            phases
                .iter()
                .find(|p| p.name == name && p.on_leader == leader)
                .map(|p| ms(p.mean))
        })
    };
    let concord = match (
        mean("log_append", true),
        mean("log_append", false),
        mean("log_sync", true),
        mean("log_sync", false),
    ) {
        (Some(l), Some(f), Some(sl), Some(sf)) => format!(
            "Concord's log_append (write + fdatasync): leader {l}, followers {f}; its fdatasync alone: {sl}, {sf}"
        ),
        _ => "Concord's log_append: no phase metrics".to_string(),
    };
    let (value, what) = match etcd_fsync {
        Ok((mean, n)) => (
            ms(*mean),
            format!("{concord}; etcd: {n} fsyncs on 3 members"),
        ),
        Err(e) => ("-".to_string(), format!("{concord}; etcd: {e}")),
    };
    Row::new(
        "  etcd's own WAL fsync, mean (its metrics, over the TLS puts between the calls)",
        value,
        what,
        "-",
        Verdict::Info,
    )
}

/// The p50 row (the target), the p99 row, and how the p50 moves as the history grows.
///
/// The target's etcd is `etcd`: puts over etcd's gRPC API with TLS on the client and peer links, as
/// Concord's SetManifest travels (gRPC over aTLS, TLS between replicas) and as Kubernetes runs etcd.
/// `etcd_plain`, puts through etcd's JSON gateway without TLS (the reference until issue 11.3's
/// fifth pass), is shown beside it.
pub fn rows(
    commits: &Commits,
    etcd: Result<&Samples, &str>,
    etcd_plain: Result<&Samples, &str>,
    value_len: usize,
) -> Vec<Row> {
    let concord = &Samples::new(commits.in_order.clone());
    let what = format!(
        "SetManifest commit, 3 replicas, fsync ({} calls, {value_len} B)",
        concord.len()
    );
    let reference = |p: f64| match (etcd, etcd_plain) {
        (Ok(e), Ok(plain)) => format!(
            "etcd put, gRPC and TLS: {}; JSON gateway, no TLS: {}",
            ms(e.percentile(p)),
            ms(plain.percentile(p))
        ),
        (Ok(e), Err(_)) => format!("etcd put, gRPC and TLS: {}", ms(e.percentile(p))),
        (Err(why), _) => why.to_string(),
    };
    // The crypto one SetManifest needs, as issue 11.3 counts it: the leader's prepare (checks,
    // signing, keys), with what it takes made ahead (the mesh CA and the seal encapsulations, made
    // on the background threads after the previous prepare: the `ahead` phase, in CPU time), and
    // every replica's verification of the new transition (the state machine's `verify` phase:
    // decoding, signatures, certificates). The work made ahead and the followers' verification are
    // on the same two cores as the leader's path. Measured in this run, from the replicas' /metrics.
    let leader_mean = |name: &str| {
        commits.phases.as_ref().ok().and_then(|p| {
            p.iter()
                .find(|p| p.on_leader && p.name == name)
                .map(|p| p.mean)
        })
    };
    // The followers' verification per write: their sum over the leader's count of writes.
    let followers_per_write = |name: &str| {
        let phases = commits.phases.as_ref().ok()?;
        let writes = phases
            .iter()
            .find(|p| p.on_leader && p.name == name)?
            .count
            .max(1);
        let followers = phases.iter().find(|p| !p.on_leader && p.name == name)?;
        Some(
            followers
                .mean
                .mul_f64(followers.count as f64 / writes as f64),
        )
    };
    // The leader's work made ahead, per write: its sum over the leader's count of writes.
    let leader_per_write = |name: &str| {
        let phases = commits.phases.as_ref().ok()?;
        let writes = phases
            .iter()
            .find(|p| p.on_leader && p.name == "prepare")?
            .count
            .max(1);
        let phase = phases.iter().find(|p| p.on_leader && p.name == name)?;
        Some(phase.mean.mul_f64(phase.count as f64 / writes as f64))
    };
    let prepare_alone = leader_mean("prepare");
    let prepare = prepare_alone
        .zip(leader_per_write("ahead").or(Some(Duration::ZERO)))
        .map(|(p, a)| p + a);
    let verify = leader_mean("verify")
        .zip(followers_per_write("verify"))
        .map(|(l, f)| l + f);
    let own = prepare.zip(verify).map(|(p, v)| p + v);
    let p50 = match (etcd, own) {
        (Ok(e), Some(own)) => Verdict::of(concord.median() <= e.median() + own),
        (Ok(_), None) => Verdict::NoReference("no phase metrics".into()),
        (Err(_), _) => Verdict::NoReference("needs etcd".into()),
    };
    let text = |d: Option<Duration>| d.map_or("?".to_string(), ms);
    let reference_p50 = match (etcd, own) {
        (Ok(e), Some(own)) => format!(
            "etcd put (gRPC, TLS) {} + prepare, with what it takes made ahead, {} + verification on every replica {} = {}",
            ms(e.median()),
            text(prepare),
            text(verify),
            ms(e.median() + own)
        ),
        _ => format!("{} + own crypto {}", reference(50.0), text(own)),
    };
    // Where the p50 stands against a reference shown for context only.
    let within = |limit: Duration| {
        if concord.median() <= limit {
            "p50 within it"
        } else {
            "p50 above it"
        }
    };
    // A context row's reference: etcd's put plus `own`, named `what`, and where the p50 stands.
    let beside = |what: &str, own: Option<Duration>| match (etcd, own) {
        (Ok(e), Some(own)) => format!(
            "etcd put {} + {what} {} = {} ({})",
            ms(e.median()),
            ms(own),
            ms(e.median() + own),
            within(e.median() + own)
        ),
        _ => "needs etcd and the phase metrics".to_string(),
    };
    // The same without the work made ahead: only what the prepare itself took.
    let unaided_text = beside(
        "prepare alone + verification on every replica",
        prepare_alone.zip(verify).map(|(p, v)| p + v),
    );
    // The stricter reference the benchmark used before: the leader's prepare (alone) and its whole
    // apply (verification and history write), without the followers' verification.
    let strict_text = beside(
        "prepare + leader's apply",
        prepare_alone.zip(leader_mean("apply")).map(|(p, a)| p + a),
    );
    let plain_text = match (etcd_plain, own) {
        (Ok(e), Some(own)) => format!(
            "etcd put (JSON gateway, no TLS) {} + the same {} = {} ({})",
            ms(e.median()),
            ms(own),
            ms(e.median() + own),
            within(e.median() + own)
        ),
        (Err(why), _) => why.to_string(),
        (Ok(_), None) => "no phase metrics".to_string(),
    };
    let mut rows = vec![
        Row::new(
            format!("{what}: p50"),
            ms(concord.median()),
            reference_p50,
            "p50 <= etcd's p50 + prepare, with the work made ahead, + every replica's verification",
            p50,
        ),
        Row::new(
            format!("{what}: p50, beside the reference without the work made ahead"),
            ms(concord.median()),
            unaided_text,
            "-",
            Verdict::Info,
        ),
        Row::new(
            format!("{what}: p50, beside etcd without TLS"),
            ms(concord.median()),
            plain_text,
            "-",
            Verdict::Info,
        ),
        Row::new(
            format!("{what}: p50, beside the leader-only reference"),
            ms(concord.median()),
            strict_text,
            "-",
            Verdict::Info,
        ),
        Row::new(
            format!("{what}: p99"),
            ms(concord.percentile(99.0)),
            reference(99.0),
            "-",
            Verdict::Info,
        ),
        Row::new(
            format!("{what}: mean, as the client sees it"),
            ms(commits.in_order.iter().sum::<Duration>() / concord.len().max(1) as u32),
            format!("beside \"{SERVER_RPC}\" below: the rest is the client, TLS, gRPC, loopback"),
            "-",
            Verdict::Info,
        ),
        growth(commits),
        wake_up_row(&commits.wake_ups),
        crate::cpu::row(
            &what,
            &commits.cpu,
            commits.in_order.iter().sum::<Duration>() / concord.len().max(1) as u32,
        ),
    ];
    rows.extend(phase_rows(&commits.phases));
    rows
}

/// The "where it goes" rows: each phase's mean on the leader and on the followers, and the early
/// checks' outcomes.
pub fn phase_rows(phases: &Result<Vec<Phase>, String>) -> Vec<Row> {
    let phases = match phases {
        Ok(p) => p,
        Err(e) => {
            return vec![Row::new(
                "  where it goes",
                "-",
                format!("no phase metrics: {e}"),
                "-",
                Verdict::Info,
            )];
        }
    };
    phases
        .iter()
        .map(|p| {
            let side = if p.on_leader { "leader" } else { "followers" };
            if let Some(outcome) = p.name.strip_prefix("early ") {
                return Row::new(
                    format!("  where it goes: transitions applied with early checks {outcome}, on the {side}"),
                    p.count.to_string(),
                    "used: their verdict was ready; running: not waited for (a follower waits up to 10 ms), verified in full; none: not started or failed",
                    "-",
                    Verdict::Info,
                );
            }
            Row::new(
                format!("  where it goes: {} on the {side} (mean of {})", p.name, p.count),
                ms(p.mean),
                "-",
                "-",
                Verdict::Info,
            )
        })
        .collect()
}

/// A trivial RPC's round trip back to back and after an idle pause: the difference is what waking
/// idle cores costs on this machine, which a commit pays on its hops after each disk sync.
fn wake_up_row(wake_ups: &Result<WakeUps, String>) -> Row {
    let metric = format!(
        "  GetStatus round trip p50: back to back / after {} ms idle",
        IDLE_PAUSE.as_millis()
    );
    match wake_ups {
        Ok(w) => Row::new(
            metric,
            format!(
                "{} / {}",
                ms(w.back_to_back.median()),
                ms(w.after_pause.median())
            ),
            format!(
                "the difference ({}) is the machine waking idle cores, on every hop that follows a wait",
                ms(w.after_pause
                    .median()
                    .saturating_sub(w.back_to_back.median()))
            ),
            "-",
            Verdict::Info,
        ),
        Err(e) => Row::new(metric, "-", e.clone(), "-", Verdict::Info),
    }
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
