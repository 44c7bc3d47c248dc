//! `concord history audit FILE`: the offline audit of a bundle, with no server.

use std::path::PathBuf;
use std::time::SystemTime;

use clap::Subcommand;
use concord_attestation::PlatformTrust;
use concord_coordinator::Hash;
use concord_coordinator::history::audit::{AuditOptions, audit};

use crate::exit::{CliError, CliResult, read_file};

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
    },
}

pub fn run(cmd: History) -> CliResult {
    let History::Audit {
        file,
        since,
        insecure_simulated_root,
    } = cmd;
    let bytes = read_file(&file)?;
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
    eprintln!(
        "audit clean: {} transitions, every link, signature and owner authorization verified; latest {}; evidence {} (measurement {})",
        report.chain.len(),
        report.chain.latest_hash(),
        report.report.platform().as_str(),
        hex::encode(report.report.measurement()),
    );
    println!("{}", report.chain.latest_hash());
    Ok(())
}
