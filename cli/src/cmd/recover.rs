//! `concord recover`: one seed share owner's part of user recovery after a full outage. The owner's
//! share is decrypted here, with their key, and sent only to a coordinator that attested against the
//! expected manifest; nobody but the coordinator ever combines shares.

use std::path::PathBuf;

use clap::Args;
use concord_coordinator::Hash;
use concord_mesh_ca::{EncryptedShare, decrypt_share, seal_submission};
use concord_proto::v1 as pb;
use serde::Deserialize;

use crate::exit::{CliError, CliResult, Limit, read_file};
use crate::{keys, remote};

#[derive(Debug, Args)]
pub struct Recover {
    /// Your seed share file (`seed-share-N.json`, written by the first `concord set`).
    #[arg(long)]
    pub share: PathBuf,
    /// Your seed share owner key (`concord keygen share-owner`).
    #[arg(long)]
    pub key: PathBuf,
    #[command(flatten)]
    pub target: crate::remote::CoordinatorTarget,
    /// Recover even though a ready replica exists (clusters only).
    #[arg(long)]
    pub force: bool,
    /// The latest transition hash you know (the output of the owner's last `concord set` or of
    /// `concord verify`, the last `hash` in `history.json`): the share is sent only if it is the
    /// coordinator's latest (exit 3 otherwise: a rollback or a fork).
    #[arg(long, value_name = "HASH")]
    pub expect_latest: Option<String>,
    /// A transition hash you saw earlier: the share is sent only if the coordinator's verified history
    /// contains it, i.e. its latest is it or extends it (exit 3 otherwise: a rollback or a fork).
    #[arg(long, value_name = "HASH")]
    pub since: Option<String>,
    /// RISKY: send the share whatever history the coordinator has (it prints its latest). Restored old
    /// disks would bring the deployment back on an older manifest. Only when no one kept a hash.
    #[arg(long, conflicts_with_all = ["expect_latest", "since", "state_dir"])]
    pub accept_unverified_latest: bool,
    /// The state directory of `concord verify --state-dir` (docs/PROTOCOL.md §15): the share is sent
    /// only if the coordinator's history extends the last checkpoint kept there (its size and its last
    /// transition, which the coordinator checks as with --since); exit 3 otherwise.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// The share file `concord set` writes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareFile {
    format: String,
    owner_public_key: String,
    encapsulated_key: String,
    ciphertext: String,
}

fn read_share(path: &std::path::Path) -> CliResult<EncryptedShare> {
    parse_share_file(&read_file(path, Limit::SHARE)?)
        .map_err(|what| CliError::error(format!("{}: {what}", path.display())))
}

/// Parses a seed share file (`concord-seed-share-v1`). The error says what is wrong with it.
pub fn parse_share_file(bytes: &[u8]) -> Result<EncryptedShare, String> {
    let f: ShareFile =
        serde_json::from_slice(bytes).map_err(|e| format!("not a seed share file: {e}"))?;
    if f.format != "concord-seed-share-v1" {
        return Err(format!(
            "format {:?}, expected \"concord-seed-share-v1\"",
            f.format
        ));
    }
    let hex_field = |name: &str, v: &str| hex::decode(v).map_err(|e| format!("{name}: {e}"));
    let owner_public_key =
        <[u8; 32]>::try_from(hex_field("owner_public_key", &f.owner_public_key)?.as_slice())
            .map_err(|_| "owner_public_key: expected 32 bytes".to_string())?;
    Ok(EncryptedShare {
        owner_public_key,
        encapsulated_key: hex_field("encapsulated_key", &f.encapsulated_key)?,
        ciphertext: hex_field("ciphertext", &f.ciphertext)?,
    })
}

/// The refusal a coordinator answers when its history is not what the owner knew.
const UNKNOWN_HISTORY: &str = "the history does not extend the one you know";

