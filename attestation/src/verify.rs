//! Evidence verification: from received evidence to a [`VerifiedReport`], or a reason to deny.
//!
//! Owns the launch-time trust configuration ([`PlatformTrust`]), the [`Verifier`] that applies it
//! and the reference values to evidence, and [`VerifiedReport`], which only this module can create.
//! Everything fails closed: any parse error, unknown version, missing piece or mismatch denies. It
//! must never accept simulated evidence unless both the launch configuration and the reference
//! values name the simulated root, and it must never log secret bytes.

use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::chain;
use crate::claims::{self, GuestRules};
use crate::error::{AttestationError, CertRole, RejectReason};
use crate::evidence::{Evidence, Platform};
use crate::reference::{Product, ReferenceValues};
use crate::report::{Report, Tcb};
use crate::snp::{self, SnpRevocation};

/// The trust anchors fixed at launch, outside any manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlatformTrust {
    /// SHA-256 of the simulated root certificate's DER. `Some` makes this process accept
    /// simulated evidence (when the reference values name the same root): INSECURE, for machines
    /// without SEV-SNP only.
    pub insecure_simulated_root: Option<[u8; 32]>,
}

/// Checks evidence against reference values under a launch configuration.
#[derive(Debug, Clone)]
pub struct Verifier {
    trust: PlatformTrust,
    snp_revocation: SnpRevocation,
}

/// Claims of a report that passed every check. Only this crate creates one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReport {
    platform: Platform,
    product: Option<Product>,
    version: u32,
    vmpl: u32,
    policy: u64,
    measurement: [u8; 48],
    host_data: [u8; 32],
    report_data: [u8; 64],
    chip_id: [u8; 64],
    reported_tcb: Tcb,
    tdx: Option<crate::tdx::TdxClaims>,
    /// When every certificate of the chain that vouched for the report is valid (and, for SNP with
    /// revocation checked, the CRL is fresh).
    window: chain::Window,
}

impl VerifiedReport {
    fn from_report(
        platform: Platform,
        product: Option<Product>,
        report: &Report,
        reported_tcb: Tcb,
        window: chain::Window,
    ) -> Self {
        Self {
            platform,
            product,
            version: report.version(),
            vmpl: report.vmpl(),
            policy: report.policy(),
            measurement: *report.measurement(),
            host_data: *report.host_data(),
            report_data: *report.report_data(),
            chip_id: *report.chip_id(),
            reported_tcb,
            tdx: None,
            window,
        }
    }

    /// A TDX quote that passed every check: MRTD as the measurement, the policy hash of MRCONFIGID
    /// as the host data (its role on SNP), the quote version; no chip ID, TCB or VMPL.
    fn tdx(quote: &crate::tdx::VerifiedQuote, window: chain::Window) -> Self {
        Self {
            platform: Platform::Tdx,
            product: None,
            version: u32::from(quote.version),
            vmpl: 0,
            policy: quote.report.td_attributes,
            measurement: quote.report.mrtd,
            host_data: quote.policy_hash(),
            report_data: quote.report.report_data,
            chip_id: [0; 64],
            reported_tcb: Tcb::new(0, 0, 0, 0),
            tdx: Some(quote.claims()),
            window,
        }
    }

    /// The same verdict, reusable only until `until` (Unix seconds) at the latest.
    pub(crate) fn valid_until(mut self, until: i64) -> Self {
        self.window = self.window.ending_by(until);
        self
    }

    /// An SNP report that passed every check of an entry for `product`.
    pub(crate) fn snp(
        report: &Report,
        product: Product,
        reported_tcb: Tcb,
        window: chain::Window,
    ) -> Self {
        Self::from_report(Platform::Snp, Some(product), report, reported_tcb, window)
    }

    /// A simulated report (Milan/Genoa TCB layout) that passed every check.
    fn simulated(report: &Report, window: chain::Window) -> Self {
        let tcb = Tcb::from_milan_genoa(report.reported_tcb());
        Self::from_report(Platform::Simulated, None, report, tcb, window)
    }

