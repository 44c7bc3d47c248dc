//! `concord verify`: attest the coordinator against the expected manifest, fetch the history with a
//! fresh nonce, audit it, and write the audit bundle and the CA certificates to a directory.

use std::path::PathBuf;
use std::time::SystemTime;

use clap::Args;
use concord_coordinator::Hash;
use concord_coordinator::history::audit::{AuditOptions, audit};
use concord_coordinator::history::{merkle, note};
use concord_coordinator::pem;
use concord_proto::v1 as pb;
use rand::RngCore;

use crate::exit::{CliError, CliResult, write_file};
use crate::{remote, tlog_state};

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
    /// Keep the last verified checkpoint of each deployment here (docs/PROTOCOL.md §15): the next
    /// verify requires a consistency proof from it to the coordinator's new checkpoint, so a rollback
    /// or a fork exits 3 without `--since`.
    #[arg(long, env = "CONCORD_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// With --state-dir and a checkpoint kept there: check only the new checkpoint, a consistency
    /// proof from the kept one and an inclusion proof of the latest transition (O(log n) hashes), not
    /// the whole history; writes nothing to --out.
    #[arg(long, requires = "state_dir")]
    pub checkpoint_only: bool,
}

pub async fn run(args: Verify) -> CliResult {
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
        deployment,
        ..
    } = args.target.connect().await?;
    let origin = note::origin_for(deployment.as_bytes());
    let known = match &args.state_dir {
        Some(dir) => tlog_state::load(dir, &deployment, &origin)?,
        None => None,
    };
    if args.checkpoint_only {
        match &known {
            Some(k) => {
                return checkpoint_only(&mut client, &args, &deployment, &origin, k, &expected)
                    .await;
            }
            None => eprintln!(
                "note: no checkpoint of this deployment kept in the state directory yet: verifying the \
                 whole history once"
            ),
        }
    }

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
    if let Some(dir) = &args.state_dir {
        let Some(cp) = &report.checkpoint else {
            return Err(CliError::error(
                "the coordinator's audit bundle carries no checkpoint (an older coordinator): it \
                 cannot be followed with --state-dir",
            ));
        };
        let mut note = cp.note.clone();
        if latest.witnesses().is_some_and(|w| {
            w.list
                .iter()
                .filter(|x| note.cosignature_time(&x.name, &x.key).is_some())
                .count()
                < w.threshold
        }) {
            // The bundle carries the cosignatures its replica held; GetCheckpoint collects the
            // missing ones, for the same tree.
            let r = client
                .get_checkpoint(pb::GetCheckpointRequest {
                    allow_stale: args.allow_stale,
                })
                .await
                .map_err(|s| remote::status_error("GetCheckpoint", s))?
                .into_inner();
            let cosigned = note::SignedNote::parse(&r.checkpoint).map_err(|e| {
                CliError::verification(format!("the coordinator's checkpoint: {e}"))
            })?;
            if cosigned.body != note.body {
                return Err(CliError::error(
                    "the history moved on while it was being verified (a new transition); run verify again",
                ));
            }
            note = cosigned;
        }
        let new = tlog_state::Known {
            checkpoint: cp.checkpoint.clone(),
            note,
            key: cp.key,
            latest: report.chain.latest_hash(),
        };
        advance(
            &mut client,
            &args,
            dir,
            &deployment,
            known.as_ref(),
            new,
            latest,
        )
        .await?;
    }
    eprintln!(
        "wrote history.json, manifest.json, coordinator-root-ca.pem and mesh-ca.pem to {}",
        args.out.display()
    );
    println!("{}", report.chain.latest_hash());
    Ok(())
}

/// Requires the manifest's witness threshold of valid cosignatures on `note` (exit 3 otherwise).
fn require_cosignatures(
    note: &note::SignedNote,
    manifest: &concord_coordinator::manifest::Manifest,
) -> CliResult {
    let Some(w) = manifest.witnesses() else {
        return Ok(());
    };
    let valid: Vec<&str> = w
        .list
        .iter()
        .filter(|x| note.cosignature_time(&x.name, &x.key).is_some())
        .map(|x| x.name.as_str())
        .collect();
    if valid.len() < w.threshold {
        return Err(CliError::verification(format!(
            "the checkpoint carries {} valid witness cosignatures ({}), the manifest requires {} of \
             {}: the witnesses are down or refused it (a refusal means they saw another history); \
             without them nobody vouches that others see this same history",
            valid.len(),
            valid.join(", "),
            w.threshold,
            w.list.len()
        )));
    }
    eprintln!(
        "log: {} of {} witnesses cosigned the checkpoint ({}), {} required",
        valid.len(),
        w.list.len(),
        valid.join(", "),
        w.threshold
    );
    Ok(())
}

