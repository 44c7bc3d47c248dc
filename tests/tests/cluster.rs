//! Several replicas of the real binary on loopback: replication, forwarding, failover, rejoin with
//! peer recovery. Correctness only: how fast these happen is measured by the benchmarks
//! (`cargo bench -p concord-tests --bench cluster`), in release builds, beside their targets. The one
//! timing printed here, threshold recovery of a whole cluster, is not benchmarked yet; it is an
//! observation, not an assertion.

use std::time::{Duration, Instant};

use concord_proto::v1 as pb;
use concord_tests::{Env, describe, stdout_line};

/// Waits until every running replica is ready with `transitions` transitions and the same mesh CA.
async fn all_ready(
    env: &Env,
    cluster: &[&concord_cli::process::CoordinatorProcess],
    transitions: u64,
) -> Duration {
    let start = Instant::now();
    // One attested connection per replica, reused: the polling must not dominate what it measures.
    let mut clients = Vec::new();
    for c in cluster {
        clients.push(env.user_client(c).await);
    }
    loop {
        let mut mesh_cas = Vec::new();
        let mut ok = true;
        for client in clients.iter_mut() {
            match client
                .get_status(pb::GetStatusRequest {})
                .await
                .map(|r| r.into_inner())
            {
                Ok(s) if s.state == "ready" && s.transitions == transitions => {
                    match client
                        .get_manifests(pb::GetManifestsRequest::default())
                        .await
                    {
                        Ok(m) => mesh_cas.push(m.into_inner().mesh_ca),
                        Err(_) => ok = false,
                    }
                }
                _ => ok = false,
            }
        }
        if ok && mesh_cas.windows(2).all(|w| w[0] == w[1]) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the replicas did not all become ready with one mesh CA"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn leader(env: &Env, cluster: &[concord_cli::process::CoordinatorProcess]) -> usize {
    env.leader_index(cluster, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_replicate_fail_over_and_recover() {
    let env = Env::new();
    let mut cluster = env.start_cluster(3);
    let leader_at_start = leader(&env, &cluster).await;

    // A write to a follower is forwarded to the leader.
    let follower = (leader_at_start + 1) % 3;
    let out = env.set(
        &cluster[follower],
        "manifest-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let first = stdout_line(&out);
    let refs: Vec<_> = cluster.iter().collect();
    all_ready(&env, &refs, 1).await;

    // A workload gets its certificate from any replica.
    let init = env.initializer(
        &cluster[follower],
        "web.policy",
        "web",
        "manifest-v1.json",
        30,
    );
    assert!(init.status.success(), "{}", describe(&init));

    // An update: every replica serves the new mesh CA.
    let second = env.set(
        &cluster[follower],
        "manifest-v2.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(second.status.success(), "{}", describe(&second));
    all_ready(&env, &refs, 2).await;

    // Kill -9 the leader; the next write succeeds on a survivor.
    let old_leader = leader(&env, &cluster).await;
    let survivor = (old_leader + 1) % 3;
    cluster[old_leader].kill();
    let third = env.set(
        &cluster[survivor],
        "manifest-v3.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(third.status.success(), "{}", describe(&third));
    let survivors: Vec<_> = cluster
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != old_leader)
        .map(|(_, c)| c)
        .collect();
    all_ready(&env, &survivors, 3).await;

    // The killed replica restarts, catches up through Raft and recovers its secrets from a peer.
    cluster[old_leader]
        .restart(&env.flags("coordinator.policy"))
        .unwrap();
    let refs: Vec<_> = cluster.iter().collect();
    all_ready(&env, &refs, 3).await;

    // One history on every replica, containing the first transition.
    for c in &cluster {
        let v = env.verify(
            c,
            "manifest-v3.json",
            &format!("verify-{}", c.node_id),
            &["--since", &first],
        );
        assert!(v.status.success(), "{}", describe(&v));
        assert_eq!(stdout_line(&v), stdout_line(&third));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_outage_then_threshold_recovery_of_a_cluster() {
    let env = Env::new();
    let mut cluster = env.start_cluster(3);
    let first = env.set(
        &cluster[0],
        "manifest-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(first.status.success(), "{}", describe(&first));
    let refs: Vec<_> = cluster.iter().collect();
    all_ready(&env, &refs, 1).await;
    let mut client = env.user_client(&cluster[0]).await;
    let old_mesh_ca = client
        .get_manifests(pb::GetManifestsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .mesh_ca;

    // Every replica dies: the secrets were only in their memory.
    for c in cluster.iter_mut() {
        c.kill();
    }
    for c in cluster.iter_mut() {
        c.restart(&env.flags("coordinator.policy")).unwrap();
    }
    for c in &cluster {
        let s = env.status(c).await.unwrap();
        assert_eq!(
            s.state, "recovering",
            "replica {} after a full outage",
            c.node_id
        );
    }

    // Two of three seed share owners recover one replica; the others recover from it.
    for i in [0, 2] {
        let out = env.recover(&cluster[1], i, &["--expect-latest", &stdout_line(&first)]);
        assert!(out.status.success(), "{}", describe(&out));
    }
    let refs: Vec<_> = cluster.iter().collect();
    let t = all_ready(&env, &refs, 1).await;
    println!(
        "observed: threshold recovery of one replica -> every replica ready: {:.1} ms",
        t.as_secs_f64() * 1e3
    );
    let mut client = env.user_client(&cluster[2]).await;
    let new_mesh_ca = client
        .get_manifests(pb::GetManifestsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .mesh_ca;
    assert_ne!(
        new_mesh_ca, old_mesh_ca,
        "the old mesh CA key is gone: a new mesh CA is expected"
    );
    // And the cluster takes updates again.
    let second = env.set(
        &cluster[2],
        "manifest-v2.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(second.status.success(), "{}", describe(&second));
    all_ready(&env, &refs, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_three_to_five_and_back_in_one_command() {
    let env = Env::new();
    // Replicas 0 to 2 form the cluster; 3 and 4 start knowing everyone and wait to be added.
    let (nodes, all) = env.start_three_and_two_waiting();
    let out = env.set(&nodes[0], "manifest-v1.json", &["--owner-key", "owner.pem"]);
    assert!(out.status.success(), "{}", describe(&out));
    let three: Vec<_> = nodes[..3].iter().collect();
    all_ready(&env, &three, 1).await;

    let set_members = |n: usize, key: &str| env.set_members(nodes[1].user_addr, &all[..n], key);

    // Only a workload owner may change the membership.
    assert!(
        env.concord(&["keygen", "owner", "-o", "stranger.pem"])
            .status
            .success()
    );
    let refused = set_members(5, "stranger.pem");
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("PermissionDenied"),
        "{}",
        describe(&refused)
    );

    // 3 -> 5: the new replicas catch up, recover their secrets from a peer, and vote.
    let grow = set_members(5, "owner.pem");
    assert!(grow.status.success(), "{}", describe(&grow));
    let five: Vec<_> = nodes.iter().collect();
    all_ready(&env, &five, 1).await;
    let second = env.set(&nodes[4], "manifest-v2.json", &["--owner-key", "owner.pem"]);
    assert!(second.status.success(), "{}", describe(&second));
    all_ready(&env, &five, 2).await;
    for c in &nodes {
        let s = env.status(c).await.unwrap();
        assert!(
            s.role == "leader" || s.role == "follower",
            "replica {} is a {}",
            c.node_id,
            s.role
        );
    }

    // 5 -> 3: the removed replicas no longer take part; the three go on.
    let shrink = set_members(3, "owner.pem");
    assert!(shrink.status.success(), "{}", describe(&shrink));
    let third = env.set(&nodes[0], "manifest-v3.json", &["--owner-key", "owner.pem"]);
    assert!(third.status.success(), "{}", describe(&third));
    all_ready(&env, &three, 3).await;
}

/// A replica whose files the host changed (a manifest byte, a signature, a transition removed) serves
/// nothing and says how to repair it; started again with an empty data directory, it rejoins by itself
/// as a learner, catches up through Raft, recovers its secrets from a peer, and votes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_replica_serves_nothing_and_rejoins_with_an_empty_disk() {
    use concord_coordinator::store::{Key, SledStore, Store, Write};

    let env = Env::new();
    let mut cluster = env.start_cluster(3);
    let out = env.set(
        &cluster[0],
        "manifest-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let out = env.set(
        &cluster[0],
        "manifest-v2.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    all_ready(&env, &cluster.iter().collect::<Vec<_>>(), 2).await;

    // The host changes replica 2's files while it is down, one way at a time.
    cluster[2].stop();
    let data = cluster[2].data_dir.clone();
    let clean = env.path("node-2-clean");
    copy_dir(&data, &clean);
    let v2 = concord_tests::Hash::of(&env.d.manifest(2));
    let latest = {
        let store = SledStore::open(&data.join("store")).unwrap();
        let bytes = store
            .get(&Key::Latest)
            .unwrap()
            .expect("a latest transition");
        concord_tests::Hash::from_slice(&bytes).unwrap()
    };
    type Tamper = fn(&SledStore, concord_tests::Hash, concord_tests::Hash);
    let tampers: [(&str, Tamper); 3] = [
        ("a manifest byte", |s, manifest, _| {
            let mut m = s.get(&Key::Object(manifest)).unwrap().unwrap();
            m[10] ^= 1;
            s.tamper_put(&Key::Object(manifest), &m).unwrap();
        }),
        ("a signature", |s, _, latest| {
            let t = s.get(&Key::Transition(latest)).unwrap().unwrap();
            let mut record: serde_json::Value = serde_json::from_slice(&t).unwrap();
            let signature = record["signature"].as_str().unwrap();
            let flipped = if signature.starts_with('0') { "1" } else { "0" };
            record["signature"] = format!("{flipped}{}", &signature[1..]).into();
            let t = serde_json::to_vec(&record).unwrap();
            s.tamper_put(&Key::Transition(latest), &t).unwrap();
        }),
        ("a transition removed", |s, _, latest| {
            s.apply(vec![Write::Delete(Key::Transition(latest))])
                .unwrap();
        }),
    ];
    for (what, tamper) in tampers {
        std::fs::remove_dir_all(&data).unwrap();
        copy_dir(&clean, &data);
        {
            let store = SledStore::open(&data.join("store")).unwrap();
            tamper(&store, v2, latest);
        }
        let err = cluster[2]
            .restart(&env.flags("coordinator.policy"))
            .expect_err(&format!("a replica with {what} changed must not serve"));
        for needed in [
            "refusing to serve the store",
            "empty data directory",
            "serve on without this one",
        ] {
            assert!(
                err.message.contains(needed),
                "with {what} changed, the refusal does not say {needed:?}: {}",
                err.message
            );
        }
    }
    // The others serve on.
    let out = env.set(
        &cluster[0],
        "manifest-v3.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", describe(&out));

    // Repaired as the refusal says: the data directory moved aside, the replica started again. It
    // rejoins by itself: a learner first, then a voter, ready with the cluster's history.
    std::fs::rename(&data, env.path("node-2-inspect")).unwrap();
    cluster[2]
        .restart(&env.flags("coordinator.policy"))
        .unwrap();
    let refs: Vec<_> = cluster.iter().collect();
    all_ready(&env, &refs, 3).await;
    let s = wait_voter(&env, &cluster[2]).await;
    assert!(s.role == "follower" || s.role == "leader", "{}", s.role);
    env.write_manifest("manifest-v4.json", 4);
    let out = env.set(
        &cluster[2],
        "manifest-v4.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    all_ready(&env, &refs, 4).await;
}

/// Waits until `c` is a voter (follower or leader), not a learner.
async fn wait_voter(
    env: &Env,
    c: &concord_cli::process::CoordinatorProcess,
) -> pb::GetStatusResponse {
    let start = Instant::now();
    loop {
        if let Ok(s) = env.status(c).await
            && (s.role == "follower" || s.role == "leader")
        {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "replica {} did not become a voter",
            c.node_id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A lost disk, with no operator at all: the replica with the lowest id (the one that formed the
/// cluster) restarts empty; it must not form a second cluster but rejoin this one. Then the cluster
/// grows by a replica that was never a member: it waits until a workload owner adds it, in one
/// command (`tests/tests/membership.rs` shows that it does not make itself a voter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_empty_disks_rejoin_by_themselves_and_new_ones_with_the_owner() {
    let env = Env::new();
    let mut cluster = env.start_cluster(3);
    let out = env.set(
        &cluster[0],
        "manifest-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    all_ready(&env, &cluster.iter().collect::<Vec<_>>(), 1).await;

    cluster[0].kill();
    std::fs::remove_dir_all(&cluster[0].data_dir).unwrap();
    cluster[0]
        .restart(&env.flags("coordinator.policy"))
        .unwrap();
    all_ready(&env, &cluster.iter().collect::<Vec<_>>(), 1).await;
    wait_voter(&env, &cluster[0]).await;
    let out = env.set(
        &cluster[1],
        "manifest-v2.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    all_ready(&env, &cluster.iter().collect::<Vec<_>>(), 2).await;

    // A fourth replica, listing the three and itself.
    let addrs = concord_cli::process::Addrs::free().unwrap();
    let mut peers = cluster[0].peers.clone();
    peers.push((3, addrs.peer));
    let fourth = concord_cli::process::CoordinatorProcess::start_member(
        &env.path("node-3"),
        &env.path("node-3.log"),
        &env.flags("coordinator.policy"),
        addrs,
        3,
        &peers,
    )
    .unwrap();
    let grow = env.set_members(cluster[2].user_addr, &peers, "owner.pem");
    assert!(grow.status.success(), "{}", describe(&grow));
    cluster.push(fourth);
    all_ready(&env, &cluster.iter().collect::<Vec<_>>(), 2).await;
    wait_voter(&env, &cluster[3]).await;
    let out = env.set(
        &cluster[3],
        "manifest-v3.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    all_ready(&env, &cluster.iter().collect::<Vec<_>>(), 3).await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// One workload beside manifest updates, from loopback address `127.0.0.{host}`: dials
/// `follower`'s mesh port and asks for a certificate every 25 ms (within the port's 50 handshakes
/// per second per source) until `done`; the certificates it got and every failure as it saw it.
async fn workload_until(
    env: &Env,
    follower: &concord_cli::process::CoordinatorProcess,
    host: u8,
    done: &std::sync::atomic::AtomicBool,
) -> (u64, Vec<String>) {
    let local = std::net::IpAddr::from([127, 0, 0, host]);
    let (mut issued, mut failures) = (0, Vec::new());
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        let next = tokio::time::Instant::now() + Duration::from_millis(25);
        match env
            .mesh_client_from(follower, &env.d.workload_policy, Some(local))
            .await
        {
            Ok(mut mesh) => match mesh.new_mesh_cert(pb::NewMeshCertRequest::default()).await {
                Ok(_) => issued += 1,
                Err(s) => failures.push(format!("NewMeshCert: {:?}: {}", s.code(), s.message())),
            },
            Err(e) => failures.push(format!("connect: {e}")),
        }
        tokio::time::sleep_until(next).await;
    }
    (issued, failures)
}

/// Workloads calling a follower while the owner updates the manifest ten times are never refused:
/// the follower opens its sealed copy of each new mesh CA key before it loads the transition, and
/// installs both at once. Until the twenty-third pass on issue 11 it read as recovering in between
/// and refused them ("this coordinator is not ready"), or dropped their calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_on_a_follower_are_not_refused_across_manifest_updates() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::new();
    let cluster = env.start_cluster(3);
    let l = leader(&env, &cluster).await;
    let first = env.set(
        &cluster[l],
        "manifest-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(first.status.success(), "{}", describe(&first));
    let mut latest = concord_tests::Hash::from_hex(&stdout_line(&first)).unwrap();
    all_ready(&env, &cluster.iter().collect::<Vec<_>>(), 1).await;
    let follower = &cluster[(l + 1) % cluster.len()];

    let done = AtomicBool::new(false);
    let mut user = env.user_client(&cluster[l]).await;
    let updates = async {
        // Let the workloads get going first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for version in 2..=11u32 {
            let set = user
                .set_manifest(env.set_manifest_request(version, latest))
                .await
                .unwrap_or_else(|e| panic!("manifest v{version}: {e:?}"))
                .into_inner();
            latest = concord_tests::Hash::from_slice(&set.transition.unwrap().hash).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done.store(true, Ordering::Relaxed);
    };
    let (_, a, b, c, d) = tokio::join!(
        updates,
        workload_until(&env, follower, 11, &done),
        workload_until(&env, follower, 12, &done),
        workload_until(&env, follower, 13, &done),
        workload_until(&env, follower, 14, &done),
    );
    let issued: u64 = [&a, &b, &c, &d].iter().map(|w| w.0).sum();
    let failures: Vec<&String> = [&a, &b, &c, &d].iter().flat_map(|w| &w.1).collect();
    eprintln!(
        "{issued} certificates from the follower across 10 manifest updates, {} failures",
        failures.len()
    );
    assert!(issued > 0, "no certificate was issued at all");
    assert!(
        failures.is_empty(),
        "{} of {} NewMeshCerts on the follower failed across 10 manifest updates; the first: {}",
        failures.len(),
        issued as usize + failures.len(),
        failures[0]
    );
}