    /// Whether the certificates that vouched for the report are all valid at `now`: with the same
    /// evidence, binding and policy, a fresh verification at `now` would reach the same verdict.
    pub(crate) fn chain_valid_at(&self, now: SystemTime) -> bool {
        self.window.contains(now)
    }

    /// The platform that produced the evidence.
    pub fn platform(&self) -> Platform {
        self.platform
    }
    /// The AMD product whose pinned root the evidence chains to; `None` on the simulated platform.
    pub fn product(&self) -> Option<Product> {
        self.product
    }
    /// The report format version.
    pub fn version(&self) -> u32 {
        self.version
    }
    /// The VMPL (always 0 once verified).
    pub fn vmpl(&self) -> u32 {
        self.vmpl
    }
    /// The guest policy.
    pub fn policy(&self) -> u64 {
        self.policy
    }
    /// The launch measurement (one of the trusted ones).
    pub fn measurement(&self) -> &[u8; 48] {
        &self.measurement
    }
    /// HOST_DATA: the policy hash, accepted by the caller.
    pub fn host_data(&self) -> &[u8; 32] {
        &self.host_data
    }
    /// REPORT_DATA: equal to the binding the caller expected.
    pub fn report_data(&self) -> &[u8; 64] {
        &self.report_data
    }
    /// The chip identifier.
    pub fn chip_id(&self) -> &[u8; 64] {
        &self.chip_id
    }
    /// The TDX claims (MRTD, RTMRs, MRSEAM, TCB status, ...), on the TDX platform only.
    pub fn tdx_claims(&self) -> Option<&crate::tdx::TdxClaims> {
        self.tdx.as_ref()
    }
    /// The reported TCB, decoded with the product's layout (`fmc` is `Some` on Turin only); at
    /// least the reference values' minimum and, for SNP, the TCB the signing key was issued for.
    pub fn reported_tcb(&self) -> Tcb {
        self.reported_tcb
    }
}

impl Verifier {
    /// A verifier for this launch configuration. Warns loudly when simulated evidence is trusted.
    pub fn new(trust: PlatformTrust) -> Self {
        if let Some(root) = &trust.insecure_simulated_root {
            tracing::warn!(
                simulated_root = %hex::encode(root),
                "INSECURE: simulated attestation is enabled; evidence from the simulated root is accepted"
            );
        }
        Self {
            trust,
            snp_revocation: SnpRevocation::default(),
        }
    }

    /// This verifier with `policy` for AMD's revocation lists. The default requires a fresh CRL
    /// signed by the ARK with every piece of SNP evidence (fail closed; see [`SnpRevocation`]).
    pub fn with_snp_revocation(mut self, policy: SnpRevocation) -> Self {
        if policy == SnpRevocation::NotChecked {
            tracing::warn!(
                "revocation of AMD certificates is not checked: a VCEK, VLEK, ASK or ASVK that AMD has revoked is accepted"
            );
        }
        self.snp_revocation = policy;
        self
    }

    /// What this verifier requires of AMD's revocation lists.
    pub fn snp_revocation(&self) -> SnpRevocation {
        self.snp_revocation
    }

    /// The launch configuration.
    pub fn trust(&self) -> &PlatformTrust {
        &self.trust
    }

