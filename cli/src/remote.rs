//! How the CLI reaches a coordinator: over aTLS, accepting it only if its evidence matches a
//! `coordinator`-role policy and the reference values of the manifest the user expects.

use std::path::PathBuf;
use std::sync::Arc;

use concord_attestation::{
    AtlsClient, AttestationError, DeploymentId, DeploymentPin, PlatformTrust, RejectReason,
    StaticPolicy, VerifiedPeer, Verifier,
};
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

/// The trust a relying party has in platforms, from the expected manifest and the user's flags. SEV-SNP
/// evidence is always checked against AMD's pinned roots; simulated evidence only with
/// `--insecure-simulated-attestation` and a simulated root in the manifest. A manifest with SNP
/// entries is checked on SEV-SNP alone unless the switch is given.
pub fn trust_for(
    manifest: &Manifest,
    insecure_simulated_attestation: bool,
) -> CliResult<PlatformTrust> {
    let reference = manifest.reference_values();
    let snp_only = PlatformTrust {
        insecure_simulated_root: None,
    };
    match (reference.simulated.first(), insecure_simulated_attestation) {
        (None, _) => Ok(snp_only),
        (Some(simulated), true) => {
            warn_insecure();
            Ok(PlatformTrust {
                insecure_simulated_root: Some(*simulated.root.as_bytes()),
            })
        }
        (Some(_), false) if !reference.snp.is_empty() => {
            eprintln!(
                "note: the manifest also trusts the simulated platform; without --insecure-simulated-attestation only SEV-SNP evidence is accepted"
            );
            Ok(snp_only)
        }
        (Some(_), false) => Err(CliError::usage(
            "the manifest trusts the simulated platform only; pass --insecure-simulated-attestation to accept simulated evidence (never in production)",
        )),
    }
}

/// The policy a coordinator must meet: a `coordinator`-role policy of `manifest` and its reference
/// values, serving the deployment `manifest` makes as a first manifest (change `deployment` for
/// another rule).
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
        deployment: DeploymentPin::Exactly(manifest.deployment_id()),
    })
}

/// Dials the user API at `addr` and verifies the coordinator against `manifest`, serving a
/// deployment `deployment` accepts.
pub async fn user_api(
    addr: &str,
    manifest: &Manifest,
    trust: PlatformTrust,
    deployment: DeploymentPin,
) -> CliResult<(UserApiClient<Channel>, VerifiedPeer)> {
    let mut policy = coordinator_policy(manifest, trust)?;
    policy.deployment = deployment;
    let client = Arc::new(
        AtlsClient::new(Arc::new(policy), None)
            .map_err(|e| CliError::error(format!("cannot set up aTLS: {e}")))?,
    );
    let (channel, peer) = connect(addr, client).await.map_err(connect_error)?;
    let api = UserApiClient::new(channel)
        .max_decoding_message_size(concord_proto::limits::USER_API_MESSAGE_BYTES)
        .max_encoding_message_size(concord_proto::limits::USER_API_MESSAGE_BYTES);
    Ok((api, peer))
}

