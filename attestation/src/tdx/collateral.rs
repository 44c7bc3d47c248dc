//! Intel's collateral for a TDX quote, in the layout Intel's PCS v4 / a PCCS serves it.
//!
//! Owns [`Collateral`], the JSON document a coordinator sends beside its quote and the offline tool
//! reads (`--collateral`): PEM issuer chains, the root CA CRL and the PCK CRL as hex DER, TCB info
//! and QE identity as the exact JSON text Intel signed, and their signatures as hex (r || s). Fetching
//! and caching these bytes is another module's job; this one parses them strictly and reads the dates
//! the verifier checks. It must never trust a field before the verifier checked its signature.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::AttestationError;

/// The collateral document (Intel PCS v4 field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collateral {
    /// PEM: the PCK CRL's issuer (PCK Platform or Processor CA), then Intel's root.
    pub pck_crl_issuer_chain: String,
    /// Hex DER: the CRL of Intel's SGX Root CA.
    pub root_ca_crl: String,
    /// Hex DER: the CRL of the PCK CA.
    pub pck_crl: String,
    /// PEM: the TCB signing certificate, then Intel's root.
    pub tcb_info_issuer_chain: String,
    /// JSON text of the `tcbInfo` object, exactly as signed.
    pub tcb_info: String,
    /// Hex: ECDSA P-256 signature (r || s) over `tcb_info`.
    pub tcb_info_signature: String,
    /// PEM: the QE identity signing certificate, then Intel's root.
    pub qe_identity_issuer_chain: String,
    /// JSON text of the `enclaveIdentity` object, exactly as signed.
    pub qe_identity: String,
    /// Hex: ECDSA P-256 signature (r || s) over `qe_identity`.
    pub qe_identity_signature: String,
}

/// The part of the collateral a date or signature belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// TCB info.
    TcbInfo,
    /// QE identity.
    QeIdentity,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TcbInfo => "TCB info",
            Self::QeIdentity => "QE identity",
        })
    }
}

/// The validity window Intel gives a part of the collateral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// `issueDate`.
    pub issue_date: OffsetDateTime,
    /// `nextUpdate`: after it the part is stale.
    pub next_update: OffsetDateTime,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Dates {
    issue_date: String,
    next_update: String,
}

fn hex_field(name: &str, value: &str) -> Result<Vec<u8>, AttestationError> {
    hex::decode(value)
        .map_err(|e| AttestationError::malformed(format!("TDX collateral: {name} is not hex: {e}")))
}

impl Collateral {
    /// Parses the JSON document; unknown fields, and hex fields that are not hex, are errors.
    pub fn from_json(bytes: &[u8]) -> Result<Self, AttestationError> {
        let collateral: Self = serde_json::from_slice(bytes)
            .map_err(|e| AttestationError::malformed(format!("TDX collateral: {e}")))?;
        collateral.to_intel()?;
        Ok(collateral)
    }

    /// Writes the JSON document.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings always serializes.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The `issueDate`..`nextUpdate` window of `part` (not yet verified: the verifier checks the
    /// signature over the same text before it accepts anything).
    pub fn window(&self, part: Part) -> Result<Window, AttestationError> {
        let text = match part {
            Part::TcbInfo => &self.tcb_info,
            Part::QeIdentity => &self.qe_identity,
        };
        let dates: Dates = serde_json::from_str(text)
            .map_err(|e| AttestationError::malformed(format!("TDX collateral: {part}: {e}")))?;
        let parse = |field: &str, value: &str| {
            OffsetDateTime::parse(value, &Rfc3339).map_err(|e| {
                AttestationError::malformed(format!(
                    "TDX collateral: {part} {field} {value:?} is not an RFC 3339 time: {e}"
                ))
            })
        };
        Ok(Window {
            issue_date: parse("issueDate", &dates.issue_date)?,
            next_update: parse("nextUpdate", &dates.next_update)?,
        })
    }

    /// The FMSPC the TCB info is for (hex, as Intel writes it), for error messages and claims.
    pub fn fmspc(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Fmspc {
            fmspc: String,
        }
        serde_json::from_str::<Fmspc>(&self.tcb_info)
            .ok()
            .map(|f| f.fmspc.to_lowercase())
    }

    /// The same bytes in the Intel-format verifier's type.
    pub(crate) fn to_intel(&self) -> Result<dcap_qvl::QuoteCollateralV3, AttestationError> {
        Ok(dcap_qvl::QuoteCollateralV3 {
            pck_crl_issuer_chain: self.pck_crl_issuer_chain.clone(),
            root_ca_crl: hex_field("root_ca_crl", &self.root_ca_crl)?,
            pck_crl: hex_field("pck_crl", &self.pck_crl)?,
            tcb_info_issuer_chain: self.tcb_info_issuer_chain.clone(),
            tcb_info: self.tcb_info.clone(),
            tcb_info_signature: hex_field("tcb_info_signature", &self.tcb_info_signature)?,
            qe_identity_issuer_chain: self.qe_identity_issuer_chain.clone(),
            qe_identity: self.qe_identity.clone(),
            qe_identity_signature: hex_field("qe_identity_signature", &self.qe_identity_signature)?,
            // The PCK chain comes from the quote's certification data, never from the collateral.
            pck_certificate_chain: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &[u8] = include_bytes!("vectors/tdx_quote_collateral.json");

    #[test]
    fn the_vector_parses_and_names_its_window() {
        let c = Collateral::from_json(JSON).unwrap();
        let tcb = c.window(Part::TcbInfo).unwrap();
        assert_eq!(tcb.issue_date.unix_timestamp(), 1_750_328_163); // 2025-06-19T10:16:03Z
        assert_eq!(tcb.next_update.unix_timestamp(), 1_752_920_163); // 2025-07-19T10:16:03Z
        let qe = c.window(Part::QeIdentity).unwrap();
        assert_eq!(qe.issue_date.unix_timestamp(), 1_750_329_147); // 2025-06-19T10:32:27Z
        assert_eq!(c.fmspc().as_deref(), Some("b0c06f000000"));
        c.to_intel().unwrap();
        assert_eq!(Collateral::from_json(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn unknown_fields_and_bad_hex_are_malformed() {
        let mut v: serde_json::Value = serde_json::from_slice(JSON).unwrap();
        v["pck_crl"] = "zz".into();
        let c: Collateral = serde_json::from_value(v.clone()).unwrap();
        assert!(
            matches!(c.to_intel(), Err(AttestationError::Malformed { what }) if what.contains("pck_crl"))
        );
        let bytes = serde_json::to_vec(&v).unwrap();
        assert!(
            matches!(Collateral::from_json(&bytes), Err(AttestationError::Malformed { what }) if what.contains("pck_crl"))
        );
        v["extra"] = 1.into();
        assert!(Collateral::from_json(&serde_json::to_vec(&v).unwrap()).is_err());
    }
}
