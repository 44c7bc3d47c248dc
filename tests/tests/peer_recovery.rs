//! Peer recovery against impostors, with the real binary on both sides where a real process can play
//! the part. The serving side refuses callers whose evidence has another measurement, another policy
//! hash, or a policy without the `coordinator` role: the aTLS handshake fails, so no secret leaves.
//! The recovering side refuses serving peers whose evidence does not match its stored manifest, and
//! stays recovering rather than take anything from them. Each refusal has a positive control beside
//! it, so the test fails if the check under test is what let it pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_attestation::{AtlsClient, ClientIdentity, SimulatedIssuer};
use concord_cli::process::{Addrs, CoordinatorProcess, SimulatedFlags};
use concord_coordinator::manifest::Manifest;
use concord_coordinator::transport::connect;
use concord_proto::v1 as pb;
use concord_proto::v1::peer_api_client::PeerApiClient;
use concord_tests::{Env, Hash, describe};

/// What an impostor runs: the right measurement with a policy the manifest does not give the
/// coordinator role, or the right policy on a machine with another measurement.
const OTHER_MEASUREMENT_HEX: &str = "6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f";

async fn status(env: &Env, c: &CoordinatorProcess) -> Option<pb::GetStatusResponse> {
    match tokio::time::timeout(Duration::from_secs(3), env.status(c)).await {
        Ok(Ok(s)) => Some(s),
        _ => None,
    }
}

async fn wait_state(env: &Env, c: &CoordinatorProcess, state: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if status(env, c).await.is_some_and(|s| s.state == state) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "replica {} did not become {state}; see {}",
        c.node_id,
        c.log.display()
    );
}

/// Calls peer Recover on `c` as a replica whose evidence `issuer` makes, verifying `c` as the
/// manifest's coordinator. Returns the secrets, or why there were none.
async fn recover_as(
    env: &Env,
    c: &CoordinatorProcess,
    issuer: SimulatedIssuer,
) -> Result<pb::PeerRecoverResponse, String> {
    let manifest = Manifest::parse(&env.d.manifest(1)).expect("manifest v1");
    let trust = concord_cli::remote::trust_for(&manifest, true).expect("simulated trust");
    let verify_coordinator = concord_cli::remote::coordinator_policy(&manifest, trust).unwrap();
    let identity = ClientIdentity {
        issuer: Arc::new(issuer),
        key: Arc::new(rcgen::KeyPair::generate().unwrap()),
        deployment: Arc::new(concord_attestation::DeploymentId::UNPINNED),
    };
    let client = Arc::new(AtlsClient::new(Arc::new(verify_coordinator), Some(identity)).unwrap());
    let (channel, _) = connect(&c.peer_addr.to_string(), client)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut api = PeerApiClient::new(channel);
    let call = api.recover(pb::PeerRecoverRequest::default());
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err("no answer".into()),
    }
}

