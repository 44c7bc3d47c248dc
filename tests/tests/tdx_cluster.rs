//! Intel TDX through every path SNP takes: three replicas of the real binary attesting with
//! simulated TDX quotes (Intel's layout and collateral, a hierarchy the simulated root endorses):
//! set, initializer, verify, the audit bundle (`evidence.platform = "tdx"`, the quote and its
//! collateral), kill the leader, and peer recovery of the killed replica; and a mixed manifest whose
//! coordinator role is met by an SNP-shaped replica and a TDX replica in one cluster.

use std::time::{Duration, Instant};

use concord_cli::process::CoordinatorProcess;
use concord_proto::v1 as pb;
use concord_tests::{Env, describe, stdout_line};

/// Waits until every replica in `cluster` is ready with `transitions` transitions.
async fn all_ready(env: &Env, cluster: &[&CoordinatorProcess], transitions: u64) {
    all_ready_under(&env.d.manifest(1), cluster, transitions).await;
}

/// A user API client that verified the coordinator against `manifest`.
async fn client_under(
    manifest: &[u8],
    c: &CoordinatorProcess,
) -> Option<concord_proto::v1::user_api_client::UserApiClient<tonic::transport::Channel>> {
    let manifest = concord_coordinator::manifest::Manifest::parse(manifest).unwrap();
    let trust = concord_cli::remote::trust_for(&manifest, true).unwrap();
    concord_cli::remote::user_api(
        &c.user_addr.to_string(),
        &manifest,
        trust,
        concord_tests::pin(&manifest),
    )
    .await
    .ok()
    .map(|(client, _)| client)
}

