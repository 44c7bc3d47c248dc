//! The Intel-format checks of a TDX quote, by the `dcap-qvl` crate, and their reasons.
//!
//! Owns [`check`]: the PCK chain to the trust anchor with the root CA CRL and the PCK CRL, TCB info
//! and QE identity (signatures, chains, FMSPC and the PCE/QE fields), the QE report's signature by
//! the PCK and its binding of the attestation key, the quote signature, and Intel's TCB status from
//! the TCB levels. It makes no policy decision beyond Intel's own format and chain rules (and the
//! TD attribute rules Concord never relaxes: no migration, SEPT_VE_DISABLE set, no service TD,
//! reserved bits clear): debug, measurements, MRCONFIGID, report data and the accepted TCB statuses
//! are `tdx::policy`'s. Each refusal is mapped to its own [`RejectReason`] by the message `dcap-qvl`
//! gives (the crate is pinned exactly in Cargo.toml; `tests` pins every mapping on real failures).

use std::time::{SystemTime, UNIX_EPOCH};

use dcap_qvl::verify::QuoteVerifier;

use crate::error::{AttestationError, RejectReason};
use crate::reference::TdxTcbStatus;

use super::collateral::Collateral;

/// What Intel's collateral says about a quote that passed every Intel-format check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntelVerdict {
    /// The platform's FMSPC, from the PCK certificate (lowercase hex).
    pub fmspc: String,
    /// The TCB status Intel's TCB levels give the platform, TDX module and QE together.
    pub tcb_status: TdxTcbStatus,
    /// Intel's security advisories for that TCB level.
    pub advisory_ids: Vec<String>,
}

/// Accepts every quote: Concord's policy runs after, on its own reading of the quote.
struct NoPolicy;

impl dcap_qvl::Policy for NoPolicy {
    fn validate(&self, _: &dcap_qvl::QuoteClaims) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Runs the Intel-format checks of `quote` with `collateral` against the trust anchor `root_der`
/// at `now`. The caller has parsed the quote's header and checked the collateral's dates.
pub fn check(
    quote: &[u8],
    collateral: &Collateral,
    root_der: &[u8],
    now: SystemTime,
) -> Result<IntelVerdict, AttestationError> {
    let intel = collateral.to_intel()?;
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| AttestationError::Config("the clock is before 1970".into()))?
        .as_secs();
    // Debug is Concord's decision (`policy`), so the crate is told to allow it here.
    let claims = QuoteVerifier::new(root_der.to_vec())
        .allow_debug(true)
        .verify_with_policy(quote, intel, now_secs, &NoPolicy)
        .map_err(|e| classify(&format!("{e:#}")))?;
    let status_name = format!("{:?}", claims.tcb.status);
    let tcb_status = TdxTcbStatus::from_intel(&status_name).ok_or_else(|| {
        RejectReason::TdxTcbStatusNotAllowed(format!("{status_name} (unknown to Concord)"))
    })?;
    if tcb_status == TdxTcbStatus::Revoked {
        return Err(RejectReason::TdxTcbRevoked.into());
    }
    Ok(IntelVerdict {
        fmspc: hex::encode(claims.platform.pck.fmspc),
        tcb_status,
        advisory_ids: claims.tcb.advisory_ids,
    })
}

