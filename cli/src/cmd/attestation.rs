//! `concord attestation ...`: attestation tools. `sim-root` makes the INSECURE simulated root a
//! deployment without SEV-SNP (CI, laptops, the demo) attests with; `verify-report` checks a real
//! SEV-SNP report offline, with the same verifier the coordinator uses, and prints the verdict
//! and the report's claims as one JSON object; `verify-quote` does the same for an Intel TDX quote
//! with Intel's collateral.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::{Args, Subcommand};
use concord_attestation::snp::{SignerKind, SnpRevocation, reported_product};
use concord_attestation::tdx;
use concord_attestation::{
    AttestationError, Evidence, GuestPolicy, Platform, PlatformTrust, Product, ReferenceValues,
    Report, SimulatedRoot, SnpReference, Tcb, TdxReference, VerifiedReport, Verifier,
};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::exit::{CliError, CliResult, Limit, read_file};

#[derive(Debug, Subcommand)]
pub enum Attestation {
    /// Make a simulated root (INSECURE: for tests and demos only) and print its hash for the manifest.
    SimRoot {
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Verify a raw AMD SEV-SNP report offline against one reference values entry.
    #[command(long_about = VERIFY_REPORT_ABOUT)]
    VerifyReport(VerifyReport),
    /// Verify a raw Intel TDX quote offline with Intel's collateral against one reference values entry.
    #[command(long_about = VERIFY_QUOTE_ABOUT)]
    VerifyQuote(VerifyQuote),
}

const VERIFY_QUOTE_ABOUT: &str = "\
Verify a raw Intel TDX quote (version 4 or 5, ECDSA-256 attestation key) offline with Intel's collateral \
against one reference_values.tdx entry, with the verifier the coordinator uses: the PCK chain to Intel's \
pinned SGX Root CA with the root CA CRL and the PCK CRL, TCB info and QE identity (signatures, chains, \
FMSPC, issueDate..nextUpdate at --at), the QE report and its binding of the attestation key, the quote \
signature, Intel's TCB status against allowed_tcb_statuses, MRTD, the RTMRs, MRSEAM, the TEE TCB SVN \
minimum, the debug attribute, and (with --report-data) the report data.

MRCONFIGID is checked to be 32 bytes then 16 zero bytes, but the 32 bytes may be any policy hash (the \
tool has no manifest to look policies up in). Without --report-data, report_data is not checked either. \
The JSON names what was not checked under \"unchecked\".

Prints one JSON object: \"accepted\", \"reason\" and \"reason_code\" when rejected, \"unchecked\", \"at\", and \
\"claims\" (what the quote says; verified only when accepted; fmspc and tcb_status are null unless \
Intel's checks passed). Exit codes: 0 accepted, 3 rejected (including a truncated quote or one of an \
unknown version), 1 when an input cannot be read (a missing file, collateral or reference JSON that does \
not parse, a bad --at or --report-data).";

#[derive(Debug, Args)]
pub struct VerifyQuote {
    /// The raw TDX quote, as the guest's configfs-tsm report (outblob) or the QGS returns it.
    #[arg(long, value_name = "FILE")]
    quote: PathBuf,
    /// Intel's collateral for the quote: a JSON file with the PCS v4 fields (pck_crl_issuer_chain,
    /// root_ca_crl, pck_crl, tcb_info_issuer_chain, tcb_info, tcb_info_signature,
    /// qe_identity_issuer_chain, qe_identity, qe_identity_signature; docs/PROTOCOL.md).
    #[arg(long, value_name = "FILE")]
    collateral: PathBuf,
    /// A JSON file holding ONE entry of the manifest's reference_values.tdx (docs/MANIFEST.md),
    /// parsed as strictly as in a manifest.
    #[arg(long, value_name = "FILE")]
    reference: PathBuf,
    /// Time of check for the collateral, certificates and CRLs, RFC 3339. Default: now.
    #[arg(long, value_name = "RFC3339")]
    at: Option<String>,
    /// The expected report_data, 64 bytes as 128 hex digits. Without it, report_data is NOT checked.
    #[arg(long, value_name = "HEX")]
    report_data: Option<String>,
}

const VERIFY_REPORT_ABOUT: &str = "\
Verify a raw AMD SEV-SNP report offline against one reference values entry, with the verifier the \
coordinator uses: the report's signature by the VCEK or VLEK, that key's chain to AMD's pinned root \
for the entry's product, certificate validity at --at, the VCEK's chip ID and TCB, VMPL 0, the guest \
policy, the minimum TCB, the measurement, (with --report-data) the report data, and revocation: \
AMD's CRL given with --crl must be signed by the product's pinned ARK, fresh at --at (or within \
--accept-stale-crl-for), and list neither the ASK/ASVK nor the VCEK/VLEK. Without --crl the report \
is rejected (reason_code crl_missing) unless --no-revocation-check says revocation is not checked.

HOST_DATA is not checked: any value is accepted (the tool has no manifest to look policies up in). \
Without --report-data, report_data is not checked either, so an acceptance says nothing about \
freshness or what the report is bound to. The JSON names what was not checked under \"unchecked\".

Prints one JSON object: \"accepted\", \"reason\" and \"reason_code\" when rejected, \"unchecked\", and \
\"claims\" (what the report says; verified only when accepted). Exit codes: 0 accepted, 3 rejected \
(including a report of the wrong length), 1 when an input cannot be read (a missing file, reference \
JSON that does not parse, a certificate that is neither DER nor PEM, a bad --at or --report-data).";

#[derive(Debug, Args)]
pub struct VerifyReport {
    /// The raw attestation report: 1184 bytes, as the guest's /dev/sev-guest returns it.
    #[arg(long, value_name = "FILE")]
    report: PathBuf,
    /// The VCEK or VLEK that signed the report, DER or PEM. A PEM file may carry AMD's ASK (or ASVK)
    /// and ARK after it, which must then be AMD's pinned ones.
    #[arg(long, value_name = "FILE")]
    cert: PathBuf,
    /// A JSON file holding ONE entry of the manifest's reference_values.snp (docs/MANIFEST.md),
    /// parsed as strictly as in a manifest.
    #[arg(long, value_name = "FILE")]
    reference: PathBuf,
    /// Time of check for the certificates' validity, RFC 3339 (e.g. 2026-01-01T00:00:00Z). Default: now.
    #[arg(long, value_name = "RFC3339")]
    at: Option<String>,
    /// The expected report_data, 64 bytes as 128 hex digits. Without it, report_data is NOT checked.
    #[arg(long, value_name = "HEX")]
    report_data: Option<String>,
    /// AMD's CRL for the report's product and key kind, DER or PEM (as the KDS serves it at
    /// /vcek/v1/{product}/crl or /vlek/v1/{product}/crl); repeatable. It must be signed by the
    /// product's pinned ARK and fresh at --at; the ASK/ASVK and the VCEK/VLEK must not be listed.
    #[arg(long, value_name = "FILE")]
    crl: Vec<PathBuf>,
    /// Accept a CRL at most this long past its nextUpdate (e.g. 12h, 3d; at most 30d).
    #[arg(long, value_name = "DURATION", value_parser = parse_grace)]
    accept_stale_crl_for: Option<std::time::Duration>,
    /// Do not check revocation (no CRL needed): for old evidence whose CRL is lost. The JSON then
    /// lists "revocation" under "unchecked".
    #[arg(long, conflicts_with_all = ["crl", "accept_stale_crl_for"])]
    no_revocation_check: bool,
}

/// `--accept-stale-crl-for`: a number with a unit, `s`, `m`, `h` or `d`, at most 30 days (as the
/// coordinator's `--accept-stale-amd-crl-for`).
fn parse_grace(text: &str) -> Result<std::time::Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit (s, m, h, d), e.g. 12h"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d, e.g. 12h")),
    };
    let grace = std::time::Duration::from_secs(number.saturating_mul(seconds));
    if grace > std::time::Duration::from_secs(30 * 86_400) {
        return Err(format!("{text:?}: at most 30d"));
    }
    Ok(grace)
}

