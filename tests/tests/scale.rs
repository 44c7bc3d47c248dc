//! Work that grows with the input, against the real binaries: a SetManifest nobody authorized must not
//! cost the leader more than hashing its bytes (issue 9.11), and the caps on a manifest answer at once.

use std::time::{Duration, Instant};

use concord_proto::v1 as pb;
use concord_tests::{Env, Hash, describe, stdout_line};

/// A legitimate call must be answered within this while an attack runs (generous: the machine is loaded).
const SERVED_WITHIN: Duration = Duration::from_secs(5);

/// Manifest v1 of `env` with `extra` more policies (each with one SAN), and the documents of those
/// policies: the shape of an attack that costs the most per byte.
fn manifest_with_policies(env: &Env, extra: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut doc: serde_json::Value = serde_json::from_slice(&env.d.manifest(1)).unwrap();
    let policies = doc["policies"].as_object_mut().unwrap();
    let mut docs = Vec::with_capacity(extra);
    for i in 0..extra {
        let policy = format!("p{i}").into_bytes();
        policies.insert(
            Hash::of(&policy).to_hex(),
            serde_json::json!({ "sans": [format!("w{i}")] }),
        );
        docs.push(policy);
    }
    (serde_json::to_vec(&doc).unwrap(), docs)
}

async fn leader(env: &Env, cluster: &[concord_cli::process::CoordinatorProcess]) -> usize {
    let start = Instant::now();
    loop {
        for (i, c) in cluster.iter().enumerate() {
            if env.status(c).await.is_ok_and(|s| s.role == "leader") {
                return i;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 40,000 policies (3.6 MB, under gRPC's default 4 MiB), with their documents, the right
/// `expected_previous` and no owner signature, sent again and again to the leader of three replicas.
/// The leader must answer a legitimate update meanwhile and keep its term.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unauthorized_huge_manifest_does_not_stall_the_leader() {
    let env = Env::new();
    let cluster = env.start_cluster(3);
    let out = env.set(&cluster[0], "manifest-v1.json", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let first = Hash::from_hex(&stdout_line(&out)).unwrap();
    let l = leader(&env, &cluster).await;
    let before = env.status(&cluster[l]).await.unwrap();

    // Over the caps (refused by its size), and under them (refused for want of a signature, or by
    // compare-and-swap once the legitimate update below went through).
    let attacks = [
        (40_000, &[tonic::Code::InvalidArgument][..]),
        (
            9_990,
            &[
                tonic::Code::PermissionDenied,
                tonic::Code::FailedPrecondition,
            ][..],
        ),
    ]
    .map(|(n, codes)| {
        let (manifest, policies) = manifest_with_policies(&env, n);
        let request = pb::SetManifestRequest {
            manifest,
            policies,
            expected_previous: first.as_bytes().to_vec(),
            owner_key: Vec::new(),
            owner_signature: Vec::new(),
        };
        (request, codes)
    });
    let attack_until = Instant::now() + Duration::from_secs(8);
    let mut attackers = Vec::new();
    for (attack, codes) in attacks {
        let mut api = env.user_client(&cluster[l]).await;
        attackers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while Instant::now() < attack_until {
                let started = Instant::now();
                let answer = api.set_manifest(attack.clone()).await;
                answers.push((answer.map(|_| ()), started.elapsed()));
            }
            (answers, codes)
        }));
    }
    // Let the attack reach the leader, then make a legitimate update while it goes on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut api = env.user_client(&cluster[l]).await;
    let started = Instant::now();
    let legit = tokio::time::timeout(
        SERVED_WITHIN,
        api.set_manifest(env.set_manifest_request(2, first)),
    )
    .await;
    let legit_took = started.elapsed();
    eprintln!("a legitimate SetManifest during the attack took {legit_took:?}");
    let legit = legit
        .unwrap_or_else(|_| panic!("the leader did not answer a legitimate update within {SERVED_WITHIN:?} under the attack"))
        .expect("the legitimate update is acknowledged");
    assert!(!legit.into_inner().unchanged);

    for a in attackers {
        let (answers, codes) = a.await.unwrap();
        assert!(!answers.is_empty());
        for (answer, took) in &answers {
            let status = answer.as_ref().expect_err("the attack must be refused");
            assert!(
                codes.contains(&status.code()),
                "{:?}: {}",
                status.code(),
                status.message()
            );
            assert!(
                *took < SERVED_WITHIN,
                "refusing the attack took {took:?}: {}",
                status.message()
            );
        }
        eprintln!(
            "{} attack calls, refused with: {}",
            answers.len(),
            answers[0].0.as_ref().unwrap_err().message()
        );
    }
    let after = env.status(&cluster[l]).await.unwrap();
    assert_eq!(after.role, "leader", "the attacked replica lost leadership");
    assert_eq!(
        after.term, before.term,
        "an election happened during the attack"
    );
}

/// A fresh replica cannot authenticate the first manifest: the caps bound it, and the answer names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_manifest_over_the_caps_is_refused_at_once() {
    let env = Env::new();
    let c = env.start_coordinator("lone");
    let mut api = env.user_client(&c).await;

    // Over the policy count, under the byte cap.
    let (manifest, _) = manifest_with_policies(&env, 10_001);
    let started = Instant::now();
    let answer = api
        .set_manifest(pb::SetManifestRequest {
            manifest,
            expected_previous: vec![0; 32],
            ..Default::default()
        })
        .await
        .expect_err("over the policy cap");
    let took = started.elapsed();
    assert_eq!(
        answer.code(),
        tonic::Code::InvalidArgument,
        "{}",
        answer.message()
    );
    assert!(
        answer
            .message()
            .contains("the manifest has 10003 policies, more than the 10000 Concord accepts"),
        "{}",
        answer.message()
    );
    assert!(took < SERVED_WITHIN, "refused after {took:?}");

    // Over the byte cap: refused before it is parsed.
    let (manifest, policies) = manifest_with_policies(&env, 30_000);
    assert!(manifest.len() > 1 << 20);
    let answer = api
        .set_manifest(pb::SetManifestRequest {
            manifest,
            policies,
            expected_previous: vec![0; 32],
            ..Default::default()
        })
        .await
        .expect_err("over the byte cap");
    assert_eq!(answer.code(), tonic::Code::InvalidArgument);
    assert!(
        answer.message().contains("more than the 1048576"),
        "{}",
        answer.message()
    );

    // The replica still serves, and still takes a first manifest of a normal size.
    let out = env.set(&c, "manifest-v1.json", &[]);
    assert!(out.status.success(), "{}", describe(&out));
}
