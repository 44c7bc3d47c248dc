//! `concord recover`: one seed share owner's part of user recovery after a full outage. The owner's
//! share is decrypted here, with their key, and sent only to a coordinator that attested against the
//! expected manifest; nobody but the coordinator ever combines shares.

use std::path::PathBuf;

use clap::Args;
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
    let bad = |what: String| CliError::error(format!("{}: {what}", path.display()));
    let f: ShareFile = serde_json::from_slice(&read_file(path, Limit::SHARE)?)
        .map_err(|e| bad(format!("not a seed share file: {e}")))?;
    if f.format != "concord-seed-share-v1" {
        return Err(bad(format!(
            "format {:?}, expected \"concord-seed-share-v1\"",
            f.format
        )));
    }
    let hex_field = |name: &str, v: &str| hex::decode(v).map_err(|e| bad(format!("{name}: {e}")));
    let owner_public_key =
        <[u8; 32]>::try_from(hex_field("owner_public_key", &f.owner_public_key)?.as_slice())
            .map_err(|_| bad("owner_public_key: expected 32 bytes".into()))?;
    Ok(EncryptedShare {
        owner_public_key,
        encapsulated_key: hex_field("encapsulated_key", &f.encapsulated_key)?,
        ciphertext: hex_field("ciphertext", &f.ciphertext)?,
    })
}

pub async fn run(args: Recover) -> CliResult {
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
    let mut client = args.target.connect().await?.client;
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
            sealed: Some(pb::SealedShare {
                owner_public_key: sealed.owner_public_key.to_vec(),
                encapsulated_key: sealed.encapsulated_key,
                ciphertext: sealed.ciphertext,
            }),
        })
        .await
        .map_err(|s| remote::status_error("Recover", s))?
        .into_inner();
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
