//! Issue 11.5: a committed transition's mesh CA key survives its leader's death. The leader seals the
//! new key to each other voter's per-process seal key in the Raft entry; a follower opens its copy when
//! it applies the entry, so the survivors of a leader killed right after an acknowledged SetManifest
//! serve that transition's mesh CA at once: no grace period, no rotation, no recovery round trip.

use std::time::{Duration, Instant};

use concord_proto::v1 as pb;
use concord_tests::{Env, Hash, http_get};

/// Waits up to `within` until `pred` holds for replica `c`'s `/metrics`; returns whether it did.
async fn metric_holds(
    c: &concord_cli::process::CoordinatorProcess,
    within: Duration,
    pred: impl Fn(&str) -> bool,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if http_get(c.health_addr, "/metrics").is_ok_and(|(code, body)| code == 200 && pred(&body))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The value of the unlabelled gauge `name` in a `/metrics` document.
/// Polls `client`'s status every `poll` until `done` holds; `still_waiting` sees each other answer
/// (and asserts the deadline).
async fn until_status(
    client: &mut pb::user_api_client::UserApiClient<tonic::transport::Channel>,
    done: impl Fn(&pb::GetStatusResponse) -> bool,
    still_waiting: impl Fn(&Result<pb::GetStatusResponse, tonic::Status>),
    poll: Duration,
) {
    loop {
        let status = client
            .get_status(pb::GetStatusRequest {})
            .await
            .map(|r| r.into_inner());
        if status.as_ref().is_ok_and(&done) {
            return;
        }
        still_waiting(&status);
        tokio::time::sleep(poll).await;
    }
}

fn gauge(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t115_a_committed_mesh_ca_survives_its_leader_killed_before_any_follower_fetched_it() {
    let env = Env::new();
    let (mut cluster, mesh) = env.start_meshed_cluster(3);
    let leader = env.leader_index(&cluster, Duration::from_secs(10)).await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    let mut to_leader = env.user_client(&cluster[leader]).await;
    let first = to_leader
        .set_manifest(env.set_manifest_request(1, Hash::ZERO))
        .await
        .expect("the first manifest is set")
        .into_inner();
    let first_hash = Hash::from_slice(&first.transition.unwrap().hash).unwrap();
    // Every replica holds the seed (a sealed key is of use only to a replica that does).
    for c in &cluster {
        let mut client = env.user_client(c).await;
        let start = Instant::now();
        until_status(
            &mut client,
            |s| s.state == "ready" && s.transitions == 1,
            |status| {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "not ready: {status:?}"
                )
            },
            Duration::from_millis(5),
        )
        .await;
    }
    // The leader fetches each peer's seal key when it sets up its link, ahead of any commit.
    let keys_known = metric_holds(&cluster[leader], Duration::from_secs(10), |m| {
        gauge(m, "concord_peer_seal_keys").is_some_and(|n| n >= 2.0)
    })
    .await;
    eprintln!("the leader holds both followers' seal keys: {keys_known}");

    // The followers can no longer dial the leader: the leader's Raft replication (its own dials)
    // goes on, but no follower can fetch the new mesh CA key from it by peer recovery.
    for &f in &followers {
        mesh.proxy(f, leader).cut();
    }
    let second = to_leader
        .set_manifest(env.set_manifest_request(2, first_hash))
        .await
        .expect("the update is acknowledged")
        .into_inner();
    let second_hash = Hash::from_slice(&second.transition.unwrap().hash).unwrap();
    let committed_mesh_ca = second.mesh_ca;
    cluster[leader].kill();
    let killed = Instant::now();

    // Every survivor becomes ready at the committed transition, with its mesh CA: not a new one.
    for &f in &followers {
        let mut client = env.user_client(&cluster[f]).await;
        until_status(
            &mut client,
            |s| s.state == "ready" && s.transitions == 2,
            |status| {
                assert!(
                    killed.elapsed() < Duration::from_secs(20),
                    "replica {f} did not become ready after the leader's death: {status:?}"
                )
            },
            Duration::from_millis(5),
        )
        .await;
        let served = client
            .get_manifests(pb::GetManifestsRequest {
                only_latest: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            served.mesh_ca, committed_mesh_ca,
            "replica {f} serves another mesh CA than the committed transition's: it was rotated"
        );
    }

    // The next write on a survivor is acknowledged without the 2 s grace of a lost mesh CA.
    let survivor = followers[0];
    let mut client = env.user_client(&cluster[survivor]).await;
    let third = loop {
        match client
            .set_manifest(env.set_manifest_request(3, second_hash))
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(s) => {
                assert!(
                    killed.elapsed() < Duration::from_secs(20),
                    "no write was acknowledged after the leader's death: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let kill_to_write = killed.elapsed();
    eprintln!("leader killed to the next acknowledged write: {kill_to_write:?}");
    assert!(
        kill_to_write < Duration::from_millis(1500),
        "the next write took {kill_to_write:?} after the leader's death: the survivors waited for a lost mesh CA"
    );

    for &f in &followers {
        let log = std::fs::read_to_string(&cluster[f].log).unwrap();
        assert!(
            !log.contains("was lost with the replica that made it"),
            "replica {f} rotated the committed mesh CA"
        );
        assert!(
            metric_holds(&cluster[f], Duration::from_secs(5), |m| {
                m.contains("concord_mesh_ca_handoffs_total{how=\"sealed\"}")
                    && !m.contains("concord_mesh_ca_handoffs_total{how=\"rotated\"}")
            })
            .await,
            "replica {f} did not count a sealed hand-off, or counted a rotation"
        );
    }

    // A workload gets a certificate under the new transition's mesh CA from a survivor.
    let init = env.initializer(
        &cluster[survivor],
        "web.policy",
        "web",
        "manifest-v3.json",
        30,
    );
    assert!(init.status.success(), "{}", concord_tests::describe(&init));
    let got =
        std::fs::read_to_string(env.path("web").join(concord_cli::initializer::MESH_CA)).unwrap();
    assert_eq!(got, third.mesh_ca);

    // The killed replica restarts with a new seal key: copies sealed to its predecessor are useless
    // to it, so it recovers from a peer; the leader learns its new key on the link, and seals the
    // next updates to it.
    mesh.heal_all();
    cluster[leader]
        .restart(&env.flags("coordinator.policy"))
        .unwrap();
    let mut latest = Hash::from_slice(&third.transition.unwrap().hash).unwrap();
    let mut version = 4;
    let mut opened_by_restarted = false;
    let mut client = env.user_client(&cluster[survivor]).await;
    while !opened_by_restarted && version < 8 {
        // Every replica ready at the latest before the next update.
        for c in &cluster {
            let mut status_client = env.user_client(c).await;
            let start = Instant::now();
            until_status(
                &mut status_client,
                |s| s.state == "ready" && s.latest == latest.as_bytes(),
                |status| {
                    assert!(
                        start.elapsed() < Duration::from_secs(20),
                        "not ready: {status:?}"
                    )
                },
                Duration::from_millis(10),
            )
            .await;
        }
        let answer = client
            .set_manifest(env.set_manifest_request(version, latest))
            .await
            .expect("an update after the restart")
            .into_inner();
        latest = Hash::from_slice(&answer.transition.unwrap().hash).unwrap();
        version += 1;
        opened_by_restarted = metric_holds(&cluster[leader], Duration::from_secs(3), |m| {
            m.contains("concord_mesh_ca_handoffs_total{how=\"sealed\"}")
        })
        .await;
    }
    assert!(
        opened_by_restarted,
        "the restarted replica never opened a sealed key: the leader kept its predecessor's seal key"
    );
    for c in &mut cluster {
        c.kill();
    }
}

/// The value of the gauge sample `name{labels}` (a whole label set, as exposed) in a `/metrics`
/// document.
fn sample(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `manifest` (JSON) with `policy` (a document) added as a second `coordinator`-role policy.
fn with_coordinator(manifest: &[u8], policy: &[u8]) -> Vec<u8> {
    let mut doc: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    doc["policies"].as_object_mut().unwrap().insert(
        Hash::of(policy).to_hex(),
        serde_json::json!({ "name": "coordinator-b", "sans": ["coordinator"], "role": "coordinator" }),
    );
    serde_json::to_vec_pretty(&doc).unwrap()
}

/// Issue 11.5 follow-up: an update whose manifest drops a replica's `coordinator` policy seals that
/// replica no copy of the new mesh CA key, while the replica that stays a coordinator still opens
/// its copy (it cannot fetch the key from the leader: that link is cut). The dropped replica applies
/// the entry like every member, but stays recovering: its peers refuse it the secrets, since the
/// latest manifest no longer admits its build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_coordinator_policy_an_update_drops_gets_no_sealed_copy() {
    let env = Env::new();
    let build_b = b"coordinator policy, build B".to_vec();
    std::fs::write(env.path("coordinator-b.policy"), &build_b).unwrap();
    let (mut cluster, mesh) = env.start_meshed_cluster(3);
    let leader = env.leader_index(&cluster, Duration::from_secs(10)).await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (kept, dropped) = (followers[0], followers[1]);
    // Health addresses survive a restart.
    let health: Vec<_> = cluster.iter().map(|c| c.health_addr).collect();
    let metrics = |c: usize| {
        http_get(health[c], "/metrics")
            .ok()
            .filter(|(code, _)| *code == 200)
            .map(|(_, body)| body)
            .unwrap_or_default()
    };

    // Manifest 1 admits both builds as coordinators.
    let mut to_leader = env.user_client(&cluster[leader]).await;
    let first = to_leader
        .set_manifest(env.set_manifest_request_for(
            with_coordinator(&env.d.manifest(1), &build_b),
            std::slice::from_ref(&build_b),
            Hash::ZERO,
        ))
        .await
        .expect("the first manifest is set")
        .into_inner();
    let first_hash = Hash::from_slice(&first.transition.unwrap().hash).unwrap();
    for &c in &followers {
        let start = Instant::now();
        while !(sample(&metrics(c), "concord_replica_state{state=\"ready\"}") == Some(1.0)
            && gauge(&metrics(c), "concord_manifest_generation") == Some(1.0))
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "replica {c} not ready at the first manifest"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Seal key evidence is made once per link, not on every round of the 250 ms loop that keeps
    // the keys (3 replicas each asking 2 peers would make 16 reports per replica in 2 s).
    let reports = |c: usize| gauge(&metrics(c), "concord_seal_key_reports_total").unwrap_or(0.0);
    assert!(
        metric_holds(&cluster[leader], Duration::from_secs(10), |m| {
            gauge(m, "concord_peer_seal_keys").is_some_and(|n| n >= 2.0)
        })
        .await,
        "the leader never held both followers' seal keys"
    );
    let before: Vec<f64> = (0..3).map(reports).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (c, then) in before.iter().enumerate() {
        let now = reports(c);
        eprintln!("replica {c}: {then} seal key reports, {now} two seconds later");
        assert!(
            now - then < 4.0,
            "replica {c} made {} seal key reports in 2 s of a settled cluster",
            now - then
        );
    }

    // Replica `dropped` comes back as build B (its disk kept): manifest 1 admits it, so it recovers
    // the secrets from a peer and becomes ready.
    cluster[dropped]
        .restart(&env.flags("coordinator-b.policy"))
        .unwrap();
    let start = Instant::now();
    while !(sample(&metrics(dropped), "concord_replica_state{state=\"ready\"}") == Some(1.0)
        && gauge(&metrics(dropped), "concord_manifest_generation") == Some(1.0))
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the replica restarted as build B did not become ready under the manifest that admits it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The leader holds both followers' seal keys (the restarted one's with its new evidence).
    assert!(
        metric_holds(&cluster[leader], Duration::from_secs(10), |m| {
            gauge(m, "concord_peer_seal_keys").is_some_and(|n| n >= 2.0)
        })
        .await,
        "the leader never held both followers' seal keys"
    );

    // Manifest 2 drops build B. Neither follower can fetch the new key from the leader.
    for &f in &followers {
        mesh.proxy(f, leader).cut();
    }
    let second = to_leader
        .set_manifest(env.set_manifest_request(2, first_hash))
        .await
        .expect("the update is acknowledged")
        .into_inner();
    let second_hash = Hash::from_slice(&second.transition.unwrap().hash).unwrap();

    // The replica that stays a coordinator opens its copy: ready at once, no recovery round trip.
    let mut client = env.user_client(&cluster[kept]).await;
    until_status(
        &mut client,
        |s| s.state == "ready" && s.latest == second_hash.as_bytes(),
        |status| {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "replica {kept} did not become ready at the update: {status:?}"
            )
        },
        Duration::from_millis(10),
    )
    .await;
    assert!(
        metric_holds(&cluster[kept], Duration::from_secs(5), |m| {
            m.contains("concord_mesh_ca_handoffs_total{how=\"sealed\"}")
        })
        .await,
        "replica {kept}, still a coordinator, did not open its sealed copy"
    );

    // The dropped replica applies the update but holds no copy: it stays recovering, however long
    // we look, and never counts a sealed hand-off.
    let applied = Instant::now();
    while gauge(&metrics(dropped), "concord_manifest_generation") != Some(2.0) {
        assert!(
            applied.elapsed() < Duration::from_secs(20),
            "the dropped replica never applied the update"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        let m = metrics(dropped);
        assert_eq!(
            sample(&m, "concord_replica_state{state=\"ready\"}"),
            Some(0.0),
            "the replica whose policy the update dropped became ready at it"
        );
        assert!(
            !m.contains("concord_mesh_ca_handoffs_total{how=\"sealed\"}"),
            "the replica whose policy the update dropped opened a sealed copy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It asked the replica that stays a coordinator (its only reachable peer) and was refused.
    let log = std::fs::read_to_string(&cluster[kept].log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("refused rpc=\"PeerRecover\"")
                && l.contains("not a coordinator of the latest manifest")),
        "replica {kept} did not refuse the dropped replica's recovery as no longer a coordinator"
    );
    for c in &mut cluster {
        c.kill();
    }
}
