//! The order of the sources of a report's VCEK, and the check that picks a certificate.
//!
//! Owns [`VcekResolver`]: the host's certificate table first; then, per candidate product, the
//! cache and AMD's KDS (a fetched VCEK that fits is cached); then the operator's directory. A
//! certificate fits when it chains to the product's pinned ARK at the time given, and its TCB (and
//! for a VCEK its hwID) are the report's: a stale or foreign certificate is passed over, never
//! packed into evidence. It must never accept anything on a source's word, and it decides nothing
//! for a verifier, which checks the evidence again in full.

use std::time::SystemTime;

use super::cache::VcekCache;
use super::error::VcekError;
use super::kds::KdsClient;
use super::offline::OfflineDir;
use super::query::{VcekQuery, candidate_products};
use super::table::HostCertificates;
use crate::reference::Product;
use crate::report::Report;
use crate::snp::{self, SignerKind};

/// Where the certificate of a report's signer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcekSource {
    /// The host's certificate table, returned with the extended report.
    HostTable,
    /// The on-disk cache of earlier KDS answers.
    Cache,
    /// AMD's Key Distribution Service.
    Kds,
    /// The operator's VCEK directory.
    OfflineDir,
}

impl VcekSource {
    /// A name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HostTable => "host certificate table",
            Self::Cache => "cache",
            Self::Kds => "AMD KDS",
            Self::OfflineDir => "VCEK directory",
        }
    }
}

/// The certificates to send with a report: the signer's, then AMD's intermediate and ARK when the
/// host's table had them and they are the pinned ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSigner {
    /// The product whose pinned ARK the signer chains to.
    pub product: Product,
    /// Where the signer's certificate came from.
    pub source: VcekSource,
    /// DER, signer first.
    pub certificates: Vec<Vec<u8>>,
}

/// Finds the certificate of the key that signed a report.
#[derive(Debug, Clone, Default)]
pub struct VcekResolver {
    kds: Option<KdsClient>,
    cache: Option<VcekCache>,
    offline: Option<OfflineDir>,
}

/// What each source said, for the error when none had a fitting certificate.
type Tried = Vec<String>;

impl VcekResolver {
    /// A resolver with these sources; each may be absent (`kds: None` never asks AMD).
    pub fn new(
        kds: Option<KdsClient>,
        cache: Option<VcekCache>,
        offline: Option<OfflineDir>,
    ) -> Self {
        Self {
            kds,
            cache,
            offline,
        }
    }

    /// The certificates for `report`'s evidence, from the first source that has a fitting one;
    /// `table` is what the host returned with the report, `now` the time certificates must be
    /// valid at.
    pub fn resolve(
        &self,
        report: &Report,
        table: Option<&HostCertificates>,
        now: SystemTime,
    ) -> Result<ResolvedSigner, VcekError> {
        let kind = SignerKind::of_report(report).map_err(|e| VcekError::Report(e.to_string()))?;
        let products = candidate_products(report).map_err(|e| VcekError::Report(e.to_string()))?;
        let mut tried = Tried::new();
        let found = match search_table(report, kind, &products, table, now, &mut tried) {
            Some(found) => Some(found),
            None if kind == SignerKind::Vlek => {
                tried.push(
                    "cache, AMD KDS, VCEK directory: not asked (they hold VCEKs only)".into(),
                );
                None
            }
            None => self.vcek_elsewhere(report, &products, now, &mut tried),
        };
        match found {
            Some(found) => {
                tracing::info!(
                    source = found.source.as_str(),
                    product = ?found.product,
                    key = %kind,
                    "found the certificate of this guest's report signing key"
                );
                Ok(found)
            }
            None => Err(VcekError::NotFound {
                kind,
                wanted: wanted(report, &products),
                tried,
            }),
        }
    }

    /// The certificates for `report`'s evidence if the host's `table` has a fitting one: the
    /// first source of [`resolve`](Self::resolve), and the only one that needs no I/O.
    pub fn from_table(
        &self,
        report: &Report,
        table: &HostCertificates,
        now: SystemTime,
    ) -> Option<ResolvedSigner> {
        let kind = SignerKind::of_report(report).ok()?;
        let products = candidate_products(report).ok()?;
        search_table(report, kind, &products, Some(table), now, &mut Tried::new())
    }

    /// The cache and the KDS for each candidate product, then the operator's directory.
    fn vcek_elsewhere(
        &self,
        report: &Report,
        products: &[Product],
        now: SystemTime,
        tried: &mut Tried,
    ) -> Option<ResolvedSigner> {
        for &product in products {
            let query = VcekQuery::for_report(report, product);
            if let Some(found) = self.ask_cache(report, &query, now, tried) {
                return Some(found);
            }
            if let Some(found) = self.ask_kds(report, &query, now, tried) {
                return Some(found);
            }
        }
        self.search_offline_dir(report, products, now, tried)
    }

