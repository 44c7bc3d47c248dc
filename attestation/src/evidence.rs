//! Evidence: an attestation report and the certificates that vouch for its signing key.
//!
//! Owns [`Platform`] and [`Evidence`] and their wire encoding (the `concord.v1.Evidence` protobuf
//! message, as carried in the aTLS certificate extension). It must never judge evidence: decoding
//! only checks that the bytes are a well-formed message naming a known platform.

use prost::Message;

use crate::error::AttestationError;

/// The kind of platform that produced evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// AMD SEV-SNP.
    Snp,
    /// The INSECURE simulated platform.
    Simulated,
    /// Intel TDX: `report` is the quote; `certificates[0]` is Intel's collateral (JSON, PROTOCOL.md),
    /// followed, for the INSECURE simulated TDX hierarchy only, by its root, that root's endorsement
    /// by the simulated root, and the simulated root.
    Tdx,
}

impl Platform {
    /// The wire name: `"snp"`, `"simulated"` or `"tdx"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Snp => "snp",
            Self::Simulated => "simulated",
            Self::Tdx => "tdx",
        }
    }

    /// Parses the wire name; anything else is malformed.
    pub fn from_wire(s: &str) -> Result<Self, AttestationError> {
        match s {
            "snp" => Ok(Self::Snp),
            "simulated" => Ok(Self::Simulated),
            "tdx" => Ok(Self::Tdx),
            other => Err(AttestationError::malformed(format!(
                "unknown evidence platform {other:?} (expected \"snp\", \"simulated\" or \"tdx\")"
            ))),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Unverified evidence as received or issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// Which platform produced it.
    pub platform: Platform,
    /// The raw attestation report.
    pub report: Vec<u8>,
    /// DER certificates, signer first, root last.
    pub certificates: Vec<Vec<u8>>,
    /// SNP: AMD's CRLs (DER), signed by the ARK, so a relying party checks revocation offline.
    pub crls: Vec<Vec<u8>>,
}

impl Evidence {
    /// Encodes as the `concord.v1.Evidence` protobuf message.
    pub fn to_bytes(&self) -> Vec<u8> {
        concord_proto::v1::Evidence {
            platform: self.platform.as_str().to_owned(),
            report: self.report.clone(),
            certificates: self.certificates.clone(),
            crls: self.crls.clone(),
        }
        .encode_to_vec()
    }

    /// Decodes a `concord.v1.Evidence` message; an unknown platform is malformed.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AttestationError> {
        let msg = concord_proto::v1::Evidence::decode(bytes)
            .map_err(|e| AttestationError::malformed(format!("evidence message: {e}")))?;
        Ok(Self {
            platform: Platform::from_wire(&msg.platform)?,
            report: msg.report,
            certificates: msg.certificates,
            crls: msg.crls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let ev = Evidence {
            platform: Platform::Simulated,
            report: vec![1, 2, 3],
            certificates: vec![vec![4], vec![5, 6]],
            crls: vec![vec![7, 8]],
        };
        assert_eq!(Evidence::from_bytes(&ev.to_bytes()).unwrap(), ev);
        let ev = Evidence {
            platform: Platform::Snp,
            ..ev
        };
        assert_eq!(Evidence::from_bytes(&ev.to_bytes()).unwrap(), ev);
        let ev = Evidence {
            platform: Platform::Tdx,
            ..ev
        };
        assert_eq!(Evidence::from_bytes(&ev.to_bytes()).unwrap(), ev);
    }

    #[test]
    fn unknown_platform_and_garbage_are_malformed() {
        let msg = concord_proto::v1::Evidence {
            platform: "sgx".into(),
            report: vec![],
            certificates: vec![],
            crls: vec![],
        }
        .encode_to_vec();
        let err = Evidence::from_bytes(&msg).unwrap_err();
        assert!(
            matches!(&err, AttestationError::Malformed { what } if what.contains("\"sgx\"")),
            "{err}"
        );
        // An empty message decodes to an empty platform name: unknown, not a default.
        assert!(matches!(
            Evidence::from_bytes(&[]),
            Err(AttestationError::Malformed { .. })
        ));
        assert!(matches!(
            Evidence::from_bytes(&[0xff, 0xff, 0xff]),
            Err(AttestationError::Malformed { .. })
        ));
    }
}
