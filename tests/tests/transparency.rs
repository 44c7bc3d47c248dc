//! The transparency log (issue 13, docs/PROTOCOL.md §14) against the real binaries: checkpoints and
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

    let first = env.set(&cluster[0], "manifest-v1.json", &["--owner-key", "owner.pem"]);
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
    assert!(stderr(&audit).contains("proof clean"), "{}", describe(&audit));
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
    let h = proof["inclusion"][0]["proof"][0].as_str().unwrap().to_string();
    let flipped = format!("{}{}", if &h[..1] == "0" { "1" } else { "0" }, &h[1..]);
    proof["inclusion"][0]["proof"][0] = serde_json::Value::String(flipped);
    std::fs::write(
        env.path("proof-bad.json"),
        serde_json::to_vec(&proof).unwrap(),
    )
    .unwrap();
    let bad = env.concord(&["history", "audit", "proof-bad.json", "--checkpoint-key", &key]);
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
