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
    let api = UserApiClient::new(channel)
        .max_decoding_message_size(concord_proto::limits::USER_API_MESSAGE_BYTES)
        .max_encoding_message_size(concord_proto::limits::USER_API_MESSAGE_BYTES);
    Ok((api, peer))
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
        let policy = coordinator_policy(&m, trust_for(&m, false).unwrap()).unwrap();
        assert_eq!(policy.host_data, vec![host_data]);
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