pub fn run(cmd: Attestation) -> CliResult {
    match cmd {
        Attestation::SimRoot { out } => sim_root(&out),
        Attestation::VerifyReport(args) => verify_report(&args),
        Attestation::VerifyQuote(args) => verify_quote(&args),
    }
}

fn sim_root(out: &Path) -> CliResult {
    let root = SimulatedRoot::generate()
        .map_err(|e| CliError::error(format!("cannot make a simulated root: {e}")))?;
    std::fs::create_dir_all(out)
        .map_err(|e| CliError::error(format!("cannot create {}: {e}", out.display())))?;
    root.save(out).map_err(|e| {
        CliError::error(format!(
            "cannot write the simulated root to {}: {e}",
            out.display()
        ))
    })?;
    eprintln!(
        "INSECURE: simulated attestation root written to {}; put its hash in reference_values.simulated[].root:",
        out.display()
    );
    println!("{}", hex::encode(root.hash()));
    Ok(())
}

fn verify_report(args: &VerifyReport) -> CliResult {
    // Every input is read before anything is verified: an unreadable input is exit 1, not a verdict.
    let report_bytes = read_file(&args.report, Limit::ATTESTATION)?;
    let certificates = read_certificates(&args.cert)?;
    let entry = read_reference(&args.reference)?;
    let at = parse_at(args.at.as_deref())?;
    let expected_report_data = parse_report_data(args.report_data.as_deref())?;

    let report = Report::parse(&report_bytes).ok();
    // The verifier always compares report_data; it has no switch to skip that, on purpose. Without
    // --report-data the tool expects the report's own value, which makes the comparison vacuous,
    // and says so under "unchecked".
    let report_data = match (expected_report_data, &report) {
        (Some(expected), _) => expected,
        (None, Some(report)) => *report.report_data(),
        (None, None) => [0; 64],
    };
    let crls = args
        .crl
        .iter()
        .map(|path| read_crl(path))
        .collect::<CliResult<Vec<_>>>()?;
    let evidence = Evidence {
        platform: Platform::Snp,
        report: report_bytes,
        certificates,
        crls,
    };
    let revocation = if args.no_revocation_check {
        SnpRevocation::NotChecked
    } else {
        SnpRevocation::Required {
            accept_stale_for: args.accept_stale_crl_for.unwrap_or_default(),
        }
    };
    let reference = ReferenceValues {
        snp: vec![entry.clone()],
        simulated: vec![],
        tdx: vec![],
    };
    let result = Verifier::new(PlatformTrust::default())
        .with_snp_revocation(revocation)
        .verify(&evidence, &reference, &report_data, &|_| true, at);

    let mut unchecked = vec!["host_data"];
    if args.no_revocation_check {
        unchecked.push("revocation");
    }
    if expected_report_data.is_none() {
        unchecked.push("report_data");
    }
    let mut out = json!({ "accepted": result.is_ok(), "unchecked": unchecked, "at": rfc3339(at) });
    if let Err(error) = &result {
        out["reason"] = json!(error.to_string());
        out["reason_code"] = json!(reason_code(error));
    }
    if let Some(report) = &report {
        out["claims"] = claims(report, product_of(&result, report, &entry));
    }
    println!("{out:#}");

    match result {
        Ok(_) => Ok(()),
        Err(AttestationError::Config(message)) => Err(CliError::error(format!(
            "cannot verify: the attestation configuration is broken: {message}"
        ))),
        Err(error) => Err(CliError::verification(format!(
            "{}: {error}",
            args.report.display()
        ))),
    }
}

