//! The `concord-initializer`: at pod start, attest to the mesh API, get the workload's certificate, the
//! CA chain and its secret, and write them where Contrast's initializer does, so workloads written for
//! Contrast work unchanged. Retries with backoff until it succeeds (or `--timeout` passes).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use concord_attestation::{AtlsClient, AttestationError, ClientIdentity, RejectReason};
use concord_coordinator::launch::{LaunchError, PlatformArgs};
use concord_coordinator::transport::{ConnectError, connect};
use concord_proto::v1 as pb;
use concord_proto::v1::mesh_api_client::MeshApiClient;

use zeroize::{Zeroize as _, Zeroizing};

use crate::exit::{CliError, CliResult, write_file};
use crate::remote;

/// Gets this workload's mesh certificate and secret from the coordinator.
#[derive(Debug, Parser)]
#[command(name = "concord-initializer", version)]
pub struct InitializerArgs {
    /// The coordinator's mesh API (host:port).
    #[arg(
        long,
        env = "CONCORD_COORDINATOR",
        default_value = "coordinator-ready:7777"
    )]
    pub coordinator: String,
    /// The directory the files are written under (`tls-config/`, `secrets/`).
    #[arg(long, env = "CONCORD_INITIALIZER_ROOT", default_value = "/contrast")]
    pub root: PathBuf,
    /// The manifest the coordinator must be verified against (its coordinator policies and reference values).
    #[arg(long, env = "CONCORD_MANIFEST")]
    pub manifest: PathBuf,
    /// The deployment the workload belongs to (64 hex characters, `concord deployment-id -m
    /// first-manifest.json`): a coordinator serving another deployment is refused (exit 3), even a
    /// genuine one. Default: the id the manifest makes (right unless the owner keys changed since the
    /// first manifest).
    #[arg(long, env = "CONCORD_DEPLOYMENT_ID", value_parser = remote::parse_deployment_id)]
    pub deployment_id: Option<concord_attestation::DeploymentId>,
    /// Give up after this many seconds (default: never).
    #[arg(long, env = "CONCORD_INITIALIZER_TIMEOUT")]
    pub timeout: Option<u64>,
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Parse every flag and environment variable, print the resulting configuration as JSON and exit
    /// without connecting (exit 2 on a usage error). Checks the flags, not the files they name.
    #[arg(long)]
    pub check_config: bool,
}

/// The configuration `--check-config` prints (paths and addresses only: nothing secret).
fn config_json(args: &InitializerArgs) -> serde_json::Value {
    let p = &args.platform;
    serde_json::json!({
        "coordinator": args.coordinator,
        "root": args.root,
        "manifest": args.manifest,
        "timeout": args.timeout,
        "deployment_id": args.deployment_id.map(|id| hex::encode(id.as_bytes())),
        "platform": {
            "kind": clap::ValueEnum::to_possible_value(&p.platform).map(|v| v.get_name().to_string()),
            "insecure_simulated_attestation": p.insecure_simulated_attestation,
            "simulated_root": p.simulated_root,
            "simulated_policy": p.simulated_policy,
            "simulated_measurement": p.simulated_measurement,
            "kds_url": p.kds_url,
            "vcek_cache_dir": p.vcek_cache_dir,
            "vcek_dir": p.vcek_dir,
        },
    })
}

/// The files, relative to the root, as Contrast's initializer lays them out.
pub const KEY: &str = "tls-config/key.pem";
pub const CERT_CHAIN: &str = "tls-config/certChain.pem";
pub const MESH_CA: &str = "tls-config/mesh-ca.pem";
pub const ROOT_CA: &str = "tls-config/coordinator-root-ca.pem";
pub const WORKLOAD_SECRET: &str = "secrets/workload-secret-seed";

