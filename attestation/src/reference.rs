//! The manifest's `reference_values`: what evidence must show to be accepted.
//!
//! Owns the serde types, parsed strictly (`deny_unknown_fields` everywhere, hex of exact length)
//! with the field names DESIGN.md fixes, and [`ReferenceValues::validate`] for the rules serde
//! cannot express. It must never verify evidence itself: `verify` reads these values.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Declares a fixed-length byte string written as hex in JSON: lowercase or uppercase accepted,
/// lowercase written; a wrong length is an error that names the expected length.
macro_rules! hex_newtype {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// The bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl From<[u8; $len]> for $name {
            fn from(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                parse_hex::<$len>(s, $what).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.0))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&hex::encode(self.0))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

fn parse_hex<const N: usize>(s: &str, what: &str) -> Result<[u8; N], String> {
    if s.len() != 2 * N {
        return Err(format!(
            "{what}: expected {N} bytes as {} hex digits, got {} characters",
            2 * N,
            s.len()
        ));
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|e| format!("{what}: not hex: {e}"))?;
    Ok(out)
}

hex_newtype!(
    /// A launch measurement (SNP `MEASUREMENT`, 48 bytes).
    Measurement,
    48,
    "measurement"
);
hex_newtype!(
    /// A chip identifier (SNP `CHIP_ID`, 64 bytes).
    ChipId,
    64,
    "chip id"
);
hex_newtype!(
    /// A TDX TEE TCB SVN (16 bytes, one SVN per byte).
    TeeTcbSvn,
    16,
    "TEE TCB SVN"
);
hex_newtype!(
    /// A SHA-256 digest (32 bytes).
    Sha256Hex,
    32,
    "SHA-256 digest"
);

/// `reference_values`: one entry per platform kind; evidence must satisfy one entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceValues {
    /// AMD SEV-SNP entries.
    #[serde(default)]
    pub snp: Vec<SnpReference>,
    /// Simulated-platform entries (INSECURE: for machines without SEV-SNP).
    #[serde(default)]
    pub simulated: Vec<SimulatedReference>,
    /// Intel TDX entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tdx: Vec<TdxReference>,
}

/// An index of a TDX runtime measurement register, `"0"` to `"3"` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RtmrIndex {
    /// RTMR0.
    #[serde(rename = "0")]
    Rtmr0,
    /// RTMR1.
    #[serde(rename = "1")]
    Rtmr1,
    /// RTMR2.
    #[serde(rename = "2")]
    Rtmr2,
    /// RTMR3.
    #[serde(rename = "3")]
    Rtmr3,
}

impl RtmrIndex {
    /// The register number, 0 to 3.
    pub fn number(self) -> usize {
        match self {
            Self::Rtmr0 => 0,
            Self::Rtmr1 => 1,
            Self::Rtmr2 => 2,
            Self::Rtmr3 => 3,
        }
    }
}

/// An Intel TCB status, as Intel's TCB info and QE identity name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TdxTcbStatus {
    /// The platform is patched.
    UpToDate,
    /// Patched; software mitigations are needed.
    SWHardeningNeeded,
    /// Patched; a platform configuration is needed.
    ConfigurationNeeded,
    /// Patched; configuration and software mitigations are needed.
    ConfigurationAndSWHardeningNeeded,
    /// Not patched.
    OutOfDate,
    /// Not patched, and a platform configuration is needed.
    OutOfDateConfigurationNeeded,
    /// TDX 1.5: the TD launched on an out-of-date TCB, the current one is patched.
    TDRelaunchAdvised,
    /// As `TDRelaunchAdvised`, with a platform configuration needed.
    TDRelaunchAdvisedConfigurationNeeded,
    /// The platform's keys are compromised: never accepted, not even when listed.
    Revoked,
}