    /// Verifies `evidence` against `reference`, requiring `report_data == expected_report_data`
    /// and `accept_host_data(host_data)`, with certificate validity checked at `now`.
    ///
    /// SNP evidence: `certificates[0]` is the VCEK or VLEK that signed the report (as the guest
    /// sent it, or as the caller fetched it from AMD's KDS for the report's chip and TCB); an ASK
    /// or ASVK and the ARK may follow and must then be AMD's pinned ones. It is accepted if one
    /// `reference.snp` entry accepts it (see `snp` for the reason returned when none does).
    pub fn verify(
        &self,
        evidence: &Evidence,
        reference: &ReferenceValues,
        expected_report_data: &[u8; 64],
        accept_host_data: &dyn Fn(&[u8; 32]) -> bool,
        now: SystemTime,
    ) -> Result<VerifiedReport, AttestationError> {
        let result = match evidence.platform {
            Platform::Simulated => self.verify_simulated(
                evidence,
                reference,
                expected_report_data,
                accept_host_data,
                now,
            ),
            Platform::Tdx => self.verify_tdx(
                evidence,
                reference,
                expected_report_data,
                accept_host_data,
                now,
            ),
            Platform::Snp => snp::verify(
                evidence,
                &reference.snp,
                &snp::Expectations {
                    report_data: expected_report_data,
                    accept_host_data,
                    now,
                    revocation: self.snp_revocation,
                },
            ),
        };
        if let Err(error) = &result {
            tracing::debug!(platform = %evidence.platform, %error, "attestation evidence rejected");
        }
        result
    }

    /// TDX: one certificate (Intel's collateral) for a real quote, checked against Intel's pinned
    /// root; four (collateral, simulated TDX root, its endorsement, simulated root) for the INSECURE
    /// simulated hierarchy, trusted only as simulated SNP evidence is.
    fn verify_tdx(
        &self,
        evidence: &Evidence,
        reference: &ReferenceValues,
        expected_report_data: &[u8; 64],
        accept_host_data: &dyn Fn(&[u8; 32]) -> bool,
        now: SystemTime,
    ) -> Result<VerifiedReport, AttestationError> {
        let expect = crate::tdx::Expectations {
            report_data: expected_report_data,
            accept_policy_hash: accept_host_data,
            now,
        };
        let quote = match evidence.certificates.as_slice() {
            [collateral] => {
                let collateral = crate::tdx::Collateral::from_json(collateral)?;
                crate::tdx::verify(&evidence.report, &collateral, &reference.tdx, &expect)?
            }
            [collateral, tdx_root_der, endorsement_der, root_der] => {
                self.trusted_simulated_root(reference, root_der)?;
                let root = chain::parse_cert(root_der, CertRole::Root)?;
                let root_key = chain::p384_key(&root, CertRole::Root)?;
                chain::check_issued_by(&root, CertRole::Root, &root, &root_key)?;
                chain::check_validity(&root, CertRole::Root, now)?;
                let endorsement = chain::parse_cert(endorsement_der, CertRole::Intermediate)?;
                chain::check_issued_by(&endorsement, CertRole::Intermediate, &root, &root_key)?;
                chain::check_validity(&endorsement, CertRole::Intermediate, now)?;
                // The endorsement vouches for the TDX root's name and key, which must be the anchor's.
                let tdx_root = chain::parse_cert(tdx_root_der, CertRole::Intermediate)?;
                if tdx_root.subject().as_raw() != endorsement.subject().as_raw()
                    || tdx_root.public_key().raw != endorsement.public_key().raw
                {
                    return Err(RejectReason::CertificateChain {
                        role: CertRole::Intermediate,
                    }
                    .into());
                }
                let collateral = crate::tdx::Collateral::from_json(collateral)?;
                crate::tdx::verify_with_root(
                    &evidence.report,
                    &collateral,
                    tdx_root_der,
                    &reference.tdx,
                    &expect,
                )?
            }
            other => {
                return Err(AttestationError::malformed(format!(
                    "TDX evidence needs 1 certificate (the collateral) or 4 (simulated), got {}",
                    other.len()
                )));
            }
        };
        Ok(VerifiedReport::tdx(&quote, tdx_window(evidence, now)))
    }

