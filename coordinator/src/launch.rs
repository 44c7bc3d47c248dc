//! The launch flags that choose and configure the attestation platform, shared by every binary that
//! attests (`concord-coordinator`, `concord-initializer`), so their flags cannot drift apart.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use concord_attestation::{
    EvidenceIssuer, Measurement, PlatformTrust, ReferenceValues, Sha256Hex, SimulatedIssuer,
    SimulatedReference, SimulatedRoot,
};

use crate::hash::Hash;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlatformKind {
    /// AMD SEV-SNP through /dev/sev-guest.
    Snp,
    /// INSECURE simulated attestation (needs --insecure-simulated-attestation).
    Simulated,
}

/// Flags that select the platform this process attests on.
#[derive(Debug, Clone, Args)]
pub struct PlatformArgs {
    /// The attestation platform.
    #[arg(long, env = "CONCORD_PLATFORM", value_enum, default_value = "snp")]
    pub platform: PlatformKind,
    /// Accept that attestation is simulated and proves nothing. Required with --platform simulated.
    #[arg(long, env = "CONCORD_INSECURE_SIMULATED_ATTESTATION")]
    pub insecure_simulated_attestation: bool,
    /// Directory of the simulated root (made by `concord attestation sim-root`).
    #[arg(long, env = "CONCORD_SIMULATED_ROOT")]
    pub simulated_root: Option<PathBuf>,
    /// This process's policy document; its SHA-256 is the simulated HOST_DATA.
    #[arg(long, env = "CONCORD_SIMULATED_POLICY")]
    pub simulated_policy: Option<PathBuf>,
    /// The simulated launch measurement (96 hex characters).
    #[arg(long, env = "CONCORD_SIMULATED_MEASUREMENT")]
    pub simulated_measurement: Option<String>,
}

/// A platform ready to attest: how this process makes evidence and which roots it trusts in others'.
#[derive(Debug, Clone)]
pub struct LaunchedPlatform {
    pub issuer: Arc<dyn EvidenceIssuer>,
    pub trust: PlatformTrust,
    /// The SHA-256 of this process's policy document (its HOST_DATA).
    pub policy_hash: Hash,
    /// Reference values that accept exactly this process's own launch (its platform and measurement):
    /// what peers must match before any manifest exists.
    pub own_reference: ReferenceValues,
}

impl PlatformArgs {
    /// Checks the flags without reading the files or opening the devices they name, for
    /// `--check-config` (run where the pod's mounts do not exist); [`Self::launch`] checks everything.
    pub fn check(&self) -> Result<(), String> {
        match self.platform {
            PlatformKind::Snp => Ok(()),
            PlatformKind::Simulated => {
                let (_, _, measurement) = self.simulated_flags()?;
                parse_measurement(measurement).map(|_| ())
            }
        }
    }

    /// The simulated platform's flags, present: root directory, policy document, measurement.
    fn simulated_flags(&self) -> Result<(&PathBuf, &PathBuf, &str), String> {
        if !self.insecure_simulated_attestation {
            return Err("--platform simulated needs --insecure-simulated-attestation: simulated evidence proves nothing".into());
        }
        let need = |name: &str| format!("--platform simulated needs {name}");
        let root_dir = self
            .simulated_root
            .as_ref()
            .ok_or_else(|| need("--simulated-root"))?;
        let policy = self
            .simulated_policy
            .as_ref()
            .ok_or_else(|| need("--simulated-policy"))?;
        let m = self
            .simulated_measurement
            .as_ref()
            .ok_or_else(|| need("--simulated-measurement"))?;
        Ok((root_dir, policy, m))
    }

    /// Builds the platform; the error is a usage error that says which flag is missing or wrong.
    pub fn launch(&self) -> Result<LaunchedPlatform, String> {
        match self.platform {
            PlatformKind::Snp => Err(
                "--platform snp: SEV-SNP evidence is not supported by this build yet; use --platform simulated --insecure-simulated-attestation for tests and demos"
                    .into(),
            ),
            PlatformKind::Simulated => {
                let (root_dir, policy_path, measurement) = self.simulated_flags()?;
                let root = SimulatedRoot::load(root_dir).map_err(|e| {
                    format!("cannot load the simulated root from {}: {e}", root_dir.display())
                })?;
                let policy = std::fs::read(policy_path).map_err(|e| {
                    format!("cannot read the policy document {}: {e}", policy_path.display())
                })?;
                let measurement = parse_measurement(measurement)?;
                let policy_hash = Hash::of(&policy);
                let issuer = SimulatedIssuer::new(&root, measurement, *policy_hash.as_bytes())
                    .map_err(|e| format!("cannot start the simulated platform: {e}"))?;
                Ok(LaunchedPlatform {
                    issuer: Arc::new(issuer),
                    trust: PlatformTrust {
                        insecure_simulated_root: Some(root.hash()),
                    },
                    policy_hash,
                    own_reference: ReferenceValues {
                        snp: Vec::new(),
                        simulated: vec![SimulatedReference {
                            root: Sha256Hex(root.hash()),
                            trusted_measurements: vec![Measurement(measurement)],
                        }],
                    },
                })
            }
        }
    }
}

fn parse_measurement(m: &str) -> Result<[u8; 48], String> {
    hex::decode(m)
        .ok()
        .and_then(|b| <[u8; 48]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| "--simulated-measurement: expected 96 hex characters (48 bytes)".into())
}

/// Parses a cluster member given as `ID=HOST:PORT` (its peer API address), for every command line that
/// names members (`concord-coordinator --peer`, `concord cluster set-members --member`).
pub fn parse_member(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=HOST:PORT"))?;
    let id = id
        .parse()
        .map_err(|_| format!("{s:?}: the id {id:?} is not a number"))?;
    if !addr.contains(':') {
        return Err(format!("{s:?}: the address {addr:?} has no port"));
    }
    Ok((id, addr.to_string()))
}