impl TdxTcbStatus {
    /// Intel's name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpToDate => "UpToDate",
            Self::SWHardeningNeeded => "SWHardeningNeeded",
            Self::ConfigurationNeeded => "ConfigurationNeeded",
            Self::ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            Self::OutOfDate => "OutOfDate",
            Self::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            Self::TDRelaunchAdvised => "TDRelaunchAdvised",
            Self::TDRelaunchAdvisedConfigurationNeeded => "TDRelaunchAdvisedConfigurationNeeded",
            Self::Revoked => "Revoked",
        }
    }

    /// Parses Intel's name; `None` for a name this verifier does not know (which then rejects).
    pub fn from_intel(name: &str) -> Option<Self> {
        [
            Self::UpToDate,
            Self::SWHardeningNeeded,
            Self::ConfigurationNeeded,
            Self::ConfigurationAndSWHardeningNeeded,
            Self::OutOfDate,
            Self::OutOfDateConfigurationNeeded,
            Self::TDRelaunchAdvised,
            Self::TDRelaunchAdvisedConfigurationNeeded,
            Self::Revoked,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

fn default_tcb_statuses() -> Vec<TdxTcbStatus> {
    vec![TdxTcbStatus::UpToDate]
}

/// What a TDX quote must show. The field names are normative (issue 10, MANIFEST.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxReference {
    /// Accepted MRTD values (the TD's build-time measurement).
    pub trusted_mrtd: Vec<Measurement>,
    /// Per runtime measurement register, the accepted values; a register not named is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr: Option<std::collections::BTreeMap<RtmrIndex, Vec<Measurement>>>,
    /// When present, the accepted MRSEAM values (the TDX module's measurement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_mrseam: Option<Vec<Measurement>>,
    /// When present, the lowest accepted TEE TCB SVN, compared byte by byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_tee_tcb_svn: Option<TeeTcbSvn>,
    /// The TCB statuses (Intel's TCB levels) accepted; `UpToDate` unless set. `Revoked` never is.
    #[serde(default = "default_tcb_statuses")]
    pub allowed_tcb_statuses: Vec<TdxTcbStatus>,
    /// Accept TDs whose attributes allow debugging (TD attributes bit 0). Off unless set.
    #[serde(default)]
    pub allow_debug: bool,
}

/// The AMD product generation, which fixes the AMD root key and the TCB layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Product {
    /// EPYC 7003.
    Milan,
    /// EPYC 9004.
    Genoa,
    /// EPYC 9005.
    Turin,
}

/// What an SNP report must show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpReference {
    /// The product generation.
    pub product: Product,
    /// Accepted launch measurements.
    pub trusted_measurements: Vec<Measurement>,
    /// Lowest accepted `reported_tcb`, per component.
    pub minimum_tcb: MinimumTcb,
    /// Accept guests whose policy allows debugging. Off unless set.
    #[serde(default)]
    pub allow_debug: bool,
    /// Accept guests whose policy allows a migration agent. Off unless set.
    #[serde(default)]
    pub allow_migration_agent: bool,
    /// When present, only these chips are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_chip_ids: Option<Vec<ChipId>>,
}

/// Per-component minimum of the reported TCB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinimumTcb {
    /// Minimum bootloader SVN.
    pub bootloader: u8,
    /// Minimum TEE (PSP OS) SVN.
    pub tee: u8,
    /// Minimum SNP firmware SVN.
    pub snp: u8,
    /// Minimum microcode patch level.
    pub microcode: u8,
    /// Minimum FMC SVN; Turin only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
}

impl From<crate::report::Tcb> for MinimumTcb {
    /// Exactly `tcb` as the minimum: what a report shows is the least it must keep showing.
    fn from(tcb: crate::report::Tcb) -> MinimumTcb {
        MinimumTcb {
            bootloader: tcb.bootloader,
            tee: tcb.tee,
            snp: tcb.snp,
            microcode: tcb.microcode,
            fmc: tcb.fmc,
        }
    }
}

/// What a simulated report must show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedReference {
    /// SHA-256 of the simulated root certificate's DER.
    pub root: Sha256Hex,
    /// Accepted launch measurements.
    pub trusted_measurements: Vec<Measurement>,
}