pub fn connect_error(e: ConnectError) -> CliError {
    match e {
        ConnectError::Attestation {
            source: AttestationError::Rejected(RejectReason::WrongDeployment { .. }),
            ..
        } => CliError::verification(format!(
            "{e}. The expected deployment comes from --deployment-id (CONCORD_DEPLOYMENT_ID), else \
             from the manifest's seed share owners and workload owner keys; if the owner keys changed \
             since the first manifest, pass --deployment-id (`concord deployment-id -m \
             first-manifest.json` prints it)"
        )),
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
    let bytes = crate::exit::read_file(path, crate::exit::Limit::MANIFEST)?;
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
    /// The deployment the coordinator must serve (64 hex characters, `concord deployment-id -m
    /// first-manifest.json`). Default: the id the manifest makes (its seed share owners and workload
    /// owner keys), which is the deployment's unless the owner keys changed since the first manifest.
    #[arg(long, env = "CONCORD_DEPLOYMENT_ID", value_parser = parse_deployment_id)]
    pub deployment_id: Option<DeploymentId>,
}

/// `--deployment-id`: 64 hex characters, not all zero.
pub fn parse_deployment_id(s: &str) -> Result<DeploymentId, String> {
    let id = DeploymentId::from_hex(s)?;
    if id.is_unpinned() {
        return Err("all zero bytes mean \"no deployment\"; give the deployment's id".into());
    }
    Ok(id)
}

/// The deployment a relying party expects: `--deployment-id` if given, else the one `manifest` makes.
pub fn expected_deployment(flag: Option<DeploymentId>, manifest: &Manifest) -> DeploymentId {
    flag.unwrap_or_else(|| manifest.deployment_id())
}

/// The user API client of an attested connection.
pub type UserClient = UserApiClient<Channel>;

/// An attested connection to a coordinator, with what it was checked against.
pub struct Connected {
    pub client: UserApiClient<Channel>,
    pub manifest: Manifest,
    pub trust: PlatformTrust,
    /// The deployment the coordinator had to serve.
    pub deployment: DeploymentId,
    /// The coordinator, as attested; its `deployment()` is the one it serves now.
    pub peer: VerifiedPeer,
}

impl CoordinatorTarget {
    /// Reads the manifest, dials the coordinator and verifies it against the manifest and the
    /// expected deployment.
    pub async fn connect(&self) -> CliResult<Connected> {
        self.connect_with(false).await
    }

    /// As [`CoordinatorTarget::connect`], also accepting a coordinator that has no deployment yet
    /// (fresh and unpinned): for a first `concord set` and for `concord status`.
    pub async fn connect_allowing_unpinned(&self) -> CliResult<Connected> {
        self.connect_with(true).await
    }

    async fn connect_with(&self, allow_unpinned: bool) -> CliResult<Connected> {
        let manifest = read_manifest(&self.manifest)?;
        let trust = trust_for(&manifest, self.insecure_simulated_attestation)?;
        let deployment = expected_deployment(self.deployment_id, &manifest);
        let pin = if allow_unpinned {
            DeploymentPin::ThisOrUnpinned(deployment)
        } else {
            DeploymentPin::Exactly(deployment)
        };
        let (client, peer) = user_api(&self.coordinator, &manifest, trust.clone(), pin).await?;
        Ok(Connected {
            client,
            manifest,
            trust,
            deployment,
            peer,
        })
    }
}

#[cfg(test)]
mod tests {
    use concord_attestation::testing::snp as vectors;
    use concord_attestation::{AttestationError, RejectReason};
    use concord_coordinator::testing::TestDeployment;

    use super::*;

    fn parse(bytes: &[u8]) -> Manifest {
        Manifest::parse(bytes).unwrap()
    }

    /// A manifest with both an SNP entry and the deployment's simulated entry.
    fn mixed(d: &TestDeployment) -> Manifest {
        let v = vectors::virtee_milan();
        let mut json: serde_json::Value =
            serde_json::from_slice(&d.snp_manifest(*v.report().host_data(), &v.reference()))
                .unwrap();
        let simulated: serde_json::Value = serde_json::from_slice(&d.manifest(1)).unwrap();
        json["reference_values"]["simulated"] = simulated["reference_values"]["simulated"].clone();
        parse(json.to_string().as_bytes())
    }

    #[test]
    fn an_snp_manifest_gets_snp_only_trust_with_or_without_the_switch() {
        let d = TestDeployment::new();
        let v = vectors::virtee_milan();
        let snp = parse(&d.snp_manifest(*v.report().host_data(), &v.reference()));
        for insecure in [false, true] {
            assert_eq!(
                trust_for(&snp, insecure).unwrap(),
                PlatformTrust::default(),
                "--insecure-simulated-attestation {insecure}"
            );
        }
    }

    #[test]
    fn a_mixed_manifest_is_checked_on_snp_unless_simulated_is_asked_for() {
        let d = TestDeployment::new();
        let m = mixed(&d);
        assert_eq!(trust_for(&m, false).unwrap(), PlatformTrust::default());
        assert_eq!(
            trust_for(&m, true).unwrap().insecure_simulated_root,
            Some(d.root.hash())
        );
    }

    #[test]
    fn a_simulated_only_manifest_needs_the_switch() {
        let d = TestDeployment::new();
        let m = parse(&d.manifest(1));
        let err = trust_for(&m, false).unwrap_err();
        assert_eq!(err.exit_code(), CliError::usage("").exit_code());
        assert!(
            err.to_string().contains("--insecure-simulated-attestation"),
            "{err}"
        );
        assert_eq!(
            trust_for(&m, true).unwrap().insecure_simulated_root,
            Some(d.root.hash())
        );
    }

    #[test]
    fn the_coordinator_is_checked_against_the_coordinator_policies_and_snp_reference_values() {
        // What `concord verify -m manifest.json` (without the insecure switch) accepts a
        // coordinator with: real SNP evidence whose HOST_DATA is a coordinator-role policy.
        let d = TestDeployment::new();
        let v = vectors::trustee_genoa_e2e();
        let host_data = *v.report().host_data();
        let m = parse(&d.snp_manifest(host_data, &v.reference()));
        let mut policy = coordinator_policy(&m, trust_for(&m, false).unwrap()).unwrap();
        assert_eq!(policy.host_data, vec![host_data]);
        // `concord verify` requires AMD's CRL with SNP evidence; no real one is among the vectors.
        assert_eq!(
            policy.verify_at(&v.evidence(), &v.report_data(), v.at),
            Err(AttestationError::Rejected(RejectReason::CrlMissing {
                sent: 0
            }))
        );
        policy.verifier = policy
            .verifier
            .clone()
            .with_snp_revocation(concord_attestation::snp::SnpRevocation::NotChecked);
        let verified = policy
            .verify_at(&v.evidence(), &v.report_data(), v.at)
            .unwrap();
        assert_eq!(verified.platform(), concord_attestation::Platform::Snp);

        // Evidence of another launch, and evidence for another binding, are refused.
        let other = vectors::azure_genoa();
        assert_eq!(
            policy.verify_at(&other.evidence(), &other.report_data(), other.at),
            Err(AttestationError::Rejected(
                RejectReason::MeasurementNotTrusted
            ))
        );
        let mut foreign = v.report_data();
        foreign[1] ^= 1;
        assert_eq!(
            policy.verify_at(&v.evidence(), &foreign, v.at),
            Err(AttestationError::Rejected(RejectReason::ReportDataMismatch))
        );
    }
}
