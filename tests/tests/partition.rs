//! Network partitions between replicas of the real binary, cut by the proxy mesh of the fault
//! fixture: a minority cannot commit and serves no stale read unless the caller asks for one; the
//! majority goes on; healing converges every replica on one history.

use std::time::{Duration, Instant};

use concord_cli::process::CoordinatorProcess;
use concord_proto::v1 as pb;
use concord_tests::{Env, Hash};
use tonic::Code;

/// Longer than any wait of the coordinator's own (it gives up on a leader or a quorum after 5 s):
/// a guard against hangs, never a timing assertion.
const ANSWER_WAIT: Duration = Duration::from_secs(15);

async fn status(env: &Env, c: &CoordinatorProcess) -> Option<pb::GetStatusResponse> {
    match tokio::time::timeout(Duration::from_secs(3), env.status(c)).await {
        Ok(Ok(s)) => Some(s),
        _ => None,
    }
}

/// Waits until `pick` holds for the status of the replica at `i`, for at most 20 s.
async fn wait_for(
    env: &Env,
    cluster: &[CoordinatorProcess],
    what: &str,
    pick: impl Fn(usize, &pb::GetStatusResponse) -> bool,
) -> usize {
    let start = Instant::now();
    loop {
        for (i, c) in cluster.iter().enumerate() {
            if status(env, c).await.is_some_and(|s| pick(i, &s)) {
                return i;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_all(env: &Env, cluster: &[CoordinatorProcess], latest: Hash) {
    let start = Instant::now();
    loop {
        let mut all = true;
        for c in cluster {
            all &= status(env, c)
                .await
                .is_some_and(|s| s.state == "ready" && s.latest == latest.as_bytes());
        }
        if all {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the replicas did not all become ready at {latest}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hash_of(t: Option<pb::Transition>) -> Hash {
    Hash::from_slice(&t.expect("a transition").hash).expect("32 bytes")
}

async fn latest(
    api: &mut concord_proto::v1::user_api_client::UserApiClient<tonic::transport::Channel>,
    allow_stale: bool,
) -> Result<Hash, tonic::Status> {
    let request = pb::GetManifestsRequest {
        allow_stale,
        ..Default::default()
    };
    match tokio::time::timeout(ANSWER_WAIT, api.get_manifests(request)).await {
        Ok(answer) => answer.map(|r| hash_of(r.into_inner().latest)),
        Err(_) => panic!("GetManifests did not answer within {ANSWER_WAIT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit_or_read_and_healing_converges() {
    let env = Env::new();
    let (cluster, mesh) = env.start_meshed_cluster(3);
    let first = wait_for(&env, &cluster, "a leader", |_, s| s.role == "leader").await;
    let mut api = env.user_client(&cluster[first]).await;
    let v1 = api
        .set_manifest(env.set_manifest_request(1, Hash::ZERO))
        .await
        .expect("manifest v1 is set")
        .into_inner()
        .transition;
    let v1 = hash_of(v1);
    wait_all(&env, &cluster, v1).await;

    // Cut the leader off: it is the minority, alone with its belief that it leads.
    let old = wait_for(&env, &cluster, "a leader", |_, s| s.role == "leader").await;
    let old_term = status(&env, &cluster[old]).await.expect("status").term;
    let majority: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    mesh.partition(&[old], &majority);
    let new = wait_for(&env, &cluster, "a leader on the majority side", |i, s| {
        i != old && s.role == "leader" && s.term > old_term
    })
    .await;

    // The minority: a write is not acknowledged, a linearizable read is refused, a stale read
    // answers (and says nothing newer than what it had).
    let mut minority = env.user_client(&cluster[old]).await;
    let write = tokio::time::timeout(
        ANSWER_WAIT,
        minority.set_manifest(env.set_manifest_request(2, v1)),
    )
    .await
    .expect("the minority answers a write within the wait");
    let refused = write.expect_err("the minority acknowledged a write it cannot commit");
    assert!(
        matches!(refused.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{refused:?}"
    );
    let read = latest(&mut minority, false).await;
    let refused = read.expect_err("the minority served a linearizable read without a quorum");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(latest(&mut minority, true).await.expect("a stale read"), v1);

    // The majority commits, from its leader and through its follower, and reads its own write.
    let follower = majority
        .into_iter()
        .find(|&i| i != new)
        .expect("a follower");
    let mut majority_api = env.user_client(&cluster[follower]).await;
    let v3 = majority_api
        .set_manifest(env.set_manifest_request(3, v1))
        .await
        .expect("the majority commits manifest v3")
        .into_inner()
        .transition;
    let v3 = hash_of(v3);
    assert_eq!(latest(&mut majority_api, false).await.expect("a read"), v3);
    // Still partitioned, the minority's stale read has not moved.
    assert_eq!(latest(&mut minority, true).await.expect("a stale read"), v1);

    // Healed: the old leader steps down, drops its uncommitted write, and catches up.
    mesh.heal_all();
    wait_all(&env, &cluster, v3).await;
    let mut histories = Vec::new();
    for c in &cluster {
        let mut api = env.user_client(c).await;
        let history = api
            .get_history(pb::GetHistoryRequest {
                nonce: vec![7; 32],
                allow_stale: true,
            })
            .await
            .expect("the history")
            .into_inner();
        let bundle: serde_json::Value =
            serde_json::from_slice(&history.bundle).expect("the bundle is JSON");
        let hashes: Vec<String> = bundle["transitions"]
            .as_array()
            .expect("transitions")
            .iter()
            .map(|t| t["hash"].as_str().expect("a hash").to_owned())
            .collect();
        histories.push(hashes);
    }
    assert_eq!(
        histories[0],
        vec![v1.to_string(), v3.to_string()],
        "one line: v1 then v3"
    );
    assert!(
        histories.windows(2).all(|w| w[0] == w[1]),
        "the replicas' histories differ after healing: {histories:?}"
    );
    assert_eq!(latest(&mut minority, false).await.expect("a read"), v3);
}

/// User recovery replaces the mesh CA every workload trusts, so a recovering replica refuses seed shares
/// while a peer answers that it is ready, unless the share owner forces it. Replica 2 is kept recovering
/// by cutting the links the others replicate to it over (it restarts behind them), while its own links
/// to them, which its questions travel over, stay up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_shares_are_refused_while_a_peer_is_ready_unless_forced() {
    let env = Env::new();
    let (mut cluster, mesh) = env.start_meshed_cluster(3);
    let leader = wait_for(&env, &cluster, "a leader", |_, s| s.role == "leader").await;
    let out = env.set(
        &cluster[leader],
        "manifest-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", concord_tests::describe(&out));
    let v1 = Hash::from_slice(&status(&env, &cluster[0]).await.expect("status").latest).unwrap();
    wait_all(&env, &cluster, v1).await;

    cluster[2].kill();
    let out = env.set(
        &cluster[leader.min(1)],
        "manifest-v2.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", concord_tests::describe(&out));
    mesh.proxy(0, 2).cut();
    mesh.proxy(1, 2).cut();
    cluster[2]
        .restart(&env.flags("coordinator.policy"))
        .expect("replica 2 restarts");
    let start = Instant::now();
    while status(&env, &cluster[2])
        .await
        .is_none_or(|s| s.state != "recovering")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "replica 2 is not recovering"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let refused = env.recover(&cluster[2], 0, &["--since", &v1.to_hex()]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{}",
        concord_tests::describe(&refused)
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("is ready") && said.contains("--force"),
        "the refusal does not say a peer is ready and how to force: {said}"
    );
    let forced = env.recover(&cluster[2], 0, &["--force", "--since", &v1.to_hex()]);
    assert!(
        forced.status.success(),
        "{}",
        concord_tests::describe(&forced)
    );

    // Healed, replica 2 catches up and recovers from its peers.
    mesh.heal_all();
    let v2 = Hash::from_slice(&status(&env, &cluster[0]).await.expect("status").latest).unwrap();
    wait_all(&env, &cluster, v2).await;
}
