//! The crate's error type: who is at fault when attestation does not succeed.
//!
//! Owns [`AttestationError`] and [`RejectReason`]. The split follows the question a caller has to
//! answer: `Rejected` means the evidence was read and does not satisfy the policy (deny, and count it
//! by [`RejectReason::metric_label`]); `Malformed` means it could not even be read; `Issuer` means this
//! side could not produce evidence; `Config` means the local setup is wrong; `Handshake` means the TLS
//! connection failed for a reason that is not the evidence; `Transport` that the connection itself
//! broke or stalled (an outage, not a verdict). Messages never carry secret bytes.

use std::fmt;

/// Why attestation did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    /// The evidence was read and does not satisfy the policy.
    #[error("attestation rejected: {0}")]
    Rejected(RejectReason),
    /// The evidence (or a part of it) cannot be parsed.
    #[error("malformed attestation evidence: {what}")]
    Malformed {
        /// What could not be parsed, and why.
        what: String,
    },
    /// This side cannot produce evidence (platform device, keys, randomness).
    #[error("cannot produce attestation evidence: {0}")]
    Issuer(String),
    /// The local attestation configuration is unusable (trust anchors, key files, clock).
    #[error("attestation configuration: {0}")]
    Config(String),
    /// The aTLS handshake failed for a reason other than the evidence: the peer closed the
    /// connection, spoke something else than TLS 1.3, timed out, or refused our evidence.
    #[error("aTLS handshake failed: {0}")]
    Handshake(String),
    /// The connection broke before any evidence was judged: reset, closed mid-handshake or no
    /// answer in time. An outage (the network, a dying peer), never a verdict on evidence.
    #[error("the connection failed during the aTLS handshake: {0}")]
    Transport(String),
    /// The peer closed the connection before it sent anything: a port probe or a health check,
    /// not an attack; callers log it quietly.
    #[error("the peer closed the connection before the TLS handshake")]
    ClosedBeforeHandshake,
}

impl AttestationError {
    /// Whether evidence was received and refused (rejected by the policy, or unreadable): the
    /// peer's fault, as opposed to an outage or a local problem.
    pub fn is_verdict_on_evidence(&self) -> bool {
        matches!(self, Self::Rejected(_) | Self::Malformed { .. })
    }

    /// The reason, when the evidence was rejected by the policy.
    pub fn reject_reason(&self) -> Option<&RejectReason> {
        match self {
            Self::Rejected(reason) => Some(reason),
            _ => None,
        }
    }

    pub(crate) fn malformed(what: impl Into<String>) -> Self {
        Self::Malformed { what: what.into() }
    }
}

impl From<RejectReason> for AttestationError {
    fn from(reason: RejectReason) -> Self {
        Self::Rejected(reason)
    }
}

/// Which certificate of an evidence chain a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertRole {
    /// The trust anchor: the simulated root, or AMD's ARK.
    Root,
    /// An intermediate: AMD's ASK or ASVK.
    Intermediate,
    /// The certificate of the key that signed the report: VCEK, VLEK or the simulated VCEK.
    Signer,
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Root => "root",
            Self::Intermediate => "intermediate",
            Self::Signer => "signer",
        })
    }
}

/// A component of an SNP TCB version, as named in the manifest's `minimum_tcb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TcbComponent {
    /// The PSP bootloader.
    Bootloader,
    /// The PSP operating system.
    Tee,
    /// The SNP firmware.
    Snp,
    /// The CPU microcode.
    Microcode,
    /// The firmware's FMC (Turin only).
    Fmc,
}

impl fmt::Display for TcbComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bootloader => "bootloader",
            Self::Tee => "tee",
            Self::Snp => "snp",
            Self::Microcode => "microcode",
            Self::Fmc => "fmc",
        })
    }
}

