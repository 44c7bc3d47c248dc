//! The performance benchmarks of DESIGN.md for the replicated coordinator, each printed beside its
//! reference measured in the same run (etcd, or the crypto alone) and its target:
//!
//! ```sh
//! cargo bench -p concord-tests --bench cluster              # full: about 1.5 minutes
//! cargo bench -p concord-tests --bench cluster -- --quick   # small N, for CI: under 2 minutes
//! cargo bench -p concord-tests --bench cluster -- --quick --only mesh,storm   # some sections
//! ```
//!
//! It builds the `concord-coordinator` and `concord` binaries with its own profile (release, for
//! `cargo bench`) and starts them the way the integration tests do (`concord_tests::Env`). etcd is
//! Debian's `etcd-server` (`apt-get install etcd-server`); without it Concord's numbers are printed
//! with no reference. Every process it starts is killed when its section ends, also on a panic.
//!
//! Not run by `cargo test`: a bench target is built by `cargo test` only when asked (`--benches`,
//! `--all-targets`), and then, without `--bench` in its arguments, it only says how to run it.
#![forbid(unsafe_code)]

mod audit;
mod binaries;
mod commit;
mod concord;
mod concurrent;
mod cpu;
mod durability;
mod etcd;
mod etcd_client;
mod etcd_grpc;
mod failover;
mod floor;
mod memory;
mod mesh;
mod mode;
mod propagation;
mod steady;
mod storm;
mod table;
mod tlog;
mod transit;

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use concord_coordinator::testing::TestDeployment;
use mode::Mode;
use table::{NO_REFERENCE, Row, Samples, Verdict};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and must not run this.
    if !args.iter().any(|a| a == "--bench") {
        eprintln!(
            "the cluster benchmark runs only under `cargo bench -p concord-tests --bench cluster [-- --quick]`"
        );
        return ExitCode::SUCCESS;
    }
    let mode = Mode::from_args(&args);
    if !mode.unknown_sections().is_empty() {
        eprintln!(
            "error: unknown sections {:?}; --only takes some of {:?}",
            mode.unknown_sections(),
            mode::SECTIONS
        );
        return ExitCode::FAILURE;
    }
    let profile = match binaries::build_binaries() {
        Ok(profile) => profile,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let etcd = etcd::find_binary();
    let reference = match &etcd {
        Some(bin) => etcd::version(bin),
        None => {
            eprintln!(
                "etcd is not installed (no `etcd` at $CONCORD_BENCH_ETCD, on PATH or at /usr/bin/etcd): Concord's numbers are printed without their reference. Install it with `apt-get install etcd-server`."
            );
            NO_REFERENCE.into()
        }
    };
    let started = Instant::now();
    let rows = run(&mode, etcd.as_deref());
    println!();
    println!(
        "Concord benchmarks, {} mode, {profile} build; reference: {reference}, in the same run; {} cores, load average at the end {}",
        mode.name,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    println!(
        "INSECURE: the replicas run on the simulated attestation platform (no SEV-SNP on this machine)."
    );
    println!();
    table::print(&rows);
    println!();
    println!(
        "Targets are judged on the median (p50); p99 and max are shown for context. Raft timing: Concord heartbeats every 50 ms and a follower campaigns after 300-400 ms without one (openraft's 200 ms leader lease plus 100-200 ms); etcd's defaults are 100 ms and 1000-2000 ms."
    );
    println!("took {:.0} s", started.elapsed().as_secs_f64());
    if rows.iter().any(|r| r.verdict == Verdict::Error) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// Runs `f`, turning a panic into an error (the guards of everything it started ran during the
/// unwinding: processes killed, directories removed).
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    eprintln!("measuring: {what}");
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .map_or_else(|| "panicked".into(), |m| format!("panicked: {m}"))),
    }
}

