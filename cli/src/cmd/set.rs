//! `concord set`: set a manifest, signing the transition with the owner key (or an external signature).

use std::path::PathBuf;

use clap::Args;
use concord_coordinator::Hash;
use concord_coordinator::history::format;
use concord_proto::v1 as pb;
use ed25519_dalek::Signature;

use crate::exit::{CliError, CliResult, Limit, read_file, write_file};
use crate::keys;
use crate::remote;

#[derive(Debug, Args)]
pub struct Set {
    #[command(flatten)]
    pub target: crate::remote::CoordinatorTarget,
    /// Policy documents to store with it (each must hash to a policy of the manifest).
    #[arg(short, long = "policy")]
    pub policies: Vec<PathBuf>,
    /// The workload owner key that authorizes the update: listed in the latest manifest, or for the
    /// first manifest in that manifest itself.
    #[arg(long, conflicts_with = "signature")]
    pub owner_key: Option<PathBuf>,
    /// An owner signature made elsewhere (`concord sign --prepare`): 128 hex characters or a file
    /// holding the 64 raw bytes or their hex.
    #[arg(long, requires_all = ["owner_public_key", "expect_latest"])]
    pub signature: Option<String>,
    /// The public key of the external signature (64 hex characters).
    #[arg(long)]
    pub owner_public_key: Option<String>,
    /// Fail unless the latest transition is this one (compare-and-swap), `none` for a first manifest;
    /// default: the latest right now.
    #[arg(long)]
    pub expect_latest: Option<String>,
    /// Where to write the seed shares returned for the first manifest.
    #[arg(long, default_value = ".")]
    pub shares_dir: PathBuf,
}

pub(crate) fn decode_signature(s: &str) -> CliResult<Signature> {
    let bytes = match hex::decode(s.trim()) {
        Ok(b) if b.len() == 64 => b,
        _ => {
            let raw = read_file(std::path::Path::new(s), Limit::SIGNATURE)?;
            if raw.len() == 64 {
                raw
            } else {
                hex::decode(String::from_utf8_lossy(&raw).trim()).map_err(|_| {
                    CliError::usage(
                        "--signature: not 128 hex characters, nor a file of 64 bytes or their hex",
                    )
                })?
            }
        }
    };
    let bytes = <[u8; 64]>::try_from(bytes.as_slice())
        .map_err(|_| CliError::usage("--signature: an Ed25519 signature is 64 bytes"))?;
    Ok(Signature::from_bytes(&bytes))
}

/// `--expect-latest`: a transition hash, or `none` (the first manifest has no predecessor).
pub(crate) fn parse_expected_latest(s: &str) -> CliResult<Hash> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(Hash::ZERO);
    }
    Hash::from_hex(s.trim()).map_err(|e| {
        CliError::usage(format!(
            "--expect-latest: {e} (a transition hash, or `none` for the first manifest)"
        ))
    })
}