fn verify_quote(args: &VerifyQuote) -> CliResult {
    // Every input is read before anything is verified: an unreadable input is exit 1, not a verdict.
    let quote = read_file(&args.quote, Limit::ATTESTATION)?;
    let collateral_bytes = read_file(&args.collateral, Limit::ATTESTATION)?;
    let collateral = tdx::Collateral::from_json(&collateral_bytes).map_err(|e| {
        CliError::error(format!(
            "{}: not TDX collateral in Intel's PCS v4 layout (docs/PROTOCOL.md): {e}",
            args.collateral.display()
        ))
    })?;
    let entry = read_tdx_reference(&args.reference)?;
    let at = parse_at(args.at.as_deref())?;
    let expected_report_data = parse_report_data(args.report_data.as_deref())?;

    let unverified = tdx::Quote::parse(&quote).ok();
    // As verify-report: without --report-data the quote's own value is expected (a vacuous check,
    // named under "unchecked").
    let report_data = match (expected_report_data, &unverified) {
        (Some(expected), _) => expected,
        (None, Some(q)) => q.report.report_data,
        (None, None) => [0; 64],
    };
    let result = tdx::verify(
        &quote,
        &collateral,
        std::slice::from_ref(&entry),
        &tdx::Expectations {
            report_data: &report_data,
            accept_policy_hash: &|_| true,
            now: at,
        },
    );

    let mut unchecked = vec!["mrconfigid_policy_hash"];
    if expected_report_data.is_none() {
        unchecked.push("report_data");
    }
    let mut out = json!({ "accepted": result.is_ok(), "unchecked": unchecked, "at": rfc3339(at) });
    if let Err(error) = &result {
        out["reason"] = json!(error.to_string());
        out["reason_code"] = json!(reason_code(error));
    }
    let claims = match &result {
        Ok(verified) => Some(verified.claims()),
        Err(_) => tdx::read_claims(&quote),
    };
    if let Some(claims) = claims {
        out["claims"] = json!(claims);
    }
    println!("{out:#}");

    match result {
        Ok(_) => Ok(()),
        Err(AttestationError::Config(message)) => Err(CliError::error(format!(
            "cannot verify: the attestation configuration is broken: {message}"
        ))),
        Err(error) => Err(CliError::verification(format!(
            "{}: {error}",
            args.quote.display()
        ))),
    }
}

