//! Intel TDX: quote verification with Intel's collateral, and Concord's policy on the TD report.
//!
//! Owns [`verify`], from a raw quote and its collateral to [`TdxClaims`] or a reason to deny, in
//! three steps that each fail closed: the quote's layout (`quote`, Concord's own reading), the
//! collateral's dates at the time of check (an input), Intel's format and chain checks (`intel`,
//! with `dcap-qvl`) against the pinned Intel SGX Root CA, then Concord's policy against the
//! manifest's `reference_values.tdx` ([`policy`]). It must never accept a quote unless every check
//! passed, never let the Intel-format library make a Concord policy decision, and never read a
//! field of the quote that the signature checks did not cover.

pub mod collateral;
mod intel;
pub mod issuer;
pub mod policy;
pub mod quote;
pub mod simulated;

use std::time::SystemTime;

use serde::Serialize;
use time::OffsetDateTime;

pub use collateral::Collateral;
pub use issuer::TdxGuestIssuer;
pub use quote::{Quote, TdReport};

use crate::error::{AttestationError, RejectReason};
use crate::reference::{TdxReference, TdxTcbStatus};
use collateral::Part;

/// Intel's SGX Root CA (`CN=Intel SGX Root CA`, ECDSA P-256), the anchor of every PCK chain and of
/// the collateral's signers, DER. SHA-256
/// 44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3, as published by Intel
/// (certificates.trustedservices.intel.com/Intel_SGX_Provisioning_Certification_RootCA.cer).
pub const INTEL_SGX_ROOT_CA_DER: &[u8] = include_bytes!("roots/intel_sgx_root_ca.der");

/// The claims of a quote that passed every check (or, from [`read_claims`], unverified ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TdxClaims {
    /// MRTD, hex.
    pub mrtd: String,
    /// RTMR0, hex.
    pub rtmr0: String,
    /// RTMR1, hex.
    pub rtmr1: String,
    /// RTMR2, hex.
    pub rtmr2: String,
    /// RTMR3, hex.
    pub rtmr3: String,
    /// MRCONFIGID, hex.
    pub mrconfigid: String,
    /// MROWNER, hex.
    pub mrowner: String,
    /// MROWNERCONFIG, hex.
    pub mrownerconfig: String,
    /// TD attributes: the 8 bytes as in the quote (little-endian), hex; bit 0 (debug) is the low
    /// bit of the first byte.
    pub td_attributes: String,
    /// XFAM: the 8 bytes as in the quote, hex.
    pub xfam: String,
    /// MRSEAM, hex.
    pub mrseam: String,
    /// TEE TCB SVN, hex (16 bytes).
    pub tee_tcb_svn: String,
    /// REPORTDATA, hex.
    pub report_data: String,
    /// The platform's FMSPC (from the verified PCK certificate); `None` when not verified.
    pub fmspc: Option<String>,
    /// Intel's TCB status; `None` when not verified.
    pub tcb_status: Option<String>,
    /// Intel's advisories for that TCB level.
    pub advisory_ids: Vec<String>,
}

impl TdxClaims {
    fn new(report: &TdReport, intel: Option<&intel::IntelVerdict>) -> Self {
        Self {
            mrtd: hex::encode(report.mrtd),
            rtmr0: hex::encode(report.rtmr[0]),
            rtmr1: hex::encode(report.rtmr[1]),
            rtmr2: hex::encode(report.rtmr[2]),
            rtmr3: hex::encode(report.rtmr[3]),
            mrconfigid: hex::encode(report.mrconfigid),
            mrowner: hex::encode(report.mrowner),
            mrownerconfig: hex::encode(report.mrownerconfig),
            td_attributes: hex::encode(report.td_attributes.to_le_bytes()),
            xfam: hex::encode(report.xfam.to_le_bytes()),
            mrseam: hex::encode(report.mrseam),
            tee_tcb_svn: hex::encode(report.tee_tcb_svn),
            report_data: hex::encode(report.report_data),
            fmspc: intel.map(|i| i.fmspc.clone()),
            tcb_status: intel.map(|i| i.tcb_status.as_str().to_owned()),
            advisory_ids: intel.map(|i| i.advisory_ids.clone()).unwrap_or_default(),
        }
    }
}

/// A quote that passed every check: the report body and Intel's verdict. Only this module makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedQuote {
    /// The quote version, 4 or 5.
    pub version: u16,
    /// The TD report body.
    pub report: TdReport,
    /// The platform's FMSPC (lowercase hex).
    pub fmspc: String,
    /// Intel's TCB status.
    pub tcb_status: TdxTcbStatus,
    /// Intel's advisories.
    pub advisory_ids: Vec<String>,
}

impl VerifiedQuote {
    /// The claims, for tools and audit output.
    pub fn claims(&self) -> TdxClaims {
        TdxClaims::new(
            &self.report,
            Some(&intel::IntelVerdict {
                fmspc: self.fmspc.clone(),
                tcb_status: self.tcb_status,
                advisory_ids: self.advisory_ids.clone(),
            }),
        )
    }

    /// The policy hash MRCONFIGID carries (its first 32 bytes; the rest is zero once verified).
    pub fn policy_hash(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.report.mrconfigid[..32]);
        out
    }
}

/// What the relying side expects of a quote beyond the reference values.
pub struct Expectations<'a> {
    /// REPORTDATA must equal this.
    pub report_data: &'a [u8; 64],
    /// MRCONFIGID must be a policy hash this accepts, then 16 zero bytes.
    pub accept_policy_hash: &'a dyn Fn(&[u8; 32]) -> bool,
    /// The time of check for the collateral, the certificates and the CRLs.
    pub now: SystemTime,
}

