//! Issue 11.3: concurrent SetManifests must not queue behind one another longer than the commit
//! itself. Each transition names its predecessor, so of several calls on one predecessor only one can
//! commit; the others must be refused at once with a clear "retry" (Aborted), not after waiting for the
//! winner's commit. A caller that then re-reads the history and re-signs succeeds. A caller that asks
//! for the latest transition once it changed from the one it lost on (`changed_from`) is answered
//! when the winner's transition is applied, not before.
//!
//! The winner is held in flight by the coordinator's test fault hook on both followers
//! (`--insecure-test-stall-raft-while FILE`: their log appends block while FILE exists), so its entry
//! cannot reach a quorum until the test lets it; the losers are sent to the leader meanwhile. (Through
//! a follower, the leader's refusal comes back unchanged: forwarding passes non-transport statuses on.)

use std::time::{Duration, Instant};

use concord_cli::process::{Addrs, CoordinatorProcess, SimulatedFlags};
use concord_proto::v1 as pb;
use concord_tests::{Env, Hash, describe, http_get, stdout_line};
use tonic::Code;

/// A refused loser must be answered within this, while the winner is still in flight. The winner is
/// held for far longer (until the test releases it), so a loser queued behind it misses the bound.
const REFUSED_WITHIN: Duration = Duration::from_secs(5);

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