/// [`all_ready`], the replicas verified against `manifest`.
async fn all_ready_under(manifest: &[u8], cluster: &[&CoordinatorProcess], transitions: u64) {
    let start = Instant::now();
    loop {
        let mut ok = true;
        for c in cluster {
            let Some(mut client) = client_under(manifest, c).await else {
                ok = false;
                continue;
            };
            match client.get_status(pb::GetStatusRequest {}).await {
                Ok(s) if s.get_ref().state == "ready" && s.get_ref().transitions == transitions => {
                }
                _ => ok = false,
            }
        }
        if ok {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the replicas did not all become ready with {transitions} transitions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `concord history audit` of a bundle, trusting the test's simulated root.
fn audit(env: &Env, bundle: &str, first: &str) -> std::process::Output {
    let root = hex::encode(env.d.root.hash());
    env.concord(&[
        "history",
        "audit",
        bundle,
        "--deployment",
        first,
        "--insecure-simulated-root",
        &root,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tdx_replicas_set_initialize_verify_audit_fail_over_and_recover() {
    let env = Env::new_tdx();
    let mut cluster = env.start_cluster(3);
    let leader_at_start = env.leader_index(&cluster, Duration::from_secs(20)).await;
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

    // A workload attesting with a TDX quote gets its certificate.
    let init = env.initializer(
        &cluster[follower],
        "web.policy",
        "web",
        "manifest-v1.json",
        30,
    );
    assert!(init.status.success(), "{}", describe(&init));

    // verify: the coordinator's TDX evidence against the manifest; the audit bundle carries it.
    let v = env.verify(&cluster[follower], "manifest-v1.json", "verify", &[]);
    assert!(v.status.success(), "{}", describe(&v));
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("verify/history.json")).unwrap()).unwrap();
    let evidence = &bundle["evidence"];
    assert_eq!(evidence["platform"], "tdx", "{evidence}");
    let certificates = evidence["certificates"].as_array().unwrap();
    assert_eq!(
        certificates.len(),
        4,
        "collateral, TDX root, endorsement, simulated root"
    );
    let a = audit(&env, "verify/history.json", &first);
    assert!(a.status.success(), "{}", describe(&a));
    // The independent auditor (Python, from PROTOCOL.md) finds REPORTDATA in the TDX quote and agrees.
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("independent/audit_bundle.py");
    let py = std::process::Command::new("python3")
        .arg(&script)
        .arg(env.path("verify/history.json"))
        .output();
    match py {
        Ok(out) => assert!(
            out.status.success(),
            "independent auditor: {}",
            describe(&out)
        ),
        Err(e) => assert!(std::env::var("CI").is_err(), "CI must run python3: {e}"),
    }

    // Kill -9 the leader; the next write succeeds on a survivor.
    let old_leader = env.leader_index(&cluster, Duration::from_secs(20)).await;
    let survivor = (old_leader + 1) % 3;
    cluster[old_leader].kill();
    let second = env.set(
        &cluster[survivor],
        "manifest-v2.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(second.status.success(), "{}", describe(&second));
    let survivors: Vec<_> = cluster
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != old_leader)
        .map(|(_, c)| c)
        .collect();
    all_ready(&env, &survivors, 2).await;

    // The killed replica restarts and recovers its secrets from a peer over TDX-attested aTLS.
    cluster[old_leader]
        .restart(&env.flags("coordinator.policy"))
        .unwrap();
    let refs: Vec<_> = cluster.iter().collect();
    all_ready(&env, &refs, 2).await;
    for c in &cluster {
        let v = env.verify(
            c,
            "manifest-v2.json",
            &format!("verify-{}", c.node_id),
            &["--since", &first],
        );
        assert!(v.status.success(), "{}", describe(&v));
        assert_eq!(stdout_line(&v), stdout_line(&second));
    }
}

/// One cluster, two platforms: the manifest's coordinator role lists two policies, one the
/// SNP-shaped replicas run and one a TDX replica runs (the manifest lists both kinds of reference
/// values). The TDX replica replaces a killed SNP-shaped one with its disk, catches up, recovers its
/// secrets from an SNP-shaped peer, serves a write and is verified by `concord verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_manifest_with_an_snp_and_a_tdx_coordinator_policy() {
    let env = Env::new();
    std::fs::write(
        env.path("coordinator-tdx.policy"),
        b"the coordinator's TDX pod",
    )
    .unwrap();
    let tdx_policy = concord_tests::Hash::of(b"the coordinator's TDX pod").to_hex();
    for (name, version) in [("mixed-v1.json", 1), ("mixed-v2.json", 2)] {
        let mut m: serde_json::Value = serde_json::from_slice(&env.d.manifest(version)).unwrap();
        m["policies"][&tdx_policy] = serde_json::json!({
            "name": "coordinator on TDX", "sans": ["coordinator"], "role": "coordinator"
        });
        assert!(
            m["reference_values"]["tdx"].is_array()
                && m["reference_values"]["simulated"].is_array()
        );
        std::fs::write(env.path(name), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    }
    let extra = ["--owner-key", "owner.pem", "-p", "coordinator-tdx.policy"];
    let mixed = std::fs::read(env.path("mixed-v1.json")).unwrap();
    let mut cluster = env.start_cluster(3);
    let out = env.set(&cluster[0], "mixed-v1.json", &extra);
    assert!(out.status.success(), "{}", describe(&out));
    all_ready(&env, &cluster.iter().collect::<Vec<_>>(), 1).await;

    // Replica 2 comes back on TDX with the other coordinator policy, with its disk.
    cluster[2].kill();
    let mut tdx_flags = env.flags("coordinator-tdx.policy");
    tdx_flags.tdx = true;
    cluster[2].restart(&tdx_flags).unwrap();
    let refs: Vec<_> = cluster.iter().collect();
    all_ready_under(&mixed, &refs, 1).await;
    let second = env.set(&cluster[2], "mixed-v2.json", &extra);
    assert!(second.status.success(), "{}", describe(&second));
    all_ready_under(&mixed, &refs, 2).await;
    let v = env.verify(&cluster[2], "mixed-v2.json", "verify-tdx", &[]);
    assert!(v.status.success(), "{}", describe(&v));
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("verify-tdx/history.json")).unwrap())
            .unwrap();
    assert_eq!(bundle["evidence"]["platform"], "tdx");
    let v = env.verify(&cluster[0], "mixed-v2.json", "verify-snp", &[]);
    assert!(v.status.success(), "{}", describe(&v));

    // A TDX replica running a policy the manifest does not list is refused by a client.
    cluster[1].kill();
    let mut stranger = env.flags("stranger.policy");
    stranger.tdx = true;
    cluster[1].restart(&stranger).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        client_under(&mixed, &cluster[1]).await.is_none(),
        "a client must refuse a coordinator whose policy the manifest does not list"
    );
}
