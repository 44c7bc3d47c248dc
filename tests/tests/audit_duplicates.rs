//! Audit bundles with duplicate JSON members (issue 9.8): parsers disagree on which of two equal
//! names wins, so `concord history audit` and the independent auditor refuse them (PROTOCOL.md §10).
//! And an audit with no pin says loudly that it checked self-consistency only.

use concord_tests::{Env, describe, have, stdout_line};

/// A real bundle of two transitions (pretty JSON, as `concord verify --out` writes it) and the
/// first transition hash.
fn bundle(env: &Env) -> (String, String) {
    let c = env.start_coordinator("c1");
    let first = env.set(&c, "manifest-v1.json", &["--owner-key", "owner.pem"]);
    assert!(first.status.success(), "{}", describe(&first));
    let up = env.set(&c, "manifest-v2.json", &["--owner-key", "owner.pem"]);
    assert!(up.status.success(), "{}", describe(&up));
    let v = env.verify(&c, "manifest-v2.json", "verify", &[]);
    assert!(v.status.success(), "{}", describe(&v));
    let text = String::from_utf8(std::fs::read(env.path("verify/history.json")).unwrap()).unwrap();
    (text, stdout_line(&first))
}

fn audit(env: &Env, text: &str, extra: &[&str]) -> std::process::Output {
    std::fs::write(env.path("candidate.json"), text).unwrap();
    let root = hex::encode(env.d.root.hash());
    let mut args = vec![
        "history",
        "audit",
        "candidate.json",
        "--insecure-simulated-root",
        &root,
    ];
    args.extend_from_slice(extra);
    env.concord(&args)
}

/// Inserts `member` (a `"name": value` pair) as the first member of the object that starts right
/// after the first occurrence of `opening` in `text`.
fn insert_after(text: &str, opening: &str, member: &str) -> String {
    let at = text.find(opening).expect("the bundle has the object") + opening.len();
    format!("{}\n    {member},{}", &text[..at], &text[at..])
}

#[test]
fn t98_duplicate_members_are_refused_by_both_auditors() {
    let env = Env::new();
    let (text, _) = bundle(&env);
    let clean = audit(&env, &text, &[]);
    assert!(clean.status.success(), "{}", describe(&clean));

    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let policy = value["policies"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap();
    // Two entries for one policy hash: a first one with another document, then the real one.
    // serde_json keeps the last, so without the check the bundle audited clean (exit 0), while a
    // parser that keeps the first sees a policy document that does not hash to its name.
    let policies = insert_after(
        &text,
        "\"policies\": {",
        &format!("\"{policy}\": \"b3RoZXIgZG9jdW1lbnQ=\""),
    );
    // A transition with its manifest given twice.
    let manifest = value["transitions"][1]["manifest"].as_str().unwrap();
    let transition = {
        let at = text.find("\"index\": 1,").unwrap();
        format!(
            "{}\"manifest\": \"{}\",\n      {}",
            &text[..at],
            manifest,
            &text[at..]
        )
    };
    // A top-level member given twice, the same value both times.
    let top = insert_after(&text, "{", "\"format\": \"concord-history-v1\"");

    for (name, candidate) in [
        ("policies", &policies),
        ("transition", &transition),
        ("top level", &top),
    ] {
        assert_ne!(candidate, &text);
        let out = audit(&env, candidate, &[]);
        assert_eq!(out.status.code(), Some(3), "{name}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("twice") || stderr.contains("duplicate"),
            "{name}: {}",
            describe(&out)
        );
        independent_auditor_refuses(&env, name, candidate);
    }
}

/// The independent Python auditor (written from PROTOCOL.md alone) refuses `candidate` with 3.
/// Skipped where Python's `cryptography` is missing, as in `audit_bundle.rs`.
fn independent_auditor_refuses(env: &Env, name: &str, candidate: &str) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("independent/audit_bundle.py");
    let ok = have("python3")
        && std::process::Command::new("python3")
            .args(["-c", "import cryptography"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run the independent auditor: install python3 and cryptography"
        );
        eprintln!("skipped the independent auditor: python3 with cryptography is not available");
        return;
    }
    std::fs::write(env.path("independent.json"), candidate).unwrap();
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(env.path("independent.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{name}: {}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("duplicate")
            || String::from_utf8_lossy(&out.stdout).contains("duplicate"),
        "{name}: {}",
        describe(&out)
    );
}

#[test]
fn t98_an_audit_without_a_pin_says_it_checked_self_consistency_only() {
    let env = Env::new();
    let (text, first) = bundle(&env);
    std::fs::write(env.path("history.json"), &text).unwrap();

    // No pin at all: clean, but loudly only self-consistent, in the warning and in the verdict.
    let unpinned = env.concord(&["history", "audit", "history.json"]);
    let stderr = String::from_utf8_lossy(&unpinned.stderr);
    assert!(
        stderr.contains("WARNING: self-consistency only"),
        "{}",
        describe(&unpinned)
    );
    // (Simulated evidence is refused without --insecure-simulated-root: exit 3, warning still given.)
    assert_eq!(unpinned.status.code(), Some(3), "{}", describe(&unpinned));

    // Pinned by the simulated root only: clean, and no such warning.
    let rooted = audit(&env, &text, &[]);
    assert!(rooted.status.success(), "{}", describe(&rooted));
    assert!(
        !String::from_utf8_lossy(&rooted.stderr).contains("self-consistency only"),
        "{}",
        describe(&rooted)
    );

    // The deployment pin: the right one passes, another one fails with 3.
    let pinned = audit(&env, &text, &["--deployment", &first]);
    assert!(pinned.status.success(), "{}", describe(&pinned));
    let other = format!("{:064x}", 7);
    let wrong = audit(&env, &text, &["--deployment", &other]);
    assert_eq!(wrong.status.code(), Some(3), "{}", describe(&wrong));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("another deployment"),
        "{}",
        describe(&wrong)
    );
    // The signing key pin.
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let key = value["signing_key"].as_str().unwrap();
    let signed = audit(&env, &text, &["--signing-key", key]);
    assert!(signed.status.success(), "{}", describe(&signed));
    let wrong_key = audit(&env, &text, &["--signing-key", &"ab".repeat(32)]);
    assert_eq!(wrong_key.status.code(), Some(3), "{}", describe(&wrong_key));
}