    /// The simulated root `root_der`, trusted by the launch configuration and named by the
    /// reference values.
    fn trusted_simulated_root(
        &self,
        reference: &ReferenceValues,
        root_der: &[u8],
    ) -> Result<(), AttestationError> {
        let Some(trusted_root) = self.trust.insecure_simulated_root else {
            return Err(RejectReason::SimulatedNotEnabled.into());
        };
        let root_hash: [u8; 32] = Sha256::digest(root_der).into();
        if root_hash != trusted_root {
            return Err(RejectReason::SimulatedRootNotTrusted.into());
        }
        if !reference
            .simulated
            .iter()
            .any(|e| e.root.as_bytes() == &root_hash)
        {
            return Err(RejectReason::SimulatedRootNotInReferenceValues.into());
        }
        Ok(())
    }

    fn verify_simulated(
        &self,
        evidence: &Evidence,
        reference: &ReferenceValues,
        expected_report_data: &[u8; 64],
        accept_host_data: &dyn Fn(&[u8; 32]) -> bool,
        now: SystemTime,
    ) -> Result<VerifiedReport, AttestationError> {
        let [signer_der, root_der] = evidence.certificates.as_slice() else {
            return Err(AttestationError::malformed(format!(
                "simulated evidence needs exactly 2 certificates (signer, root), got {}",
                evidence.certificates.len()
            )));
        };

        // The anchor: named by the launch configuration and by the reference values.
        let Some(trusted_root) = self.trust.insecure_simulated_root else {
            return Err(RejectReason::SimulatedNotEnabled.into());
        };
        let root_hash: [u8; 32] = Sha256::digest(root_der).into();
        if root_hash != trusted_root {
            return Err(RejectReason::SimulatedRootNotTrusted.into());
        }
        let entries: Vec<_> = reference
            .simulated
            .iter()
            .filter(|e| e.root.as_bytes() == &root_hash)
            .collect();
        if entries.is_empty() {
            return Err(RejectReason::SimulatedRootNotInReferenceValues.into());
        }

        // The chain: root self-signed, signer signed by the root, both valid now.
        let root = chain::parse_cert(root_der, CertRole::Root)?;
        let root_key = chain::p384_key(&root, CertRole::Root)?;
        chain::check_issued_by(&root, CertRole::Root, &root, &root_key)?;
        let signer = chain::parse_cert(signer_der, CertRole::Signer)?;
        let signer_key = chain::p384_key(&signer, CertRole::Signer)?;
        chain::check_issued_by(&signer, CertRole::Signer, &root, &root_key)?;
        chain::check_validity(&root, CertRole::Root, now)?;
        chain::check_validity(&signer, CertRole::Signer, now)?;

        // The report, judged by the same checks as SNP reports.
        let report = Report::parse(&evidence.report)?;
        claims::check_format(&report)?;
        claims::check_report_signature(&report, &signer_key)?;
        // The simulated reference values have no switches: debug and migration agent stay off.
        claims::check_guest(
            &report,
            GuestRules {
                allow_debug: false,
                allow_migration_agent: false,
            },
        )?;
        claims::check_measurement(
            &report,
            entries.iter().flat_map(|e| &e.trusted_measurements),
        )?;
        claims::check_host_data(&report, accept_host_data)?;
        claims::check_report_data(&report, expected_report_data)?;
        Ok(VerifiedReport::simulated(
            &report,
            chain::Window::of(&root).and(chain::Window::of(&signer)),
        ))
    }
}

