//! `concord sign`: owner authorization with a key the CLI never sees.
//!
//! `--prepare` writes the exact bytes to sign ("concord/v1/set-manifest" || transition hash) for an
//! external signer (an HSM, `openssl pkeyutl -sign -rawin`); without it, signs such a file, or one that
//! `concord cluster set-members --prepare` wrote, with a local key.

use std::path::PathBuf;

use clap::Args;
use concord_coordinator::Hash;
use concord_coordinator::history::format;

use crate::exit::{CliError, CliResult, Limit, read_file, write_file};
use crate::keys;

#[derive(Debug, Args)]
pub struct Sign {
    /// Write the message to sign for the manifest and expected latest transition.
    #[arg(long, requires_all = ["manifest", "expect_latest", "out"])]
    prepare: bool,
    /// The manifest to be set.
    #[arg(short, long)]
    manifest: Option<PathBuf>,
    /// The latest transition hash the update replaces (from `concord verify` or `concord set` output),
    /// or `none` for the first manifest (which one of its own owner keys signs).
    #[arg(long)]
    expect_latest: Option<String>,
    /// Where to write the message (with --prepare).
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// Sign this message file with --owner-key instead.
    #[arg(long, conflicts_with = "prepare", requires = "owner_key")]
    message: Option<PathBuf>,
    /// The owner's Ed25519 key (PKCS#8 PEM).
    #[arg(long)]
    owner_key: Option<PathBuf>,
}

pub fn run(args: Sign) -> CliResult {
    if args.prepare {
        let (Some(manifest), Some(latest), Some(out)) =
            (args.manifest, args.expect_latest, args.out)
        else {
            return Err(CliError::usage(
                "--prepare needs --manifest, --expect-latest and --out",
            ));
        };
        let bytes = read_file(&manifest, Limit::MANIFEST)?;
        crate::remote::read_manifest(&manifest)?;
        let previous = crate::cmd::set::parse_expected_latest(&latest)?;
        let transition = format::transition_hash(&Hash::of(&bytes), &previous);
        write_file(&out, &format::owner_message(&transition), false)?;
        eprintln!(
            "wrote the {} bytes to sign to {}; sign them with Ed25519 (e.g. `openssl pkeyutl -sign -rawin -inkey owner.pem -in {} -out sig.bin`), then `concord set --signature sig.bin --owner-public-key HEX --expect-latest {latest}`",
            format::owner_message(&transition).len(),
            out.display(),
            out.display(),
        );
        println!("{transition}");
        return Ok(());
    }
    let (Some(message), Some(key)) = (args.message, args.owner_key) else {
        return Err(CliError::usage(
            "give --prepare, or --message FILE with --owner-key FILE",
        ));
    };
    let msg = read_file(&message, Limit::SIGNATURE)?;
    let manifest_update = msg.starts_with(format::SET_MANIFEST_LABEL)
        && msg.len() == format::SET_MANIFEST_LABEL.len() + 32;
    // `concord cluster set-members --prepare`: label, latest hash, u64be index, SHA-256 of the members.
    let membership_change = msg.starts_with(format::SET_MEMBERS_LABEL)
        && msg.len() == format::SET_MEMBERS_LABEL.len() + 32 + 8 + 32;
    if !manifest_update && !membership_change {
        return Err(CliError::error(format!(
            "{} is not a message made by `concord sign --prepare` or `concord cluster set-members --prepare`; refusing to sign arbitrary bytes with an owner key",
            message.display()
        )));
    }
    let key = keys::load_owner_key(&key)?;
    use ed25519_dalek::Signer;
    println!("{}", hex::encode(key.sign(&msg).to_bytes()));
    Ok(())
}
