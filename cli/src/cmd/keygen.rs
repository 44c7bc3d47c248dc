//! `concord keygen owner|share-owner`: make a key, write it with mode 0600, print its public half.

use std::path::PathBuf;

use clap::Subcommand;

use crate::exit::CliResult;
use crate::keys;

#[derive(Debug, Subcommand)]
pub enum Keygen {
    /// A workload owner key (Ed25519, PKCS#8 PEM); list its public key in `workload_owner_keys`.
    Owner {
        #[arg(short, long, default_value = "owner.pem")]
        out: PathBuf,
    },
    /// A witness key (Ed25519, PKCS#8 PEM) for `concord witness`; list its public key in the
    /// manifest's `witnesses`.
    Witness {
        #[arg(short, long, default_value = "witness.pem")]
        out: PathBuf,
    },
    /// A seed share owner key (X25519); list its public key in `seed_share_owners.keys`.
    ShareOwner {
        #[arg(short, long, default_value = "share-owner.key")]
        out: PathBuf,
    },
}

pub fn run(cmd: Keygen) -> CliResult {
    match cmd {
        Keygen::Owner { out } => {
            let key = keys::new_owner_key(&out)?;
            eprintln!(
                "wrote the owner key to {} (keep it secret); its public key:",
                out.display()
            );
            println!("{}", hex::encode(key.verifying_key().as_bytes()));
        }
        Keygen::Witness { out } => {
            let key = keys::new_owner_key(&out)?;
            eprintln!(
                "wrote the witness key to {} (keep it secret); its public key:",
                out.display()
            );
            println!("{}", hex::encode(key.verifying_key().as_bytes()));
        }
        Keygen::ShareOwner { out } => {
            let key = keys::new_share_owner_key(&out)?;
            eprintln!(
                "wrote the seed share owner key to {} (keep it secret); its public key:",
                out.display()
            );
            println!("{}", hex::encode(key.public_key()));
        }
    }
    Ok(())
}