/// When a TDX verdict reached at `now` stays what a fresh check would say: from `now` (every
/// `issueDate`, `thisUpdate` and `notBefore` had passed then) until the earliest of the
/// collateral's `nextUpdate`s (TCB info, QE identity, both CRLs) and the `notAfter` of every
/// certificate that vouched (the PCK chain in the quote, the collateral's issuer chains, and the
/// simulated hierarchy's certificates). Anything unreadable gives a window no time is in: the
/// verdict is then never reused.
fn tdx_window(evidence: &Evidence, now: SystemTime) -> chain::Window {
    let Some((collateral_json, others)) = evidence.certificates.split_first() else {
        return chain::Window::empty();
    };
    let unix = |t: SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_secs()).ok())
    };
    let (Some(from), Some(mut until)) = (
        unix(now),
        // A fresh check needs `now < nextUpdate`: the last second it passes is one before.
        crate::intel_pcs::next_update(collateral_json)
            .and_then(unix)
            .map(|next| next - 1),
    ) else {
        return chain::Window::empty();
    };
    let Ok(collateral) = crate::tdx::Collateral::from_json(collateral_json) else {
        return chain::Window::empty();
    };
    let Ok(mut ders) = dcap_qvl::quote::Quote::parse(&evidence.report)
        .and_then(|q| dcap_qvl::intel::extract_cert_chain(&q))
    else {
        return chain::Window::empty();
    };
    for chain_pem in [
        &collateral.pck_crl_issuer_chain,
        &collateral.tcb_info_issuer_chain,
        &collateral.qe_identity_issuer_chain,
    ] {
        for pem in x509_parser::pem::Pem::iter_from_buffer(chain_pem.as_bytes()) {
            match pem {
                Ok(pem) => ders.push(pem.contents),
                Err(_) => return chain::Window::empty(),
            }
        }
    }
    ders.extend(others.iter().cloned());
    for der in &ders {
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => until = until.min(cert.validity().not_after.timestamp()),
            Err(_) => return chain::Window::empty(),
        }
    }
    chain::Window::between(from, until)
}

#[cfg(test)]
mod tdx_window_tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use crate::evidence::{Evidence, Platform};
    use crate::reference::{Measurement, ReferenceValues, TdxReference, TdxTcbStatus};
    use crate::verify::Verifier;

    const QUOTE: &[u8] = include_bytes!("tdx/vectors/tdx_quote");
    const COLLATERAL: &[u8] = include_bytes!("tdx/vectors/tdx_quote_collateral.json");

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    /// A TDX verdict is reused (NewMeshCert on the handshake's connection) only while a fresh check
    /// would still accept: not at or past the earliest nextUpdate of the collateral (one of the
    /// vector's CRLs, 2025-07-19T10:00:35Z), and not before the time it was reached.
    #[test]
    fn a_tdx_verdict_is_reusable_only_inside_the_collateral_window() {
        let quote = crate::tdx::Quote::parse(QUOTE).unwrap();
        let reference = ReferenceValues {
            tdx: vec![TdxReference {
                trusted_mrtd: vec![Measurement(quote.report.mrtd)],
                rtmr: None,
                trusted_mrseam: None,
                minimum_tee_tcb_svn: None,
                allowed_tcb_statuses: vec![TdxTcbStatus::UpToDate, TdxTcbStatus::OutOfDate],
                allow_debug: false,
            }],
            ..ReferenceValues::default()
        };
        let evidence = Evidence {
            platform: Platform::Tdx,
            report: QUOTE.to_vec(),
            certificates: vec![COLLATERAL.to_vec()],
            crls: vec![],
        };
        let checked = at(1_751_328_000); // 2025-07-01T00:00:00Z
        let verdict = Verifier::new(crate::PlatformTrust::default())
            .verify(
                &evidence,
                &reference,
                &quote.report.report_data,
                &|_| true,
                checked,
            )
            .unwrap();
        assert!(verdict.chain_valid_at(checked));
        assert!(verdict.chain_valid_at(at(1_751_328_000 + 86_400)));
        // 2025-07-19T10:00:35Z is a CRL's nextUpdate: a fresh check from then on says stale.
        assert!(verdict.chain_valid_at(at(1_752_919_234)));
        assert!(!verdict.chain_valid_at(at(1_752_919_235)));
        assert!(!verdict.chain_valid_at(at(1_751_328_000 - 1)));
        // And the fresh check agrees past the window's end.
        assert!(
            Verifier::new(crate::PlatformTrust::default())
                .verify(
                    &evidence,
                    &reference,
                    &quote.report.report_data,
                    &|_| true,
                    at(1_752_919_235),
                )
                .is_err()
        );
    }
}
