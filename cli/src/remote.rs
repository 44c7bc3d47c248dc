//! How the CLI reaches a coordinator: over aTLS, accepting it only if its evidence matches a
//! `coordinator`-role policy and the reference values of the manifest the user expects.

use std::path::PathBuf;
use std::sync::Arc;

use concord_attestation::{AtlsClient, PlatformTrust, StaticPolicy, VerifiedPeer, Verifier};
use concord_coordinator::manifest::Manifest;
use concord_coordinator::transport::{ConnectError, connect};
use concord_proto::v1::user_api_client::UserApiClient;
use tonic::transport::Channel;

use crate::exit::{CliError, CliResult};

/// Prints the warning every tool prints when it accepts simulated evidence.
pub fn warn_insecure() {
    eprintln!(
        "INSECURE: simulated attestation: the coordinator's evidence proves nothing; never rely on it in production"
    );
}

/// The trust a relying party has in platforms, from the expected manifest and the user's flags.
pub fn trust_for(
    manifest: &Manifest,
    insecure_simulated_attestation: bool,
) -> CliResult<PlatformTrust> {
    let simulated = &manifest.reference_values().simulated;
    if simulated.is_empty() {
        return Ok(PlatformTrust {
            insecure_simulated_root: None,
        });
    }
    if !insecure_simulated_attestation {
        return Err(CliError::usage(
            "the manifest trusts the simulated platform; pass --insecure-simulated-attestation to accept simulated evidence (never in production)",
        ));
    }
    warn_insecure();
    Ok(PlatformTrust {
        insecure_simulated_root: Some(*simulated[0].root.as_bytes()),
    })
}

/// The policy a coordinator must meet: a `coordinator`-role policy of `manifest` and its reference values.
pub fn coordinator_policy(manifest: &Manifest, trust: PlatformTrust) -> CliResult<StaticPolicy> {
    let host_data: Vec<[u8; 32]> = manifest
        .coordinator_policies()
        .iter()
        .map(|h| *h.as_bytes())
        .collect();
    if host_data.is_empty() {
        return Err(CliError::error(
            "the manifest lists no policy with \"role\": \"coordinator\", so the coordinator cannot be verified against it; add the coordinator's policy hash with that role",
        ));
    }
    Ok(StaticPolicy {
        verifier: Verifier::new(trust),
        reference: manifest.reference_values().clone(),
        host_data,
    })
}

/// Dials the user API at `addr` and verifies the coordinator against `manifest`.
pub async fn user_api(
    addr: &str,
    manifest: &Manifest,
    trust: PlatformTrust,
) -> CliResult<(UserApiClient<Channel>, VerifiedPeer)> {
    let policy = coordinator_policy(manifest, trust)?;
    let client = Arc::new(
        AtlsClient::new(Arc::new(policy), None)
            .map_err(|e| CliError::error(format!("cannot set up aTLS: {e}")))?,
    );
    let (channel, peer) = connect(addr, client).await.map_err(connect_error)?;
    Ok((UserApiClient::new(channel), peer))
}

pub fn connect_error(e: ConnectError) -> CliError {
    match e {
        ConnectError::Attestation { .. } => CliError::verification(format!(
            "{e}. The coordinator does not run a build the manifest allows (or its evidence is forged)"
        )),
        other => CliError::error(format!(
            "{other}. Is the coordinator running and the address right?"
        )),
    }
}

/// A refused or failed call.
pub fn status_error(rpc: &str, s: tonic::Status) -> CliError {
    CliError::error(format!("{rpc} failed ({:?}): {}", s.code(), s.message()))
}

/// Parses a manifest file, with the manifest's own error (which names the field).
pub fn read_manifest(path: &std::path::Path) -> CliResult<Manifest> {
    let bytes = crate::exit::read_file(path)?;
    Manifest::parse(&bytes).map_err(|e| CliError::error(format!("{}: {e}", path.display())))
}

/// The coordinator a command dials and the manifest it must match: flattened into every such command.
#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorTarget {
    /// The manifest the coordinator must match (one of its coordinator policies and its reference values).
    #[arg(short, long, default_value = "manifest.json")]
    pub manifest: PathBuf,
    /// The coordinator's user API (host:port).
    #[arg(
        short,
        long,
        env = "CONCORD_COORDINATOR",
        default_value = "127.0.0.1:1313"
    )]
    pub coordinator: String,
    /// Accept a coordinator on the simulated platform (INSECURE).
    #[arg(long)]
    pub insecure_simulated_attestation: bool,
}

/// An attested connection to a coordinator, with what it was checked against.
pub struct Connected {
    pub client: UserApiClient<Channel>,
    pub manifest: Manifest,
    pub trust: PlatformTrust,
}

impl CoordinatorTarget {
    /// Reads the manifest, dials the coordinator and verifies it against the manifest.
    pub async fn connect(&self) -> CliResult<Connected> {
        let manifest = read_manifest(&self.manifest)?;
        let trust = trust_for(&manifest, self.insecure_simulated_attestation)?;
        let (client, _) = user_api(&self.coordinator, &manifest, trust.clone()).await?;
        Ok(Connected {
            client,
            manifest,
            trust,
        })
    }
}
