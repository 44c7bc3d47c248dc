//! `concord history audit FILE`: the offline audit of a bundle, with no server.

use std::path::PathBuf;
use std::time::SystemTime;

use clap::Subcommand;
use concord_attestation::PlatformTrust;
use concord_coordinator::Hash;
use concord_coordinator::history::audit::{AuditOptions, audit};

use crate::exit::{CliError, CliResult, Limit, read_file, write_file};
use crate::{log_proof, remote, tlog_state};
use concord_coordinator::history::note;
use concord_proto::v1 as pb;

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
        /// For a proof file (`concord history prove`): the checkpoint key (hex) you trust, e.g. the
        /// `checkpoint_key` of a history.json whose evidence you verified, or your state directory's.
        #[arg(long)]
        checkpoint_key: Option<String>,
        /// For a proof file: require the witnesses and threshold of this manifest (the deployment's
        /// latest you trust) instead of the ones the file lists.
        #[arg(long, value_name = "MANIFEST")]
        witnesses_from: Option<PathBuf>,
    },
    /// Write an offline proof file (`concord-log-proof-v1`): the coordinator's latest checkpoint and
    /// the inclusion proof of a transition; with --state-dir also the kept checkpoint and the
    /// consistency proof from it. `concord history audit` and tests/independent/tlog.py check it.
    Prove {
        #[command(flatten)]
        target: crate::remote::CoordinatorTarget,
        /// The transition whose inclusion is proved (default: the latest).
        #[arg(long)]
        index: Option<u64>,
        /// The state directory of `concord verify --state-dir`: pins the checkpoint key and adds
        /// the consistency proof from the kept checkpoint.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Where to write the proof file.
        #[arg(long, default_value = "log-proof.json")]
        out: PathBuf,
    },
}

/// Said on stderr, and in the verdict, when no pin ties the bundle to a deployment the auditor knows.
pub const SELF_CONSISTENCY_ONLY: &str = "self-consistency only";

/// Every `history` subcommand (`prove` talks to a coordinator).
pub async fn run_any(cmd: History) -> CliResult {
    match cmd {
        History::Prove {
            target,
            index,
            state_dir,
            out,
        } => prove(target, index, state_dir, out).await,
        audit => run(audit),
    }
}