/// Every section, in order; the rows of the table.
fn run(mode: &Mode, etcd: Option<&Path>) -> Vec<Row> {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return vec![Row::error("tokio runtime", &e.to_string())],
    };
    // Reference values of the size of Concord's manifests: the same bytes.
    let d = TestDeployment::new();
    let value = |i: usize| d.manifest(i as u32 + 1);
    let value_len = value(0).len();

    let mut rows = Vec::new();
    // The sequential failover of the cluster section, beside which the concurrent one is printed.
    let mut sequential: Option<Result<Samples, String>> = None;
    if mode.runs("cluster") {
        // What one durable append costs on this disk, raw and through sled (the Raft log's store),
        // for an entry about the size of a SetManifest's (the manifest, base64 in JSON, and more).
        let durability = guarded("durability: fdatasync and sled flush", || {
            durability::measure(mode.durability_appends, 4 * value_len)
        });
        push(
            &mut rows,
            "durability",
            durability.as_ref().map(durability::rows),
        );
        let reference = etcd.filter(|_| mode.runs("etcd"));
        let mut concord = guarded("Concord, 3 replicas", || {
            Ok(runtime.block_on(concord_cluster(mode, reference, &value)))
        })
        .unwrap_or_else(ConcordCluster::failed);
        let etcd = match etcd {
            Some(bin) if mode.runs("etcd") => {
                guarded("etcd, 3 members", || Ok(etcd_cluster(mode, bin, &value)))
                    .unwrap_or_else(EtcdResults::failed)
            }
            Some(_) => EtcdResults::failed("not run (--only)".into()),
            None => EtcdResults::failed(NO_REFERENCE.into()),
        };
        // The TLS puts were made between the Concord calls (`commit::BLOCK`).
        let etcd_tls = concord.etcd_tls.take().unwrap_or_else(|| {
            Err(match etcd.commit.as_ref() {
                Err(e) => e.clone(),
                Ok(_) => "not measured".into(),
            })
        });
        cluster_rows(&mut rows, mode, &concord, &etcd, &etcd_tls, value_len);
        sequential = Some(concord.rounds.map(|r| r.failover));
    }
    if mode.runs("failover") {
        let rounds = guarded("failover under concurrent writers", || {
            runtime.block_on(failover::concurrent(mode.concurrent_failovers))
        });
        let sequential = match &sequential {
            Some(Ok(s)) => Ok(s),
            Some(Err(e)) => Err(e.as_str()),
            None => Err("not run (--only)"),
        };
        push(
            &mut rows,
            "failover under concurrent writers",
            rounds
                .as_ref()
                .map(|r| failover::concurrent_rows(r, sequential)),
        );
    }
    if mode.runs("audit") {
        let audit = guarded("audit", || {
            let env = concord_tests::Env::new();
            // Inside the environment's directory, which CONCORD_KEEP_TEST_DIRS=1 keeps.
            let dir = env.path("audit");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            audit::run(&env, &dir, mode.audit_sizes, mode.audit_runs)
        });
        push(&mut rows, "audit", audit.as_ref().map(|a| audit::rows(a)));
        let log = guarded("log proofs", || Ok(tlog::run(&[10, 1_000, 100_000], 200)));
        push(
            &mut rows,
            "log proofs",
            log.as_ref()
                .map(|m| tlog::rows(m, audit.as_ref().ok().map(|a| a.as_slice()))),
        );
    }
    // The crypto floor of issue 11, the reference of the NewMeshCert and storm rows.
    let floor = (mode.runs("mesh") || mode.runs("storm"))
        .then(|| guarded("crypto floor", || floor::measure(mode.floor_window)));
    if mode.runs("mesh") {
        let openssl = floor::openssl_speed();
        let snp = guarded("NewMeshCert crypto, SNP evidence", || {
            floor::snp_pipeline(mode.crypto_window)
        });
        let mesh = guarded("NewMeshCert throughput", || {
            let env = concord_tests::Env::new();
            let crypto = mesh::crypto_alone(&env, mode.crypto_window)?;
            let replica =
                runtime.block_on(mesh::replica(&env, mode.mesh_clients, mode.mesh_window))?;
            // The floor again right before the judged row and right after it: this machine's speed
            // drifts by a tenth or more within a minute (up to 30 % seen), and each row is judged
            // against the mean of the two measurements closest around it.
            let between = floor::measure(mode.floor_window)?;
            let env = concord_tests::Env::new();
            let saturated = runtime.block_on(mesh::replica(
                &env,
                mode.mesh_clients_saturating,
                mode.mesh_window,
            ))?;
            let after = floor::measure(mode.floor_window)?;
            Ok((replica, saturated, crypto, floor::Again { between, after }))
        });
        match &floor {
            Some(Ok(f)) => {
                let again = mesh.as_ref().ok().map(|(_, _, _, again)| again);
                rows.extend(floor::rows(f, again, &openssl, snp));
                push(
                    &mut rows,
                    "NewMeshCert",
                    mesh.as_ref().map(|(replica, saturated, crypto, again)| {
                        mesh::rows(
                            (replica, mode.mesh_clients),
                            (saturated, mode.mesh_clients_saturating),
                            crypto,
                            again.references(f),
                        )
                    }),
                );
            }
            Some(Err(e)) => rows.push(Row::error("crypto floor", e)),
            None => {}
        }
        let mesh_tdx = guarded("NewMeshCert throughput on TDX", || {
            let env = concord_tests::Env::new_tdx();
            let crypto = mesh::crypto_alone(&env, mode.crypto_window)?;
            let replica = runtime.block_on(mesh::replica(
                &env,
                mode.mesh_clients_saturating,
                mode.mesh_window,
            ))?;
            Ok((replica, crypto))
        });
        push(
            &mut rows,
            "NewMeshCert on TDX",
            mesh_tdx.as_ref().map(|(replica, crypto)| {
                mesh::rows_against_crypto(replica, crypto, mode.mesh_clients_saturating, true)
            }),
        );
    }
    if mode.runs("transit") {
        let transit = guarded("transit API throughput", || {
            let env = concord_tests::Env::new();
            let aes = transit::aes_alone(mode.crypto_window)?;
            let (encrypt, decrypt) =
                runtime.block_on(transit::replica(&env, mode.mesh_clients, mode.mesh_window))?;
            Ok((encrypt, decrypt, aes))
        });
        push(
            &mut rows,
            "transit",
            transit
                .as_ref()
                .map(|(e, d, aes)| transit::rows(e, d, *aes, mode.mesh_clients)),
        );
    }
    if mode.runs("storm") {
        let batched = guarded("initializers against a 20 ms issuer, batched", || {
            runtime.block_on(storm::run(
                mode.evidence_initializers,
                &["--insecure-simulated-issuer-delay-ms", "20"],
            ))
        });
        let per_handshake = guarded("initializers against a 20 ms issuer, per handshake", || {
            runtime.block_on(storm::run(
                mode.evidence_initializers,
                &[
                    "--insecure-simulated-issuer-delay-ms",
                    "20",
                    "--evidence",
                    "per-handshake",
                ],
            ))
        });
        rows.extend(storm::evidence_rows(
            &batched,
            &per_handshake,
            mode.evidence_bound,
        ));
        let storm = guarded("pod-start storm", || {
            runtime.block_on(storm::run(mode.storm_initializers, &[]))
        });
        match &floor {
            Some(Ok(f)) => rows.extend(storm::storm_rows(&storm, f.per_cpu_second())),
            Some(Err(e)) => rows.push(Row::error("crypto floor", e)),
            None => {}
        }
    }
    rows
}

