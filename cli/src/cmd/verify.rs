//! `concord verify`: attest the coordinator against the expected manifest, fetch the history with a
//! fresh nonce, audit it, and write the audit bundle and the CA certificates to a directory.

use std::path::PathBuf;
use std::time::SystemTime;

use clap::Args;
use concord_coordinator::Hash;
use concord_coordinator::history::audit::{AuditOptions, AuditReport, audit};
use concord_coordinator::pem;
use concord_proto::v1 as pb;
use rand::RngCore;

use crate::exit::{CliError, CliResult, write_file};
use crate::remote;

#[derive(Debug, Args)]
pub struct Verify {
    #[command(flatten)]
    pub target: crate::remote::CoordinatorTarget,
    /// Where to write history.json and the PEM files.
    #[arg(short, long, default_value = "verify")]
    pub out: PathBuf,
    /// A transition seen earlier: fail (exit 3) unless it is an ancestor of today's latest.
    #[arg(long)]
    pub since: Option<String>,
    /// Let a follower answer from what it applied, without confirming with the leader (possibly stale).
    #[arg(long)]
    pub allow_stale: bool,
    /// Accept a history whose latest manifest is newer than the one given with -m, provided the given
    /// one is an earlier transition of it (without this, a latest manifest other than -m's exits 3).
    #[arg(long)]
    pub allow_newer: bool,
}

pub async fn run(args: Verify) -> CliResult<AuditReport> {
    let since = args
        .since
        .as_deref()
        .map(Hash::from_hex)
        .transpose()
        .map_err(|e| CliError::usage(format!("--since: {e}")))?;
    let remote::Connected {
        mut client,
        manifest: expected,
        trust,
        ..
    } = args.target.connect().await?;

    let mut nonce = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|e| CliError::error(format!("the OS random generator failed: {e}")))?;
    // In pieces: a history of any length exceeds one gRPC message sooner or later.
    let mut pieces = client
        .stream_history(pb::GetHistoryRequest {
            nonce: nonce.to_vec(),
            allow_stale: args.allow_stale,
        })
        .await
        .map_err(|s| remote::status_error("StreamHistory", s))?
        .into_inner();
    let mut bundle = Vec::new();
    while let Some(piece) = pieces
        .message()
        .await
        .map_err(|s| remote::status_error("StreamHistory", s))?
    {
        bundle.extend_from_slice(&piece.bundle);
    }
    // Write what was received before judging it: an operator investigating a failure needs it.
    write_file(&args.out.join("history.json"), &bundle, false)?;
    let options = AuditOptions {
        trust,
        expected_nonce: Some(nonce),
        since,
        now: SystemTime::now(),
    };
    let report = audit(&bundle, &options).map_err(|e| CliError::verification(e.to_string()))?;

    let latest = report.chain.latest_manifest();
    write_file(&args.out.join("manifest.json"), latest.bytes(), false)?;
    write_file(
        &args.out.join("coordinator-root-ca.pem"),
        pem::encode_certificate(&report.root_ca_der).as_bytes(),
        false,
    )?;
    write_file(
        &args.out.join("mesh-ca.pem"),
        pem::encode_certificate(&report.mesh_ca_der).as_bytes(),
        false,
    )?;
    eprintln!(
        "verified: {} transitions, latest {}, coordinator evidence ({}) binds the signing key and the CAs",
        report.chain.len(),
        report.chain.latest_hash(),
        report.report.platform().as_str(),
    );
    if latest.hash() != expected.hash() {
        let found = report
            .chain
            .transitions()
            .iter()
            .rposition(|t| t.manifest_hash == expected.hash());
        let what = match found {
            Some(i) => format!(
                "the latest manifest ({}, transition #{}) is NEWER than the one in {} ({}, transition #{i})",
                latest.hash(),
                report.chain.len() - 1,
                args.target.manifest.display(),
                expected.hash(),
            ),
            None => format!(
                "the manifest in {} ({}) is not in the coordinator's history at all (latest manifest {}): \
                 a rollback to before it (restored old disks?), a fork, or the wrong manifest file",
                args.target.manifest.display(),
                expected.hash(),
                latest.hash(),
            ),
        };
        match found {
            Some(_) if args.allow_newer => {
                eprintln!(
                    "note: {what}; accepted (--allow-newer); see {}",
                    args.out.join("manifest.json").display()
                );
            }
            Some(_) => {
                return Err(CliError::verification(format!(
                    "{what}; to accept a newer history that extends yours, pass --allow-newer; see {}",
                    args.out.join("manifest.json").display()
                )));
            }
            None => {
                return Err(CliError::verification(format!(
                    "{what}; see {}",
                    args.out.join("history.json").display()
                )));
            }
        }
    }
    eprintln!(
        "wrote history.json, manifest.json, coordinator-root-ca.pem and mesh-ca.pem to {}",
        args.out.display()
    );
    println!("{}", report.chain.latest_hash());
    Ok(report)
}
