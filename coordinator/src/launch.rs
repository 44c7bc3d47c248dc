//! The launch flags that choose and configure the attestation platform, shared by every binary that
//! attests (`concord-coordinator`, `concord-initializer`), so their flags cannot drift apart; and the
//! coordinator's own reference values ([`OwnReferenceArgs`]), which only the coordinator has.
//!
//! Owns turning flags into a [`LaunchedPlatform`]: the simulated platform here, SEV-SNP in `snp`. It
//! must never make a platform trust more than its flags say (simulated evidence only with
//! `--insecure-simulated-attestation`), and never start a replica whose own evidence fails its own
//! reference values.

mod snp;
mod tdx;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use concord_attestation::intel_pcs::{CollateralSource, INTEL_PCS, PcsConfig};
use concord_attestation::snp::SnpRevocation;
use concord_attestation::vcek::KdsConfig;
use concord_attestation::{
    EvidenceIssuer, Measurement, PlatformTrust, ReferenceValues, Sha256Hex, SimulatedIssuer,
    SimulatedReference, SimulatedRoot, TdxReference, TdxTcbStatus, simulated::SimulatedTdxIssuer,
};

pub use snp::own_snp_reference;

use crate::hash::Hash;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlatformKind {
    /// AMD SEV-SNP through /dev/sev-guest.
    Snp,
    /// INSECURE simulated attestation (needs --insecure-simulated-attestation).
    Simulated,
    /// Intel TDX: quotes through configfs-tsm, sent with the collateral of --tdx-collateral.
    Tdx,
    /// INSECURE simulated attestation with Intel TDX quotes: Intel's quote layout and collateral,
    /// from a hierarchy the simulated root endorses; the measurement is the MRTD and the policy hash
    /// is in MRCONFIGID. Same flags as `simulated`.
    SimulatedTdx,
}

/// The value of `--kds-url` that never asks AMD's KDS.
pub const KDS_OFF: &str = "off";

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
    /// SEV-SNP: AMD's Key Distribution Service, asked for this chip's VCEK when the host returns no
    /// certificate table (http or https, optionally with a path prefix for a mirror); `off` never
    /// asks it.
    #[arg(long, env = "CONCORD_KDS_URL", default_value = KdsConfig::AMD)]
    pub kds_url: String,
    /// SEV-SNP: where VCEKs fetched from the KDS are kept, one file per chip and TCB (default for the
    /// coordinator: DATA_DIR/vcek-cache; the initializer keeps none unless given).
    #[arg(long, env = "CONCORD_VCEK_CACHE_DIR")]
    pub vcek_cache_dir: Option<PathBuf>,
    /// SEV-SNP: a directory of VCEKs the operator provides (*.der, *.pem, any file names), searched
    /// when neither the host's table nor the KDS has this chip's.
    #[arg(long, env = "CONCORD_VCEK_DIR")]
    pub vcek_dir: Option<PathBuf>,
    /// SEV-SNP: accept AMD's CRL (sent with a peer's evidence) for at most this long past its
    /// nextUpdate, e.g. `12h` or `3d` (at most 30d), when AMD's KDS is down. Default 0: evidence
    /// without a fresh CRL of the product's ARK is refused (docs/OPERATIONS.md, "AMD revocation").
    #[arg(long, env = "CONCORD_ACCEPT_STALE_AMD_CRL_FOR", default_value = "0s", value_parser = parse_stale_grace)]
    pub accept_stale_amd_crl_for: Duration,
    /// TDX: Intel's PCS, or a PCCS, asked for the collateral of this platform's quotes (TCB info,
    /// QE identity, PCK and root CA CRLs, API v4; http or https, optionally with a path prefix);
    /// `off` never asks one.
    #[arg(long, env = "CONCORD_PCCS_URL", default_value = INTEL_PCS)]
    pub pccs_url: String,
    /// TDX: where collateral fetched from the PCS is kept until its nextUpdate (default for the
    /// coordinator: DATA_DIR/tdx-collateral-cache).
    #[arg(long, env = "CONCORD_TDX_COLLATERAL_CACHE_DIR")]
    pub tdx_collateral_cache_dir: Option<PathBuf>,
    /// TDX: a directory of collateral the operator provides, `{FMSPC}-{processor|platform}.json` in
    /// the collateral layout (docs/OPERATIONS.md), used when the PCS is off or has none.
    #[arg(long, env = "CONCORD_TDX_COLLATERAL_DIR")]
    pub tdx_collateral_dir: Option<PathBuf>,
    /// Intel TDX: Intel's collateral for this platform (TCB info, QE identity, CRLs; the PCS v4 JSON
    /// layout of docs/PROTOCOL.md), sent with every quote so relying parties need no network.
    #[arg(long, env = "CONCORD_TDX_COLLATERAL")]
    pub tdx_collateral: Option<PathBuf>,
}