/// The reason for a `dcap-qvl` refusal, from its message (with its causes, `{:#}`).
pub(crate) fn classify(message: &str) -> AttestationError {
    let has = |s: &str| message.contains(s);
    let reason = if has("TCB status is invalid: Revoked") {
        RejectReason::TdxTcbRevoked
    } else if has("CertRevoked") {
        RejectReason::TdxCertificateRevoked
    } else if has("Signature is invalid for tcb_info")
        || has("TCB Info signer")
        || has("Certificate chain is too short for TCB Info")
        || has("Failed to parse TCB Info leaf")
    {
        RejectReason::TdxCollateralSignature("TCB info")
    } else if has("Signature is invalid for qe_identity")
        || has("QE Identity signer")
        || has("Certificate chain is too short for QE Identity")
        || has("Failed to parse QE Identity leaf")
    {
        RejectReason::TdxCollateralSignature("QE identity")
    } else if has("TCBInfo expired") {
        RejectReason::TdxCollateralExpired("TCB info")
    } else if has("QE Identity expired") {
        RejectReason::TdxCollateralExpired("QE identity")
    } else if has("TCBInfo issue date is in the future") {
        RejectReason::TdxCollateralNotYetValid("TCB info")
    } else if has("QE Identity issue date is in the future") {
        RejectReason::TdxCollateralNotYetValid("QE identity")
    } else if has("Fmspc")
        || has("No matching TCB level")
        || has("TDX module")
        || has("tdxModule")
        || has("non-TDX TCB info")
        || has("TEE_TCB_SVN")
        || has("tcbDate")
    {
        RejectReason::TdxTcbLevel(message.to_owned())
    } else if has("CRL") || has("Crl") {
        RejectReason::TdxCrl(message.to_owned())
    } else if has("Failed to verify certificate chain")
        || has("PCK certificate")
        || has("Certificate chain is too short")
        || has("Too many intermediate certificates")
        || has("Failed to load root ca")
    {
        RejectReason::TdxCertificateChain(message.to_owned())
    } else if has("Signature is invalid for qe_report") {
        RejectReason::TdxQeReportSignature
    } else if has("QE report hash mismatch") || has("Invalid QE auth data length") {
        RejectReason::TdxAttestationKeyBinding
    } else if has("ISV enclave report signature is invalid") {
        RejectReason::TdxQuoteSignature
    } else if has("QE Identity") || has("QE report") || has("QE ISVSVN") {
        RejectReason::TdxQeIdentity(message.to_owned())
    } else if has("TD attributes")
        || has("migration")
        || has("SERVTD_EXT")
        || has("SEPT_VE_DISABLE")
        || has("MR service TD")
    {
        RejectReason::TdxTdAttributes(message.to_owned())
    } else if has("Failed to decode quote") {
        return AttestationError::malformed(format!("TDX quote: {message}"));
    } else if has("Failed to decode TcbInfo") || has("Failed to decode QeIdentity") {
        return AttestationError::malformed(format!("TDX collateral: {message}"));
    } else {
        RejectReason::TdxQuote(message.to_owned())
    };
    reason.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages `dcap-qvl` 0.7.1 gives, each to its reason (the ones real failures do not reach
    /// in the other tests).
    #[test]
    fn each_message_maps_to_its_reason() {
        let reason = |m: &str| classify(m).reject_reason().map(RejectReason::metric_label);
        for (message, label) in [
            (
                "No TDX module identity with id TDX_03 found in TCB Info",
                "tdx_tcb_level",
            ),
            ("Fmspc mismatch", "tdx_tcb_level"),
            ("No matching TCB level found", "tdx_tcb_level"),
            (
                "Failed to verify certificate chain: UnknownIssuer",
                "tdx_certificate_chain",
            ),
            (
                "Failed to verify certificate chain: CertRevoked",
                "tdx_certificate_revoked",
            ),
            ("Failed to parse root CA CRL: BadSignature", "tdx_crl"),
            ("TCB status is invalid: Revoked", "tdx_tcb_revoked"),
            (
                "QE ISVSVN 1 is below minimum required 2 from QE Identity",
                "tdx_qe_identity",
            ),
            ("TD migration is enabled", "tdx_td_attributes"),
            ("SEPT_VE_DISABLE is not enabled", "tdx_td_attributes"),
            (
                "TCB Info signer must be issued directly by the root CA",
                "tdx_collateral_signature",
            ),
            ("something new", "tdx_quote"),
        ] {
            assert_eq!(reason(message), Some(label), "{message}");
        }
        assert!(matches!(
            classify("Failed to decode quote: short"),
            AttestationError::Malformed { .. }
        ));
    }
}