/// One `reference_values.tdx` entry, strictly parsed and validated as in a manifest.
fn read_tdx_reference(path: &Path) -> CliResult<TdxReference> {
    let bytes = read_file(path, Limit::ATTESTATION)?;
    let entry: TdxReference = serde_json::from_slice(&bytes).map_err(|e| {
        CliError::error(format!(
            "{}: not one reference_values.tdx entry (docs/MANIFEST.md): {e}",
            path.display()
        ))
    })?;
    let one = ReferenceValues {
        tdx: vec![entry.clone()],
        ..ReferenceValues::default()
    };
    one.validate().map_err(|e| {
        let e = e.replace("reference_values.tdx[0]: ", "");
        CliError::error(format!("{}: {e}", path.display()))
    })?;
    Ok(entry)
}

/// The certificates of a DER file (one) or a PEM file (every CERTIFICATE block, signer first),
/// each checked to be an X.509 certificate.
/// A CRL file: DER, or PEM with one `X509 CRL` block.
fn read_crl(path: &Path) -> CliResult<Vec<u8>> {
    let bytes = read_file(path, Limit::ATTESTATION)?;
    if !bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Ok(bytes);
    }
    let mut blocks = x509_parser::pem::Pem::iter_from_buffer(&bytes);
    match (blocks.next(), blocks.next()) {
        (Some(Ok(pem)), None) if pem.label == "X509 CRL" => Ok(pem.contents),
        _ => Err(CliError::error(format!(
            "{}: not a DER CRL or a PEM file with one X509 CRL block",
            path.display()
        ))),
    }
}

fn read_certificates(path: &Path) -> CliResult<Vec<Vec<u8>>> {
    let bytes = read_file(path, Limit::ATTESTATION)?;
    let not_a_cert = |why: String| {
        CliError::error(format!(
            "{}: not a DER or PEM X.509 certificate: {why}",
            path.display()
        ))
    };
    let ders = if bytes.starts_with(b"-----BEGIN") || bytes.windows(10).any(|w| w == b"-----BEGIN")
    {
        let mut ders = Vec::new();
        for pem in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
            let pem = pem.map_err(|e| not_a_cert(e.to_string()))?;
            if pem.label != "CERTIFICATE" {
                return Err(not_a_cert(format!("a {:?} block", pem.label)));
            }
            ders.push(pem.contents);
        }
        ders
    } else {
        vec![bytes]
    };
    if ders.is_empty() {
        return Err(not_a_cert("no CERTIFICATE block".into()));
    }
    for der in &ders {
        match x509_parser::parse_x509_certificate(der) {
            Ok(([], _)) => {}
            Ok(_) => return Err(not_a_cert("trailing bytes after the certificate".into())),
            Err(e) => return Err(not_a_cert(e.to_string())),
        }
    }
    Ok(ders)
}