fn log_of(c: &CoordinatorProcess) -> String {
    std::fs::read_to_string(&c.log).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_replica_gives_its_secrets_only_to_a_coordinator_of_the_manifest() {
    let env = Env::new();
    let node = env.start_coordinator("node");
    let o = env.set(&node, "manifest-v1.json", &["--owner-key", "owner.pem"]);
    assert!(o.status.success(), "{}", describe(&o));
    wait_state(&env, &node, "ready").await;
    let d = &env.d;
    let other_measurement: [u8; 48] = hex::decode(OTHER_MEASUREMENT_HEX)
        .unwrap()
        .try_into()
        .unwrap();

    // The positive control: a coordinator of the manifest, on a trusted measurement, gets them.
    let secrets = recover_as(&env, &node, d.issuer(&d.coordinator_policy))
        .await
        .expect("a replica running the manifest's coordinator policy recovers");
    assert_eq!(secrets.seed.len(), 32, "the seed");
    assert!(!secrets.mesh_ca_key.is_empty(), "the mesh CA key");

    let impostors: [(&str, SimulatedIssuer, &str); 3] = [
        (
            "another measurement",
            SimulatedIssuer::new(
                &d.root,
                other_measurement,
                *d.coordinator_policy_hash().as_bytes(),
            )
            .unwrap(),
            "measurement not trusted",
        ),
        (
            "another policy hash",
            d.issuer(b"a policy no manifest lists"),
            "host_data not accepted",
        ),
        (
            "a policy without the coordinator role",
            d.issuer(&d.workload_policy),
            "host_data not accepted",
        ),
    ];
    for (i, (what, issuer, reason)) in impostors.into_iter().enumerate() {
        if i > 0 {
            // The port logs the first 5 refusals of each 10 s in full. A refused TLS 1.3 client
            // learns of it only on its first read, and when the server's alert arrives before the
            // request was written, hyper retries the request on a new connection, several times: one
            // impostor can use up the window's full lines (more so now that the replica refuses
            // within a millisecond). The next impostor starts in a new window.
            tokio::time::sleep(Duration::from_millis(10_500)).await;
        }
        let before = log_of(&node).matches(reason).count();
        let answer = recover_as(&env, &node, issuer).await;
        assert!(
            answer.is_err(),
            "a caller with {what} received the secrets: {answer:?}"
        );
        // The refusal is the attestation check's, and the replica says so in its log.
        let start = Instant::now();
        while log_of(&node).matches(reason).count() == before {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the replica's log does not say {reason:?} for a caller with {what}; see {}",
                node.log.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The replica serves on, and the genuine caller still recovers.
    assert!(
        recover_as(&env, &node, d.issuer(&d.coordinator_policy))
            .await
            .is_ok()
    );
}

/// A lone fresh replica on other attestation flags: what answers on an impostor's peer port.
fn impostor(env: &Env, name: &str, flags: SimulatedFlags) -> CoordinatorProcess {
    CoordinatorProcess::start_member(
        &env.path(name),
        &env.path(&format!("{name}.log")),
        &flags,
        Addrs::free().expect("free ports"),
        0,
        &[],
    )
    .expect("the impostor starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovering_replica_takes_nothing_from_peers_that_do_not_match_its_manifest() {
    let env = Env::new();
    let mut cluster = env.start_cluster(3);
    let o = env.set(
        &cluster[0],
        "manifest-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(o.status.success(), "{}", describe(&o));
    for c in &cluster {
        wait_state(&env, c, "ready").await;
    }

    // Node 2 comes back believing its peers are at the impostors' addresses.
    let mut other_machine = env.flags("coordinator.policy");
    other_machine.measurement_hex = OTHER_MEASUREMENT_HEX.into();
    let impostors = [
        impostor(&env, "impostor-measurement", other_machine),
        impostor(&env, "impostor-policy", env.flags("web.policy")),
    ];
    let genuine = cluster[2].peers.clone();
    let node = &mut cluster[2];
    node.kill();
    node.peers = vec![
        (0, impostors[0].peer_addr),
        (1, impostors[1].peer_addr),
        (2, node.peer_addr),
    ];
    let before = log_of(node).len();
    node.restart(&env.flags("coordinator.policy"))
        .expect("node 2 restarts");
    wait_state(&env, node, "recovering").await;
    // It tries, is refused by its own checks, and stays recovering: for a while, not just once.
    let start = Instant::now();
    let refusals = loop {
        let log = log_of(node)[before..].to_owned();
        let refused = |reason: &str| log.contains(reason);
        if refused("measurement not trusted") && refused("host_data not accepted") {
            break log;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "node 2 does not say why it refuses the impostors; see {}",
            node.log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !refusals.contains("recovered the secrets"),
        "node 2 recovered from an impostor"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = status(&env, node).await.expect("node 2 answers");
    assert_eq!(
        s.state, "recovering",
        "node 2 took something from an impostor"
    );

    // The positive control: the same replica with its genuine peers recovers.
    node.kill();
    node.peers = genuine;
    node.restart(&env.flags("coordinator.policy"))
        .expect("node 2 restarts");
    wait_state(&env, node, "ready").await;
    let latest = status(&env, &cluster[0]).await.expect("node 0").latest;
    let s = status(&env, &cluster[2]).await.expect("node 2");
    assert_eq!(Hash::from_slice(&s.latest), Hash::from_slice(&latest));
}