/// The rows of the Concord cluster and etcd sections.
fn cluster_rows(
    rows: &mut Vec<Row>,
    mode: &Mode,
    concord: &ConcordCluster,
    etcd: &EtcdResults,
    etcd_tls: &Result<commit::EtcdPuts, String>,
    value_len: usize,
) {
    push(
        rows,
        "SetManifest commit",
        concord.commit.as_ref().map(|c| {
            let mut commit_rows = commit::rows(
                c,
                etcd_tls
                    .as_ref()
                    .map(|p| &p.samples)
                    .map_err(String::as_str),
                etcd.commit.as_ref().map_err(String::as_str),
                value_len,
            );
            let fsync = etcd_tls.as_ref().map_err(String::as_str);
            commit_rows.push(commit::fsync_row(
                c,
                fsync.and_then(|p| p.wal_fsync.as_ref().map_err(String::as_str)),
            ));
            commit_rows
        }),
    );
    let sequential = concord.concurrent_reference.as_ref().ok();
    push(
        rows,
        "concurrent SetManifests",
        concord
            .concurrent
            .as_ref()
            .map(|c| concurrent::rows(c, sequential)),
    );
    push(
        rows,
        "failover",
        concord.rounds.as_ref().map(|r| {
            failover::failover_rows(
                &r.failover,
                etcd.failover.as_ref().map_err(String::as_str),
                etcd.like_concord
                    .as_ref()
                    .map(|l| l.as_ref().map_err(String::as_str)),
            )
        }),
    );
    for (name, flood) in [
        ("leader under a handshake flood", &concord.flood),
        ("follower under a handshake flood", &concord.follower_flood),
    ] {
        push(
            rows,
            name,
            flood.as_ref().map(|f| {
                steady::rows(
                    f,
                    concord
                        .concurrent_reference
                        .as_ref()
                        .map(Samples::median)
                        .map_err(String::as_str),
                )
            }),
        );
    }
    push(
        rows,
        "peer recovery",
        concord
            .rounds
            .as_ref()
            .map(|r| failover::restart_rows(&r.restart_to_ready)),
    );
    push(
        rows,
        "first SetManifest",
        concord
            .first
            .as_ref()
            .map(|t| vec![propagation::first_row(*t)]),
    );
    for p in &concord.propagation {
        push(
            rows,
            "after SetManifest",
            p.as_ref()
                .map(|(s, history)| propagation::rows(s, *history)),
        );
    }
    push(
        rows,
        "idle replica RSS",
        concord.rss.as_ref().map(|rss| {
            memory::rows(
                rss,
                etcd.rss.as_deref().map_err(String::as_str),
                mode.idle.as_secs(),
            )
        }),
    );
    push(
        rows,
        "idle replica RSS after the writes",
        concord
            .rss_after_writes
            .as_ref()
            .map(|(rss, history)| memory::rows_after_writes(rss, *history, mode.idle.as_secs())),
    );
}

