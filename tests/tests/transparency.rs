//! The transparency log (issue 13, docs/PROTOCOL.md §15) against the real binaries: checkpoints and
//! proofs from a three-replica cluster, `concord verify --state-dir` following the history with
//! consistency proofs only, `history prove`/`audit` and the independent Python verifier on what the
//! cluster produced, and rollbacks to restored old disks refused by `verify` and `recover`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use concord_tests::{Env, describe, have, stdout_line};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `concord verify --state-dir state` (and `extra`) against `c`.
fn verify_state(
    env: &Env,
    c: &concord_cli::process::CoordinatorProcess,
    manifest: &str,
    extra: &[&str],
) -> Output {
    let mut args = vec!["--state-dir", "state"];
    args.extend_from_slice(extra);
    env.verify(c, manifest, "verify", &args)
}

/// python3 with `cryptography`, or None (outside CI) when it is missing.
fn python() -> Option<()> {
    let ok = have("python3")
        && Command::new("python3")
            .args(["-c", "import cryptography"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run the independent verifier: install python3 and cryptography"
        );
        eprintln!("skipped the independent verifier: python3 with cryptography is not available");
        return None;
    }
    Some(())
}

fn independent(script: &str, args: &[&Path]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("independent")
        .join(script);
    Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3")
}

fn kept_key(env: &Env) -> String {
    let dir = env.path("state");
    let entry = std::fs::read_dir(&dir)
        .expect("state dir")
        .filter_map(|e| e.ok())
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .expect("one kept checkpoint");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap();
    v["checkpoint_key"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t130_verify_follows_ten_updates_with_consistency_proofs_only() {
    let env = Env::new();
    let cluster = env.start_cluster(3);
    env.leader_index(&cluster, Duration::from_secs(30)).await;

    let first = env.set(
        &cluster[0],
        "manifest-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(first.status.success(), "{}", describe(&first));
    // The first verify audits the whole history once and keeps its checkpoint (its key bound by the
    // evidence of the audit bundle).
    let v = verify_state(&env, &cluster[0], "manifest-v1.json", &[]);
    assert!(v.status.success(), "{}", describe(&v));
    assert!(stderr(&v).contains("first checkpoint"), "{}", describe(&v));

    for version in 2..=11u32 {
        let name = format!("manifest-v{version}.json");
        env.write_manifest(&name, version);
        let set = env.set(&cluster[0], &name, &["--owner-key", "owner.pem"]);
        assert!(set.status.success(), "{}", describe(&set));
        let latest = stdout_line(&set);
        // Any replica answers; the history is never downloaded again.
        let c = &cluster[version as usize % 3];
        let v = verify_state(&env, c, "manifest-v1.json", &["--checkpoint-only"]);
        assert!(v.status.success(), "v{version}: {}", describe(&v));
        assert_eq!(stdout_line(&v), latest, "v{version}: {}", describe(&v));
        assert!(
            stderr(&v).contains(&format!("-> {version} transitions, consistent")),
            "v{version}: {}",
            describe(&v)
        );
    }

    // A full verify with the kept state: the bundle carries the checkpoint, bound by the evidence.
    let full = verify_state(&env, &cluster[1], "manifest-v11.json", &[]);
    assert!(full.status.success(), "{}", describe(&full));
    assert!(
        stderr(&full).contains("11 -> 11 transitions, consistent"),
        "{}",
        describe(&full)
    );

    // An offline proof: the kept checkpoint, the new one, the consistency proof between them and
    // the inclusion of transition 3.
    let addr = cluster[2].user_addr.to_string();
    let prove = env.concord(&[
        "history",
        "prove",
        "-m",
        "manifest-v1.json",
        "-c",
        &addr,
        "--insecure-simulated-attestation",
        "--state-dir",
        "state",
        "--index",
        "3",
        "--out",
        "proof.json",
    ]);
    assert!(prove.status.success(), "{}", describe(&prove));
    let key = kept_key(&env);
    let audit = env.concord(&["history", "audit", "proof.json", "--checkpoint-key", &key]);
    assert!(audit.status.success(), "{}", describe(&audit));
    assert!(
        stderr(&audit).contains("proof clean"),
        "{}",
        describe(&audit)
    );
    // Another key pinned: exit 3.
    let other = env.concord(&[
        "history",
        "audit",
        "proof.json",
        "--checkpoint-key",
        &"11".repeat(32),
    ]);
    assert_eq!(other.status.code(), Some(3), "{}", describe(&other));

    // One flipped hash of the inclusion proof: exit 3, in Concord and in the independent verifier.
    let mut proof: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("proof.json")).unwrap()).unwrap();
    let h = proof["inclusion"][0]["proof"][0]
        .as_str()
        .unwrap()
        .to_string();
    let flipped = format!("{}{}", if &h[..1] == "0" { "1" } else { "0" }, &h[1..]);
    proof["inclusion"][0]["proof"][0] = serde_json::Value::String(flipped);
    std::fs::write(
        env.path("proof-bad.json"),
        serde_json::to_vec(&proof).unwrap(),
    )
    .unwrap();
    let bad = env.concord(&[
        "history",
        "audit",
        "proof-bad.json",
        "--checkpoint-key",
        &key,
    ]);
    assert_eq!(bad.status.code(), Some(3), "{}", describe(&bad));

    if python().is_some() {
        let ok = independent("tlog.py", &[&env.path("proof.json")]);
        assert!(ok.status.success(), "{}", describe(&ok));
        assert!(
            String::from_utf8_lossy(&ok.stdout)
                .contains("OK 2 checkpoints, 1 consistency proofs, 1 inclusion proofs"),
            "{}",
            describe(&ok)
        );
        let bad = independent("tlog.py", &[&env.path("proof-bad.json")]);
        assert_eq!(bad.status.code(), Some(3), "{}", describe(&bad));
        // The audit bundle's checkpoint: the Merkle root of its transitions, its key bound by the
        // report data.
        let bundle = independent("audit_bundle.py", &[&env.path("verify/history.json")]);
        assert!(bundle.status.success(), "{}", describe(&bundle));
    }
}

/// Copies a stopped replica's data directory, as a host keeping old disks does.
fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .expect("cp");
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn t131_verify_and_recover_refuse_a_history_rolled_back_to_old_disks() {
    let env = Env::new();
    let mut c = env.start_coordinator("c1");
    let first = env.set(&c, "manifest-v1.json", &["--owner-key", "owner.pem"]);
    assert!(first.status.success(), "{}", describe(&first));
    let first = stdout_line(&first);

    // The host keeps a copy of the disk while it holds v1 only.
    c.kill();
    copy_dir(&env.path("c1"), &env.path("c1-v1-copy"));
    c.restart(&env.flags("coordinator.policy")).unwrap();
    for i in [0, 2] {
        let r = env.recover(&c, i, &["--expect-latest", &first]);
        assert!(r.status.success(), "{}", describe(&r));
    }

    // Two updates; the data owner (who is also a share owner here) follows them with --state-dir.
    let v = verify_state(&env, &c, "manifest-v1.json", &[]);
    assert!(v.status.success(), "{}", describe(&v));
    for m in ["manifest-v2.json", "manifest-v3.json"] {
        let s = env.set(&c, m, &["--owner-key", "owner.pem"]);
        assert!(s.status.success(), "{}", describe(&s));
    }
    let v = verify_state(&env, &c, "manifest-v1.json", &["--checkpoint-only"]);
    assert!(v.status.success(), "{}", describe(&v));

    // Full outage; the host restores the old disk (v1 only) and restarts.
    c.kill();
    copy_dir(&env.path("c1-v1-copy"), &env.path("c1"));
    c.restart(&env.flags("coordinator.policy")).unwrap();

    // recover with the kept checkpoint: refused before the share is sent, saying why.
    let r = env.recover(&c, 0, &["--state-dir", "state"]);
    assert_eq!(r.status.code(), Some(3), "{}", describe(&r));
    assert!(
        stderr(&r).contains("ROLLBACK") && stderr(&r).contains("3 transitions"),
        "{}",
        describe(&r)
    );
    assert!(stderr(&r).contains("not sent"), "{}", describe(&r));

    // Had the owners gone ahead regardless, verify with the kept checkpoint catches it, whether it
    // checks the checkpoint only or the whole history.
    for i in [0, 2] {
        let r = env.recover(&c, i, &["--accept-unverified-latest"]);
        assert!(r.status.success(), "{}", describe(&r));
    }
    for extra in [&["--checkpoint-only"][..], &[][..]] {
        let v = verify_state(&env, &c, "manifest-v1.json", extra);
        assert_eq!(v.status.code(), Some(3), "{extra:?}: {}", describe(&v));
        assert!(
            stderr(&v).contains("ROLLBACK") && stderr(&v).contains("1 transitions"),
            "{extra:?}: {}",
            describe(&v)
        );
    }
}

/// A `concord witness` process, killed when dropped.
struct WitnessProcess {
    child: std::process::Child,
    addr: String,
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `concord witness` named `name` with key file `key` for `log` (ID=KEY), state in `state`,
/// listening on `listen` (`127.0.0.1:0` for a port of the kernel's choosing, which it prints: no
/// port is chosen here and released for the witness to bind, where another process could take it).
fn start_witness(
    env: &Env,
    name: &str,
    key: &str,
    log: &str,
    state: &str,
    listen: &str,
) -> WitnessProcess {
    use std::io::BufRead;
    let log_path = env.path(&format!("{state}.log"));
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(concord_cli::process::sibling_binary("concord"))
        .args([
            "witness",
            "--name",
            name,
            "--key",
            key,
            "--log",
            log,
            "--state-dir",
            state,
            "--listen",
            listen,
        ])
        .current_dir(env.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(log_file)
        .spawn()
        .expect("start the witness");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(addr) = line.trim().strip_prefix("listening on ") else {
        let _ = child.wait();
        panic!(
            "witness said {line:?}; its log: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    };
    WitnessProcess {
        child,
        addr: addr.to_string(),
    }
}

/// Any free loopback port, chosen by the kernel when the witness binds it.
const ANY_PORT: &str = "127.0.0.1:0";

/// Writes manifest `version` listing `witnesses` (name, public key hex, address) with `threshold`.
fn write_manifest_with_witnesses(
    env: &Env,
    name: &str,
    version: u32,
    witnesses: &[(&str, &str, &str)],
    threshold: usize,
) {
    let mut m: serde_json::Value = serde_json::from_slice(&env.d.manifest(version)).unwrap();
    m["witnesses"] = serde_json::json!({
        "threshold": threshold,
        "list": witnesses.iter().map(|(n, k, a)| serde_json::json!({"name": n, "key": k, "address": a})).collect::<Vec<_>>(),
    });
    std::fs::write(env.path(name), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn keygen_witness(env: &Env, file: &str) -> String {
    let o = env.concord(&["keygen", "witness", "-o", file]);
    assert!(o.status.success(), "{}", describe(&o));
    stdout_line(&o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t132_two_witnesses_cosign_every_transition_of_a_three_replica_cluster() {
    let env = Env::new();
    let cluster = env.start_cluster(3);
    env.leader_index(&cluster, Duration::from_secs(30)).await;
    let first = env.set(
        &cluster[0],
        "manifest-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(first.status.success(), "{}", describe(&first));
    // The checkpoint key exists from the first transition on (derived from the seed): the data owner
    // learns it from a verified audit bundle, and the witnesses are configured with it.
    let v = verify_state(&env, &cluster[0], "manifest-v1.json", &[]);
    assert!(v.status.success(), "{}", describe(&v));
    let key = kept_key(&env);
    let id = stdout_line(&env.concord(&["deployment-id", "-m", "manifest-v1.json"]));
    let log = format!("{id}={key}");
    let k1 = keygen_witness(&env, "w1.pem");
    let k2 = keygen_witness(&env, "w2.pem");
    let w1 = start_witness(
        &env,
        "w1.test/witness",
        "w1.pem",
        &log,
        "w1-state",
        ANY_PORT,
    );
    let w2 = start_witness(
        &env,
        "w2.test/witness",
        "w2.pem",
        &log,
        "w2-state",
        ANY_PORT,
    );
    let (a1, a2) = (w1.addr.clone(), w2.addr.clone());
    let listed = [
        ("w1.test/witness", k1.as_str(), a1.as_str()),
        ("w2.test/witness", k2.as_str(), a2.as_str()),
    ];

    // From v2 on the manifest lists both witnesses and requires both cosignatures; ten updates, each
    // followed by a data owner with consistency proofs only.
    for version in 2..=11u32 {
        let name = format!("manifest-w{version}.json");
        write_manifest_with_witnesses(&env, &name, version, &listed, 2);
        let set = env.set(&cluster[0], &name, &["--owner-key", "owner.pem"]);
        assert!(set.status.success(), "{}", describe(&set));
        let c = &cluster[version as usize % 3];
        let v = verify_state(&env, c, &name, &["--checkpoint-only"]);
        assert!(v.status.success(), "v{version}: {}", describe(&v));
        assert!(
            stderr(&v).contains("2 of 2 witnesses cosigned"),
            "v{version}: {}",
            describe(&v)
        );
    }
    // Both witnesses keep the last size they cosigned, on disk.
    for dir in ["w1-state", "w2-state"] {
        let state: serde_json::Value = serde_json::from_slice(
            &std::fs::read(env.path(dir).join("witness-state.json")).unwrap(),
        )
        .unwrap();
        let sizes: Vec<u64> = state["logs"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v["size"].as_u64().unwrap())
            .collect();
        assert_eq!(sizes, vec![11], "{dir}: {state}");
    }

    // A full verify requires them too; the proof file carries them; the independent verifier checks
    // the cosignatures against the witness keys with the threshold.
    let full = verify_state(&env, &cluster[2], "manifest-w11.json", &[]);
    assert!(full.status.success(), "{}", describe(&full));
    // The bundle's checkpoint carries the cosignatures the replica held (it collected them for the
    // checkpoint-only verify above); the independent auditor accepts the bundle with them.
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("verify/history.json")).unwrap()).unwrap();
    let note = bundle["checkpoint"].as_str().unwrap();
    assert!(
        note.contains("\u{2014} w1.test/witness ") && note.contains("\u{2014} w2.test/witness "),
        "{note}"
    );
    if python().is_some() {
        let ok = independent("audit_bundle.py", &[&env.path("verify/history.json")]);
        assert!(ok.status.success(), "{}", describe(&ok));
    }
    let addr = cluster[1].user_addr.to_string();
    let prove = env.concord(&[
        "history",
        "prove",
        "-m",
        "manifest-w11.json",
        "-c",
        &addr,
        "--insecure-simulated-attestation",
        "--state-dir",
        "state",
        "--index",
        "0",
        "--out",
        "proof.json",
    ]);
    assert!(prove.status.success(), "{}", describe(&prove));
    let audit = env.concord(&[
        "history",
        "audit",
        "proof.json",
        "--checkpoint-key",
        &key,
        "--witnesses-from",
        "manifest-w11.json",
    ]);
    assert!(audit.status.success(), "{}", describe(&audit));
    // The file's cosignatures are checked against the pinned manifest's witnesses: a manifest that
    // requires a third witness, which never cosigned, makes the proof fail.
    let k3 = keygen_witness(&env, "w3.pem");
    let mut three = listed.to_vec();
    three.push(("w3.test/witness", k3.as_str(), "127.0.0.1:9"));
    write_manifest_with_witnesses(&env, "manifest-three.json", 11, &three, 3);
    let short = env.concord(&[
        "history",
        "audit",
        "proof.json",
        "--checkpoint-key",
        &key,
        "--witnesses-from",
        "manifest-three.json",
    ]);
    assert_eq!(short.status.code(), Some(3), "{}", describe(&short));
    if python().is_some() {
        let ok = independent("tlog.py", &[&env.path("proof.json")]);
        assert!(ok.status.success(), "{}", describe(&ok));
    }

    // One witness down: the write still succeeds at once (bounded), verify refuses (1 of 2) and says why.
    drop(w2);
    write_manifest_with_witnesses(&env, "manifest-w12.json", 12, &listed, 2);
    let started = std::time::Instant::now();
    let set = env.set(
        &cluster[0],
        "manifest-w12.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(set.status.success(), "{}", describe(&set));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let v = verify_state(
        &env,
        &cluster[0],
        "manifest-w12.json",
        &["--checkpoint-only"],
    );
    assert_eq!(v.status.code(), Some(3), "{}", describe(&v));
    assert!(
        stderr(&v).contains("1 valid witness cosignatures"),
        "{}",
        describe(&v)
    );
    drop(w1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t133_a_witness_refuses_a_second_root_for_a_size_and_remembers_across_a_restart() {
    use concord_coordinator::history::merkle::MerkleTree;
    use concord_coordinator::history::note::{Checkpoint, SignedNote};
    use concord_coordinator::witness::AddCheckpoint;
    use concord_coordinator::witness::client::post_add_checkpoint;

    let env = Env::new();
    let log_key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let origin = "example.test/log";
    let log = format!(
        "{origin}={}",
        hex::encode(log_key.verifying_key().as_bytes())
    );
    let wkey = keygen_witness(&env, "w.pem");
    let leaves = |salt: u8| -> Vec<concord_tests::Hash> {
        (0..8u8)
            .map(|i| concord_tests::Hash::of(&[i, salt]))
            .collect()
    };
    let (good, forked) = (
        MerkleTree::from_leaves(&leaves(0)),
        MerkleTree::from_leaves(&leaves(1)),
    );
    let note = |tree: &MerkleTree, size: u64| -> SignedNote {
        Checkpoint {
            origin: origin.into(),
            size,
            root: tree.root_at(size).unwrap(),
        }
        .sign(&log_key)
    };
    let post =
        |addr: String, body: String| async move { post_add_checkpoint(&addr, body).await.unwrap() };

    let w = start_witness(&env, "w.test", "w.pem", &log, "w-state", ANY_PORT);
    let (status, body) = post(
        w.addr.clone(),
        AddCheckpoint::encode(0, &[], &note(&good, 3)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cosigned = SignedNote::parse(&format!("{}\n{body}", note(&good, 3).body)).unwrap();
    let wk = concord_cli::log_proof::parse_key(&wkey).unwrap();
    assert!(cosigned.cosignature_time("w.test", &wk).is_some(), "{body}");
    // The same size with another root: refused (409), whatever old size is claimed.
    let (status, body) = post(
        w.addr.clone(),
        AddCheckpoint::encode(3, &[], &note(&forked, 3)),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    // A stale old size: 409 with the witness's size.
    let (status, body) = post(
        w.addr.clone(),
        AddCheckpoint::encode(0, &[], &note(&forked, 3)),
    )
    .await;
    assert_eq!((status, body.trim()), (409, "3"));

    // Restart, on the same address: the state is on disk.
    let addr = w.addr.clone();
    drop(w);
    let w = start_witness(&env, "w.test", "w.pem", &log, "w-state", &addr);
    let (status, body) = post(
        w.addr.clone(),
        AddCheckpoint::encode(3, &[], &note(&forked, 3)),
    )
    .await;
    assert_eq!(status, 409, "after restart: {body}");
    // A fork that grows, with a proof valid for the forked tree: the proof does not reach the root it
    // cosigned (422).
    let fork_proof = forked.consistency_proof(3, 6).unwrap();
    let (status, body) = post(
        w.addr.clone(),
        AddCheckpoint::encode(3, &fork_proof, &note(&forked, 6)),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    // The honest extension is cosigned.
    let proof = good.consistency_proof(3, 6).unwrap();
    let (status, body) = post(
        w.addr.clone(),
        AddCheckpoint::encode(3, &proof, &note(&good, 6)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A checkpoint not signed by the configured log key: 403.
    let stranger = Checkpoint {
        origin: origin.into(),
        size: 7,
        root: good.root_at(7).unwrap(),
    }
    .sign(&ed25519_dalek::SigningKey::from_bytes(&[1; 32]));
    let (status, _) = post(
        w.addr.clone(),
        AddCheckpoint::encode(6, &good.consistency_proof(6, 7).unwrap(), &stranger),
    )
    .await;
    assert_eq!(status, 403);
}

/// Waits (up to 60 s) until every replica is ready at `transitions`.
async fn wait_ready(
    env: &Env,
    cluster: &[concord_cli::process::CoordinatorProcess],
    transitions: u64,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut ok = true;
        for c in cluster {
            match env.status(c).await {
                Ok(s) if s.state == "ready" && s.transitions == transitions => {}
                _ => ok = false,
            }
        }
        if ok {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replicas were not all ready at {transitions} transitions within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t134_old_disks_restored_on_a_witnessed_cluster_are_refused_even_by_a_new_data_owner() {
    let env = Env::new();
    let mut cluster = env.start_cluster(3);
    env.leader_index(&cluster, Duration::from_secs(30)).await;
    let first = env.set(
        &cluster[0],
        "manifest-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(first.status.success(), "{}", describe(&first));
    let v = verify_state(&env, &cluster[0], "manifest-v1.json", &[]);
    assert!(v.status.success(), "{}", describe(&v));
    let id = stdout_line(&env.concord(&["deployment-id", "-m", "manifest-v1.json"]));
    let log = format!("{id}={}", kept_key(&env));
    let (k1, k2) = (
        keygen_witness(&env, "w1.pem"),
        keygen_witness(&env, "w2.pem"),
    );
    let _w1 = start_witness(&env, "w1.test", "w1.pem", &log, "w1-state", ANY_PORT);
    let _w2 = start_witness(&env, "w2.test", "w2.pem", &log, "w2-state", ANY_PORT);
    let listed = [
        ("w1.test", k1.as_str(), _w1.addr.as_str()),
        ("w2.test", k2.as_str(), _w2.addr.as_str()),
    ];
    write_manifest_with_witnesses(&env, "manifest-w2.json", 2, &listed, 2);
    let second = env.set(
        &cluster[0],
        "manifest-w2.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(second.status.success(), "{}", describe(&second));
    let second = stdout_line(&second);
    let v = verify_state(
        &env,
        &cluster[1],
        "manifest-w2.json",
        &["--checkpoint-only"],
    );
    assert!(v.status.success(), "{}", describe(&v));

    // The host keeps copies of every disk at 2 transitions (a full outage, or a backup).
    for c in cluster.iter_mut() {
        c.kill();
    }
    for i in 0..3 {
        copy_dir(
            &env.path(&format!("node-{i}")),
            &env.path(&format!("node-{i}-copy")),
        );
    }
    for c in cluster.iter_mut() {
        c.restart(&env.flags("coordinator.policy")).unwrap();
    }
    for i in [0, 2] {
        let r = env.recover(&cluster[1], i, &["--expect-latest", &second]);
        assert!(r.status.success(), "{}", describe(&r));
    }
    wait_ready(&env, &cluster, 2).await;
    // Two more updates, witnessed and followed.
    for version in [3u32, 4] {
        let name = format!("manifest-w{version}.json");
        write_manifest_with_witnesses(&env, &name, version, &listed, 2);
        let s = env.set(&cluster[0], &name, &["--owner-key", "owner.pem"]);
        assert!(s.status.success(), "{}", describe(&s));
    }
    let v = verify_state(
        &env,
        &cluster[2],
        "manifest-w4.json",
        &["--checkpoint-only"],
    );
    assert!(v.status.success(), "{}", describe(&v));
    assert!(
        stderr(&v).contains("2 of 2 witnesses cosigned"),
        "{}",
        describe(&v)
    );

    // Full outage; the host restores the old disks (2 transitions) everywhere.
    for c in cluster.iter_mut() {
        c.kill();
    }
    for i in 0..3 {
        copy_dir(
            &env.path(&format!("node-{i}-copy")),
            &env.path(&format!("node-{i}")),
        );
    }
    for c in cluster.iter_mut() {
        c.restart(&env.flags("coordinator.policy")).unwrap();
    }
    // The share owner with the kept checkpoint refuses, naming the rollback.
    let r = env.recover(&cluster[1], 0, &["--state-dir", "state"]);
    assert_eq!(r.status.code(), Some(3), "{}", describe(&r));
    assert!(stderr(&r).contains("ROLLBACK"), "{}", describe(&r));
    // Had the owners gone ahead anyway:
    for i in [0, 2] {
        let r = env.recover(&cluster[1], i, &["--accept-unverified-latest"]);
        assert!(r.status.success(), "{}", describe(&r));
    }
    wait_ready(&env, &cluster, 2).await;
    // the data owner who kept a checkpoint: ROLLBACK;
    let v = verify_state(
        &env,
        &cluster[0],
        "manifest-w2.json",
        &["--checkpoint-only"],
    );
    assert_eq!(v.status.code(), Some(3), "{}", describe(&v));
    assert!(stderr(&v).contains("ROLLBACK"), "{}", describe(&v));
    // a new data owner, with no state at all: the witnesses, which cosigned 4 transitions, refuse the
    // 2-transition checkpoint, so it carries no cosignature and verify refuses it.
    let fresh = env.verify(
        &cluster[2],
        "manifest-w2.json",
        "verify-fresh",
        &["--state-dir", "fresh-state"],
    );
    assert_eq!(fresh.status.code(), Some(3), "{}", describe(&fresh));
    assert!(
        stderr(&fresh).contains("0 valid witness cosignatures"),
        "{}",
        describe(&fresh)
    );
}