pub async fn run(args: InitializerArgs) -> CliResult {
    if args.check_config {
        args.platform.check().map_err(CliError::usage)?;
        println!("{:#}", config_json(&args));
        return Ok(());
    }
    let issuer = args.platform.issuer().map_err(|e| match e {
        LaunchError::Usage(e) => CliError::usage(e),
        LaunchError::Unavailable(e) => CliError::error(e),
    })?;
    let manifest = remote::read_manifest(&args.manifest)?;
    let trust = remote::trust_for(&manifest, args.platform.insecure_simulated_attestation)?;
    let deployment = remote::expected_deployment(args.deployment_id, &manifest);
    let mut policy = remote::coordinator_policy(&manifest, trust)?;
    policy.deployment = concord_attestation::DeploymentPin::Exactly(deployment);
    let policy = Arc::new(policy);
    let key = Arc::new(
        rcgen::KeyPair::generate()
            .map_err(|e| CliError::error(format!("cannot make a key: {e}")))?,
    );
    let identity = ClientIdentity {
        issuer,
        key: key.clone(),
        deployment: Arc::new(deployment),
    };
    let client = Arc::new(
        AtlsClient::new(policy, Some(identity))
            .map_err(|e| CliError::error(format!("cannot set up aTLS: {e}")))?,
    );

    let start = Instant::now();
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1u32;
    let response = loop {
        match attempt_once(&args.coordinator, client.clone()).await {
            Ok(r) => break r,
            // A genuine coordinator of another deployment: retrying cannot help, and nothing may be
            // sent to it. (One with no deployment yet may get its first manifest: retry.)
            Err(Attempt::OtherDeployment(e)) => return Err(e),
            Err(Attempt::Failed(e)) => {
                if let Some(t) = args.timeout
                    && start.elapsed() + delay > Duration::from_secs(t)
                {
                    return Err(CliError::error(format!(
                        "gave up after {attempt} attempts in {:.1}s: {e}",
                        start.elapsed().as_secs_f64()
                    )));
                }
                eprintln!(
                    "attempt {attempt} failed: {e}; retrying in {:.1}s",
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                attempt += 1;
            }
        }
    };
    let mut response = response;
    let written = write_outputs(&args.root, &Zeroizing::new(key.serialize_pem()), &response);
    let had_secret = !response.workload_secret.is_empty();
    // The workload secret is in its file now (or the write failed): no copy stays in memory.
    response.workload_secret.zeroize();
    written?;
    eprintln!(
        "wrote the workload's key, certificate chain, mesh CA, root CA{} under {}",
        if had_secret {
            " and workload secret"
        } else {
            ""
        },
        args.root.display()
    );
    Ok(())
}

/// Why an attempt failed: worth retrying, or not.
enum Attempt {
    Failed(CliError),
    OtherDeployment(CliError),
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attempt::Failed(e) | Attempt::OtherDeployment(e) => e.fmt(f),
        }
    }
}

async fn attempt_once(
    addr: &str,
    client: Arc<AtlsClient>,
) -> Result<pb::NewMeshCertResponse, Attempt> {
    let (channel, _) = connect(addr, client).await.map_err(|e| {
        let other = matches!(
            &e,
            ConnectError::Attestation {
                source: AttestationError::Rejected(RejectReason::WrongDeployment { found, .. }),
                ..
            } if !found.is_unpinned()
        );
        let e = remote::connect_error(e);
        if other {
            Attempt::OtherDeployment(e)
        } else {
            Attempt::Failed(e)
        }
    })?;
    MeshApiClient::new(channel)
        .max_decoding_message_size(concord_proto::limits::MESH_API_MESSAGE_BYTES)
        .max_encoding_message_size(concord_proto::limits::MESH_API_MESSAGE_BYTES)
        .new_mesh_cert(pb::NewMeshCertRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| Attempt::Failed(remote::status_error("NewMeshCert", s)))
}

fn write_outputs(root: &Path, key_pem: &str, r: &pb::NewMeshCertResponse) -> CliResult {
    write_secret(&root.join(KEY), key_pem.as_bytes())?;
    write_public(&root.join(CERT_CHAIN), r.cert_chain.as_bytes())?;
    write_public(&root.join(MESH_CA), r.mesh_ca.as_bytes())?;
    write_public(&root.join(ROOT_CA), r.root_ca.as_bytes())?;
    if !r.workload_secret.is_empty() {
        // Contrast writes the seed hex-encoded.
        write_secret(
            &root.join(WORKLOAD_SECRET),
            Zeroizing::new(hex::encode(&r.workload_secret)).as_bytes(),
        )?;
    }
    Ok(())
}

/// A secret file, readable by its owner only (0400).
fn write_secret(path: &Path, bytes: &[u8]) -> CliResult {
    write_file(path, bytes, true)?;
    set_mode(path, 0o400)
}

/// A certificate: readable by all, writable by none (0444), as Contrast's initializer leaves them.
fn write_public(path: &Path, bytes: &[u8]) -> CliResult {
    // A read-only file from an earlier run cannot be overwritten in place.
    let _ = std::fs::remove_file(path);
    write_file(path, bytes, false)?;
    set_mode(path, 0o444)
}

fn set_mode(path: &Path, mode: u32) -> CliResult {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| CliError::error(format!("cannot set the mode of {}: {e}", path.display())))
}