/// The check that evidence failed. Each check has its own reason, so logs and metrics say which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// Simulated evidence, and the launch configuration trusts no simulated root.
    #[error(
        "simulated evidence, but this launch configuration trusts no simulated root \
         (INSECURE simulated attestation is off)"
    )]
    SimulatedNotEnabled,
    /// The simulated root is not the one the launch configuration names.
    #[error("the simulated root certificate is not the one this launch configuration trusts")]
    SimulatedRootNotTrusted,
    /// The simulated root is trusted locally but no reference values entry names it.
    #[error("the simulated root is not named in the reference values")]
    SimulatedRootNotInReferenceValues,
    /// A certificate was not issued by the next one in the chain (names differ).
    #[error("the {role} certificate was not issued by the next certificate of the chain")]
    CertificateChain {
        /// The certificate whose issuer does not match.
        role: CertRole,
    },
    /// A certificate signature does not verify, or uses another algorithm than expected.
    #[error("the {role} certificate's signature does not verify")]
    CertificateSignature {
        /// The certificate whose signature failed.
        role: CertRole,
    },
    /// A certificate is not valid yet at the time of check.
    #[error("the {role} certificate is not valid yet at the time of check")]
    CertificateNotYetValid {
        /// The certificate concerned.
        role: CertRole,
    },
    /// A certificate has expired at the time of check.
    #[error("the {role} certificate has expired at the time of check")]
    CertificateExpired {
        /// The certificate concerned.
        role: CertRole,
    },
    /// The report format version is outside 2..=5.
    #[error("report version {0} is not supported (2 to 5 are)")]
    UnsupportedVersion(u32),
    /// The report's signature algorithm is not ECDSA P-384/SHA-384.
    #[error("report signature algorithm {0} is not supported (1, ECDSA P-384 with SHA-384, is)")]
    UnsupportedSignatureAlgorithm(u32),
    /// The report signature does not verify with the signer certificate's key.
    #[error("the report signature does not verify with the signer's key")]
    ReportSignature,
    /// The report was not produced at VMPL 0.
    #[error("the report comes from VMPL {0}, not VMPL 0")]
    Vmpl(u32),
    /// The guest policy allows debugging and the reference values do not.
    #[error("the guest policy allows debugging")]
    DebugAllowed,
    /// The guest policy allows a migration agent and the reference values do not.
    #[error("the guest policy allows a migration agent")]
    MigrationAgentAllowed,
    /// The launch measurement is not in the trusted set.
    #[error("measurement not trusted")]
    MeasurementNotTrusted,
    /// `host_data` (the policy hash) is not accepted: it names no policy the relying side knows.
    #[error("host_data not accepted: it names no policy of the manifest")]
    HostDataNotAccepted,
    /// `report_data` is not the binding the relying side expects.
    #[error("report_data does not match the expected binding (replayed or foreign evidence?)")]
    ReportDataMismatch,
    /// The aTLS peer certificate carries no evidence extension.
    #[error("the peer's certificate carries no attestation evidence")]
    NoEvidence,
    /// The aTLS client offered no usable nonce in its ALPN list.
    #[error("the client sent no aTLS nonce; connect with the concord CLI or initializer")]
    MissingNonce,
    /// SNP evidence, and the reference values have no `snp` entry to check it against.
    #[error("SNP evidence, but the reference values have no snp entry")]
    NoSnpReferenceValues,
    /// The SNP report is not 1184 bytes long.
    #[error("the attestation report is {0} bytes long, not 1184")]
    ReportLength(usize),
    /// KEY_INFO names a signing key other than the VCEK (0) or the VLEK (1).
    #[error(
        "the report's KEY_INFO names signing key {0}; only the VCEK (0) and the VLEK (1) are accepted"
    )]
    SigningKey(u8),
    /// The report's CPUID fields name no product this verifier knows.
    #[error("the report's CPUID family {family:#x} model {model:#x} is no known SEV-SNP product")]
    UnknownProduct {
        /// CPUID family, as reported.
        family: u8,
        /// CPUID model, as reported.
        model: u8,
    },
    /// The report's CPUID fields name another product than the reference values entry.
    #[error(
        "the report comes from a {reported:?} processor, the reference values entry is for {expected:?}"
    )]
    WrongProduct {
        /// What the report's CPUID fields say.
        reported: crate::reference::Product,
        /// What the reference values entry names.
        expected: crate::reference::Product,
    },
    /// A certificate sent with the evidence is not the pinned AMD certificate in its position.
    #[error(
        "the {role} certificate sent with the evidence is not the pinned AMD certificate of this product"
    )]
    CertificateNotPinned {
        /// The position of the certificate.
        role: CertRole,
    },
    /// The signer certificate lacks an AMD extension the check needs, or carries it malformed.
    #[error("the signer certificate's {0} extension is missing or malformed")]
    SignerExtension(&'static str),
    /// The report's `chip_id` is not the hwID of the VCEK that signed it.
    #[error("the report's chip_id is not the hardware ID in the VCEK that signed it")]
    ChipIdMismatch,
    /// The report's `reported_tcb` is not the TCB the VCEK or VLEK was issued for.
    #[error(
        "the report's reported_tcb {component} is not the one the signing key's certificate was issued for"
    )]
    CertificateTcbMismatch {
        /// The first component that differs.
        component: TcbComponent,
    },
    /// A component of `reported_tcb` is below the reference values' minimum.
    #[error("the reported TCB {component} version {reported} is below the minimum {minimum}")]
    TcbBelowMinimum {
        /// The component.
        component: TcbComponent,
        /// Its reported version.
        reported: u8,
        /// The minimum in the reference values.
        minimum: u8,
    },
    /// The report's `chip_id` is not in the reference values' `allowed_chip_ids`.
    #[error("the report's chip_id is not in allowed_chip_ids")]
    ChipIdNotAllowed,
    /// The `sev` crate, reading the same report as a second opinion, disagrees with this crate's
    /// reading or does not verify its signature.
    #[error("the second reading of the report (sev crate) disagrees: {0}")]
    ReportCrossCheck(&'static str),
    /// Genuine evidence, bound to another deployment than the relying side's (binding v2).
    #[error(
        "this coordinator is genuine but serves deployment {found}, not {expected}: it belongs to \
         another deployment (a coordinator the host started for itself?), so nothing is sent to it"
    )]
    WrongDeployment {
        /// The deployment the relying side belongs to.
        expected: crate::atls::DeploymentId,
        /// The deployment the peer's evidence binds.
        found: crate::atls::DeploymentId,
    },
    /// The aTLS certificate names no deployment (or names it malformed).
    #[error("the peer's aTLS certificate names no deployment (binding v2 is required)")]
    NoDeployment,
    /// AMD's CRL lists the intermediate (ASK, ASVK) or the signer (VCEK, VLEK).
    #[error("AMD has revoked the {role} certificate (it is listed in the ARK's CRL)")]
    CertificateRevoked {
        /// The revoked certificate's position.
        role: CertRole,
    },
    /// No CRL signed by the product's ARK came with the evidence (or was given to the verifier):
    /// revocation cannot be checked, so the evidence is refused (fail closed).
    #[error(
        "no CRL of this product's AMD root came with the evidence ({sent} CRL(s) sent): the \
         issuer must send AMD's CRL (its KDS or --amd-crl-dir), or the verifier be given one (--crl)"
    )]
    CrlMissing {
        /// How many CRLs the evidence carried.
        sent: usize,
    },
    /// A CRL under the ARK's name does not carry the ARK's signature.
    #[error("a CRL naming the AMD root as its issuer is not signed by the pinned AMD root")]
    CrlSignature,
    /// AMD's CRL is past its `nextUpdate` (plus the grace the verifier allows).
    #[error(
        "AMD's CRL is stale (nextUpdate {next_update}); fetch a fresh one, or allow a stale one \
         for a bounded time (--accept-stale-crl-for)"
    )]
    CrlStale {
        /// The CRL's `nextUpdate`.
        next_update: String,
    },
    /// AMD's CRL is not valid yet at the time of check (its `thisUpdate` is later).
    #[error("AMD's CRL is not valid yet at the time of check (thisUpdate is later)")]
    CrlNotYetValid,
    // Intel TDX (tdx/): each check its own reason.
    /// TDX evidence, and the reference values have no `tdx` entry to check it against.
    #[error("TDX evidence, but the reference values have no tdx entry")]
    NoTdxReferenceValues,
    /// The quote is shorter than its header, body or signature data say.
    #[error("the TDX quote is truncated")]
    TdxQuoteTruncated,
    /// The quote version is not 4 or 5.
    #[error("TDX quote version {0} is not supported (4 and 5 are)")]
    TdxQuoteVersion(u16),
    /// The attestation key type is not ECDSA-256 with P-256 (2).
    #[error("TDX quote attestation key type {0} is not supported (2, ECDSA-256 with P-256, is)")]
    TdxAttestationKeyType(u16),
    /// The quote's TEE type is not TDX (0x81).
    #[error("the quote's TEE type {0:#x} is not TDX (0x81)")]
    TdxTeeType(u32),
    /// The quote's QE vendor is not Intel.
    #[error("the quote's QE vendor ID is not Intel's")]
    TdxQeVendor,
    /// A version 5 quote whose body type is not a TD report (2 or 3).
    #[error("TDX quote v5 body type {0} is not a TD report (2 or 3)")]
    TdxBodyType(u16),
    /// A part of Intel's collateral was issued after the time of check.
    #[error(
        "the TDX collateral's {0} is not valid yet at the time of check (before its issueDate)"
    )]
    TdxCollateralNotYetValid(&'static str),
    /// A part of Intel's collateral is stale at the time of check.
    #[error(
        "the TDX collateral's {0} is stale at the time of check (after its nextUpdate); fetch fresh collateral"
    )]
    TdxCollateralExpired(&'static str),
    /// A signature over a part of Intel's collateral, or its signer's chain, does not verify.
    #[error("the TDX collateral's {0} signature or signing chain does not verify")]
    TdxCollateralSignature(&'static str),
    /// A CRL of the collateral does not verify or is not current.
    #[error("a CRL of the TDX collateral does not verify or is not current: {0}")]
    TdxCrl(String),
    /// A certificate of the PCK chain (or a collateral signer) is listed in Intel's CRLs.
    #[error("a certificate of the TDX quote's chain is revoked (listed in the PCK or root CA CRL)")]
    TdxCertificateRevoked,
    /// The PCK chain does not lead to Intel's pinned SGX Root CA, or is not valid at the time of check.
    #[error(
        "the TDX quote's PCK certificate chain does not verify to the pinned Intel SGX Root CA: {0}"
    )]
    TdxCertificateChain(String),
    /// The QE report's signature does not verify with the PCK.
    #[error("the TDX quote's QE report signature does not verify with the PCK")]
    TdxQeReportSignature,
    /// The QE report does not bind the attestation key (and QE authentication data).
    #[error("the TDX quote's QE report does not bind its attestation key")]
    TdxAttestationKeyBinding,
    /// The QE report does not match Intel's QE identity.
    #[error("the TDX quote's QE does not match Intel's QE identity: {0}")]
    TdxQeIdentity(String),
    /// The quote signature does not verify with the attestation key.
    #[error("the TDX quote signature does not verify with its attestation key")]
    TdxQuoteSignature,
    /// No TCB level of Intel's TCB info matches the platform (or the FMSPC differs).
    #[error("no TCB level of Intel's TCB info matches the TDX platform: {0}")]
    TdxTcbLevel(String),
    /// Intel's TCB info says the platform's TCB is revoked.
    #[error("Intel's TCB status for this TDX platform is Revoked")]
    TdxTcbRevoked,
    /// Intel's TCB status is not one the reference values allow.
    #[error("Intel's TCB status {0} is not in allowed_tcb_statuses")]
    TdxTcbStatusNotAllowed(String),
    /// MRTD is not in `trusted_mrtd`.
    #[error("the TD's MRTD is not trusted")]
    TdxMrtdNotTrusted,
    /// An RTMR holds a value the reference values do not allow.
    #[error("the TD's RTMR{0} is not an allowed value")]
    TdxRtmrNotAllowed(u8),
    /// MRSEAM is not in `trusted_mrseam`.
    #[error("the TDX module's MRSEAM is not trusted")]
    TdxMrseamNotTrusted,
    /// A byte of TEE_TCB_SVN is below `minimum_tee_tcb_svn`.
    #[error("TEE TCB SVN byte {index} is {reported}, below the minimum {minimum}")]
    TdxTeeTcbSvnBelowMinimum {
        /// The byte's index, 0 to 15.
        index: u8,
        /// The quote's value.
        reported: u8,
        /// The reference values' minimum.
        minimum: u8,
    },
    /// The TD attributes allow debugging (bit 0) or profiling and the reference values do not.
    #[error("the TD's attributes allow debugging")]
    TdxDebug,
    /// The TD attributes have a bit set that Concord never accepts (migration, SEPT_VE_DISABLE off,
    /// service TDs, reserved bits).
    #[error("the TD's attributes are not accepted: {0}")]
    TdxTdAttributes(String),
    /// MRCONFIGID is not a policy hash of the manifest followed by 16 zero bytes.
    #[error("MRCONFIGID not accepted: it names no policy of the manifest")]
    TdxMrConfigIdNotAccepted,
    /// The Intel-format verifier refused the quote for a reason not listed above.
    #[error("the TDX quote does not verify: {0}")]
    TdxQuote(String),
}

