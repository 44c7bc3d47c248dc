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
