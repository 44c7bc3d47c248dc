//! `concord-coordinator`: one coordinator replica.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use concord_coordinator::launch::{LaunchError, OwnReferenceArgs, PlatformArgs};
use concord_coordinator::peer_args::{Members, PeerArgs};
use concord_coordinator::server::{Config, run};

/// The replica allocates from jemalloc, not glibc's malloc. A NewMeshCert's buffers are allocated on one
/// runtime worker and freed on another, where glibc's arenas contend for their locks; jemalloc's
/// thread caches gave 8 to 10 % more certificates per CPU second in alternating runs of the benchmark's
/// mesh section (README, "the twenty-second pass"). Its options are set at build time in
/// `.cargo/config.toml`: a background thread returns freed pages after 200 ms, so the idle replica's
/// resident memory stays within its target (mimalloc, tried too, kept 90 to 145 MB resident).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum EvidenceMode {
    Batched,
    PerHandshake,
}

#[derive(Debug, Clone, Copy, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
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
    /// Peer API address (Raft, peer recovery, forwarding).
    #[arg(long, env = "CONCORD_PEER_LISTEN", default_value = "0.0.0.0:7778")]
    peer_listen: SocketAddr,
    /// Probes and metrics address (plain HTTP): /probe/startup, /probe/liveness, /probe/readiness,
    /// /health, /metrics.
    #[arg(long, env = "CONCORD_HEALTH_LISTEN", default_value = "0.0.0.0:9102")]
    health_listen: SocketAddr,
    /// Transit API address (Vault's transit paths over mutual TLS with mesh certificates).
    #[arg(long, env = "CONCORD_TRANSIT_LISTEN", default_value = "0.0.0.0:8200")]
    transit_listen: SocketAddr,
    /// A name (DNS name or IP address) the transit API's server certificate carries: what workloads
    /// dial (repeat the flag, or separate with commas). The chart passes its Service names.
    #[arg(
        long = "transit-san",
        env = "CONCORD_TRANSIT_SANS",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    transit_sans: Vec<String>,
    /// Seconds a workload certificate from the previous mesh CA is still accepted by the transit API
    /// after this replica adopted a new one (a new manifest makes a new mesh CA).
    #[arg(long, env = "CONCORD_TRANSIT_MESH_CA_GRACE", default_value_t = 3600)]
    transit_mesh_ca_grace: u64,
    #[command(flatten)]
    members: PeerArgs,
    #[command(flatten)]
    platform: PlatformArgs,
    #[command(flatten)]
    own_reference: OwnReferenceArgs,
    /// The deployment this replica serves (64 hex characters: `concord deployment-id -m
    /// first-manifest.json`). A first manifest of another deployment is refused, and a stored history
    /// of another deployment is not served. Without it the replica is unpinned until its first manifest.
    #[arg(long, env = "CONCORD_DEPLOYMENT_ID", value_parser = parse_deployment_id)]
    deployment_id: Option<concord_attestation::DeploymentId>,
    /// Raft takes a snapshot of the history after this many log entries and purges the log before
    /// it, keeping a fifth as many entries; a follower further behind is caught up by a snapshot.
    /// Lower it only to exercise snapshots (tests); at least 2.
    #[arg(long, env = "CONCORD_SNAPSHOT_AFTER_ENTRIES", default_value_t = concord_coordinator::server::SNAPSHOT_AFTER_ENTRIES,
          value_parser = clap::value_parser!(u64).range(2..))]
    snapshot_after_entries: u64,
    /// Test fault hook (no environment variable, so the chart cannot set it): while FILE exists, the
    /// Raft log's appends block like a disk that stopped answering, wedging the Raft core. For tests of
    /// the liveness probe and of shutdown only.
    #[arg(long, value_name = "FILE", hide = true)]
    insecure_test_stall_raft_while: Option<PathBuf>,
    /// Test hook (no environment variable): this replica never asks its peers for their seal keys,
    /// so as leader it seals no mesh CA key into Raft entries (PROTOCOL.md §7.1) and its followers
    /// fetch every new key by peer recovery. For tests of a replica left recovering only.
    #[arg(long, hide = true)]
    insecure_test_no_sealed_mesh_ca: bool,
    /// Evidence for client handshakes: `batched` makes one report for every handshake that waits
    /// while the previous one is made (binding v3, docs/PROTOCOL.md §8), so the secure processor
    /// sees a bounded number of calls whatever the number of clients; `per-handshake` makes one per
    /// handshake (binding v2 only), for clients from before binding v3.
    #[arg(long, env = "CONCORD_EVIDENCE", value_enum, default_value = "batched")]
    evidence: EvidenceMode,
    /// INSECURE, benchmarks only (--platform simulated): every simulated report takes this many
    /// milliseconds, one at a time, as a secure processor's would.
    #[arg(long, env = "CONCORD_INSECURE_SIMULATED_ISSUER_DELAY_MS", hide = true)]
    insecure_simulated_issuer_delay_ms: Option<u64>,
    /// Log format.
    #[arg(long, env = "CONCORD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Parse every flag and environment variable, print the resulting configuration as JSON and exit
    /// without starting anything (exit 2 on a usage error). Checks the flags, not the files they name.
    #[arg(long)]
    check_config: bool,
}