/// The value of `--pccs-url` that never asks a PCS.
pub const PCCS_OFF: &str = "off";

impl PlatformArgs {
    /// Where TDX collateral comes from, as `--pccs-url`, `--tdx-collateral-cache-dir` and
    /// `--tdx-collateral-dir` say: `collateral(fmspc, ca)` on it gives the bytes to send with a
    /// quote (`concord_attestation::intel_pcs`).
    pub fn tdx_collateral_source(&self) -> Result<CollateralSource, String> {
        let pcs = (self.pccs_url != PCCS_OFF).then(|| PcsConfig::new(self.pccs_url.clone()));
        CollateralSource::new(
            pcs,
            self.tdx_collateral_cache_dir.clone(),
            self.tdx_collateral_dir.clone(),
        )
        .map_err(|e| format!("--pccs-url: {e}"))
    }
}

/// The longest `--accept-stale-amd-crl-for`: AMD publishes its CRLs with a validity of days, so a
/// month past nextUpdate is an outage to fix, not to ride out.
pub const MAX_STALE_AMD_CRL: Duration = Duration::from_secs(30 * 86_400);

/// `--accept-stale-amd-crl-for`: a number with a unit, `s`, `m`, `h` or `d`, at most 30 days.
pub fn parse_stale_grace(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit (s, m, h, d), e.g. 12h"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d, e.g. 12h")),
    };
    let grace = Duration::from_secs(number.saturating_mul(seconds));
    if grace > MAX_STALE_AMD_CRL {
        return Err(format!(
            "{text:?}: at most 30d; a CRL stale for longer means AMD's KDS is unreachable: fix \
             that, or put a fresh CRL into --vcek-dir"
        ));
    }
    Ok(grace)
}

impl PlatformArgs {
    /// What this process requires of AMD's CRLs in SNP evidence it verifies.
    pub fn snp_revocation(&self) -> SnpRevocation {
        SnpRevocation::Required {
            accept_stale_for: self.accept_stale_amd_crl_for,
        }
    }
}

/// The coordinator's own reference values for its peers before any manifest exists.
#[derive(Debug, Clone, Default, Args)]
pub struct OwnReferenceArgs {
    /// SEV-SNP: a reference values entry, as in the manifest's `reference_values.snp`, that other
    /// replicas must meet before the first manifest is set; it must list this replica's
    /// measurement, and only this replica's measurement and policy are accepted. Default: this
    /// replica's product and measurement, its own reported TCB as the minimum, debug and migration
    /// agent off.
    #[arg(long, env = "CONCORD_SNP_REFERENCE")]
    pub snp_reference: Option<PathBuf>,
}

/// Why a platform cannot be launched, and so how the process exits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// The flags are wrong or name files that are not usable (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The flags are fine, but the platform is not usable here: no SEV-SNP device, no VCEK, or
    /// evidence that fails this replica's own reference values (exit 1).
    #[error("{0}")]
    Unavailable(String),
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
    /// What SNP evidence must show of AMD's CRLs (`--accept-stale-amd-crl-for`).
    pub snp_revocation: SnpRevocation,
}

impl PlatformArgs {
    /// Checks the flags without reading the files or opening the devices they name, for
    /// `--check-config` (run where the pod's mounts do not exist); [`Self::launch`] checks everything.
    pub fn check(&self) -> Result<(), String> {
        self.tdx_collateral_source()?;
        match self.platform {
            PlatformKind::Snp => snp::check(self),
            PlatformKind::Tdx => tdx::check(self),
            PlatformKind::Simulated | PlatformKind::SimulatedTdx => {
                let (_, _, measurement) = self.simulated_flags()?;
                parse_measurement(measurement).map(|_| ())
            }
        }
    }

    /// The evidence issuer alone, for processes that attest but keep no peers (the initializer). On
    /// SEV-SNP it has made evidence once, so a missing device or VCEK shows now, not at the first
    /// connection.
    pub fn issuer(&self) -> Result<Arc<dyn EvidenceIssuer>, LaunchError> {
        match self.platform {
            PlatformKind::Snp => Ok(Arc::new(snp::issuer(self)?.0)),
            PlatformKind::Tdx => tdx::issuer(self),
            PlatformKind::Simulated | PlatformKind::SimulatedTdx => {
                Ok(self.launch_simulated()?.issuer)
            }
        }
    }