impl RejectReason {
    /// A stable, low-cardinality label for metrics (`attestation failures by reason`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::SimulatedNotEnabled => "simulated_not_enabled",
            Self::SimulatedRootNotTrusted => "simulated_root_not_trusted",
            Self::SimulatedRootNotInReferenceValues => "simulated_root_not_in_reference_values",
            Self::CertificateChain { .. } => "certificate_chain",
            Self::CertificateSignature { .. } => "certificate_signature",
            Self::CertificateNotYetValid { .. } => "certificate_not_yet_valid",
            Self::CertificateExpired { .. } => "certificate_expired",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::UnsupportedSignatureAlgorithm(_) => "unsupported_signature_algorithm",
            Self::ReportSignature => "report_signature",
            Self::Vmpl(_) => "vmpl",
            Self::DebugAllowed => "debug_allowed",
            Self::MigrationAgentAllowed => "migration_agent_allowed",
            Self::MeasurementNotTrusted => "measurement_not_trusted",
            Self::HostDataNotAccepted => "host_data_not_accepted",
            Self::ReportDataMismatch => "report_data_mismatch",
            Self::NoEvidence => "no_evidence",
            Self::MissingNonce => "missing_nonce",
            Self::NoSnpReferenceValues => "no_snp_reference_values",
            Self::ReportLength(_) => "report_length",
            Self::SigningKey(_) => "signing_key",
            Self::UnknownProduct { .. } => "unknown_product",
            Self::WrongProduct { .. } => "wrong_product",
            Self::CertificateNotPinned { .. } => "certificate_not_pinned",
            Self::SignerExtension(_) => "signer_extension",
            Self::ChipIdMismatch => "chip_id_mismatch",
            Self::CertificateTcbMismatch { .. } => "certificate_tcb_mismatch",
            Self::TcbBelowMinimum { .. } => "tcb_below_minimum",
            Self::ChipIdNotAllowed => "chip_id_not_allowed",
            Self::ReportCrossCheck(_) => "report_cross_check",
            Self::WrongDeployment { .. } => "wrong_deployment",
            Self::NoDeployment => "no_deployment",
            Self::CertificateRevoked { .. } => "certificate_revoked",
            Self::CrlMissing { .. } => "crl_missing",
            Self::CrlSignature => "crl_signature",
            Self::CrlStale { .. } => "crl_stale",
            Self::CrlNotYetValid => "crl_not_yet_valid",
            Self::NoTdxReferenceValues => "no_tdx_reference_values",
            Self::TdxQuoteTruncated => "tdx_quote_truncated",
            Self::TdxQuoteVersion(_) => "tdx_quote_version",
            Self::TdxAttestationKeyType(_) => "tdx_attestation_key_type",
            Self::TdxTeeType(_) => "tdx_tee_type",
            Self::TdxQeVendor => "tdx_qe_vendor",
            Self::TdxBodyType(_) => "tdx_body_type",
            Self::TdxCollateralNotYetValid(_) => "tdx_collateral_not_yet_valid",
            Self::TdxCollateralExpired(_) => "tdx_collateral_expired",
            Self::TdxCollateralSignature(_) => "tdx_collateral_signature",
            Self::TdxCrl(_) => "tdx_crl",
            Self::TdxCertificateRevoked => "tdx_certificate_revoked",
            Self::TdxCertificateChain(_) => "tdx_certificate_chain",
            Self::TdxQeReportSignature => "tdx_qe_report_signature",
            Self::TdxAttestationKeyBinding => "tdx_attestation_key_binding",
            Self::TdxQeIdentity(_) => "tdx_qe_identity",
            Self::TdxQuoteSignature => "tdx_quote_signature",
            Self::TdxTcbLevel(_) => "tdx_tcb_level",
            Self::TdxTcbRevoked => "tdx_tcb_revoked",
            Self::TdxTcbStatusNotAllowed(_) => "tdx_tcb_status_not_allowed",
            Self::TdxMrtdNotTrusted => "tdx_mrtd_not_trusted",
            Self::TdxRtmrNotAllowed(_) => "tdx_rtmr_not_allowed",
            Self::TdxMrseamNotTrusted => "tdx_mrseam_not_trusted",
            Self::TdxTeeTcbSvnBelowMinimum { .. } => "tdx_tee_tcb_svn_below_minimum",
            Self::TdxDebug => "tdx_debug",
            Self::TdxTdAttributes(_) => "tdx_td_attributes",
            Self::TdxMrConfigIdNotAccepted => "tdx_mrconfigid_not_accepted",
            Self::TdxQuote(_) => "tdx_quote",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_check() {
        let e = AttestationError::Rejected(RejectReason::ReportDataMismatch);
        assert_eq!(
            e.to_string(),
            "attestation rejected: report_data does not match the expected binding \
             (replayed or foreign evidence?)"
        );
        let e = AttestationError::Rejected(RejectReason::CertificateExpired {
            role: CertRole::Signer,
        });
        assert_eq!(
            e.to_string(),
            "attestation rejected: the signer certificate has expired at the time of check"
        );
        assert_eq!(
            e.reject_reason().map(RejectReason::metric_label),
            Some("certificate_expired")
        );
    }
}
