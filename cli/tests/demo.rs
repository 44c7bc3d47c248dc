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
        "logs/coordinator.log",
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
}