fn push(rows: &mut Vec<Row>, what: &str, section: Result<Vec<Row>, &String>) {
    match section {
        Ok(r) => rows.extend(r),
        Err(e) => rows.push(Row::error(what, e)),
    }
}

/// What the Concord cluster measured; each part fails on its own.
struct ConcordCluster {
    /// From the first manifest's acknowledgement to every replica ready with it.
    first: Result<Duration, String>,
    /// On a short history, then after the commit latency run made it long.
    propagation: [Result<(Samples, u64), String>; 2],
    commit: Result<commit::Commits, String>,
    /// etcd puts over gRPC and TLS, made between the commit calls, if an etcd binary was given.
    etcd_tls: Option<Result<commit::EtcdPuts, String>>,
    /// Sequential calls made right before the concurrent writers, their reference.
    concurrent_reference: Result<Samples, String>,
    concurrent: Result<concurrent::Concurrent, String>,
    rss: Result<Vec<u64>, String>,
    /// Once more after every write of the run (and an idle pause), with the history's length then.
    rss_after_writes: Result<(Vec<u64>, u64), String>,
    rounds: Result<failover::ConcordRounds, String>,
    /// Last: the leader, then a follower, under a flood of handshakes on its mesh port.
    flood: Result<steady::Flood, String>,
    follower_flood: Result<steady::Flood, String>,
}

impl ConcordCluster {
    fn failed(e: String) -> ConcordCluster {
        ConcordCluster {
            first: Err(e.clone()),
            propagation: [Err(e.clone()), Err(e.clone())],
            commit: Err(e.clone()),
            etcd_tls: None,
            concurrent_reference: Err(e.clone()),
            concurrent: Err(e.clone()),
            rss: Err(e.clone()),
            rss_after_writes: Err(e.clone()),
            rounds: Err(e.clone()),
            flood: Err(e.clone()),
            follower_flood: Err(e),
        }
    }
}

