//! `concord-coordinator`: one coordinator replica.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use concord_coordinator::launch::PlatformArgs;
use concord_coordinator::server::{Config, run};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A Concord coordinator replica: the user API, the mesh API, the signed history.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where the replica keeps its (untrusted, verified on start) store.
    #[arg(long, env = "CONCORD_DATA_DIR")]
    data_dir: PathBuf,
    /// User API address (SetManifest, GetManifests, GetHistory).
    #[arg(long, env = "CONCORD_USER_LISTEN", default_value = "0.0.0.0:1313")]
    user_listen: SocketAddr,
    /// Mesh API address (NewMeshCert).
    #[arg(long, env = "CONCORD_MESH_LISTEN", default_value = "0.0.0.0:7777")]
    mesh_listen: SocketAddr,
    #[command(flatten)]
    platform: PlatformArgs,
    /// Log format.
    #[arg(long, env = "CONCORD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colors only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            return;
        }
    }
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_logs(args.log_format);
    let platform = match args.platform.launch() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("concord-coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    let config = Config {
        data_dir: args.data_dir,
        user_listen: args.user_listen,
        mesh_listen: args.mesh_listen,
        platform,
    };
    match run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "coordinator failed");
            eprintln!("concord-coordinator: {e:#}");
            ExitCode::from(1)
        }
    }
}
