//! The initializer's `--check-config`: the configuration as JSON, nothing started; bad flags exit 2.

use std::process::Command;

#[test]
fn check_config_prints_the_configuration_without_connecting() {
    let out = Command::new(env!("CARGO_BIN_EXE_concord-initializer"))
        .args(["--check-config", "--manifest", "/nonexistent/manifest.json"])
        .env("CONCORD_COORDINATOR", "coordinator-ready.prod:7777")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["coordinator"], "coordinator-ready.prod:7777");
    assert_eq!(config["root"], "/contrast");
    assert_eq!(config["platform"]["kind"], "snp");
}

#[test]
fn check_config_refuses_simulated_attestation_without_its_switch() {
    let out = Command::new(env!("CARGO_BIN_EXE_concord-initializer"))
        .args([
            "--check-config",
            "--manifest",
            "m.json",
            "--platform",
            "simulated",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-simulated-attestation"));
}