pub async fn run(args: Recover) -> CliResult {
    let hash = |flag: &str, v: &Option<String>| {
        v.as_deref()
            .map(Hash::from_hex)
            .transpose()
            .map_err(|e| CliError::usage(format!("{flag}: {e}")))
    };
    let expect_latest = hash("--expect-latest", &args.expect_latest)?;
    let mut since = hash("--since", &args.since)?;
    if expect_latest.is_none()
        && since.is_none()
        && args.state_dir.is_none()
        && !args.accept_unverified_latest
    {
        return Err(CliError::usage(
            "say which history you expect, so that restored old disks cannot bring the deployment \
             back on an older manifest with your share: --expect-latest HASH (the latest transition \
             you know: the hash the owner's last `concord set` or a `concord verify` printed, or the \
             last \"hash\" in a history.json) or --since HASH (a transition you saw earlier, which the \
             coordinator's history must contain) or --state-dir DIR (the checkpoints `concord verify \
             --state-dir` kept). Only if nobody kept one: --accept-unverified-latest",
        ));
    }
    let encrypted = read_share(&args.share)?;
    let key = keys::load_share_owner_key(&args.key)?;
    if key.public_key() != encrypted.owner_public_key {
        return Err(CliError::error(format!(
            "{} is encrypted to {}, but {} is the key of {}: use the key this share was made for",
            args.share.display(),
            hex::encode(encrypted.owner_public_key),
            args.key.display(),
            hex::encode(key.public_key())
        )));
    }
    let share = decrypt_share(&key, &encrypted)
        .map_err(|e| CliError::error(format!("cannot decrypt {}: {e}", args.share.display())))?;
    let connected = args.target.connect().await?;
    let known = match &args.state_dir {
        Some(dir) => {
            let origin =
                concord_coordinator::history::note::origin_for(connected.deployment.as_bytes());
            let known = crate::tlog_state::load(dir, &connected.deployment, &origin)?;
            if known.is_none() && expect_latest.is_none() && since.is_none() {
                return Err(CliError::usage(format!(
                    "{} holds no checkpoint of deployment {}: run `concord verify --state-dir` while the \
                     deployment is up, or give --expect-latest/--since",
                    dir.display(),
                    connected.deployment
                )));
            }
            known
        }
        None => None,
    };
    if let Some(k) = &known {
        if since.is_some() && since != Some(k.latest) {
            return Err(CliError::usage(
                "--since and --state-dir name different transitions; give one of them",
            ));
        }
        since = Some(k.latest);
    }
    let mut client = connected.client;
    // What the coordinator says it has (it is attested: genuine code reports its store truthfully).
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(|s| remote::status_error("GetStatus", s))?
        .into_inner();
    let latest = Hash::from_slice(&status.latest).unwrap_or(Hash::ZERO);
    eprintln!(
        "the coordinator ({}) has {} transitions; its latest is #{} {latest}",
        status.state,
        status.transitions,
        status.transitions.saturating_sub(1)
    );
    if let Some(expected) = expect_latest
        && expected != latest
    {
        return Err(CliError::verification(format!(
            "the coordinator's latest transition is #{} {latest}, not {expected} (--expect-latest): a \
             rollback (restored old disks?) or a fork, unless {expected} is older than the latest (then \
             use --since {expected}, which checks that the history extends it); your share was not sent",
            status.transitions.saturating_sub(1)
        )));
    }
    if let Some(k) = &known
        && status.transitions < k.checkpoint.size
    {
        return Err(CliError::verification(format!(
            "ROLLBACK: the coordinator has {} transitions, but you verified a checkpoint of {} \
             transitions (root {}, latest transition {}) in {}: the history went back (restored old \
             disks?); your share was not sent",
            status.transitions,
            k.checkpoint.size,
            k.checkpoint.root,
            k.latest,
            args.state_dir
                .as_deref()
                .unwrap_or(std::path::Path::new("."))
                .display()
        )));
    }
    if args.accept_unverified_latest {
        eprintln!(
            "WARNING: sending the share without checking the history against one you know \
             (--accept-unverified-latest); if this is not the latest state, the deployment goes back to it"
        );
    }
    // The share goes out sealed by this owner's key to the key the attested coordinator process
    // made at its start (HPKE Auth mode), so the coordinator knows the share is this owner's and
    // nobody else can have it taken for one.
    let recovery_key = client
        .get_recovery_key(pb::GetRecoveryKeyRequest {})
        .await
        .map_err(|s| remote::status_error("GetRecoveryKey", s))?
        .into_inner()
        .recovery_key;
    let recovery_key = <[u8; 32]>::try_from(recovery_key.as_slice()).map_err(|_| {
        CliError::error(format!(
            "the coordinator's recovery key is {} bytes, an X25519 key is 32",
            recovery_key.len()
        ))
    })?;
    let sealed = seal_submission(&key, &recovery_key, &share)
        .map_err(|e| CliError::error(format!("cannot seal the share: {e}")))?;
    let progress = client
        .recover(pb::RecoverRequest {
            legacy_plaintext_share: Vec::new(),
            force: args.force,
            expected_latest: expect_latest.map_or(Vec::new(), |h| h.as_bytes().to_vec()),
            since: since.map_or(Vec::new(), |h| h.as_bytes().to_vec()),
            sealed: Some(pb::SealedShare {
                owner_public_key: sealed.owner_public_key.to_vec(),
                encapsulated_key: sealed.encapsulated_key,
                ciphertext: sealed.ciphertext,
            }),
        })
        .await
        .map_err(|s| {
            if s.code() == tonic::Code::FailedPrecondition && s.message().contains(UNKNOWN_HISTORY)
            {
                CliError::verification(format!(
                    "the coordinator refused your share: {}; your share was not used",
                    s.message()
                ))
            } else {
                remote::status_error("Recover", s)
            }
        })?
        .into_inner();
    if let Some(t) = &progress.latest {
        eprintln!(
            "the share was checked against the coordinator's latest transition #{} {} (manifest {})",
            t.index,
            Hash::from_slice(&t.hash).unwrap_or(Hash::ZERO),
            Hash::from_slice(&t.manifest_hash).unwrap_or(Hash::ZERO)
        );
    }
    if progress.ready {
        eprintln!(
            "recovered: the coordinator combined {} shares, verified its history with the recovered seed, and is ready",
            progress.shares_received
        );
    } else {
        eprintln!(
            "your share (index {}) was accepted: the coordinator holds {} of the {} shares it needs",
            share.index, progress.shares_received, progress.threshold
        );
    }
    Ok(())
}