/// One `reference_values.snp` entry, strictly parsed and validated as in a manifest.
fn read_reference(path: &Path) -> CliResult<SnpReference> {
    let bytes = read_file(path, Limit::ATTESTATION)?;
    let entry: SnpReference = serde_json::from_slice(&bytes).map_err(|e| {
        CliError::error(format!(
            "{}: not one reference_values.snp entry (docs/MANIFEST.md): {e}",
            path.display()
        ))
    })?;
    let one = ReferenceValues {
        snp: vec![entry.clone()],
        simulated: vec![],
        tdx: vec![],
    };
    one.validate().map_err(|e| {
        let e = e.replace("reference_values.snp[0]: ", "");
        CliError::error(format!("{}: {e}", path.display()))
    })?;
    Ok(entry)
}

fn parse_at(at: Option<&str>) -> CliResult<SystemTime> {
    let Some(at) = at else {
        return Ok(SystemTime::now());
    };
    OffsetDateTime::parse(at, &Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| {
            CliError::error(format!(
                "--at {at:?}: not an RFC 3339 time such as 2026-01-01T00:00:00Z: {e}"
            ))
        })
}

fn parse_report_data(hex_digits: Option<&str>) -> CliResult<Option<[u8; 64]>> {
    let Some(hex_digits) = hex_digits else {
        return Ok(None);
    };
    let mut out = [0u8; 64];
    hex::decode_to_slice(hex_digits, &mut out).map_err(|e| {
        CliError::error(format!(
            "--report-data: expected 64 bytes as 128 hex digits ({e})"
        ))
    })?;
    Ok(Some(out))
}

fn rfc3339(at: SystemTime) -> Value {
    OffsetDateTime::from(at)
        .format(&Rfc3339)
        .map_or(Value::Null, Value::String)
}

fn reason_code(error: &AttestationError) -> &'static str {
    match error {
        AttestationError::Rejected(reason) => reason.metric_label(),
        AttestationError::Malformed { .. } => "malformed",
        _ => "error",
    }
}

/// The product whose TCB layout decodes the claims: the verified one; else what the report's CPUID
/// fields say; else (version 2) the reference entry's.
fn product_of(
    result: &Result<VerifiedReport, AttestationError>,
    report: &Report,
    entry: &SnpReference,
) -> Product {
    match result {
        Ok(verified) => verified.product().unwrap_or(entry.product),
        Err(_) => reported_product(report)
            .ok()
            .flatten()
            .unwrap_or(entry.product),
    }
}

/// What the report says, as JSON. Verified only when the report was accepted.
fn claims(report: &Report, product: Product) -> Value {
    let policy = GuestPolicy(report.policy());
    json!({
        "product": format!("{product:?}"),
        "version": report.version(),
        "guest_svn": report.guest_svn(),
        "vmpl": report.vmpl(),
        "policy": format!("{:#x}", report.policy()),
        "policy_flags": {
            "abi_major": policy.abi_major(),
            "abi_minor": policy.abi_minor(),
            "smt": policy.smt(),
            "migrate_ma": policy.migrate_ma(),
            "debug": policy.debug(),
            "single_socket": policy.single_socket(),
            "cxl_allow": policy.cxl_allow(),
            "mem_aes_256_xts": policy.mem_aes_256_xts(),
            "rapl_dis": policy.rapl_dis(),
            "ciphertext_hiding": policy.ciphertext_hiding(),
            "page_swap_disable": policy.page_swap_disable(),
        },
        "signing_key": signing_key(report),
        "measurement": hex::encode(report.measurement()),
        "host_data": hex::encode(report.host_data()),
        "report_data": hex::encode(report.report_data()),
        "chip_id": hex::encode(report.chip_id()),
        "reported_tcb": tcb_json(Tcb::decode(report.reported_tcb(), product)),
    })
}

fn signing_key(report: &Report) -> String {
    match report.signing_key() {
        0 => SignerKind::Vcek.to_string(),
        1 => SignerKind::Vlek.to_string(),
        other => format!("unknown ({other})"),
    }
}

fn tcb_json(tcb: Tcb) -> Value {
    let mut out = json!({
        "bootloader": tcb.bootloader,
        "tee": tcb.tee,
        "snp": tcb.snp,
        "microcode": tcb.microcode,
    });
    if let Some(fmc) = tcb.fmc {
        out["fmc"] = json!(fmc);
    }
    out
}