impl ReferenceValues {
    /// The rules serde cannot express. The error names the entry and says what to change.
    pub fn validate(&self) -> Result<(), String> {
        for (i, e) in self.snp.iter().enumerate() {
            if e.trusted_measurements.is_empty() {
                return Err(format!(
                    "reference_values.snp[{i}]: trusted_measurements is empty; list at least one measurement"
                ));
            }
            if e.minimum_tcb.fmc.is_some() && e.product != Product::Turin {
                return Err(format!(
                    "reference_values.snp[{i}]: minimum_tcb.fmc exists only for product Turin, not {:?}",
                    e.product
                ));
            }
            if e.allowed_chip_ids.as_ref().is_some_and(Vec::is_empty) {
                return Err(format!(
                    "reference_values.snp[{i}]: allowed_chip_ids is empty, so no chip could match; \
                     omit it to accept any chip"
                ));
            }
        }
        for (i, e) in self.tdx.iter().enumerate() {
            if e.trusted_mrtd.is_empty() {
                return Err(format!(
                    "reference_values.tdx[{i}]: trusted_mrtd is empty; list at least one MRTD"
                ));
            }
            if let Some((index, _)) = e
                .rtmr
                .iter()
                .flatten()
                .find(|(_, values)| values.is_empty())
            {
                return Err(format!(
                    "reference_values.tdx[{i}]: rtmr \"{}\" lists no value, so no quote could match; \
                     omit the register to leave it unchecked",
                    index.number()
                ));
            }
            if e.trusted_mrseam.as_ref().is_some_and(Vec::is_empty) {
                return Err(format!(
                    "reference_values.tdx[{i}]: trusted_mrseam is empty, so no TDX module could match; \
                     omit it to accept any module Intel's TCB info accepts"
                ));
            }
            if e.allowed_tcb_statuses.is_empty() {
                return Err(format!(
                    "reference_values.tdx[{i}]: allowed_tcb_statuses is empty; omit it for [\"UpToDate\"]"
                ));
            }
            if e.allowed_tcb_statuses.contains(&TdxTcbStatus::Revoked) {
                return Err(format!(
                    "reference_values.tdx[{i}]: allowed_tcb_statuses lists Revoked, which is never accepted; \
                     remove it"
                ));
            }
        }
        for (i, e) in self.simulated.iter().enumerate() {
            if e.trusted_measurements.is_empty() {
                return Err(format!(
                    "reference_values.simulated[{i}]: trusted_measurements is empty; list at least one measurement"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ReferenceValues, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    const M: &str = "b339023513d2923ac90f87bab84d673b1b46b1521bafa7dc32fcc587c5c0ba1cac652036903bbc4fd4c7c454af1cf3d0";
    const ROOT: &str = "ff00a7b520d39f909875402779e872a1174f4560070ebf85d1f02a5ad8321c8a";

    #[test]
    fn hex_accepts_both_cases_and_writes_lowercase() {
        let upper = M.to_uppercase();
        let m: Measurement = serde_json::from_str(&format!("\"{upper}\"")).unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{M}\""));
        assert_eq!(m.to_string(), M);
    }

    #[test]
    fn wrong_hex_length_names_the_expected_length() {
        let err = serde_json::from_str::<Measurement>("\"abcd\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected 48 bytes as 96 hex digits"), "{err}");
        let err = serde_json::from_str::<ChipId>(&format!("\"{M}\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected 64 bytes as 128 hex digits"), "{err}");
        let err = serde_json::from_str::<Sha256Hex>(&format!("\"{M}\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected 32 bytes as 64 hex digits"), "{err}");
        let bad = format!("\"{}\"", "zz".repeat(32));
        let err = serde_json::from_str::<Sha256Hex>(&bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not hex"), "{err}");
    }

    #[test]
    fn unknown_fields_are_errors_that_name_the_field() {
        let err = parse(r#"{"snp": [], "simulated": [], "tdx": [], "sgx": []}"#).unwrap_err();
        assert!(err.contains("unknown field `sgx`"), "{err}");
        let err = parse(&format!(
            r#"{{"simulated": [{{"root": "{ROOT}", "trusted_measurements": ["{M}"], "debug": true}}]}}"#
        ))
        .unwrap_err();
        assert!(err.contains("unknown field `debug`"), "{err}");
        let err = parse(&format!(
            r#"{{"snp": [{{"product": "Milan", "trusted_measurements": ["{M}"],
                "minimum_tcb": {{"bootloader": 1, "tee": 0, "snp": 1, "microcode": 1, "ucode": 2}}}}]}}"#
        ))
        .unwrap_err();
        assert!(err.contains("unknown field `ucode`"), "{err}");
        let err = parse(&format!(
            r#"{{"snp": [{{"product": "Rome", "trusted_measurements": ["{M}"],
                "minimum_tcb": {{"bootloader": 1, "tee": 0, "snp": 1, "microcode": 1}}}}]}}"#
        ))
        .unwrap_err();
        assert!(err.contains("unknown variant `Rome`"), "{err}");
    }

    #[test]
    fn missing_required_fields_are_errors() {
        let err = parse(&format!(r#"{{"simulated": [{{"root": "{ROOT}"}}]}}"#)).unwrap_err();
        assert!(
            err.contains("missing field `trusted_measurements`"),
            "{err}"
        );
        let err = parse(&format!(
            r#"{{"snp": [{{"product": "Milan", "trusted_measurements": ["{M}"]}}]}}"#
        ))
        .unwrap_err();
        assert!(err.contains("missing field `minimum_tcb`"), "{err}");
    }

    #[test]
    fn the_design_example_parses() {
        // DESIGN.md's `reference_values`, with its placeholders filled in.
        let chip = "ab".repeat(64);
        let json = r#"{
            "snp": [{
              "product": "Milan",
              "trusted_measurements": ["MEAS"],
              "minimum_tcb": { "bootloader": 3, "tee": 0, "snp": 8, "microcode": 115 },
              "allow_debug": false,
              "allow_migration_agent": false,
              "allowed_chip_ids": ["CHIP"]
            }],
            "simulated": [{ "root": "ROOT", "trusted_measurements": ["MEAS"] }]
        }"#
        .replace("MEAS", M)
        .replace("CHIP", &chip)
        .replace("ROOT", ROOT);
        let rv = parse(&json).unwrap();
        rv.validate().unwrap();
        assert_eq!(rv.snp[0].product, Product::Milan);
        assert_eq!(rv.snp[0].minimum_tcb.microcode, 115);
        assert_eq!(
            rv.snp[0].allowed_chip_ids.as_ref().unwrap()[0].0,
            [0xab; 64]
        );
        assert_eq!(rv.simulated[0].root.to_string(), ROOT);
        // Written back, it reads the same.
        let again = parse(&serde_json::to_string(&rv).unwrap()).unwrap();
        assert_eq!(again, rv);
    }

    #[test]
    fn the_example_manifest_reference_values_parse() {
        let manifest: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/examples/manifest.json")).unwrap();
        let rv: ReferenceValues =
            serde_json::from_value(manifest["reference_values"].clone()).unwrap();
        rv.validate().unwrap();
        assert_eq!(rv.snp.len(), 2);
        assert_eq!(rv.snp[1].product, Product::Turin);
        assert_eq!(rv.snp[1].minimum_tcb.fmc, Some(1));
        assert_eq!(rv.simulated.len(), 1);
    }

    #[test]
    fn defaults_are_the_safe_values() {
        let rv = parse(&format!(
            r#"{{"snp": [{{"product": "Genoa", "trusted_measurements": ["{M}"],
                "minimum_tcb": {{"bootloader": 1, "tee": 0, "snp": 1, "microcode": 1}}}}]}}"#
        ))
        .unwrap();
        assert!(!rv.snp[0].allow_debug);
        assert!(!rv.snp[0].allow_migration_agent);
        assert!(rv.snp[0].allowed_chip_ids.is_none());
        assert!(rv.simulated.is_empty());
    }

    #[test]
    fn tdx_entries_parse_with_the_normative_names_and_safe_defaults() {
        let json = format!(
            r#"{{"tdx": [{{"trusted_mrtd": ["{M}"], "rtmr": {{"0": ["{M}"], "3": ["{M}", "{M}"]}},
                "trusted_mrseam": ["{M}"], "minimum_tee_tcb_svn": "0a0b0000000000000000000000000000",
                "allowed_tcb_statuses": ["UpToDate", "SWHardeningNeeded"], "allow_debug": true}},
               {{"trusted_mrtd": ["{M}"]}}]}}"#
        );
        let rv = parse(&json).unwrap();
        rv.validate().unwrap();
        let full = &rv.tdx[0];
        let rtmr = full.rtmr.as_ref().unwrap();
        assert_eq!(rtmr[&RtmrIndex::Rtmr3].len(), 2);
        assert_eq!(full.minimum_tee_tcb_svn.unwrap().0[1], 0x0b);
        assert!(full.allow_debug);
        let minimal = &rv.tdx[1];
        assert_eq!(minimal.allowed_tcb_statuses, vec![TdxTcbStatus::UpToDate]);
        assert!(!minimal.allow_debug);
        assert!(minimal.rtmr.is_none() && minimal.trusted_mrseam.is_none());
        assert_eq!(parse(&serde_json::to_string(&rv).unwrap()).unwrap(), rv);
        // A register index outside 0..3, an unknown status, an unknown field: errors.
        for bad in [
            format!(r#"{{"tdx": [{{"trusted_mrtd": ["{M}"], "rtmr": {{"4": ["{M}"]}}}}]}}"#),
            format!(
                r#"{{"tdx": [{{"trusted_mrtd": ["{M}"], "allowed_tcb_statuses": ["Fine"]}}]}}"#
            ),
            format!(r#"{{"tdx": [{{"trusted_mrtd": ["{M}"], "mrtd": ["{M}"]}}]}}"#),
            r#"{"tdx": [{"trusted_mrtd": ["00"]}]}"#.to_owned(),
        ] {
            assert!(parse(&bad).is_err(), "{bad}");
        }
        // What validate refuses: Revoked, empty lists.
        for (bad, says) in [
            (
                format!(
                    r#"{{"tdx": [{{"trusted_mrtd": ["{M}"], "allowed_tcb_statuses": ["Revoked"]}}]}}"#
                ),
                "Revoked",
            ),
            (
                format!(r#"{{"tdx": [{{"trusted_mrtd": ["{M}"], "allowed_tcb_statuses": []}}]}}"#),
                "allowed_tcb_statuses is empty",
            ),
            (
                r#"{"tdx": [{"trusted_mrtd": []}]}"#.to_owned(),
                "trusted_mrtd is empty",
            ),
            (
                format!(r#"{{"tdx": [{{"trusted_mrtd": ["{M}"], "rtmr": {{"1": []}}}}]}}"#),
                "rtmr \"1\"",
            ),
            (
                format!(r#"{{"tdx": [{{"trusted_mrtd": ["{M}"], "trusted_mrseam": []}}]}}"#),
                "trusted_mrseam is empty",
            ),
        ] {
            let err = parse(&bad).unwrap().validate().unwrap_err();
            assert!(
                err.contains("reference_values.tdx[0]") && err.contains(says),
                "{err}"
            );
        }
    }

    #[test]
    fn validate_rejects_what_serde_cannot() {
        let empty = parse(&format!(
            r#"{{"simulated": [{{"root": "{ROOT}", "trusted_measurements": []}}]}}"#
        ))
        .unwrap();
        assert!(
            empty
                .validate()
                .unwrap_err()
                .contains("simulated[0]: trusted_measurements is empty")
        );
        let fmc = parse(&format!(
            r#"{{"snp": [{{"product": "Genoa", "trusted_measurements": ["{M}"],
                "minimum_tcb": {{"bootloader": 1, "tee": 0, "snp": 1, "microcode": 1, "fmc": 1}}}}]}}"#
        ))
        .unwrap();
        assert!(
            fmc.validate()
                .unwrap_err()
                .contains("fmc exists only for product Turin")
        );
        let no_chips = parse(&format!(
            r#"{{"snp": [{{"product": "Milan", "trusted_measurements": ["{M}"],
                "minimum_tcb": {{"bootloader": 1, "tee": 0, "snp": 1, "microcode": 1}},
                "allowed_chip_ids": []}}]}}"#
        ))
        .unwrap();
        assert!(
            no_chips
                .validate()
                .unwrap_err()
                .contains("allowed_chip_ids is empty")
        );
    }
}
