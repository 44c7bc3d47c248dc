//! User recovery after a full outage, against the real binaries: the coordinator restarts recovering,
//! seed share owners each submit their own share with `concord recover`, and it serves again.

use concord_tests::{Env, describe, stdout_line};

#[test]
fn full_outage_then_threshold_recovery() {
    let env = Env::new();
    let mut c = env.start_coordinator("c1");
    let first = env.set(&c, "manifest-v1.json", &[]);
    assert!(first.status.success(), "{}", describe(&first));
    let first = stdout_line(&first);
    c.kill();

    let c = env.start_coordinator("c1");
    // Recovering: it serves nothing but recovery.
    let v = env.verify(&c, "manifest-v1.json", "verify", &[]);
    assert_eq!(v.status.code(), Some(1), "{}", describe(&v));
    assert!(
        String::from_utf8_lossy(&v.stderr).contains("recovering"),
        "{}",
        describe(&v)
    );

    // The wrong key for a share: refused locally, nothing sent.
    let wrong = env.concord(&[
        "recover",
        "--share",
        "shares/seed-share-0.json",
        "--key",
        "share-owner-1.key",
        "-m",
        "manifest-v1.json",
        "-c",
        &c.user_addr.to_string(),
        "--insecure-simulated-attestation",
        "--expect-latest",
        &first,
    ]);
    assert_eq!(wrong.status.code(), Some(1), "{}", describe(&wrong));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("encrypted to"),
        "{}",
        describe(&wrong)
    );

    // Below threshold: accepted, not ready.
    let one = env.recover(&c, 0, &["--expect-latest", &first]);
    assert!(one.status.success(), "{}", describe(&one));
    assert!(
        String::from_utf8_lossy(&one.stderr).contains("1 of the 2"),
        "{}",
        describe(&one)
    );
    assert_eq!(
        env.verify(&c, "manifest-v1.json", "verify", &[])
            .status
            .code(),
        Some(1)
    );

    // A share of another deployment: refused, named.
    let other = Env::new();
    let oc = other.start_coordinator("o1");
    assert!(other.set(&oc, "manifest-v1.json", &[]).status.success());
    std::fs::copy(
        other.path("shares/seed-share-2.json"),
        env.path("shares/foreign.json"),
    )
    .unwrap();
    std::fs::copy(other.path("share-owner-2.key"), env.path("foreign.key")).unwrap();
    let foreign = env.concord(&[
        "recover",
        "--share",
        "shares/foreign.json",
        "--key",
        "foreign.key",
        "-m",
        "manifest-v1.json",
        "-c",
        &c.user_addr.to_string(),
        "--insecure-simulated-attestation",
        "--expect-latest",
        &first,
    ]);
    assert_eq!(foreign.status.code(), Some(1), "{}", describe(&foreign));
    assert!(
        String::from_utf8_lossy(&foreign.stderr).contains("another deployment"),
        "{}",
        describe(&foreign)
    );

    // The second owner: ready, and the history is the one from before the outage.
    let two = env.recover(&c, 2, &["--expect-latest", &first]);
    assert!(two.status.success(), "{}", describe(&two));
    assert!(
        String::from_utf8_lossy(&two.stderr).contains("ready"),
        "{}",
        describe(&two)
    );
    let v = env.verify(&c, "manifest-v1.json", "verify", &["--since", &first]);
    assert!(v.status.success(), "{}", describe(&v));
    assert_eq!(stdout_line(&v), first);

    // It issues certificates again and accepts owner-signed updates.
    let init = env.initializer(&c, "web.policy", "web", "manifest-v1.json", 30);
    assert!(init.status.success(), "{}", describe(&init));
    let up = env.set(&c, "manifest-v2.json", &["--owner-key", "owner.pem"]);
    assert!(up.status.success(), "{}", describe(&up));
    // Nothing left to recover.
    let again = env.recover(&c, 1, &["--since", &first]);
    assert_eq!(again.status.code(), Some(1), "{}", describe(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("nothing to recover"),
        "{}",
        describe(&again)
    );
}

