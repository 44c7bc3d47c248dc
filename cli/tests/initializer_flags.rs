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

#[test]
fn snp_is_accepted_like_the_coordinator_and_fails_clearly_outside_a_guest() {
    let out = Command::new(env!("CARGO_BIN_EXE_concord-initializer"))
        .args([
            "--check-config",
            "--manifest",
            "m.json",
            "--platform",
            "snp",
        ])
        .env("CONCORD_VCEK_DIR", "/etc/concord/vcek")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["platform"]["kds_url"], "https://kdsintf.amd.com");
    assert_eq!(config["platform"]["vcek_dir"], "/etc/concord/vcek");
    assert_eq!(
        config["platform"]["vcek_cache_dir"],
        serde_json::Value::Null
    );

    if std::path::Path::new("/dev/sev-guest").exists() {
        eprintln!("skipped the device part: this machine is an SEV-SNP guest");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_concord-initializer"))
        .args(["--manifest", "/nonexistent/m.json", "--platform", "snp"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no SEV-SNP guest device at /dev/sev-guest"),
        "{stderr}"
    );
}
