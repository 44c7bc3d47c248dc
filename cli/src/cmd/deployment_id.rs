//! `concord deployment-id`: print the id of the deployment a first manifest makes, for the
//! coordinators' and initializers' `--deployment-id` (the chart's `deploymentId`) before anything runs.

use std::path::PathBuf;

use clap::Args;

use crate::exit::CliResult;
use crate::remote;

#[derive(Debug, Args)]
pub struct DeploymentId {
    /// The deployment's first manifest (only its seed share owners and workload owner keys matter).
    #[arg(short, long, default_value = "manifest.json")]
    pub manifest: PathBuf,
}

pub fn run(args: DeploymentId) -> CliResult {
    let manifest = remote::read_manifest(&args.manifest)?;
    let owners = manifest.seed_share_owners();
    eprintln!(
        "deployment of {}: seed share owners {} of {}, {} workload owner key(s) (docs/PROTOCOL.md, \"Deployment id\")",
        args.manifest.display(),
        owners.threshold,
        owners.keys.len(),
        manifest.workload_owner_keys().len()
    );
    println!("{}", hex::encode(manifest.deployment_id().as_bytes()));
    Ok(())
}