/// One 3-replica cluster for its first manifest, metrics 4, 1, 6, 4 again, then 2 and 3: the mesh
/// CA propagation on a short history and on the long one the commit latency run leaves, the idle
/// memory before any replica was restarted; then sequential calls and the concurrent writers
/// judged beside them, the idle memory once more, and last the leader, then a follower, under a
/// flood of handshakes on its mesh port (`steady.rs`). With `etcd`, a 3-member etcd cluster with TLS runs during the commit latency
/// run only, for the puts made between its calls.
async fn concord_cluster(
    mode: &Mode,
    etcd: Option<&Path>,
    value: &dyn Fn(usize) -> Vec<u8>,
) -> ConcordCluster {
    let mut cluster = match concord::Cluster::start(3) {
        Ok(c) => c,
        Err(e) => return ConcordCluster::failed(e),
    };
    let first = match propagation::concord(&mut cluster, 1).await {
        Ok(s) => s.median(),
        Err(e) => return ConcordCluster::failed(e),
    };
    let short = propagation::concord(&mut cluster, mode.propagation_rounds)
        .await
        .map(|s| (s, cluster.writer.transitions()));
    let reference = etcd.map(|bin| {
        etcd::EtcdCluster::start_tls(bin, 3)
            .map_err(|e| format!("etcd with TLS did not start: {e}"))
    });
    let (commit, etcd_tls) = match &reference {
        Some(Ok(etcd)) => {
            let reference = commit::Interleaved { etcd, value };
            commit::concord(&mut cluster, mode.writes, Some(reference)).await
        }
        Some(Err(e)) => (
            commit::concord(&mut cluster, mode.writes, None).await.0,
            Some(Err(e.clone())),
        ),
        None => commit::concord(&mut cluster, mode.writes, None).await,
    };
    // Stopped before the sections that follow, which it would only disturb.
    drop(reference);
    tokio::time::sleep(mode.idle).await;
    let rss = cluster
        .nodes
        .iter()
        .map(|n| memory::rss(n.pid()))
        .collect::<Result<Vec<_>, _>>();
    let long = propagation::concord(&mut cluster, mode.propagation_rounds)
        .await
        .map(|s| (s, cluster.writer.transitions()));
    let rounds = failover::concord(&mut cluster, mode.failovers).await;
    // Last, so that their writes lengthen no history the rows above measure: the concurrent
    // writers, beside sequential calls made right before them on this same cluster.
    let concurrent_reference =
        commit::concord(&mut cluster, mode.concurrent_reference_writes, None)
            .await
            .0
            .map(|c| Samples::new(c.in_order));
    let concurrent = concurrent::concord(
        &mut cluster,
        mode.concurrent_clients,
        mode.concurrent_writes,
    )
    .await
    .and_then(|c| {
        cluster.writer.adopt(&c.latest.0, c.latest.1)?;
        Ok(c)
    });
    tokio::time::sleep(mode.idle).await;
    let rss_after_writes = cluster
        .nodes
        .iter()
        .map(|n| memory::rss(n.pid()))
        .collect::<Result<Vec<_>, _>>()
        .map(|rss| (rss, cluster.writer.transitions()));
    // After everything else measured on this cluster: its writes lengthen the history too.
    let flood = steady::flood(
        &mut cluster,
        mode.flood_clients,
        mode.flood_window,
        steady::Target::Leader,
    )
    .await;
    let follower_flood = steady::flood(
        &mut cluster,
        mode.flood_clients,
        mode.flood_window,
        steady::Target::Follower,
    )
    .await;
    ConcordCluster {
        first: Ok(first),
        propagation: [short, long],
        commit,
        etcd_tls,
        concurrent_reference,
        concurrent,
        rss,
        rss_after_writes,
        rounds,
        flood,
        follower_flood,
    }
}

/// What the etcd clusters measured.
struct EtcdResults {
    /// Puts through the JSON gateway without TLS (the TLS ones are made with the Concord calls).
    commit: Result<Samples, String>,
    rss: Result<Vec<u64>, String>,
    failover: Result<Samples, String>,
    like_concord: Option<Result<Samples, String>>,
}

impl EtcdResults {
    fn failed(e: String) -> EtcdResults {
        EtcdResults {
            commit: Err(e.clone()),
            rss: Err(e.clone()),
            failover: Err(e),
            like_concord: None,
        }
    }
}

fn etcd_cluster(mode: &Mode, bin: &Path, value: &dyn Fn(usize) -> Vec<u8>) -> EtcdResults {
    let mut cluster = match etcd::EtcdCluster::start(bin, 3, etcd::Timing::Default) {
        Ok(c) => c,
        Err(e) => return EtcdResults::failed(format!("etcd did not start: {e}")),
    };
    let commit = commit::etcd(&cluster, mode.writes, value);
    std::thread::sleep(mode.idle);
    let rss = (0..cluster.len())
        .map(|i| memory::rss(cluster.pid(i).unwrap_or(0)))
        .collect();
    let failover = failover::etcd(&mut cluster, mode.failovers, &value(0));
    drop(cluster);
    let like_concord = mode.etcd_like_concord.then(|| {
        etcd::EtcdCluster::start(bin, 3, etcd::Timing::LikeConcord)
            .and_then(|mut c| failover::etcd(&mut c, mode.failovers, &value(0)))
    });
    EtcdResults {
        commit,
        rss,
        failover,
        like_concord,
    }
}
