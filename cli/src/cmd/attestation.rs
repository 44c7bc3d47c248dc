//! `concord attestation ...`: attestation tools. `sim-root` makes the INSECURE simulated root a
//! deployment without SEV-SNP (CI, laptops, the demo) attests with.

use std::path::PathBuf;

use clap::Subcommand;
use concord_attestation::SimulatedRoot;

use crate::exit::{CliError, CliResult};

#[derive(Debug, Subcommand)]
pub enum Attestation {
    /// Make a simulated root (INSECURE: for tests and demos only) and print its hash for the manifest.
    SimRoot {
        #[arg(short, long)]
        out: PathBuf,
    },
}

pub fn run(cmd: Attestation) -> CliResult {
    match cmd {
        Attestation::SimRoot { out } => {
            let root = SimulatedRoot::generate()
                .map_err(|e| CliError::error(format!("cannot make a simulated root: {e}")))?;
            std::fs::create_dir_all(&out)
                .map_err(|e| CliError::error(format!("cannot create {}: {e}", out.display())))?;
            root.save(&out).map_err(|e| {
                CliError::error(format!(
                    "cannot write the simulated root to {}: {e}",
                    out.display()
                ))
            })?;
            eprintln!(
                "INSECURE: simulated attestation root written to {}; put its hash in reference_values.simulated[].root:",
                out.display()
            );
            println!("{}", hex::encode(root.hash()));
            Ok(())
        }
    }
}
