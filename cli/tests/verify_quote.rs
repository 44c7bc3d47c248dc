//! `concord attestation verify-quote`: the real binary on a real Intel TDX quote with Intel's
//! collateral. Exit 0 and `accepted: true` with the claims for a good quote, exit 3 with the reason
//! for a bad one, exit 1 when an input cannot be read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use concord_attestation::tdx::Quote;

/// 2025-07-01T00:00:00Z: inside the collateral's window.
const AT: &str = "2025-07-01T00:00:00Z";

fn vector(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../attestation/src/tdx/vectors")
        .join(name)
}

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
        .args(["attestation", "verify-quote"])
        .args(args)
        .output()
        .unwrap();
    Run {
        code: status.code(),
        json: serde_json::from_slice(&stdout).ok(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// The quote's own MRTD and MRSEAM, statuses UpToDate and OutOfDate.
fn reference(mrtd: Option<String>) -> serde_json::Value {
    let quote = Quote::parse(&std::fs::read(vector("tdx_quote")).unwrap()).unwrap();
    serde_json::json!({
        "trusted_mrtd": [mrtd.unwrap_or_else(|| hex::encode(quote.report.mrtd))],
        "rtmr": { "0": [hex::encode(quote.report.rtmr[0])] },
        "trusted_mrseam": [hex::encode(quote.report.mrseam)],
        "allowed_tcb_statuses": ["UpToDate", "OutOfDate"],
    })
}

fn run_with(reference: &serde_json::Value, quote: &Path, at: &str, extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let ref_path = dir.path().join("reference.json");
    std::fs::write(&ref_path, serde_json::to_vec(reference).unwrap()).unwrap();
    let mut args = vec![
        "--quote",
        quote.to_str().unwrap(),
        "--collateral",
        vector("tdx_quote_collateral.json").to_str().unwrap(),
        "--reference",
        ref_path.to_str().unwrap(),
        "--at",
        at,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&args)
}

#[test]
fn the_real_quote_is_accepted_with_exit_0_and_its_claims() {
    let quote = Quote::parse(&std::fs::read(vector("tdx_quote")).unwrap()).unwrap();
    let report_data = hex::encode(quote.report.report_data);
    let r = run_with(
        &reference(None),
        &vector("tdx_quote"),
        AT,
        &["--report-data", &report_data],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let json = r.json.expect("one JSON object on stdout");
    assert_eq!(json["accepted"], true);
    assert!(json.get("reason").is_none());
    let claims = &json["claims"];
    for field in [
        "mrtd",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "mrconfigid",
        "mrowner",
        "mrownerconfig",
        "td_attributes",
        "xfam",
        "mrseam",
        "tee_tcb_svn",
        "report_data",
        "fmspc",
        "tcb_status",
        "advisory_ids",
    ] {
        assert!(
            claims.get(field).is_some(),
            "claims.{field} missing: {claims}"
        );
    }
    assert_eq!(claims["mrtd"], hex::encode(quote.report.mrtd));
    assert_eq!(claims["fmspc"], "b0c06f000000");
    assert_eq!(claims["td_attributes"], "0000001000000000");
    assert_eq!(
        json["unchecked"],
        serde_json::json!(["mrconfigid_policy_hash"])
    );
}

#[test]
fn a_rejected_quote_exits_3_with_its_reason() {
    let r = run_with(
        &reference(Some("ab".repeat(48))),
        &vector("tdx_quote"),
        AT,
        &[],
    );
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    let json = r.json.unwrap();
    assert_eq!(json["accepted"], false);
    assert_eq!(json["reason_code"], "tdx_mrtd_not_trusted");
    assert!(json["reason"].as_str().unwrap().contains("MRTD"));
    // What the quote says is printed, unverified: no FMSPC or TCB status from Intel's checks.
    assert!(json["claims"]["mrtd"].is_string());
    // Stale collateral.
    let r = run_with(
        &reference(None),
        &vector("tdx_quote"),
        "2025-08-01T00:00:00Z",
        &[],
    );
    assert_eq!(r.code, Some(3));
    assert_eq!(r.json.unwrap()["reason_code"], "tdx_collateral_expired");
    // A truncated quote.
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, &std::fs::read(vector("tdx_quote")).unwrap()[..700]).unwrap();
    let r = run_with(&reference(None), &short, AT, &[]);
    assert_eq!(r.code, Some(3));
    assert_eq!(r.json.unwrap()["reason_code"], "tdx_quote_truncated");
}

#[test]
fn unreadable_inputs_exit_1() {
    let r = run_with(&reference(None), Path::new("/nonexistent/quote"), AT, &[]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let r = run_with(
        &serde_json::json!({"mrtd": []}),
        &vector("tdx_quote"),
        AT,
        &[],
    );
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("reference_values.tdx"), "{}", r.stderr);
    let r = run_with(&reference(None), &vector("tdx_quote"), "yesterday", &[]);
    assert_eq!(r.code, Some(1));
    // Collateral that is not the PCS layout.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("collateral.json");
    std::fs::write(&bad, b"{\"tcb_info\": 1}").unwrap();
    let r = run(&[
        "--quote",
        vector("tdx_quote").to_str().unwrap(),
        "--collateral",
        bad.to_str().unwrap(),
        "--reference",
        vector("tdx_quote").to_str().unwrap(),
    ]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
}
