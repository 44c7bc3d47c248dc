//! AMD SEV-SNP verification: from a report and the certificate of the key that signed it to a
//! [`VerifiedReport`], against the `snp` entries of the reference values.
//!
//! Owns the order of the checks and the choice among several entries; each check lives in the
//! module named after it: `roots` (the pinned AMD certificates), `amd_chain` (ARK → ASK/ASVK →
//! VCEK/VLEK), `signer` (VCEK or VLEK), `product` (CPUID), `extensions` (hwID and TCB in the
//! VCEK), `tcb` (minimums), `cross_check` (a second reading of the fields by the `sev` crate), and
//! `crate::claims` for what SNP shares with the simulated platform. It must never accept evidence
//! that fails any check of the entry that accepts it, never trust a certificate that does not
//! chain to a pinned ARK, and never fetch anything: a caller that obtained a VCEK elsewhere (the
//! AMD KDS, a cache) passes it as the first certificate of the evidence.

pub(crate) mod amd_chain;
pub(crate) mod crl;
pub(crate) mod cross_check;
pub(crate) mod extensions;
mod product;
pub(crate) mod roots;
mod signer;
pub(crate) mod tcb;

use std::time::SystemTime;

pub use crl::{MAX_CRL_LEN, MAX_CRLS, SnpRevocation};
pub use product::reported_product;
pub use signer::SignerKind;

use crate::claims::{self, GuestRules};
use crate::error::{AttestationError, RejectReason};
use crate::evidence::Evidence;
use crate::reference::{Product, SnpReference};
use crate::report::{REPORT_LEN, Report};
use crate::snp::amd_chain::ChainedSigner;
use crate::verify::VerifiedReport;

pub(crate) use extensions::hw_id_len;

/// What the relying side requires of the evidence besides the reference values.
pub(crate) struct Expectations<'a> {
    /// `report_data` must equal this binding.
    pub(crate) report_data: &'a [u8; 64],
    /// `host_data` must satisfy this predicate.
    pub(crate) accept_host_data: &'a dyn Fn(&[u8; 32]) -> bool,
    /// Certificates must be valid at this time.
    pub(crate) now: SystemTime,
    /// What AMD's CRLs must show (`crl`).
    pub(crate) revocation: SnpRevocation,
}

/// Accepts `evidence` if one entry accepts it. When all reject, the reason is that of the first
/// entry for the report's own product, or else of the first entry.
pub(crate) fn verify(
    evidence: &Evidence,
    entries: &[SnpReference],
    expect: &Expectations<'_>,
) -> Result<VerifiedReport, AttestationError> {
    if entries.is_empty() {
        return Err(RejectReason::NoSnpReferenceValues.into());
    }
    if evidence.report.len() != REPORT_LEN {
        return Err(RejectReason::ReportLength(evidence.report.len()).into());
    }
    let report = Report::parse(&evidence.report)?;
    claims::check_format(&report)?;
    let kind = SignerKind::of_report(&report)?;
    let Some((signer_der, sent)) = evidence.certificates.split_first() else {
        return Err(AttestationError::malformed(
            "SNP evidence carries no certificate; the first must be the VCEK or VLEK that signed the report",
        ));
    };

    let mut rejections = Vec::with_capacity(entries.len());
    for entry in entries {
        match check_entry(
            &report,
            kind,
            (signer_der, sent),
            &evidence.crls,
            entry,
            expect,
        ) {
            Ok(verified) => return Ok(verified),
            Err(error) => rejections.push((entry.product, error)),
        }
    }
    let own_product = own_product(&report, kind, signer_der);
    Err(pick_rejection(own_product, rejections))
}

/// Every check of one entry, in an order where each check can trust what the earlier ones
/// established: the product, then the key (chain, signature), then what the key vouches for.
fn check_entry(
    report: &Report,
    kind: SignerKind,
    (signer_der, sent): (&[u8], &[Vec<u8>]),
    crls: &[Vec<u8>],
    entry: &SnpReference,
    expect: &Expectations<'_>,
) -> Result<VerifiedReport, AttestationError> {
    product::check_product(report, entry.product)?;
    let signer = amd_chain::verify_signer(entry.product, kind, signer_der, sent, expect.now)?;
    let crl_until = amd_chain::check_revocation(entry.product, kind, &signer, crls, expect)?;
    let verified = check_signed_report(report, kind, &signer, entry, expect)?;
    // A verdict reused later (NewMeshCert on the handshake's connection) must not outlive the CRL
    // that made it: past its nextUpdate (plus the grace), a fresh check would refuse.
    Ok(match crl_until {
        Some(until) => verified.valid_until(until),
        None => verified,
    })
}

