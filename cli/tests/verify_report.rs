//! `concord attestation verify-report`: the real binary on real SEV-SNP reports. Exit 0 and
//! `accepted: true` for a good report, exit 3 with the reason for a bad one, exit 1 when an input
//! cannot be read, and DER and PEM certificates alike.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use concord_attestation::testing::snp::{self as vectors, Vector};
use concord_attestation::{Measurement, SnpReference};

const AT: &str = vectors::AT;

struct Run {
    code: Option<i32>,
    json: Option<serde_json::Value>,
    stderr: String,
}

fn run(args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["attestation", "verify-report"])
        .args(args)
        .output()
        .unwrap();
    Run {
        code: status.code(),
        json: serde_json::from_slice(&stdout).ok(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn write_reference(dir: &Path, entry: &SnpReference) -> PathBuf {
    let path = dir.join("reference.json");
    std::fs::write(&path, serde_json::to_vec_pretty(entry).unwrap()).unwrap();
    path
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The arguments that verify `v` with `entry` at the pinned time.
fn args_for(v: &Vector, reference: &Path) -> Vec<String> {
    vec![
        "--report".into(),
        path_str(&vectors::path(v.report_file)).into(),
        "--cert".into(),
        path_str(&vectors::path(v.cert_file)).into(),
        "--reference".into(),
        path_str(reference).into(),
        "--at".into(),
        AT.into(),
        // No real AMD CRL is among the vectors: the tests below judge everything else, and
        // `revocation_*` judge the CRL.
        "--no-revocation-check".into(),
    ]
}

fn run_vector(v: &Vector, entry: &SnpReference, extra: &[&str]) -> Run {
    run_vector_at(v, entry, AT, extra)
}

fn run_vector_at(v: &Vector, entry: &SnpReference, at: &str, extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let reference = write_reference(dir.path(), entry);
    let mut args = args_for(v, &reference);
    args[7] = at.into();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&args)
}

#[test]
fn a_good_report_is_accepted_with_exit_0_and_its_claims() {
    let v = vectors::virtee_milan();
    let report_data = hex::encode(v.report_data());
    let r = run_vector(&v, &v.reference(), &["--report-data", &report_data]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let json = r.json.expect("one JSON object on stdout");
    assert_eq!(json["accepted"], true);
    assert!(json.get("reason").is_none());
    assert_eq!(
        json["unchecked"],
        serde_json::json!(["host_data", "revocation"])
    );
    assert_eq!(json["at"], AT);
    let claims = &json["claims"];
    assert_eq!(claims["product"], "Milan");
    assert_eq!(claims["version"], 2);
    assert_eq!(claims["vmpl"], 0);
    assert_eq!(claims["policy"], "0x30000");
    assert_eq!(claims["policy_flags"]["debug"], false);
    assert_eq!(claims["policy_flags"]["migrate_ma"], false);
    assert_eq!(claims["policy_flags"]["smt"], true);
    assert_eq!(claims["signing_key"], "VCEK");
    assert_eq!(claims["measurement"], hex::encode(v.report().measurement()));
    assert_eq!(claims["report_data"], report_data);
    assert_eq!(claims["chip_id"], hex::encode(v.report().chip_id()));
    assert_eq!(
        claims["reported_tcb"],
        serde_json::json!({"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115})
    );
}

#[test]
fn der_and_pem_certificates_are_both_accepted() {
    // DER; PEM with the VCEK alone; PEM with the VCEK, the ASK and the ARK.
    for v in [
        vectors::trustee_genoa_e2e(),
        vectors::azure_genoa(),
        vectors::azure_milan(),
    ] {
        let r = run_vector(&v, &v.reference(), &[]);
        assert_eq!(r.code, Some(0), "{}: {}", v.name, r.stderr);
        let json = r.json.unwrap();
        assert_eq!(json["accepted"], true, "{}", v.name);
        assert_eq!(
            json["claims"]["product"],
            format!("{:?}", v.product),
            "{}",
            v.name
        );
    }
    // Without --report-data the report's own value is not checked, and the output says so.
    let v = vectors::azure_genoa();
    let json = run_vector(&v, &v.reference(), &[]).json.unwrap();
    assert_eq!(
        json["unchecked"],
        serde_json::json!(["host_data", "revocation", "report_data"])
    );
}

#[test]
fn a_rejected_report_exits_3_with_its_reason() {
    let v = vectors::virtee_milan();
    let untrusted = SnpReference {
        trusted_measurements: vec![Measurement([0x5A; 48])],
        ..v.reference()
    };
    let r = run_vector(&v, &untrusted, &[]);
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    let json = r.json.unwrap();
    assert_eq!(json["accepted"], false);
    assert_eq!(json["reason_code"], "measurement_not_trusted");
    assert!(
        json["reason"]
            .as_str()
            .unwrap()
            .contains("measurement not trusted")
    );
    assert_eq!(
        json["claims"]["measurement"],
        hex::encode(v.report().measurement())
    );
    assert!(r.stderr.contains("measurement not trusted"), "{}", r.stderr);

    // report_data other than the expected binding.
    let r = run_vector(&v, &v.reference(), &["--report-data", &"00".repeat(64)]);
    assert_eq!(r.code, Some(3));
    assert_eq!(r.json.unwrap()["reason_code"], "report_data_mismatch");

    // The debug report, and the VLEK report (VMPL 1), with their own reasons.
    let debug = vectors::go_sev_guest_debug();
    let strict = SnpReference {
        allow_debug: false,
        ..debug.reference()
    };
    let r = run_vector(&debug, &strict, &[]);
    assert_eq!(
        (r.code, r.json.unwrap()["reason_code"].clone()),
        (Some(3), "debug_allowed".into())
    );
    let vlek = vectors::trustee_vlek();
    let r = run_vector_at(&vlek, &vlek.reference(), "2025-06-01T00:00:00Z", &[]);
    let json = r.json.unwrap();
    assert_eq!(
        (r.code, json["reason_code"].clone()),
        (Some(3), "vmpl".into())
    );
    assert_eq!(json["claims"]["signing_key"], "VLEK");
}

#[test]
fn the_time_of_check_defaults_to_now() {
    // The VLEK expired on 2025-12-10.
    let v = vectors::trustee_vlek();
    let dir = tempfile::tempdir().unwrap();
    let reference = write_reference(dir.path(), &v.reference());
    let r = run(&[
        "--report",
        path_str(&vectors::path(v.report_file)),
        "--cert",
        path_str(&vectors::path(v.cert_file)),
        "--reference",
        path_str(&reference),
    ]);
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert_eq!(r.json.unwrap()["reason_code"], "certificate_expired");
}

#[test]
fn a_report_of_the_wrong_length_is_a_rejection() {
    let v = vectors::virtee_milan();
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.bin");
    std::fs::write(&short, &v.report[..1000]).unwrap();
    let reference = write_reference(dir.path(), &v.reference());
    let mut args = args_for(&v, &reference);
    args[1] = path_str(&short).into();
    let r = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    let json = r.json.unwrap();
    assert_eq!(json["reason_code"], "report_length");
    assert!(
        json.get("claims").is_none(),
        "no claims from a report that does not parse"
    );
}

#[test]
fn unreadable_input_exits_1_without_a_verdict() {
    let v = vectors::virtee_milan();
    let dir = tempfile::tempdir().unwrap();
    let reference = write_reference(dir.path(), &v.reference());
    let base = args_for(&v, &reference);
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, b"not a certificate").unwrap();
    let unknown_field = dir.path().join("unknown-field.json");
    let mut entry = serde_json::to_value(v.reference()).unwrap();
    entry["allow_everything"] = true.into();
    std::fs::write(&unknown_field, entry.to_string()).unwrap();
    let whole_manifest = dir.path().join("manifest.json");
    std::fs::write(&whole_manifest, r#"{"snp": []}"#).unwrap();

    let cases: [(usize, &str, &str); 7] = [
        (1, "/nonexistent/report.bin", "cannot read"),
        (3, "/nonexistent/vcek.der", "cannot read"),
        (3, path_str(&garbage), "not a DER or PEM X.509 certificate"),
        (
            5,
            path_str(&unknown_field),
            "unknown field `allow_everything`",
        ),
        (
            5,
            path_str(&whole_manifest),
            "not one reference_values.snp entry",
        ),
        (7, "2026-13-01", "--at"),
        (7, "yesterday", "RFC 3339"),
    ];
    for (position, value, message) in cases {
        let mut args = base.clone();
        args[position] = value.into();
        let r = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(r.code, Some(1), "{value}: {}", r.stderr);
        assert!(r.json.is_none(), "{value}: no verdict on stdout");
        assert!(r.stderr.contains(message), "{value}: {}", r.stderr);
    }
    let mut args = base.clone();
    args.extend(["--report-data".into(), "abcd".into()]);
    let r = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("--report-data"), "{}", r.stderr);
}

#[test]
fn the_help_says_what_is_not_checked() {
    let out = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["attestation", "verify-report", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("HOST_DATA is not checked"), "{help}");
    assert!(
        help.contains("Without --report-data, report_data is not checked"),
        "{help}"
    );
}

/// `args_for` without `--no-revocation-check`.
fn run_with_revocation(v: &Vector, at: &str, extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let reference = write_reference(dir.path(), &v.reference());
    let mut args = args_for(v, &reference);
    args[7] = at.into();
    args.pop();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&args)
}

#[test]
fn revocation_without_a_crl_is_rejected_with_exit_3() {
    let v = vectors::virtee_milan();
    let r = run_with_revocation(&v, AT, &[]);
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    let json = r.json.expect("one JSON object on stdout");
    assert_eq!(json["accepted"], false);
    assert_eq!(json["reason_code"], "crl_missing", "{json}");
    // With the named switch, the same report is accepted and the JSON says what was not checked.
    let r = run_vector(&v, &v.reference(), &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let unchecked = r.json.unwrap()["unchecked"].clone();
    assert!(
        unchecked.as_array().unwrap().contains(&"revocation".into()),
        "{unchecked}"
    );
}

#[test]
fn revocation_a_crl_not_signed_by_amds_root_is_rejected() {
    use concord_attestation::testing::amd;
    let v = vectors::virtee_milan();
    let dir = tempfile::tempdir().unwrap();
    let forged = dir.path().join("milan.crl");
    std::fs::write(
        &forged,
        amd::milan().crl_as_pinned_ark(concord_attestation::Product::Milan, &[]),
    )
    .unwrap();
    let r = run_with_revocation(&v, "2026-01-02T00:00:00Z", &["--crl", path_str(&forged)]);
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert_eq!(r.json.unwrap()["reason_code"], "crl_signature");
    // An unreadable CRL file is an input error.
    let r = run_with_revocation(
        &v,
        AT,
        &["--crl", path_str(&dir.path().join("missing.crl"))],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    // The switches exclude each other.
    let r = run_vector(&v, &v.reference(), &["--crl", path_str(&forged)]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
}
