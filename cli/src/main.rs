//! `concord`: set manifests, verify the coordinator, audit its history, run the demo.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use concord_cli::cmd;

/// Concord: a confidential-computing coordinator. Exit codes: 0 ok, 1 error, 2 usage, 3 verification failed.
#[derive(Debug, Parser)]
#[command(name = "concord", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a workload owner or seed share owner key.
    #[command(subcommand)]
    Keygen(cmd::keygen::Keygen),
    /// Set a manifest (the first, or an update authorized by an owner key).
    Set(cmd::set::Set),
    /// Prepare the bytes an external key signs to authorize an update, or sign them.
    Sign(cmd::sign::Sign),
    /// Verify the coordinator and its whole history; write the audit bundle.
    Verify(cmd::verify::Verify),
    /// Work with audit bundles offline.
    #[command(subcommand)]
    History(cmd::history::History),
    /// Run a transparency-log witness (C2SP tlog-witness) for one or more deployments.
    Witness(cmd::witness::WitnessArgs),
    /// Attestation tools.
    #[command(subcommand)]
    Attestation(cmd::attestation::Attestation),
    /// Change the coordinator cluster's members (authorized by a workload owner key).
    #[command(subcommand)]
    Cluster(cmd::cluster::Cluster),
    /// Show a replica's state, Raft role, term and leader.
    Status(cmd::status::Status),
    /// Submit your seed share to a recovering coordinator (user recovery after a full outage).
    Recover(cmd::recover::Recover),
    /// Print the deployment id a first manifest makes (for `--deployment-id`, the chart's `deploymentId`).
    DeploymentId(cmd::deployment_id::DeploymentId),
    /// Run a local coordinator end to end (simulated attestation) and show every step.
    Demo(cmd::demo::Demo),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen(c) => cmd::keygen::run(c),
        Command::Set(c) => cmd::set::run(c).await.map(|_| ()),
        Command::Sign(c) => cmd::sign::run(c),
        Command::Verify(c) => cmd::verify::run(c).await.map(|_| ()),
        Command::History(c) => cmd::history::run_any(c).await,
        Command::Witness(c) => cmd::witness::run(c).await,
        Command::Attestation(c) => cmd::attestation::run(c),
        Command::Recover(c) => cmd::recover::run(c).await,
        Command::Cluster(c) => cmd::cluster::run(c).await,
        Command::Status(c) => cmd::status::run(c).await.map(|_| ()),
        Command::Demo(c) => cmd::demo::run(c).await,
        Command::DeploymentId(c) => cmd::deployment_id::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("concord: {e}");
            e.exit_code()
        }
    }
}
