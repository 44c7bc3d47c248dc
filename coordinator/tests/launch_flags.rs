//! The coordinator binary's launch flags: refusals are usage errors (exit 2) that say what to do.

use std::process::Command;

fn coordinator(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concord-coordinator"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn simulated_attestation_needs_the_insecure_switch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = coordinator(&["--data-dir", data, "--platform", "simulated"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-simulated-attestation"));
}

#[test]
fn snp_is_refused_clearly_until_it_is_supported() {
    let dir = tempfile::tempdir().unwrap();
    let out = coordinator(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--platform",
        "snp",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SEV-SNP"));
}

#[test]
fn a_missing_simulated_root_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = coordinator(&[
        "--data-dir",
        d,
        "--platform",
        "simulated",
        "--insecure-simulated-attestation",
        "--simulated-root",
        "/nonexistent",
        "--simulated-policy",
        "/nonexistent",
        "--simulated-measurement",
        "00",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
}

#[test]
fn check_config_prints_the_derived_statefulset_peers_and_starts_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_concord-coordinator"))
        .args(["--check-config", "--statefulset-peers"])
        .env("CONCORD_DATA_DIR", "/nonexistent/data")
        .env("POD_NAME", "concord-1")
        .env("POD_NAMESPACE", "prod")
        .env("CONCORD_PEER_SERVICE", "concord-peers")
        .env("CONCORD_INITIAL_REPLICAS", "3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["node_id"], 2);
    assert_eq!(
        config["peers"]["3"],
        "concord-2.concord-peers.prod.svc.cluster.local:7778"
    );
    assert_eq!(config["health_listen"], "0.0.0.0:9102");
    assert!(!std::path::Path::new("/nonexistent/data").exists());
}

#[test]
fn check_config_refuses_a_bad_pod_name_and_mixed_peer_modes_as_usage_errors() {
    let out = coordinator(&[
        "--check-config",
        "--data-dir",
        "d",
        "--statefulset-peers",
        "--pod-name",
        "concord",
        "--peer-service",
        "p",
        "--namespace",
        "n",
        "--initial-replicas",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME-ORDINAL"));

    let out = coordinator(&[
        "--check-config",
        "--data-dir",
        "d",
        "--statefulset-peers",
        "--peer",
        "1=a:7778",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