    /// Builds the platform of a coordinator replica. On SEV-SNP it takes a report of its own, finds
    /// the VCEK, and checks that evidence against `own` before returning.
    pub fn launch(&self, own: &OwnReferenceArgs) -> Result<LaunchedPlatform, LaunchError> {
        own.check(self.platform).map_err(LaunchError::Usage)?;
        match self.platform {
            PlatformKind::Snp => snp::launch(self, own.snp_reference.as_deref()),
            PlatformKind::Tdx => tdx::launch(self),
            PlatformKind::Simulated | PlatformKind::SimulatedTdx => self.launch_simulated(),
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

    fn launch_simulated(&self) -> Result<LaunchedPlatform, LaunchError> {
        let (root_dir, policy_path, measurement) =
            self.simulated_flags().map_err(LaunchError::Usage)?;
        let usage = |e: String| LaunchError::Usage(e);
        let root = SimulatedRoot::load(root_dir).map_err(|e| {
            usage(format!(
                "cannot load the simulated root from {}: {e}",
                root_dir.display()
            ))
        })?;
        // A policy document, at most 4 MiB (README.md, "Input limits").
        let policy = crate::input_file::read_input_file(policy_path, 4 << 20)
            .map_err(|e| usage(format!("the policy document: {e}")))?;
        let measurement = parse_measurement(measurement).map_err(usage)?;
        let policy_hash = Hash::of(&policy);
        let start_err = |e| usage(format!("cannot start the simulated platform: {e}"));
        let (issuer, tdx): (Arc<dyn EvidenceIssuer>, _) =
            if self.platform == PlatformKind::SimulatedTdx {
                let issuer = SimulatedTdxIssuer::new(&root, measurement, *policy_hash.as_bytes())
                    .map_err(start_err)?;
                (Arc::new(issuer), vec![simulated_tdx_reference(measurement)])
            } else {
                let issuer = SimulatedIssuer::new(&root, measurement, *policy_hash.as_bytes())
                    .map_err(start_err)?;
                (Arc::new(issuer), Vec::new())
            };
        Ok(LaunchedPlatform {
            issuer,
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
                tdx,
            },
            snp_revocation: self.snp_revocation(),
        })
    }
}

impl OwnReferenceArgs {
    /// Checks the flags against the platform, without reading the file.
    pub fn check(&self, platform: PlatformKind) -> Result<(), String> {
        match (platform, &self.snp_reference) {
            (PlatformKind::Tdx, Some(_)) => Err(
                "--snp-reference is for --platform snp; on TDX the own reference values come from \
                 this replica's own quote"
                    .into(),
            ),
            (PlatformKind::Simulated | PlatformKind::SimulatedTdx, Some(_)) => Err(
                "--snp-reference is for --platform snp; on the simulated platform the own reference \
                 values come from --simulated-root and --simulated-measurement"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// The own reference of a simulated TDX replica: its MRTD, Intel's default status (`UpToDate`, what
/// the simulated hierarchy's TCB info gives), debug off.
fn simulated_tdx_reference(mrtd: [u8; 48]) -> TdxReference {
    TdxReference {
        trusted_mrtd: vec![Measurement(mrtd)],
        rtmr: None,
        trusted_mrseam: None,
        minimum_tee_tcb_svn: None,
        allowed_tcb_statuses: vec![TdxTcbStatus::UpToDate],
        allow_debug: false,
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

#[cfg(test)]
mod flag_tests {
    use super::*;

    #[test]
    fn pccs_url_off_and_a_bad_url_is_a_usage_error() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            platform: PlatformArgs,
        }
        let flags = |args: &[&str]| {
            Flags::try_parse_from(std::iter::once("c").chain(args.iter().copied()))
                .unwrap()
                .platform
        };
        assert_eq!(flags(&[]).pccs_url, INTEL_PCS);
        flags(&["--pccs-url", "off"])
            .tdx_collateral_source()
            .unwrap();
        flags(&["--pccs-url", "https://pccs.example:8081"])
            .tdx_collateral_source()
            .unwrap();
        let err = flags(&["--pccs-url", "pccs.example"]).check().unwrap_err();
        assert!(err.contains("--pccs-url") && err.contains("`off`"), "{err}");
    }

    #[test]
    fn the_stale_crl_grace_is_a_bounded_duration_with_a_unit() {
        assert_eq!(parse_stale_grace("0s").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_stale_grace("12h").unwrap(),
            Duration::from_secs(43_200)
        );
        assert_eq!(parse_stale_grace("30d").unwrap(), MAX_STALE_AMD_CRL);
        assert!(
            parse_stale_grace("31d")
                .unwrap_err()
                .contains("at most 30d")
        );
        assert!(parse_stale_grace("12").is_err());
        assert!(parse_stale_grace("h").is_err());
        assert!(parse_stale_grace("99999999999999999999d").is_err());
    }
}
