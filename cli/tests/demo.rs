//! The README's first command: `concord demo` runs end to end and leaves what it promises.

use std::process::Command;

#[test]
fn the_demo_runs_end_to_end_and_leaves_its_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    assert!(stderr.contains("INSECURE: simulated attestation"));
    for f in [
        "verify/history.json",
        "verify/coordinator-root-ca.pem",
        "verify/mesh-ca.pem",
        "seed-shares/seed-share-0.json",
        "workload-web/tls-config/certChain.pem",
        "workload-web/secrets/workload-secret-seed",
        "logs/node-0.log",
        "logs/node-2.log",
        "manifest-v2.json",
    ] {
        assert!(
            dir.path().join(f).exists(),
            "{f} is missing; demo output:\n{stderr}"
        );
    }
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("verify/history.json")).unwrap())
            .unwrap();
    assert_eq!(bundle["transitions"].as_array().unwrap().len(), 2);
    assert!(stderr.contains("caught, as it must be"), "{stderr}");

    // No secret the run produced appears in any log: the workload secret, the workload key,
    // the seed share files' ciphertexts, the owner and share owner private keys.
    let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
    let mut secrets = vec![
        read("workload-web/secrets/workload-secret-seed")
            .trim()
            .to_string(),
    ];
    let key_pem = read("workload-web/tls-config/key.pem");
    secrets.extend(
        key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::to_string),
    );
    for i in 0..3 {
        secrets.push(
            read(&format!("keys/share-owner-{i}.key"))
                .trim()
                .to_string(),
        );
        let share: serde_json::Value =
            serde_json::from_str(&read(&format!("seed-shares/seed-share-{i}.json"))).unwrap();
        secrets.push(share["ciphertext"].as_str().unwrap().to_string());
    }
    let owner = read("keys/owner.pem");
    secrets.extend(
        owner
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::to_string),
    );
    let logs: String = std::fs::read_dir(dir.path().join("logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
        + &stderr;
    for s in secrets.iter().filter(|s| s.len() >= 16) {
        assert!(!logs.contains(s.as_str()), "a secret appears in the logs");
    }
    assert!(
        !logs.contains('\u{1b}'),
        "log files must not carry terminal colors"
    );
}