/// Checks that `new` extends `known` (a consistency proof from the coordinator) and carries the
/// manifest's witness threshold, then keeps `new`.
async fn advance(
    client: &mut remote::UserClient,
    args: &Verify,
    dir: &std::path::Path,
    deployment: &concord_attestation::DeploymentId,
    known: Option<&tlog_state::Known>,
    new: tlog_state::Known,
    witnesses_of: &concord_coordinator::manifest::Manifest,
) -> CliResult {
    if let Some(known) = known {
        let proof = if known.checkpoint.size < new.checkpoint.size {
            consistency(client, args, known.checkpoint.size, new.checkpoint.size).await?
        } else {
            Vec::new()
        };
        tlog_state::check_extends(known, &new.checkpoint, &new.key, &proof)
            .map_err(CliError::verification)?;
        eprintln!(
            "log: checkpoint {} -> {} transitions, consistent (RFC 9162 proof of {} hashes)",
            known.checkpoint.size,
            new.checkpoint.size,
            proof.len()
        );
    } else {
        eprintln!(
            "log: first checkpoint of this deployment kept ({} transitions, root {})",
            new.checkpoint.size, new.checkpoint.root
        );
    }
    // After the rollback and fork checks (more specific), before the new checkpoint is kept.
    require_cosignatures(&new.note, witnesses_of)?;
    tlog_state::save(dir, deployment, &new)
}

async fn consistency(
    client: &mut remote::UserClient,
    args: &Verify,
    old: u64,
    new: u64,
) -> CliResult<Vec<Hash>> {
    let r = client
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            old_size: old,
            new_size: new,
            allow_stale: args.allow_stale,
        })
        .await
        .map_err(|s| remote::status_error("GetConsistencyProof", s))?
        .into_inner();
    proof_hashes(&r.hashes)
}

fn proof_hashes(hashes: &[Vec<u8>]) -> CliResult<Vec<Hash>> {
    if hashes.len() > 128 {
        return Err(CliError::verification(
            "the coordinator sent a proof of more than 128 hashes; no log of 2^64 entries needs that",
        ));
    }
    hashes
        .iter()
        .map(|h| Hash::from_slice(h))
        .collect::<Result<_, _>>()
        .map_err(|e| CliError::verification(format!("a proof hash: {e}")))
}

/// `--checkpoint-only`: the coordinator's checkpoint, signed by the kept key, a consistency proof from
/// the kept checkpoint, and an inclusion proof of its latest transition. The connection is attested
/// against -m (the checkpoint comes from genuine code); the key was bound by evidence when first kept.
async fn checkpoint_only(
    client: &mut remote::UserClient,
    args: &Verify,
    deployment: &concord_attestation::DeploymentId,
    origin: &str,
    known: &tlog_state::Known,
    manifest: &concord_coordinator::manifest::Manifest,
) -> CliResult {
    let dir = args
        .state_dir
        .as_deref()
        .unwrap_or(std::path::Path::new("."));
    let r = client
        .get_checkpoint(pb::GetCheckpointRequest {
            allow_stale: args.allow_stale,
        })
        .await
        .map_err(|s| remote::status_error("GetCheckpoint", s))?
        .into_inner();
    let key = <[u8; 32]>::try_from(r.checkpoint_key.as_slice())
        .ok()
        .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).ok())
        .ok_or_else(|| CliError::verification("the checkpoint key is not an Ed25519 key"))?;
    let note = note::SignedNote::parse(&r.checkpoint)
        .map_err(|e| CliError::verification(format!("the coordinator's checkpoint: {e}")))?;
    let checkpoint = note
        .verify_checkpoint(origin, &key)
        .map_err(|e| CliError::verification(format!("the coordinator's checkpoint: {e}")))?;
    if checkpoint.size == 0 {
        return Err(CliError::verification(
            "the coordinator's checkpoint is empty",
        ));
    }
    let index = checkpoint.size - 1;
    let inclusion = client
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            index,
            size: checkpoint.size,
            allow_stale: args.allow_stale,
        })
        .await
        .map_err(|s| remote::status_error("GetInclusionProof", s))?
        .into_inner();
    let latest = Hash::from_slice(&inclusion.leaf)
        .map_err(|e| CliError::verification(format!("the inclusion proof's leaf: {e}")))?;
    merkle::verify_inclusion(
        &latest,
        index,
        checkpoint.size,
        &proof_hashes(&inclusion.hashes)?,
        &checkpoint.root,
    )
    .map_err(|e| {
        CliError::verification(format!(
            "transition #{index} {latest} is not the last leaf of the checkpoint: {e}"
        ))
    })?;
    let size = checkpoint.size;
    let new = tlog_state::Known {
        checkpoint,
        note,
        key,
        latest,
    };
    advance(client, args, dir, deployment, Some(known), new, manifest).await?;
    eprintln!("verified (checkpoint only): {size} transitions, latest #{index} {latest}");
    println!("{latest}");
    Ok(())
}
