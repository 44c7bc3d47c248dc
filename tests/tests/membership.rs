//! Who may change the voting members (issue 9, items 4 and 5), against the real binaries: a captured
//! owner authorization of an earlier membership change cannot be replayed later, a new replica does
//! not make itself a voter, and an attested peer cannot take or demote a healthy voter's seat by
//! sending Join under its id.

use std::time::{Duration, Instant};

use concord_cli::process::{Addrs, CoordinatorProcess};
use concord_proto::v1 as pb;
use concord_tests::{Env, describe};

/// Waits until every replica in `cluster` is ready with `transitions` transitions.
async fn all_ready(env: &Env, cluster: &[&CoordinatorProcess], transitions: u64) {
    let start = Instant::now();
    loop {
        let mut ok = true;
        for c in cluster {
            ok &= env
                .status(c)
                .await
                .is_ok_and(|s| s.state == "ready" && s.transitions == transitions);
        }
        if ok {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the replicas did not all become ready at {transitions} transitions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_voter(s: &pb::GetStatusResponse) -> bool {
    s.role == "leader" || s.role == "follower"
}

/// Waits until `c` is a voter.
async fn wait_voter(env: &Env, c: &CoordinatorProcess) {
    let start = Instant::now();
    while !env.status(c).await.is_ok_and(|s| is_voter(&s)) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "replica {} did not become a voter",
            c.node_id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_of(c: &CoordinatorProcess) -> String {
    std::fs::read_to_string(&c.log).unwrap_or_default()
}

/// What `c` logged after `from` bytes (a replica that was slow to start may have rejoined during the
/// formation, legitimately, before the attack began).
fn log_since(c: &CoordinatorProcess, from: usize) -> String {
    log_of(c).get(from..).unwrap_or_default().to_string()
}

/// Waits until one of `logs` contains `needle`, failing as soon as `bad` holds (checked each round).
async fn wait_log_unless<F, Fut>(logs: &[&CoordinatorProcess], needle: &str, mut bad: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<String>>,
{
    let start = Instant::now();
    loop {
        if let Some(why) = bad().await {
            panic!("{why}");
        }
        if logs.iter().any(|c| log_of(c).contains(needle)) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no replica logged {needle:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `concord cluster set-members` through `via` for `members`, with `extra` arguments (how it is
/// authorized).
fn set_members_cli(
    env: &Env,
    via: &CoordinatorProcess,
    members: &[(u64, std::net::SocketAddr)],
    extra: &[&str],
) -> std::process::Output {
    let addr = via.user_addr.to_string();
    let mut args: Vec<String> = [
        "cluster",
        "set-members",
        "-m",
        "manifest-v1.json",
        "-c",
        &addr,
        "--insecure-simulated-attestation",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (id, a) in members {
        args.push("--member".into());
        args.push(format!("{id}={a}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    env.concord(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The owner grows the cluster to five with an external signer, and later shrinks it to three. Whoever
/// kept the signed request (the host, a proxy, a log) sends it again: the five must not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t94_a_captured_set_members_authorization_cannot_be_replayed() {
    let env = Env::new();
    let (nodes, all) = env.start_three_and_two_waiting();
    let out = env.set(&nodes[0], "manifest-v1.json", &["--owner-key", "owner.pem"]);
    assert!(out.status.success(), "{}", describe(&out));
    all_ready(&env, &nodes[..3].iter().collect::<Vec<_>>(), 1).await;

    // The owner's change 3 -> 5: prepared, signed elsewhere, submitted; the submission is captured.
    let prep = set_members_cli(&env, &nodes[1], &all, &["--prepare", "grow.bin"]);
    assert!(prep.status.success(), "{}", describe(&prep));
    let index = concord_tests::stdout_line(&prep);
    let sig = env.concord(&["sign", "--message", "grow.bin", "--owner-key", "owner.pem"]);
    assert!(sig.status.success(), "{}", describe(&sig));
    let sig = concord_tests::stdout_line(&sig);
    let public = hex::encode(env.d.owner.verifying_key().as_bytes());
    let captured = |index: &str| {
        set_members_cli(
            &env,
            &nodes[2],
            &all,
            &[
                "--signature",
                &sig,
                "--owner-public-key",
                &public,
                "--membership-index",
                index,
            ],
        )
    };
    let grow = captured(&index);
    assert!(grow.status.success(), "{}", describe(&grow));
    all_ready(&env, &nodes.iter().collect::<Vec<_>>(), 1).await;
    for c in &nodes {
        wait_voter(&env, c).await;
    }

    // The owner shrinks back to three.
    let shrink = env.set_members(nodes[0].user_addr, &all[..3], "owner.pem");
    assert!(shrink.status.success(), "{}", describe(&shrink));

    // The replay, as captured: the membership it names is gone.
    let replay = captured(&index);
    assert_eq!(replay.status.code(), Some(1), "{}", describe(&replay));
    let said = String::from_utf8_lossy(&replay.stderr);
    assert!(
        said.contains("FailedPrecondition") && said.contains("used already"),
        "{}",
        describe(&replay)
    );
    // Or made to name today's membership: then the owner's signature does not cover it.
    let now = env.status(&nodes[2]).await.unwrap().membership_index;
    let replay = captured(&now.to_string());
    assert_eq!(replay.status.code(), Some(1), "{}", describe(&replay));
    assert!(
        String::from_utf8_lossy(&replay.stderr).contains("PermissionDenied"),
        "{}",
        describe(&replay)
    );
    // Still three, and still serving.
    let out = env.set(&nodes[2], "manifest-v2.json", &["--owner-key", "owner.pem"]);
    assert!(out.status.success(), "{}", describe(&out));
    all_ready(&env, &nodes[..3].iter().collect::<Vec<_>>(), 2).await;
}

/// A fourth genuine replica that lists itself and the three members in its `--peer` flags is not a
/// voter until a workload owner adds it; then one command makes it one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t95a_a_new_replica_does_not_make_itself_a_voter() {
    let env = Env::new();
    let mut cluster = env.start_cluster(3);
    let out = env.set(
        &cluster[0],
        "manifest-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    all_ready(&env, &cluster.iter().collect::<Vec<_>>(), 1).await;

    let addrs = Addrs::free().unwrap();
    let mut peers = cluster[0].peers.clone();
    peers.push((3, addrs.peer));
    let fourth = CoordinatorProcess::start_member(
        &env.path("node-3"),
        &env.path("node-3.log"),
        &env.flags("coordinator.policy"),
        addrs,
        3,
        &peers,
    )
    .unwrap();
    // Until the members refused its Join, it must not have become a voter.
    wait_log_unless(&[&fourth], "is not a member of the cluster", || async {
        env.status(&fourth)
            .await
            .ok()
            .filter(is_voter)
            .map(|s| format!("the new replica made itself a {} without the owner", s.role))
    })
    .await;
    let s = env.status(&fourth).await;
    assert!(!s.as_ref().is_ok_and(is_voter), "{s:?}");

    // The owner adds it, in one command. (The time is an observation, not an assertion.)
    let start = Instant::now();
    let grow = env.set_members(cluster[1].user_addr, &peers, "owner.pem");
    assert!(grow.status.success(), "{}", describe(&grow));
    let command = start.elapsed();
    cluster.push(fourth);
    wait_voter(&env, &cluster[3]).await;
    eprintln!(
        "set-members 3 -> 4: the command took {command:?}; the new replica was a voter after {:?}",
        start.elapsed()
    );
    all_ready(&env, &cluster.iter().collect::<Vec<_>>(), 1).await;
    let out = env.set(
        &cluster[3],
        "manifest-v2.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    all_ready(&env, &cluster.iter().collect::<Vec<_>>(), 2).await;
}

/// A genuine replica started by the host with an empty disk under the id of a healthy voter, at
/// another address, asks to Join: the voter keeps its seat and its address, and the impostor gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t95b_a_join_under_a_healthy_voters_id_at_another_address_is_refused() {
    let env = Env::new();
    let cluster = env.start_cluster(3);
    let out = env.set(
        &cluster[0],
        "manifest-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    all_ready(&env, &cluster.iter().collect::<Vec<_>>(), 1).await;

    let before: Vec<usize> = cluster.iter().map(|c| log_of(c).len()).collect();
    let addrs = Addrs::free().unwrap();
    let mut peers = cluster[0].peers.clone();
    peers[1].1 = addrs.peer;
    let impostor = CoordinatorProcess::start_member(
        &env.path("impostor"),
        &env.path("impostor.log"),
        &env.flags("coordinator.policy"),
        addrs,
        1,
        &peers,
    )
    .unwrap();
    wait_log_unless(
        &[&cluster[0], &cluster[2], &impostor],
        "is recorded at",
        || async {
            if env.status(&impostor).await.is_ok_and(|s| is_voter(&s)) {
                return Some("the impostor took voter 1's seat".into());
            }
            for i in [0, 2] {
                if log_since(&cluster[i], before[i])
                    .contains("a voter came back with an empty disk")
                {
                    return Some(format!(
                        "replica {i} demoted healthy voter 1 on the impostor's Join"
                    ));
                }
            }
            None
        },
    )
    .await;
    let s = env.status(&cluster[1]).await.unwrap();
    assert!(is_voter(&s), "voter 1 lost its seat: {s:?}");
    // Replica 1 still takes part: a write through it commits and reaches every replica.
    let out = env.set(
        &cluster[1],
        "manifest-v2.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    all_ready(&env, &cluster.iter().collect::<Vec<_>>(), 2).await;
}

/// The same impostor, but claiming voter 1's own recorded address in its Join (it listens elsewhere):
/// the leader asks the replica at that address whether it sent the Join, and the healthy voter says no.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t95c_a_join_claiming_a_healthy_voters_address_is_refused() {
    let env = Env::new();
    let cluster = env.start_cluster(3);
    let out = env.set(
        &cluster[0],
        "manifest-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    all_ready(&env, &cluster.iter().collect::<Vec<_>>(), 1).await;

    let before: Vec<usize> = cluster.iter().map(|c| log_of(c).len()).collect();
    let impostor = CoordinatorProcess::start_member(
        &env.path("impostor"),
        &env.path("impostor.log"),
        &env.flags("coordinator.policy"),
        Addrs::free().unwrap(),
        1,
        &cluster[0].peers,
    )
    .unwrap();
    wait_log_unless(
        &[&cluster[0], &cluster[2], &impostor],
        "did not send this Join",
        || async {
            for i in [0, 2] {
                if log_since(&cluster[i], before[i])
                    .contains("a voter came back with an empty disk")
                {
                    return Some(format!(
                        "replica {i} demoted healthy voter 1 on the impostor's Join"
                    ));
                }
            }
            None
        },
    )
    .await;
    let s = env.status(&cluster[1]).await.unwrap();
    assert!(is_voter(&s), "voter 1 lost its seat: {s:?}");
}