/// Sets the manifest; returns the latest transition hash afterwards.
pub async fn run(args: Set) -> CliResult<Hash> {
    let bytes = read_file(&args.target.manifest, Limit::MANIFEST)?;

    let policies = args
        .policies
        .iter()
        .map(|p| read_file(p, Limit::POLICY))
        .collect::<CliResult<Vec<_>>>()?;
    // Every input file is read before the coordinator is dialed: a bad one fails at once.
    let signing_key = args
        .owner_key
        .as_deref()
        .map(keys::load_owner_key)
        .transpose()?;
    // A first manifest may go to a coordinator that has no deployment yet (unpinned); checked below.
    let connected = args.target.connect_allowing_unpinned().await?;
    let serving = connected.peer.deployment();
    let mut client = connected.client;

    let latest = client
        .get_manifests(pb::GetManifestsRequest {
            only_latest: true,
            ..Default::default()
        })
        .await
        .map_err(|s| remote::status_error("GetManifests", s))?
        .into_inner()
        .latest;
    let bad = |e: String| {
        CliError::verification(format!("the coordinator sent a bad latest transition: {e}"))
    };
    let (latest_hash, latest_manifest) = match &latest {
        Some(t) => (
            Hash::from_slice(&t.hash).map_err(bad)?,
            Hash::from_slice(&t.manifest_hash).map_err(bad)?,
        ),
        None => (Hash::ZERO, Hash::ZERO),
    };
    match &latest {
        // A genuine coordinator with a history names its deployment: an unpinned one with a history
        // is another deployment's first manifest set between our handshake and our read.
        Some(_) if serving.is_unpinned() => {
            return Err(CliError::verification(format!(
                "the coordinator had no deployment when we connected, and now has a history (latest \
                 {latest_hash}): someone else set a first manifest; it is not deployment {}",
                connected.deployment
            )));
        }
        None => {
            let makes = connected.manifest.deployment_id();
            if makes != connected.deployment {
                return Err(CliError::usage(format!(
                    "{} is a first manifest of deployment {makes}, not of {} (--deployment-id): set \
                     the manifest the deployment was made for, or fix --deployment-id",
                    args.target.manifest.display(),
                    connected.deployment
                )));
            }
        }
        Some(_) => {}
    }
    // Re-applying the latest manifest is a no-op that needs no signature (GitOps loops re-apply).
    let unchanged = latest.is_some() && latest_manifest == Hash::of(&bytes);
    let previous = match &args.expect_latest {
        Some(h) => parse_expected_latest(h)?,
        None => latest_hash,
    };
    let transition = format::transition_hash(&Hash::of(&bytes), &previous);
    // The first manifest is authorized by a key it lists itself (unless it lists none: then nobody
    // can, and its deployment id binds the whole manifest); later ones by a key of the latest manifest.
    let first = previous == Hash::ZERO;
    let first_is_final = first && connected.manifest.is_final();
    let (owner_key, owner_signature) = if unchanged || first_is_final {
        if first_is_final && (args.owner_key.is_some() || args.signature.is_some()) {
            return Err(CliError::usage(format!(
                "{} lists no workload owner key, so as a first manifest it takes no owner signature: \
                 drop --owner-key/--signature",
                args.target.manifest.display()
            )));
        }
        (Vec::new(), Vec::new())
    } else if let Some(key) = &signing_key {
        if first
            && !connected
                .manifest
                .workload_owner_keys()
                .contains(&key.verifying_key())
        {
            return Err(CliError::usage(format!(
                "--owner-key: its public key {} is not listed in {}'s workload_owner_keys; the first \
                 manifest must be authorized by one of its own owner keys",
                hex::encode(key.verifying_key().to_bytes()),
                args.target.manifest.display()
            )));
        }
        (
            key.verifying_key().to_bytes().to_vec(),
            format::sign_owner(key, &transition).to_bytes().to_vec(),
        )
    } else if let (Some(sig), Some(public)) = (&args.signature, &args.owner_public_key) {
        let public = hex::decode(public)
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| CliError::usage("--owner-public-key: expected 64 hex characters"))?;
        (public, decode_signature(sig)?.to_bytes().to_vec())
    } else if first {
        return Err(CliError::usage(format!(
            "{} lists workload owner keys, so the first manifest must be authorized by one of them: \
             pass --owner-key, or --signature and --owner-public-key with --expect-latest none \
             (`concord sign --prepare --expect-latest none`)",
            args.target.manifest.display()
        )));
    } else {
        return Err(CliError::usage(format!(
            "the coordinator already has a history (latest {previous}): an update must be authorized with --owner-key, or with --signature and --owner-public-key"
        )));
    };

    let response = client
        .set_manifest(pb::SetManifestRequest {
            manifest: bytes,
            policies,
            expected_previous: previous.as_bytes().to_vec(),
            owner_key,
            owner_signature,
        })
        .await
        .map_err(|s| remote::status_error("SetManifest", s))?
        .into_inner();
    let t = response
        .transition
        .ok_or_else(|| CliError::error("the coordinator answered without a transition"))?;
    let hash = Hash::from_slice(&t.hash).unwrap_or_default();
    if response.unchanged {
        eprintln!("the manifest is already the latest one; nothing changed");
    } else {
        eprintln!("manifest set: transition {} ({})", t.index, hash);
    }
    for (i, share) in response.seed_shares.iter().enumerate() {
        let doc = serde_json::json!({
            "format": "concord-seed-share-v1",
            "owner_public_key": hex::encode(&share.owner_public_key),
            "encapsulated_key": hex::encode(&share.encapsulated_key),
            "ciphertext": hex::encode(&share.ciphertext),
        });
        let path = args.shares_dir.join(format!("seed-share-{i}.json"));
        write_file(&path, format!("{doc:#}\n").as_bytes(), true)?;
        eprintln!(
            "seed share {i} (encrypted to {}) written to {}: give it to its owner",
            hex::encode(&share.owner_public_key),
            path.display()
        );
    }
    println!("{hash}");
    Ok(hash)
}
