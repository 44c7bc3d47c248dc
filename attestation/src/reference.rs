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
        let err = parse(r#"{"snp": [], "simulated": [], "tdx": []}"#).unwrap_err();
        assert!(err.contains("unknown field `tdx`"), "{err}");
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