/// Reads a quote's claims without verifying anything (for tools that print what a rejected quote
/// says); `None` when the layout is not a TDX quote.
pub fn read_claims(quote: &[u8]) -> Option<TdxClaims> {
    Quote::parse(quote)
        .ok()
        .map(|q| TdxClaims::new(&q.report, None))
}

/// Verifies `quote` with `collateral` against Intel's pinned root and accepts it if one of
/// `entries` accepts it; when every entry rejects it, the reason is the first entry's.
pub fn verify(
    quote: &[u8],
    collateral: &Collateral,
    entries: &[TdxReference],
    expect: &Expectations<'_>,
) -> Result<VerifiedQuote, AttestationError> {
    verify_with_root(quote, collateral, INTEL_SGX_ROOT_CA_DER, entries, expect)
}

/// [`verify`] with another trust anchor than Intel's: the simulated TDX root, or a test hierarchy.
pub fn verify_with_root(
    quote: &[u8],
    collateral: &Collateral,
    root_der: &[u8],
    entries: &[TdxReference],
    expect: &Expectations<'_>,
) -> Result<VerifiedQuote, AttestationError> {
    if entries.is_empty() {
        return Err(RejectReason::NoTdxReferenceValues.into());
    }
    let parsed = Quote::parse(quote)?;
    check_window(collateral, Part::TcbInfo, expect.now)?;
    check_window(collateral, Part::QeIdentity, expect.now)?;
    let verdict = intel::check(quote, collateral, root_der, expect.now)?;
    let mut first_error = None;
    for entry in entries {
        match policy::check(&parsed.report, verdict.tcb_status, entry, expect) {
            Ok(()) => {
                return Ok(VerifiedQuote {
                    version: parsed.version,
                    report: parsed.report,
                    fmspc: verdict.fmspc,
                    tcb_status: verdict.tcb_status,
                    advisory_ids: verdict.advisory_ids,
                });
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error
        .map_or(RejectReason::NoTdxReferenceValues, |e| e)
        .into())
}

fn check_window(
    collateral: &Collateral,
    part: Part,
    now: SystemTime,
) -> Result<(), AttestationError> {
    let window = collateral.window(part)?;
    let now = OffsetDateTime::from(now);
    let name = match part {
        Part::TcbInfo => "TCB info",
        Part::QeIdentity => "QE identity",
    };
    if now < window.issue_date {
        return Err(RejectReason::TdxCollateralNotYetValid(name).into());
    }
    if now > window.next_update {
        return Err(RejectReason::TdxCollateralExpired(name).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn the_pinned_intel_root_is_the_published_one() {
        assert_eq!(
            hex::encode(Sha256::digest(INTEL_SGX_ROOT_CA_DER)),
            "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
        );
        // And the collateral of the vector ends at it.
        let c = Collateral::from_json(include_bytes!("vectors/tdx_quote_collateral.json")).unwrap();
        for chain in [
            &c.pck_crl_issuer_chain,
            &c.tcb_info_issuer_chain,
            &c.qe_identity_issuer_chain,
        ] {
            let last = x509_parser::pem::Pem::iter_from_buffer(chain.as_bytes())
                .last()
                .unwrap()
                .unwrap();
            assert_eq!(last.contents, INTEL_SGX_ROOT_CA_DER);
        }
    }

    #[test]
    fn no_reference_values_is_its_own_reason() {
        let c = Collateral::from_json(include_bytes!("vectors/tdx_quote_collateral.json")).unwrap();
        let err = verify(
            include_bytes!("vectors/tdx_quote"),
            &c,
            &[],
            &Expectations {
                report_data: &[0; 64],
                accept_policy_hash: &|_| true,
                now: SystemTime::now(),
            },
        )
        .unwrap_err();
        assert_eq!(err, RejectReason::NoTdxReferenceValues.into());
    }
}

/// Which collateral a quote needs from Intel's PCS: the FMSPC and the issuing CA of the PCK
/// certificate it carries. Read without verifying anything (the collateral is what the
/// verification needs); a wrong answer only fetches collateral that then fails to verify.
pub fn pcs_query(
    quote: &[u8],
) -> Result<(crate::intel_pcs::Fmspc, crate::intel_pcs::Ca), AttestationError> {
    let unreadable = |what: &str, e: anyhow::Error| {
        AttestationError::Issuer(format!(
            "the TDX quote's PCK certificate does not name its {what}: {e:#}"
        ))
    };
    let parsed = dcap_qvl::quote::Quote::parse(quote).map_err(|e| unreadable("platform", e))?;
    let fmspc = dcap_qvl::intel::quote_fmspc(&parsed).map_err(|e| unreadable("FMSPC", e))?;
    let ca = match dcap_qvl::intel::quote_ca(&parsed).map_err(|e| unreadable("CA", e))? {
        dcap_qvl::config::PckCa::Processor => crate::intel_pcs::Ca::Processor,
        dcap_qvl::config::PckCa::Platform => crate::intel_pcs::Ca::Platform,
    };
    Ok((crate::intel_pcs::Fmspc(fmspc), ca))
}

#[cfg(test)]
mod pcs_query_tests {
    #[test]
    fn the_real_quote_names_its_fmspc_and_ca() {
        let quote = include_bytes!("vectors/tdx_quote");
        let (fmspc, ca) = super::pcs_query(quote).unwrap();
        assert_eq!(fmspc.to_string().to_lowercase(), "b0c06f000000");
        assert_eq!(ca, crate::intel_pcs::Ca::Platform);
        assert!(super::pcs_query(&quote[..100]).is_err());
    }
}
