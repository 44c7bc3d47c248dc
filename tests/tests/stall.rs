//! Issue 9.12: a replica whose Raft core is wedged (its log flush stops returning, as on a disk that
//! stopped answering) must fail its liveness probe, so Kubernetes restarts it, and must still stop
//! on SIGTERM. The wedge is the coordinator's test fault hook `--insecure-test-stall-raft-while FILE`
//! (no environment variable: the chart cannot set it; docs/OPERATIONS.md).

use std::time::{Duration, Instant};

use concord_cli::process::{Addrs, CoordinatorProcess, SimulatedFlags};
use concord_tests::{Env, Hash, describe, http_get, stdout_line};

/// The liveness probe must fail within this of the wedge: the core counts as stalled after 30 s
/// without an answer (`observe::probe::RAFT_CORE_STALLED_AFTER`), plus sampling and a loaded machine.
const LIVENESS_FAILS_WITHIN: Duration = Duration::from_secs(50);
/// SIGTERM must stop the process within this (the chart's grace period is 30 s; the fixture's `stop`
/// gives 5 s before SIGKILL).
const STOPS_WITHIN: Duration = Duration::from_secs(10);

fn start_cluster_with_hooks(env: &Env) -> (Vec<CoordinatorProcess>, Vec<std::path::PathBuf>) {
    let addrs: Vec<Addrs> = (0..3).map(|_| Addrs::free().unwrap()).collect();
    let peers: Vec<(u64, std::net::SocketAddr)> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u64, a.peer))
        .collect();
    let files: Vec<_> = (0..3).map(|i| env.path(&format!("stall-{i}"))).collect();
    let cluster = (0..3)
        .map(|i| {
            let flags = SimulatedFlags {
                extra: vec![
                    "--insecure-test-stall-raft-while".into(),
                    files[i].display().to_string(),
                ],
                ..env.flags("coordinator.policy")
            };
            CoordinatorProcess::start_member(
                &env.path(&format!("node-{i}")),
                &env.path(&format!("node-{i}.log")),
                &flags,
                addrs[i],
                i as u64,
                &peers,
            )
            .expect("replica starts")
        })
        .collect();
    (cluster, files)
}

/// The leader's Raft core wedges in a log flush while a write is in flight: its liveness probe fails
/// within the bound (and says why), the two others elect a new leader and acknowledge the write's
/// retry, and SIGTERM stops the wedged replica within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_raft_core_fails_liveness_and_still_stops_on_sigterm() {
    let env = Env::new();
    let (mut cluster, files) = start_cluster_with_hooks(&env);
    let out = env.set(
        &cluster[0],
        "manifest-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let first = Hash::from_hex(&stdout_line(&out)).unwrap();
    let l = env.leader_index(&cluster, Duration::from_secs(20)).await;
    let (status, body) = http_get(cluster[l].health_addr, "/probe/liveness").unwrap();
    assert_eq!(status, 200, "{body}");

    // Wedge the leader's core: the next append blocks its flush.
    std::fs::write(&files[l], b"stall").unwrap();
    let wedged_at = Instant::now();
    let request = env.set_manifest_request(2, first);
    let mut api = env.user_client(&cluster[l]).await;
    let stuck = request.clone();
    let _write = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(60), api.set_manifest(stuck)).await
    });

    let failed_after = loop {
        let probe = http_get(cluster[l].health_addr, "/probe/liveness");
        if let Ok((503, body)) = &probe {
            eprintln!("liveness failed after {:?}: {body}", wedged_at.elapsed());
            assert!(body.contains("Raft core"), "{body}");
            break wedged_at.elapsed();
        }
        assert!(
            wedged_at.elapsed() < LIVENESS_FAILS_WITHIN,
            "liveness still answers {probe:?} {:?} after the Raft core wedged",
            wedged_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(failed_after >= Duration::from_secs(25), "{failed_after:?}");

    // The two others went on without it: one of them acknowledges the write.
    let survivors: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        let c = &cluster[survivors[attempt % 2]];
        attempt += 1;
        let mut api = env.user_client(c).await;
        match api.set_manifest(request.clone()).await {
            Ok(_) => break,
            Err(s) => {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the two replicas that are not wedged acknowledged no write: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    eprintln!(
        "the other two acknowledged the write {:?} after the wedge",
        wedged_at.elapsed()
    );

    // SIGTERM: the wedged replica stops on its own.
    let pid = cluster[l].pid();
    let started = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    while cluster[l].is_running() && started.elapsed() < STOPS_WITHIN + Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    let stopped = !cluster[l].is_running();
    let _ = std::fs::remove_file(&files[l]);
    cluster[l].kill();
    eprintln!("after SIGTERM the wedged replica stopped: {stopped}, after {took:?}");
    assert!(
        stopped && took < STOPS_WITHIN,
        "the wedged replica ignored SIGTERM for {took:?}"
    );
}