/// Copies a stopped replica's data directory, as a host keeping old disks does.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .expect("cp");
    assert!(out.status.success(), "{}", describe(&out));
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn t93_rollback_after_a_full_outage_is_refused_by_share_owners_and_data_owners() {
    let env = Env::new();
    let mut c = env.start_coordinator("c1");
    let first = env.set(&c, "manifest-v1.json", &[]);
    assert!(first.status.success(), "{}", describe(&first));
    let first = stdout_line(&first);

    // The host keeps a copy of the disk while it holds v1 only (a full outage, or a backup).
    c.kill();
    copy_dir(&env.path("c1"), &env.path("c1-v1-copy"));
    c.restart(&env.flags("coordinator.policy")).unwrap();
    for i in [0, 2] {
        let r = env.recover(&c, i, &["--expect-latest", &first]);
        assert!(r.status.success(), "{}", describe(&r));
    }

    // The owner sets v2 and tells the share owners its hash; a data owner verifies it.
    let second = env.set(&c, "manifest-v2.json", &["--owner-key", "owner.pem"]);
    assert!(second.status.success(), "{}", describe(&second));
    let second = stdout_line(&second);
    let v = env.verify(&c, "manifest-v2.json", "verify-v2", &[]);
    assert!(v.status.success(), "{}", describe(&v));
    // Verifying against the older manifest: the latest is newer, exit 3 unless asked for.
    let old = env.verify(&c, "manifest-v1.json", "verify-v1", &[]);
    assert_eq!(old.status.code(), Some(3), "{}", describe(&old));
    assert!(
        stderr(&old).contains("NEWER") && stderr(&old).contains("--allow-newer"),
        "{}",
        describe(&old)
    );
    let newer = env.verify(&c, "manifest-v1.json", "verify-v1", &["--allow-newer"]);
    assert!(newer.status.success(), "{}", describe(&newer));

    // Full outage; the host restores the old disk (v1 only) and restarts.
    c.kill();
    copy_dir(&env.path("c1-v1-copy"), &env.path("c1"));
    c.restart(&env.flags("coordinator.policy")).unwrap();

    // A share owner who does not say what they expect is told how to find it (usage, nothing sent).
    let bare = env.recover(&c, 0, &[]);
    assert_eq!(bare.status.code(), Some(2), "{}", describe(&bare));
    assert!(
        stderr(&bare).contains("--expect-latest"),
        "{}",
        describe(&bare)
    );
    // With the hash the owner's `concord set` printed: refused before sending, exit 3.
    let exact = env.recover(&c, 0, &["--expect-latest", &second]);
    assert_eq!(exact.status.code(), Some(3), "{}", describe(&exact));
    assert!(stderr(&exact).contains("not sent"), "{}", describe(&exact));
    // With --since: the coordinator itself refuses, naming its latest; exit 3.
    let since = env.recover(&c, 2, &["--since", &second]);
    assert_eq!(since.status.code(), Some(3), "{}", describe(&since));
    assert!(stderr(&since).contains(&first), "{}", describe(&since));
    // The replica took no share: it is still recovering and holds none.
    let status = env.concord(&[
        "status",
        "-m",
        "manifest-v1.json",
        "-c",
        &c.user_addr.to_string(),
        "--insecure-simulated-attestation",
        "--json",
    ]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("recovering"),
        "{}",
        describe(&status)
    );

    // Had the owners gone ahead regardless (the risky override), the data owner would catch it.
    for i in [0, 2] {
        let r = env.recover(&c, i, &["--accept-unverified-latest"]);
        assert!(r.status.success(), "{}", describe(&r));
        assert!(stderr(&r).contains("WARNING"), "{}", describe(&r));
    }
    let v = env.verify(&c, "manifest-v2.json", "verify-after", &[]);
    assert_eq!(v.status.code(), Some(3), "{}", describe(&v));
    assert!(
        stderr(&v).contains("not in the coordinator's history"),
        "{}",
        describe(&v)
    );
}
