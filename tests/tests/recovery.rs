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
    ]);
    assert_eq!(wrong.status.code(), Some(1), "{}", describe(&wrong));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("encrypted to"),
        "{}",
        describe(&wrong)
    );

    // Below threshold: accepted, not ready.
    let one = env.recover(&c, 0, &[]);
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
    ]);
    assert_eq!(foreign.status.code(), Some(1), "{}", describe(&foreign));
    assert!(
        String::from_utf8_lossy(&foreign.stderr).contains("another deployment"),
        "{}",
        describe(&foreign)
    );

    // The second owner: ready, and the history is the one from before the outage.
    let two = env.recover(&c, 2, &[]);
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
    let again = env.recover(&c, 1, &[]);
    assert_eq!(again.status.code(), Some(1), "{}", describe(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("nothing to recover"),
        "{}",
        describe(&again)
    );
}