/// How many SetManifests the replica at `health` has prepared (its phase metric's count).
fn prepared(health: std::net::SocketAddr) -> u64 {
    let (_, body) = http_get(health, "/metrics").unwrap_or_default();
    body.lines()
        .find_map(|l| {
            l.strip_prefix("concord_set_manifest_phase_seconds_count{phase=\"prepare\"} ")
        })
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

async fn latest(env: &Env, c: &CoordinatorProcess) -> Hash {
    let mut api = env.user_client(c).await;
    latest_of(
        api.get_manifests(pb::GetManifestsRequest::default())
            .await
            .expect("GetManifests"),
    )
}

/// Three replicas with the stall hook, the first manifest committed: the cluster, the stall files,
/// the first transition, the leader and the followers.
struct Started {
    cluster: Vec<CoordinatorProcess>,
    files: Vec<std::path::PathBuf>,
    first: Hash,
    leader: usize,
    followers: Vec<usize>,
}

async fn start_with_first_manifest(env: &Env) -> Started {
    let (cluster, files) = start_cluster_with_hooks(env);
    let out = env.set(
        &cluster[0],
        "manifest-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let first = Hash::from_hex(&stdout_line(&out)).unwrap();
    let leader = env.leader_index(&cluster, Duration::from_secs(20)).await;
    let followers = (0..3).filter(|i| *i != leader).collect();
    Started {
        cluster,
        files,
        first,
        leader,
        followers,
    }
}

type Winner = tokio::task::JoinHandle<
    Result<
        Result<tonic::Response<pb::SetManifestResponse>, tonic::Status>,
        tokio::time::error::Elapsed,
    >,
>;

/// Sends the winner (version 2 after the first transition) to the leader and returns once the leader
/// prepared it: its entry reaches no follower's disk until [`release`].
async fn hold_winner(env: &Env, s: &Started) -> Winner {
    let l = s.leader;
    let prepared_before = prepared(s.cluster[l].health_addr);
    for f in &s.followers {
        std::fs::write(&s.files[*f], b"stall").unwrap();
    }
    let mut winner_api = env.user_client(&s.cluster[l]).await;
    let winner_request = env.set_manifest_request(2, s.first);
    let winner = tokio::spawn(async move {
        tokio::time::timeout(
            Duration::from_secs(60),
            winner_api.set_manifest(winner_request),
        )
        .await
    });
    let started = Instant::now();
    while prepared(s.cluster[l].health_addr) == prepared_before {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the leader never prepared the winner"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    winner
}

/// Lets the winner's entry reach the followers' disks.
fn release(s: &Started) {
    for f in &s.followers {
        std::fs::remove_file(&s.files[*f]).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racing_set_manifest_is_refused_at_once_and_succeeds_after_re_reading() {
    let env = Env::new();
    let mut started = start_with_first_manifest(&env).await;
    let (l, first) = (started.leader, started.first);
    let followers = started.followers.clone();

    // Two losers' connections to the leader (a stalled follower cannot serve as a way in: the stall
    // blocks one of its runtime's threads, as a wedged disk would).
    let mut loser_apis = Vec::new();
    for version in [3, 4] {
        loser_apis.push((version, l, env.user_client(&started.cluster[l]).await));
    }
    let mut stale_api = env.user_client(&started.cluster[l]).await;

    // The winner: its entry reaches no follower's disk until the stall files go.
    let winner = hold_winner(&env, &started).await;

    // Two losers on the same predecessor.
    for (version, via, mut api) in loser_apis {
        let sent = Instant::now();
        let answer = tokio::time::timeout(
            REFUSED_WITHIN,
            api.set_manifest(env.set_manifest_request(version, first)),
        )
        .await;
        let took = sent.elapsed();
        let status = match answer {
            Err(_) => panic!(
                "a SetManifest racing the in-flight one on the same predecessor (sent to replica \
                 {via}) was not answered within {REFUSED_WITHIN:?}: it queued behind the winner's commit"
            ),
            Ok(Ok(r)) => panic!(
                "a second SetManifest on the same predecessor was accepted: {:?}",
                r.into_inner().transition
            ),
            Ok(Err(s)) => s,
        };
        eprintln!("loser v{version} via replica {via} refused in {took:?}: {status:?}");
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        assert!(
            status.message().contains("retry") && status.message().contains("nothing was written"),
            "{status:?}"
        );
    }
    // A forged call on the same predecessor (the owner's key, another signature) is refused at once
    // as a conflict too: that check comes before the signature's, and claims nothing.
    let mut forged = env.set_manifest_request(6, first);
    forged.owner_signature[0] ^= 1;
    let refused = tokio::time::timeout(REFUSED_WITHIN, stale_api.set_manifest(forged))
        .await
        .expect("a forged SetManifest racing the winner queued behind it")
        .expect_err("a forged SetManifest was accepted");
    assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
    // A stale caller (it names the empty history as the latest) is refused at once as well.
    let sent = Instant::now();
    let stale = tokio::time::timeout(
        REFUSED_WITHIN,
        stale_api.set_manifest(env.set_manifest_request(5, Hash::ZERO)),
    )
    .await
    .expect("a stale SetManifest queued behind the in-flight one")
    .expect_err("a stale SetManifest was accepted");
    eprintln!("stale caller refused in {:?}: {stale:?}", sent.elapsed());
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    assert!(
        stale.message().starts_with("previous transition mismatch"),
        "{stale:?}"
    );
    assert!(
        !winner.is_finished(),
        "the winner must still be in flight while the losers are refused"
    );

    // Let the winner commit.
    release(&started);
    let winner = winner
        .await
        .unwrap()
        .expect("the winner answered within 60 s");
    eprintln!("winner answered: {:?}", winner.as_ref().map(|_| "ok"));

    // A loser re-reads, re-signs against the latest and succeeds.
    let retrying = Instant::now();
    let cluster = &mut started.cluster;
    loop {
        let head = latest(&env, &cluster[followers[1]]).await;
        let mut api = env.user_client(&cluster[followers[1]]).await;
        match api.set_manifest(env.set_manifest_request(3, head)).await {
            Ok(r) => {
                let t = r.into_inner().transition.expect("a transition");
                assert_eq!(Hash::from_slice(&t.previous).unwrap(), head);
                break;
            }
            Err(s) => {
                // Only while the cluster settles after the stall (a new election, the winner's
                // entry still being applied) may the retry need another round.
                assert!(
                    retrying.elapsed() < Duration::from_secs(30),
                    "the loser's retry after re-reading never succeeded: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    for c in cluster.iter_mut() {
        c.kill();
    }
}

fn changed_from(hash: &[u8]) -> pb::GetManifestsRequest {
    pb::GetManifestsRequest {
        only_latest: true,
        changed_from: hash.to_vec(),
        ..Default::default()
    }
}

fn latest_of(answer: tonic::Response<pb::GetManifestsResponse>) -> Hash {
    let t = answer.into_inner().latest.expect("a latest transition");
    Hash::from_slice(&t.hash).unwrap()
}

/// `changed_from` (issue 11.3): a writer that lost a race asks for the latest transition once it is
/// another than the one it lost on. It is answered when the winner's transition is applied, not
/// before; at once when the latest is another already; after `LATEST_CHANGE_WAIT` with the unchanged
/// latest when nothing is written; and a hash of the wrong length is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_waiting_for_the_latest_to_change_is_answered_when_the_winner_is_applied() {
    let env = Env::new();
    let mut started = start_with_first_manifest(&env).await;
    let (l, first) = (started.leader, started.first);
    let mut waiter_api = env.user_client(&started.cluster[l]).await;
    let mut api = env.user_client(&started.cluster[l]).await;

    let winner = hold_winner(&env, &started).await;
    let waiter = tokio::spawn(async move {
        let asked = Instant::now();
        let answer = waiter_api
            .get_manifests(changed_from(first.as_bytes()))
            .await;
        (answer, asked.elapsed())
    });

    // Another predecessor than the latest: answered at once, with the latest.
    let answer = tokio::time::timeout(
        REFUSED_WITHIN,
        api.get_manifests(changed_from(Hash::ZERO.as_bytes())),
    )
    .await
    .expect("a caller whose predecessor is not the latest waited")
    .expect("GetManifests");
    assert_eq!(latest_of(answer), first);
    let bad = api
        .get_manifests(changed_from(&[7; 31]))
        .await
        .expect_err("a 31-byte changed_from was accepted");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("changed_from"), "{bad:?}");

    // The winner is held: the waiter has nothing to be told yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiter.is_finished(),
        "the wait for a change ended while the latest was still the first transition"
    );

    release(&started);
    let winner = winner
        .await
        .unwrap()
        .expect("the winner answered within 60 s")
        .expect("the winner committed")
        .into_inner()
        .transition
        .expect("a transition");
    let (answer, took) = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiter was not answered after the winner committed")
        .unwrap();
    let now = latest_of(answer.expect("GetManifests with changed_from"));
    eprintln!("the waiter was answered after {took:?}");
    assert_eq!(now, Hash::from_slice(&winner.hash).unwrap());

    // Nothing more is written: answered with the unchanged latest once the bound has passed.
    let asked = Instant::now();
    let answer = tokio::time::timeout(
        concord_proto::limits::LATEST_CHANGE_WAIT + Duration::from_secs(30),
        api.get_manifests(changed_from(now.as_bytes())),
    )
    .await
    .expect("a wait for a change that never comes did not end")
    .expect("GetManifests");
    let waited = asked.elapsed();
    assert_eq!(latest_of(answer), now);
    assert!(
        waited >= concord_proto::limits::LATEST_CHANGE_WAIT - Duration::from_secs(1),
        "answered after {waited:?}, before the latest changed and before the bound"
    );
    for c in &mut started.cluster {
        c.kill();
    }
}

/// Anyone may hold waiting GetManifests (`changed_from`; the history is public): a flood of them, up
/// to the streams of several connections, neither delays an owner's write nor is left waiting after
/// it. Every waiter is answered with the new transition, well before the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_waiting_readers_neither_delays_a_write_nor_misses_it() {
    const CONNECTIONS: usize = 4;
    const PER_CONNECTION: usize = 50;
    let env = Env::new();
    let mut started = start_with_first_manifest(&env).await;
    let (l, first) = (started.leader, started.first);
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let api = env.user_client(&started.cluster[l]).await;
        for _ in 0..PER_CONNECTION {
            let mut api = api.clone();
            waiters.spawn(async move { api.get_manifests(changed_from(first.as_bytes())).await });
        }
    }
    // Let the waiters arrive and settle into their wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        waiters.try_join_next().is_none(),
        "a waiter was answered while the latest was still the first transition"
    );

    let mut api = env.user_client(&started.cluster[l]).await;
    let sent = Instant::now();
    let written = tokio::time::timeout(
        REFUSED_WITHIN,
        api.set_manifest(env.set_manifest_request(2, first)),
    )
    .await
    .expect("the owner's write waited behind the waiting readers")
    .expect("the owner's write")
    .into_inner()
    .transition
    .expect("a transition");
    eprintln!(
        "written in {:?} beside {} waiters",
        sent.elapsed(),
        CONNECTIONS * PER_CONNECTION
    );
    let written = Hash::from_slice(&written.hash).unwrap();

    // Answered when the write is applied, not at the 10 s bound (which answers the old latest).
    let mut answered = 0;
    let all = tokio::time::timeout(REFUSED_WITHIN, async {
        while let Some(answer) = waiters.join_next().await {
            let answer = answer.unwrap().expect("GetManifests with changed_from");
            assert_eq!(latest_of(answer), written);
            answered += 1;
        }
    })
    .await;
    assert!(
        all.is_ok(),
        "{answered} of {} waiters answered within {REFUSED_WITHIN:?} of the write",
        CONNECTIONS * PER_CONNECTION
    );
    assert_eq!(answered, CONNECTIONS * PER_CONNECTION);
    for c in &mut started.cluster {
        c.kill();
    }
}
