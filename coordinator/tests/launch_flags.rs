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
fn snp_outside_an_snp_guest_says_so_and_what_to_do() {
    if std::path::Path::new("/dev/sev-guest").exists() {
        eprintln!("skipped: this machine is an SEV-SNP guest");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = coordinator(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--platform",
        "snp",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no SEV-SNP guest device at /dev/sev-guest"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--platform simulated --insecure-simulated-attestation"),
        "{stderr}"
    );
}

#[test]
fn an_unreadable_snp_reference_is_a_usage_error_before_the_device_is_tried() {
    let dir = tempfile::tempdir().unwrap();
    let out = coordinator(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--platform",
        "snp",
        "--snp-reference",
        "/nonexistent/own.json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--snp-reference /nonexistent/own.json"),
        "{stderr}"
    );
}

#[test]
fn check_config_shows_the_snp_flags_and_their_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_concord-coordinator"))
        .args(["--check-config", "--data-dir", "/var/lib/concord"])
        .env("CONCORD_VCEK_DIR", "/etc/concord/vcek")
        .env("CONCORD_SNP_REFERENCE", "/etc/concord/snp/reference.json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let platform = &config["platform"];
    assert_eq!(platform["kind"], "snp");
    assert_eq!(platform["kds_url"], "https://kdsintf.amd.com");
    assert_eq!(platform["vcek_cache_dir"], "/var/lib/concord/vcek-cache");
    assert_eq!(platform["vcek_dir"], "/etc/concord/vcek");
    assert_eq!(platform["snp_reference"], "/etc/concord/snp/reference.json");

    let out = coordinator(&["--check-config", "--data-dir", "d", "--kds-url", "off"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn check_config_refuses_a_bad_kds_url_and_an_snp_reference_on_the_simulated_platform() {
    let out = coordinator(&[
        "--check-config",
        "--data-dir",
        "d",
        "--kds-url",
        "kdsintf.amd.com",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kds-url"));

    let out = coordinator(&[
        "--check-config",
        "--data-dir",
        "d",
        "--platform",
        "simulated",
        "--insecure-simulated-attestation",
        "--simulated-root",
        "r",
        "--simulated-policy",
        "p",
        "--simulated-measurement",
        &"00".repeat(48),
        "--snp-reference",
        "own.json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--snp-reference is for --platform snp"));
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

#[test]
fn check_config_shows_the_revocation_and_tdx_collateral_flags() {
    let out = coordinator(&["--check-config", "--data-dir", "/var/lib/concord"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let platform = &config["platform"];
    assert_eq!(platform["accept_stale_amd_crl_for_seconds"], 0);
    assert_eq!(
        platform["pccs_url"],
        "https://api.trustedservices.intel.com"
    );
    assert_eq!(
        platform["tdx_collateral_cache_dir"],
        "/var/lib/concord/tdx-collateral-cache"
    );

    let out = coordinator(&[
        "--check-config",
        "--data-dir",
        "d",
        "--pccs-url",
        "off",
        "--accept-stale-amd-crl-for",
        "3d",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        config["platform"]["accept_stale_amd_crl_for_seconds"],
        3 * 86_400
    );

    for bad in [
        ["--pccs-url", "pccs.example"],
        ["--accept-stale-amd-crl-for", "31d"],
    ] {
        let mut args = vec!["--check-config", "--data-dir", "d"];
        args.extend(bad);
        let out = coordinator(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains(bad[0]), "{stderr}");
    }
}

#[test]
fn tdx_needs_its_collateral_and_outside_a_tdx_guest_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // No collateral at all: no file, the PCS off, no operator directory.
    let out = coordinator(&["--data-dir", data, "--platform", "tdx", "--pccs-url", "off"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--tdx-collateral"), "{stderr}");
    // The PCS by default: the launch needs this TD's own quote to ask for its FMSPC.
    let out = coordinator(&["--data-dir", data, "--platform", "tdx"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !std::path::Path::new("/sys/kernel/config/tsm/report").exists() {
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("mount -t configfs"), "{stderr}");
    }
    if std::path::Path::new("/sys/kernel/config/tsm/report").exists() {
        eprintln!("skipped the rest: this machine has configfs-tsm");
        return;
    }
    let collateral = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../attestation/src/tdx/vectors/tdx_quote_collateral.json"
    );
    let out = coordinator(&[
        "--data-dir",
        data,
        "--platform",
        "tdx",
        "--tdx-collateral",
        collateral,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no configfs-tsm report interface") && stderr.contains("mount -t configfs"),
        "{stderr}"
    );
}