/// The configuration `--check-config` prints. Nothing in it is secret: flags carry paths, never keys.
fn config_json(args: &Args, members: &Members) -> serde_json::Value {
    let p = &args.platform;
    serde_json::json!({
        "data_dir": args.data_dir,
        "user_listen": args.user_listen,
        "mesh_listen": args.mesh_listen,
        "peer_listen": args.peer_listen,
        "health_listen": args.health_listen,
        "transit_listen": args.transit_listen,
        "transit_sans": args.transit_sans,
        "transit_mesh_ca_grace": args.transit_mesh_ca_grace,
        "node_id": members.node_id,
        "peers": members.peers,
        "platform": {
            "kind": p.platform.to_possible_value().map(|v| v.get_name().to_string()),
            "insecure_simulated_attestation": p.insecure_simulated_attestation,
            "simulated_root": p.simulated_root,
            "simulated_policy": p.simulated_policy,
            "simulated_measurement": p.simulated_measurement,
            "kds_url": p.kds_url,
            "vcek_cache_dir": p.vcek_cache_dir,
            "vcek_dir": p.vcek_dir,
            "accept_stale_amd_crl_for_seconds": p.accept_stale_amd_crl_for.as_secs(),
            "pccs_url": p.pccs_url,
            "tdx_collateral_cache_dir": p.tdx_collateral_cache_dir,
            "tdx_collateral_dir": p.tdx_collateral_dir,
            "tdx_collateral": p.tdx_collateral,
            "snp_reference": args.own_reference.snp_reference,
        },
        "evidence": args.evidence,
        "insecure_simulated_issuer_delay_ms": args.insecure_simulated_issuer_delay_ms,
        "log_format": args.log_format,
        "snapshot_after_entries": args.snapshot_after_entries,
        "deployment_id": args.deployment_id.map(|id| hex::encode(id.as_bytes())),
    })
}

fn parse_deployment_id(s: &str) -> Result<concord_attestation::DeploymentId, String> {
    let id = concord_attestation::DeploymentId::from_hex(s)?;
    if id.is_unpinned() {
        return Err("all zero bytes mean \"unpinned\"; omit the flag instead".into());
    }
    Ok(id)
}

fn usage_error(e: &str) -> ExitCode {
    eprintln!("concord-coordinator: {e}");
    ExitCode::from(2)
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft narrates every vote and logs refused connections to peers that are still starting
        // as errors; the coordinator logs leadership changes itself. RUST_LOG=openraft=info brings it back.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=off"));
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

/// The directory under `--data-dir` where fetched VCEKs are kept unless `--vcek-cache-dir` says.
const VCEK_CACHE_SUBDIR: &str = "vcek-cache";
/// The directory under `--data-dir` where TDX collateral is kept unless
/// `--tdx-collateral-cache-dir` says.
const TDX_COLLATERAL_CACHE_SUBDIR: &str = "tdx-collateral-cache";

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.platform.vcek_cache_dir.is_none() {
        args.platform.vcek_cache_dir = Some(args.data_dir.join(VCEK_CACHE_SUBDIR));
    }
    if args.platform.tdx_collateral_cache_dir.is_none() {
        args.platform.tdx_collateral_cache_dir =
            Some(args.data_dir.join(TDX_COLLATERAL_CACHE_SUBDIR));
    }
    let members = match args.members.members(args.peer_listen) {
        Ok(m) => m,
        Err(e) => return usage_error(&e),
    };
    if args.check_config {
        let checked =
            (args.platform.check()).and_then(|()| args.own_reference.check(args.platform.platform));
        if let Err(e) = checked {
            return usage_error(&e);
        }
        println!("{:#}", config_json(&args, &members));
        return ExitCode::SUCCESS;
    }
    init_logs(args.log_format);
    if args.insecure_simulated_issuer_delay_ms.is_some()
        && args.platform.platform != concord_coordinator::launch::PlatformKind::Simulated
    {
        return usage_error(
            "--insecure-simulated-issuer-delay-ms is for --platform simulated (benchmarks) only",
        );
    }
    let mut platform = match args.platform.launch(&args.own_reference) {
        Ok(p) => p,
        Err(LaunchError::Usage(e)) => return usage_error(&e),
        Err(LaunchError::Unavailable(e)) => {
            tracing::error!(error = %e, "cannot attest on this platform");
            eprintln!("concord-coordinator: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(ms) = args.insecure_simulated_issuer_delay_ms {
        tracing::warn!(
            delay_ms = ms,
            "INSECURE benchmark setting: every simulated report is slowed down, one at a time"
        );
        platform.issuer = std::sync::Arc::new(concord_attestation::ThrottledIssuer::new(
            platform.issuer,
            std::time::Duration::from_millis(ms),
        ));
    }
    let config = Config {
        data_dir: args.data_dir,
        user_listen: args.user_listen,
        mesh_listen: args.mesh_listen,
        peer_listen: args.peer_listen,
        health_listen: args.health_listen,
        transit_listen: args.transit_listen,
        transit: concord_coordinator::transit::TransitSettings {
            sans: args.transit_sans,
            mesh_ca_grace: std::time::Duration::from_secs(args.transit_mesh_ca_grace),
        },
        node_id: members.node_id,
        peers: members.peers,
        platform,
        deployment_id: args.deployment_id,
        snapshot_after_entries: args.snapshot_after_entries,
        stall_raft_while: args.insecure_test_stall_raft_while,
        no_sealed_mesh_ca: args.insecure_test_no_sealed_mesh_ca,
        evidence_batching: args.evidence == EvidenceMode::Batched,
    };
    let code = match run(config, shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "coordinator failed");
            eprintln!("concord-coordinator: {e:#}");
            1
        }
    };
    // Exit here rather than return: dropping the runtime waits for every worker and blocking thread,
    // and one may be stuck in a flush to a disk that stopped answering (the case the shutdown grace
    // period in `server::run` is for). Everything acknowledged is already flushed.
    std::process::exit(code)
}