    fn ask_cache(
        &self,
        report: &Report,
        query: &VcekQuery,
        now: SystemTime,
        tried: &mut Tried,
    ) -> Option<ResolvedSigner> {
        let cache = self.cache.as_ref()?;
        match cache.get(query) {
            Ok(None) => None,
            Ok(Some(der)) => match fits(report, query.product(), SignerKind::Vcek, &der, now) {
                Ok(()) => Some(vcek_only(query.product(), VcekSource::Cache, der)),
                Err(e) => {
                    tried.push(format!(
                        "cache: {} does not fit ({e})",
                        query.cache_file_name()
                    ));
                    None
                }
            },
            Err(e) => {
                tried.push(format!("cache: {e}"));
                None
            }
        }
    }

    fn ask_kds(
        &self,
        report: &Report,
        query: &VcekQuery,
        now: SystemTime,
        tried: &mut Tried,
    ) -> Option<ResolvedSigner> {
        let Some(kds) = &self.kds else {
            tried.push("AMD KDS: off".into());
            return None;
        };
        let der = match kds.fetch_blocking(query) {
            Ok(der) => der,
            Err(e) => {
                tried.push(e.to_string());
                return None;
            }
        };
        if let Err(e) = fits(report, query.product(), SignerKind::Vcek, &der, now) {
            let url = kds.url(query);
            tried.push(
                VcekError::Unusable {
                    url,
                    what: e.to_string(),
                }
                .to_string(),
            );
            return None;
        }
        if let Some(cache) = &self.cache
            && let Err(why) = cache.put(query, &der)
        {
            tracing::warn!(%why, "cannot cache the VCEK fetched from AMD's KDS; it will be fetched again after a restart");
        }
        Some(vcek_only(query.product(), VcekSource::Kds, der))
    }

    fn search_offline_dir(
        &self,
        report: &Report,
        products: &[Product],
        now: SystemTime,
        tried: &mut Tried,
    ) -> Option<ResolvedSigner> {
        let Some(dir) = &self.offline else {
            tried.push("VCEK directory: none given".into());
            return None;
        };
        let certificates = match dir.certificates() {
            Ok(certificates) => certificates,
            Err(e) => {
                tried.push(e.to_string());
                return None;
            }
        };
        for cert in &certificates {
            for &product in products {
                if fits(report, product, SignerKind::Vcek, &cert.der, now).is_ok() {
                    tracing::debug!(file = %cert.file.display(), "the VCEK directory has this report's VCEK");
                    return Some(vcek_only(product, VcekSource::OfflineDir, cert.der.clone()));
                }
            }
        }
        tried.push(format!(
            "VCEK directory {}: none of its {} certificate(s) fits",
            dir.dir().display(),
            certificates.len()
        ));
        None
    }
}

/// The host's table, if it has a fitting signer certificate for one of `products`.
fn search_table(
    report: &Report,
    kind: SignerKind,
    products: &[Product],
    table: Option<&HostCertificates>,
    now: SystemTime,
    tried: &mut Tried,
) -> Option<ResolvedSigner> {
    let Some(table) = table else {
        tried.push("host certificate table: none returned".into());
        return None;
    };
    let Some(signer) = table.signer(kind) else {
        tried.push(format!("host certificate table: no {kind} entry"));
        return None;
    };
    let mut reasons = Vec::new();
    for &product in products {
        match fits(report, product, kind, signer, now) {
            Ok(()) => {
                return Some(ResolvedSigner {
                    product,
                    source: VcekSource::HostTable,
                    certificates: table_chain(table, product, kind, signer),
                });
            }
            Err(e) => reasons.push(format!("{product:?}: {e}")),
        }
    }
    tried.push(format!(
        "host certificate table: its {kind} does not fit ({})",
        reasons.join("; ")
    ));
    None
}

/// The signer, then the table's ASK and ARK as far as they are AMD's pinned ones in that order: a
/// verifier rejects any other certificate there, and needs none, having its own pinned copies.
fn table_chain(
    table: &HostCertificates,
    product: Product,
    kind: SignerKind,
    signer: &[u8],
) -> Vec<Vec<u8>> {
    let mut chain = vec![signer.to_vec()];
    let sent = [table.ask(), table.ark()];
    for (cert, pinned) in sent.into_iter().zip(snp::pinned_chain(product, kind)) {
        match cert {
            Some(cert) if cert == pinned => chain.push(cert.to_vec()),
            Some(_) => {
                tracing::warn!(
                    "the host's certificate table has an AMD certificate that is not the pinned one; leaving it out of the evidence"
                );
                break;
            }
            None => break,
        }
    }
    chain
}

fn fits(
    report: &Report,
    product: Product,
    kind: SignerKind,
    der: &[u8],
    now: SystemTime,
) -> Result<(), crate::AttestationError> {
    snp::check_signer_certificate(report, product, kind, der, now)
}

fn vcek_only(product: Product, source: VcekSource, der: Vec<u8>) -> ResolvedSigner {
    ResolvedSigner {
        product,
        source,
        certificates: vec![der],
    }
}

fn wanted(report: &Report, products: &[Product]) -> String {
    products
        .iter()
        .map(|p| VcekQuery::for_report(report, *p).to_string())
        .collect::<Vec<_>>()
        .join(" or ")
}