/// The checks once the signer's certificate chains to the entry's ARK: the report's signature,
/// then what the key vouches for, then the reference values and the caller's expectations.
pub(crate) fn check_signed_report(
    report: &Report,
    kind: SignerKind,
    signer: &ChainedSigner<'_>,
    entry: &SnpReference,
    expect: &Expectations<'_>,
) -> Result<VerifiedReport, AttestationError> {
    let product = entry.product;
    claims::check_report_signature(report, &signer.key)?;
    cross_check::check_with_sev(report, product)?;

    let reported_tcb = tcb::reported(report, product);
    if kind == SignerKind::Vcek {
        // A VLEK belongs to a cloud provider, not a chip: it has no hwID to compare.
        extensions::check_hw_id(&signer.cert, report, product)?;
    }
    extensions::check_tcb(&signer.cert, reported_tcb, product)?;

    claims::check_guest(
        report,
        GuestRules {
            allow_debug: entry.allow_debug,
            allow_migration_agent: entry.allow_migration_agent,
        },
    )?;
    tcb::check_minimum(reported_tcb, &entry.minimum_tcb)?;
    claims::check_measurement(report, &entry.trusted_measurements)?;
    claims::check_host_data(report, expect.accept_host_data)?;
    claims::check_report_data(report, expect.report_data)?;
    claims::check_chip_id_allowed(report, entry.allowed_chip_ids.as_deref())?;
    Ok(VerifiedReport::snp(
        report,
        product,
        reported_tcb,
        signer.window,
    ))
}

/// Whether `signer_der` can be the certificate of the key that signed `report` on `product`: it
/// chains to the pinned ARK at `now`, and its TCB (and, for a VCEK, its hwID) are the report's.
/// For the issuing side, to pick among candidate certificates (`crate::vcek`); a verifier relies
/// on [`verify`] alone, which repeats these checks and all others.
pub(crate) fn check_signer_certificate(
    report: &Report,
    product: Product,
    kind: SignerKind,
    signer_der: &[u8],
    now: SystemTime,
) -> Result<(), AttestationError> {
    let signer = amd_chain::verify_signer(product, kind, signer_der, &[], now)?;
    if kind == SignerKind::Vcek {
        extensions::check_hw_id(&signer.cert, report, product)?;
    }
    extensions::check_tcb(&signer.cert, tcb::reported(report, product), product)
}

/// The certificates that may follow the signer in evidence for `product` and `kind`: AMD's pinned
/// intermediate (ASK or ASVK), then the pinned ARK. Anything else there rejects the evidence.
pub(crate) fn pinned_chain(product: Product, kind: SignerKind) -> [&'static [u8]; 2] {
    let pinned = roots::pinned(product);
    [pinned.intermediate(kind), pinned.ark]
}

/// The product the evidence itself names, to pick the most telling rejection: the CPUID fields
/// (version 3 on), else the product whose pinned intermediate is named as the signer's issuer.
/// Never used to accept anything.
fn own_product(report: &Report, kind: SignerKind, signer_der: &[u8]) -> Option<Product> {
    match reported_product(report) {
        Ok(Some(product)) => Some(product),
        Ok(None) => roots::product_issuing(kind, signer_der),
        Err(_) => None,
    }
}

/// The rejection of the first entry for `own_product`, else the first rejection.
fn pick_rejection(
    own_product: Option<Product>,
    rejections: Vec<(Product, AttestationError)>,
) -> AttestationError {
    let position = rejections
        .iter()
        .position(|(product, _)| Some(*product) == own_product)
        .unwrap_or(0);
    match rejections.into_iter().nth(position) {
        Some((_, error)) => error,
        // Unreachable: `verify` returns early when there are no entries.
        None => RejectReason::NoSnpReferenceValues.into(),
    }
}

#[cfg(test)]
mod tests;