/// `history audit` (offline).
pub fn run(cmd: History) -> CliResult {
    let (file, since, insecure_simulated_root, signing_key, deployment, proof_pins) = match cmd {
        History::Prove { .. } => {
            return Err(CliError::usage(
                "history prove needs a coordinator: use run_any",
            ));
        }
        History::Audit {
            file,
            since,
            insecure_simulated_root,
            signing_key,
            deployment,
            checkpoint_key,
            witnesses_from,
        } => (
            file,
            since,
            insecure_simulated_root,
            signing_key,
            deployment,
            (checkpoint_key, witnesses_from),
        ),
    };
    // Read once: a history of 10,000 transitions is about 25 MB.
    let bytes = read_file(&file, Limit::BUNDLE)?;
    if format_of(&bytes).as_deref() == Some(log_proof::FORMAT) {
        return audit_proof(
            &file,
            &bytes,
            proof_pins.0.as_deref(),
            proof_pins.1.as_deref(),
        );
    }
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

/// The top-level `format` member of a JSON document, if it has one that is a string. The rest is
/// skipped without being built (a bundle is tens of megabytes); whatever it is, the audit of that
/// format decides.
fn format_of(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Format {
        format: Option<String>,
    }
    serde_json::from_slice::<Format>(bytes).ok()?.format
}

/// `concord history audit` of a proof file.
fn audit_proof(
    file: &std::path::Path,
    bytes: &[u8],
    pinned: Option<&str>,
    witnesses_from: Option<&std::path::Path>,
) -> CliResult {
    concord_coordinator::history::check_unique_keys(bytes)
        .map_err(|e| CliError::verification(format!("{}: {e}", file.display())))?;
    let mut f: log_proof::ProofFile = serde_json::from_slice(bytes)
        .map_err(|e| CliError::verification(format!("{}: {e}", file.display())))?;
    match witnesses_from {
        // The file's own witness list and threshold are the prover's say-so: a pinned manifest's win.
        Some(m) => {
            let manifest = remote::read_manifest(m)?;
            let (list, threshold) = manifest
                .witnesses()
                .map_or((Vec::new(), 0), |w| (w.list.clone(), w.threshold));
            f.witnesses = list
                .iter()
                .map(|x| log_proof::WitnessKey {
                    name: x.name.clone(),
                    key: hex::encode(x.key.as_bytes()),
                })
                .collect();
            f.witness_threshold = threshold;
        }
        None if f.witness_threshold > 0 => eprintln!(
            "note: the witness keys and threshold ({}) are the file's; pin them with --witnesses-from MANIFEST",
            f.witness_threshold
        ),
        None => {}
    }
    let checked = log_proof::check(&f)
        .map_err(|e| CliError::verification(format!("{}: {e}", file.display())))?;
    match pinned {
        Some(k) => {
            let k = log_proof::parse_key(k)
                .map_err(|e| CliError::usage(format!("--checkpoint-key: {e}")))?;
            if k != checked.key {
                return Err(CliError::verification(format!(
                    "{}: signed by checkpoint key {}, not the pinned {}: another log",
                    file.display(),
                    hex::encode(checked.key.as_bytes()),
                    hex::encode(k.as_bytes())
                )));
            }
        }
        None => eprintln!(
            "WARNING: {SELF_CONSISTENCY_ONLY}: no --checkpoint-key pins the log; the proofs agree with \
             the file's own key"
        ),
    }
    let last = checked.checkpoints.last();
    eprintln!(
        "proof clean: {} checkpoints of {} (latest size {}), {} consistency and {} inclusion proofs verified",
        checked.checkpoints.len(),
        f.origin,
        last.map_or(0, |c| c.size),
        f.consistency.len(),
        f.inclusion.len()
    );
    for p in &f.inclusion {
        println!("{} {}", p.index, p.leaf);
    }
    Ok(())
}

/// `concord history prove`.
async fn prove(
    target: remote::CoordinatorTarget,
    index: Option<u64>,
    state_dir: Option<PathBuf>,
    out: PathBuf,
) -> CliResult {
    let connected = target.connect().await?;
    let (witnesses, witness_threshold) = match connected.manifest.witnesses() {
        Some(w) => (
            w.list
                .iter()
                .map(|x| log_proof::WitnessKey {
                    name: x.name.clone(),
                    key: hex::encode(x.key.as_bytes()),
                })
                .collect(),
            w.threshold,
        ),
        None => (Vec::new(), 0),
    };
    let mut client = connected.client;
    let origin = note::origin_for(connected.deployment.as_bytes());
    let known = match &state_dir {
        Some(dir) => tlog_state::load(dir, &connected.deployment, &origin)?,
        None => None,
    };
    let r = client
        .get_checkpoint(pb::GetCheckpointRequest { allow_stale: false })
        .await
        .map_err(|s| remote::status_error("GetCheckpoint", s))?
        .into_inner();
    let key = log_proof::parse_key(&hex::encode(&r.checkpoint_key))
        .map_err(|e| CliError::verification(format!("the checkpoint key: {e}")))?;
    if let Some(k) = &known
        && k.key != key
    {
        return Err(CliError::verification(format!(
            "the coordinator signs checkpoints with {}, your state directory holds {}: a fork",
            hex::encode(key.as_bytes()),
            hex::encode(k.key.as_bytes())
        )));
    }
    let new_note = note::SignedNote::parse(&r.checkpoint)
        .map_err(|e| CliError::verification(format!("the coordinator's checkpoint: {e}")))?;
    let cp = new_note
        .verify_checkpoint(&origin, &key)
        .map_err(|e| CliError::verification(format!("the coordinator's checkpoint: {e}")))?;
    let index = index.unwrap_or(cp.size.saturating_sub(1));
    let inc = client
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            index,
            size: cp.size,
            allow_stale: false,
        })
        .await
        .map_err(|s| remote::status_error("GetInclusionProof", s))?
        .into_inner();
    let hashes = |v: &[Vec<u8>]| {
        v.iter()
            .take(128)
            .map(|h| Hash::from_slice(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CliError::verification(format!("a proof hash: {e}")))
    };
    let leaf = Hash::from_slice(&inc.leaf)
        .map_err(|e| CliError::verification(format!("the inclusion proof's leaf: {e}")))?;
    let mut file = log_proof::ProofFile {
        format: log_proof::FORMAT.to_string(),
        origin,
        checkpoint_key: hex::encode(key.as_bytes()),
        witnesses,
        witness_threshold,
        checkpoints: Vec::new(),
        consistency: Vec::new(),
        inclusion: Vec::new(),
    };
    if let Some(k) = &known {
        let proof = if k.checkpoint.size < cp.size {
            let c = client
                .get_consistency_proof(pb::GetConsistencyProofRequest {
                    old_size: k.checkpoint.size,
                    new_size: cp.size,
                    allow_stale: false,
                })
                .await
                .map_err(|s| remote::status_error("GetConsistencyProof", s))?
                .into_inner();
            hashes(&c.hashes)?
        } else {
            Vec::new()
        };
        file.checkpoints.push(k.note.encode());
        file.consistency.push(log_proof::ConsistencyEntry {
            old: 0,
            new: 1,
            proof,
        });
    }
    file.checkpoints.push(new_note.encode());
    file.inclusion.push(log_proof::InclusionEntry {
        checkpoint: file.checkpoints.len() - 1,
        index,
        leaf,
        proof: hashes(&inc.hashes)?,
    });
    // Checked before writing: a proof file that does not verify is a verification failure now.
    log_proof::check(&file).map_err(CliError::verification)?;
    let mut bytes = serde_json::to_vec_pretty(&file)
        .map_err(|e| CliError::error(format!("cannot encode the proof file: {e}")))?;
    bytes.push(b'\n');
    write_file(&out, &bytes, false)?;
    eprintln!(
        "wrote {}: checkpoint of {} transitions, inclusion of transition #{index} {leaf}{}",
        out.display(),
        cp.size,
        if known.is_some() {
            ", consistency from your kept checkpoint"
        } else {
            ""
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::format_of;
    use crate::log_proof;

    #[test]
    fn the_format_is_read_from_the_top_level_only() {
        let proof = format!(
            r#"{{"a":[{{"format":"x"}}],"format":"{}"}}"#,
            log_proof::FORMAT
        );
        assert_eq!(
            format_of(proof.as_bytes()).as_deref(),
            Some(log_proof::FORMAT)
        );
        assert_eq!(
            format_of(br#"{"t":{"format":"concord-log-proof-v1"}}"#),
            None
        );
        assert_eq!(format_of(br#"{"format":7}"#), None);
        assert_eq!(format_of(b"not json"), None);
        // Two `format` members: no format, so the bundle's audit refuses the duplicate by name.
        assert_eq!(
            format_of(br#"{"format":"a","format":"b"}"#),
            None,
            "a duplicate member must not pick one of the two"
        );
    }
}
