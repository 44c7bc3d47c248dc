//! `concord history audit FILE`: the offline audit of a bundle, with no server.

use std::path::PathBuf;
use std::time::SystemTime;

use clap::Subcommand;
use concord_attestation::PlatformTrust;
use concord_coordinator::Hash;
use concord_coordinator::history::audit::{AuditOptions, audit};

use crate::exit::{CliError, CliResult, Limit, read_file};

#[derive(Debug, Subcommand)]
pub enum History {
    /// Check every hash link, signature and owner authorization of a history.json, and its evidence.
    Audit {
        file: PathBuf,
        /// A transition seen earlier: fail unless it is an ancestor of the latest.
        #[arg(long)]
        since: Option<String>,
        /// Accept evidence from the simulated platform with this root hash (INSECURE).
        #[arg(long)]
        insecure_simulated_root: Option<String>,
        /// Pin: the deployment's transition signing key (hex Ed25519 public key) you know; fail
        /// unless the bundle is signed by it.
        #[arg(long)]
        signing_key: Option<String>,
        /// Pin: the deployment's first transition hash (its deployment id) you know; fail unless the
        /// bundle's history starts with it.
        #[arg(long)]
        deployment: Option<String>,
    },
}

/// Said on stderr, and in the verdict, when no pin ties the bundle to a deployment the auditor knows.
pub const SELF_CONSISTENCY_ONLY: &str = "self-consistency only";

pub fn run(cmd: History) -> CliResult {
    let History::Audit {
        file,
        since,
        insecure_simulated_root,
        signing_key,
        deployment,
    } = cmd;
    let signing_key = signing_key
        .as_deref()
        .map(|k| {
            hex::decode(k)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| CliError::usage("--signing-key: expected 64 hex digits"))
        })
        .transpose()?;
    let deployment = deployment
        .as_deref()
        .map(Hash::from_hex)
        .transpose()
        .map_err(|e| CliError::usage(format!("--deployment: {e}")))?;
    let bytes = read_file(&file, Limit::BUNDLE)?;
    let since = since
        .as_deref()
        .map(Hash::from_hex)
        .transpose()
        .map_err(|e| CliError::usage(format!("--since: {e}")))?;
    let root = insecure_simulated_root
        .as_deref()
        .map(Hash::from_hex)
        .transpose()
        .map_err(|e| CliError::usage(format!("--insecure-simulated-root: {e}")))?;
    if root.is_some() {
        crate::remote::warn_insecure();
    }
    let pinned = since.is_some() || root.is_some() || signing_key.is_some() || deployment.is_some();
    if !pinned {
        eprintln!(
            "WARNING: {SELF_CONSISTENCY_ONLY}: no pin (--deployment, --signing-key, --since or \
             --insecure-simulated-root) ties this bundle to a deployment you know. The audit checks \
             that the bundle agrees with itself and that genuine hardware attested it, not whose \
             deployment it is: anyone can build a clean bundle for a deployment of their own"
        );
    }
    let options = AuditOptions {
        trust: PlatformTrust {
            insecure_simulated_root: root.map(|h| *h.as_bytes()),
        },
        expected_nonce: None,
        since,
        now: SystemTime::now(),
    };
    let report = audit(&bytes, &options)
        .map_err(|e| CliError::verification(format!("{}: {e}", file.display())))?;
    if let Some(key) = signing_key
        && report.chain.signing_key().as_bytes() != &key
    {
        return Err(CliError::verification(format!(
            "{}: signed by {}, not by the pinned signing key {}: another deployment",
            file.display(),
            hex::encode(report.chain.signing_key().as_bytes()),
            hex::encode(key)
        )));
    }
    if let Some(first) = deployment
        && report.chain.hash_at(0) != Some(first)
    {
        return Err(CliError::verification(format!(
            "{}: its history starts with {}, not the pinned deployment {first}: another deployment",
            file.display(),
            report.chain.hash_at(0).unwrap_or(Hash::ZERO)
        )));
    }
    eprintln!(
        "audit clean{}: {} transitions, every link, signature and owner authorization verified; latest {}; evidence {} (measurement {})",
        if pinned {
            String::new()
        } else {
            format!(" ({SELF_CONSISTENCY_ONLY}, no pin)")
        },
        report.chain.len(),
        report.chain.latest_hash(),
        report.report.platform().as_str(),
        hex::encode(report.report.measurement()),
    );
    println!("{}", report.chain.latest_hash());
    Ok(())
}
