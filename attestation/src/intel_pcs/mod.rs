//! Intel TDX collateral from Intel's Provisioning Certification Service (PCS) or a caching service
//! (PCCS), for the issuing side to send with a quote so relying parties need no network.
//!
//! Owns getting the bytes, in the layout of `src/tdx/vectors/tdx_quote_collateral.json` (the
//! collateral document the TDX verifier reads): per FMSPC and PCK CA ([`Ca`]), PCS API v4's
//! `GET /sgx/certification/v4/pckcrl?ca=..&encoding=der` (issuer chain in `SGX-PCK-CRL-Issuer-Chain`),
//! `GET /tdx/certification/v4/tcb?fmspc=..` (`TCB-Info-Issuer-Chain`), `GET
//! /tdx/certification/v4/qe/identity` (`SGX-Enclave-Identity-Issuer-Chain`) and the root CA CRL;
//! a timeout per request and bounded retries (as `vcek::KdsClient`, over the same HTTP client);
//! a bounded response size; an on-disk cache served until the collateral's earliest `nextUpdate`;
//! an operator directory for hosts without a route to Intel.
//!
//! It must never judge the collateral: signatures, chains to the pinned Intel root, CRLs and
//! validity at the time of check are the TDX verifier's, on every use. The host's disk, DNS and
//! network are untrusted; the cache is only a saving, and a planted, stale or forged cache file can
//! make a quote fail verification, never pass it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::files::{FileError, read_regular_file};
use crate::vcek::http::{Endpoint, HttpClient, Response};
use crate::vcek::{Resolve, SystemResolver};

mod json;

/// Intel's PCS.
pub const INTEL_PCS: &str = "https://api.trustedservices.intel.com";
/// Where Intel publishes the SGX Root CA's CRL (Intel's PCS has no endpoint for it; a PCCS has
/// `/sgx/certification/v4/rootcacrl`).
pub const INTEL_ROOT_CA_CRL: &str = "https://certificates.trustedservices.intel.com";
/// The path of the root CA CRL under [`INTEL_ROOT_CA_CRL`].
const INTEL_ROOT_CA_CRL_PATH: &str = "/IntelSGXRootCA.der";
/// The path of the root CA CRL on a PCCS.
const PCCS_ROOT_CA_CRL_PATH: &str = "/sgx/certification/v4/rootcacrl";

/// The largest response read, and the largest cache or directory file: TCB info and a platform
/// CA's CRL are tens of kB.
pub const MAX_RESPONSE: usize = 1 << 20;

/// Which Intel CA issued the platform's PCK certificate, and so which PCK CRL applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ca {
    /// Intel SGX PCK Processor CA.
    Processor,
    /// Intel SGX PCK Platform CA.
    Platform,
}

impl Ca {
    /// The name PCS uses (`ca=processor`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processor => "processor",
            Self::Platform => "platform",
        }
    }
}

/// A platform's FMSPC (family, model, stepping, platform type, customized SKU): 6 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fmspc(pub [u8; 6]);

impl Fmspc {
    /// From 12 hex digits, either case.
    pub fn from_hex(text: &str) -> Result<Self, PcsError> {
        let bytes = hex::decode(text).map_err(|e| PcsError::BadFmspc(format!("{text:?}: {e}")))?;
        let bytes: [u8; 6] = bytes.try_into().map_err(|_| {
            PcsError::BadFmspc(format!("{text:?}: expected 6 bytes (12 hex digits)"))
        })?;
        Ok(Self(bytes))
    }
}

impl std::fmt::Display for Fmspc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode_upper(self.0))
    }
}

/// Why no collateral could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PcsError {
    /// The configured URL cannot be used.
    #[error("the PCS/PCCS URL {url:?} cannot be used: {what}; or `off` to never ask one")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        what: String,
    },
    /// An FMSPC that is not 12 hex digits.
    #[error("not an FMSPC: {0}")]
    BadFmspc(String),
    /// The service answered with a status that another attempt would not change.
    #[error(
        "Intel PCS answered {status} to GET {url}: is --pccs-url right? put the collateral into --tdx-collateral-dir instead"
    )]
    Refused {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// No usable answer within the attempts.
    #[error(
        "Intel PCS: no usable answer to GET {url} after {attempts} attempt(s); the last: {last}"
    )]
    Unavailable {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// An answer that is not what PCS API v4 sends.
    #[error("Intel PCS answered GET {url} with something that is not PCS v4 collateral: {what}")]
    Malformed {
        /// The URL.
        url: String,
        /// What is wrong.
        what: String,
    },
    /// No source had the collateral.
    #[error("no TDX collateral for FMSPC {fmspc} ({ca} CA); tried: {}", tried.join("; "))]
    NotFound {
        /// The FMSPC asked for.
        fmspc: String,
        /// The CA asked for.
        ca: &'static str,
        /// What each source said.
        tried: Vec<String>,
    },
}

/// How the PCS is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcsConfig {
    /// `http[s]://host[:port][/prefix]` of the PCS or PCCS; [`INTEL_PCS`] by default.
    pub base_url: String,
    /// Where the root CA CRL is: [`INTEL_ROOT_CA_CRL`] for Intel's PCS, the PCCS itself otherwise.
    pub root_ca_crl_url: String,
    /// How long one request (name resolution, connect, TLS, response) may take.
    pub timeout: Duration,
    /// Requests in all per piece, the first included.
    pub attempts: u32,
    /// The wait before the second request; doubled before each further one.
    pub backoff: Duration,
    /// The longest Retry-After honoured; a longer one ends the attempts at once.
    pub max_retry_after: Duration,
    /// The largest response read.
    pub max_response: usize,
}

impl PcsConfig {
    /// The defaults for `base_url`: 10 s per request, 4 attempts, 1 s backoff, Retry-After up to
    /// 30 s, responses up to [`MAX_RESPONSE`].
    pub fn new(base_url: impl Into<String>) -> Self {
        let base_url: String = base_url.into();
        let root_ca_crl_url = if base_url.trim_end_matches('/') == INTEL_PCS {
            INTEL_ROOT_CA_CRL.to_string()
        } else {
            base_url.clone()
        };
        Self {
            base_url,
            root_ca_crl_url,
            timeout: Duration::from_secs(10),
            attempts: 4,
            backoff: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(30),
            max_response: MAX_RESPONSE,
        }
    }
}

/// A client of one PCS or PCCS.
#[derive(Debug, Clone)]
struct PcsClient {
    http: HttpClient,
    root_crl: HttpClient,
    root_crl_path: &'static str,
    config: PcsConfig,
}

impl PcsClient {
    fn new(config: PcsConfig, resolver: Arc<dyn Resolve>) -> Result<Self, PcsError> {
        let client = |url: &str| {
            let bad = |what: String| PcsError::BadUrl {
                url: url.to_string(),
                what,
            };
            let endpoint = Endpoint::parse(url).map_err(bad)?;
            Ok::<_, PcsError>(
                HttpClient::new(endpoint, resolver.clone())
                    .map_err(bad)?
                    .with_max_body(config.max_response),
            )
        };
        let root_crl_path = if config.root_ca_crl_url.trim_end_matches('/') == INTEL_ROOT_CA_CRL {
            INTEL_ROOT_CA_CRL_PATH
        } else {
            PCCS_ROOT_CA_CRL_PATH
        };
        Ok(Self {
            http: client(&config.base_url)?,
            root_crl: client(&config.root_ca_crl_url)?,
            root_crl_path,
            config,
        })
    }

    /// GET `path` on `http` with the retry policy; a 200's response.
    async fn get(&self, http: &HttpClient, path: &str) -> Result<Response, PcsError> {
        let url = http.endpoint().url(path);
        let attempts = self.config.attempts.max(1);
        let mut backoff = self.config.backoff;
        let mut last = String::new();
        for attempt in 1..=attempts {
            let wait = match tokio::time::timeout(self.config.timeout, http.get(path)).await {
                Err(_) => {
                    last = format!("no response within {} ms", self.config.timeout.as_millis());
                    None
                }
                Ok(Err(why)) => {
                    last = why;
                    None
                }
                Ok(Ok(response)) => match response.status {
                    200 => return Ok(response),
                    429 | 503 => match response.retry_after {
                        Some(wait) if wait > self.config.max_retry_after => {
                            return Err(PcsError::Unavailable {
                                url,
                                attempts: attempt,
                                last: format!(
                                    "status {} with Retry-After {} s, longer than the {} s waited",
                                    response.status,
                                    wait.as_secs(),
                                    self.config.max_retry_after.as_secs()
                                ),
                            });
                        }
                        wait => {
                            last = format!("status {}", response.status);
                            wait
                        }
                    },
                    500..=599 => {
                        last = format!("status {}", response.status);
                        None
                    }
                    status => return Err(PcsError::Refused { url, status }),
                },
            };
            tracing::debug!(%url, attempt, reason = %last, "Intel PCS request failed");
            if attempt < attempts {
                tokio::time::sleep(wait.unwrap_or(backoff)).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        Err(PcsError::Unavailable {
            url,
            attempts,
            last,
        })
    }

    /// Every piece of the collateral for `fmspc` and `ca`, assembled.
    async fn fetch(&self, fmspc: Fmspc, ca: Ca) -> Result<Vec<u8>, PcsError> {
        let crl_path = format!(
            "/sgx/certification/v4/pckcrl?ca={}&encoding=der",
            ca.as_str()
        );
        let tcb_path = format!("/tdx/certification/v4/tcb?fmspc={fmspc}");
        let qe_path = "/tdx/certification/v4/qe/identity";
        let pck_crl = self.get(&self.http, &crl_path).await?;
        let tcb = self.get(&self.http, &tcb_path).await?;
        let qe = self.get(&self.http, qe_path).await?;
        let root = self.get(&self.root_crl, self.root_crl_path).await?;

        let url = |http: &HttpClient, path: &str| http.endpoint().url(path);
        let malformed = |url: String| move |what: String| PcsError::Malformed { url, what };
        let crl_url = url(&self.http, &crl_path);
        let tcb_url = url(&self.http, &tcb_path);
        let qe_url = url(&self.http, qe_path);
        let (tcb_info, tcb_info_signature) =
            json::signed_member(&tcb.body, "tcbInfo").map_err(malformed(tcb_url.clone()))?;
        let (qe_identity, qe_identity_signature) =
            json::signed_member(&qe.body, "enclaveIdentity").map_err(malformed(qe_url.clone()))?;
        let collateral = Collateral {
            pck_crl_issuer_chain: issuer_chain(&pck_crl, &["SGX-PCK-CRL-Issuer-Chain"])
                .map_err(malformed(crl_url.clone()))?,
            root_ca_crl: hex::encode(der_or_text(&root.body)),
            pck_crl: hex::encode(der_or_text(&pck_crl.body)),
            tcb_info_issuer_chain: issuer_chain(
                &tcb,
                &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"],
            )
            .map_err(malformed(tcb_url))?,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain: issuer_chain(&qe, &["SGX-Enclave-Identity-Issuer-Chain"])
                .map_err(malformed(qe_url))?,
            qe_identity,
            qe_identity_signature,
        };
        serde_json::to_vec(&collateral).map_err(|e| PcsError::Malformed {
            url: crl_url,
            what: e.to_string(),
        })
    }
}

/// The collateral document, field for field the TDX verifier's input (PCS v4 pieces).
#[derive(Debug, Serialize)]
struct Collateral {
    pck_crl_issuer_chain: String,
    /// Hex of the DER.
    root_ca_crl: String,
    /// Hex of the DER.
    pck_crl: String,
    tcb_info_issuer_chain: String,
    /// The `tcbInfo` JSON text exactly as signed.
    tcb_info: String,
    tcb_info_signature: String,
    qe_identity_issuer_chain: String,
    /// The `enclaveIdentity` JSON text exactly as signed.
    qe_identity: String,
    qe_identity_signature: String,
}

/// The PEM chain in the first of `names` the response has, percent-decoded.
fn issuer_chain(response: &Response, names: &[&str]) -> Result<String, String> {
    let value = names
        .iter()
        .find_map(|name| response.headers.get(*name))
        .ok_or_else(|| format!("no {} header", names.join(" or ")))?;
    let text = value
        .to_str()
        .map_err(|_| format!("the {} header is not ASCII", names[0]))?;
    let chain = percent_decode(text)?;
    if !chain.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("the {} header holds no PEM certificate", names[0]));
    }
    Ok(chain)
}

/// `%XX` sequences decoded (PCS sends the PEM URL-encoded); the result must be UTF-8.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let pair = bytes
                    .get(i + 1..i + 3)
                    .and_then(|p| std::str::from_utf8(p).ok())
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
                    .ok_or("a % not followed by two hex digits")?;
                out.push(pair);
                i += 3;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once decoded".to_string())
}

/// A CRL as a PCCS may send it: DER, or the DER's hex as text.
fn der_or_text(body: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(body).map(str::trim);
    match text {
        Ok(t) if !t.is_empty() && t.len() % 2 == 0 && t.bytes().all(|b| b.is_ascii_hexdigit()) => {
            hex::decode(t).unwrap_or_else(|_| body.to_vec())
        }
        _ => body.to_vec(),
    }
}

/// The earliest `nextUpdate` of a collateral document (TCB info, QE identity, both CRLs), or
/// `None` when one cannot be read: then it counts as due.
pub fn next_update(collateral: &[u8]) -> Option<SystemTime> {
    let doc: serde_json::Value = serde_json::from_slice(collateral).ok()?;
    let signed_json = |field: &str| -> Option<SystemTime> {
        let inner: serde_json::Value = serde_json::from_str(doc.get(field)?.as_str()?).ok()?;
        let next = inner.get("nextUpdate")?.as_str()?;
        OffsetDateTime::parse(next, &Rfc3339)
            .ok()
            .map(SystemTime::from)
    };
    let crl = |field: &str| -> Option<SystemTime> {
        use x509_parser::prelude::FromDer as _;
        let der = hex::decode(doc.get(field)?.as_str()?).ok()?;
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&der).ok()?;
        Some(SystemTime::from(crl.next_update()?.to_datetime()))
    };
    [
        signed_json("tcb_info")?,
        signed_json("qe_identity")?,
        crl("pck_crl")?,
        crl("root_ca_crl")?,
    ]
    .into_iter()
    .min()
}

/// Where TDX collateral comes from: the cache, the PCS, the operator's directory.
#[derive(Debug, Clone)]
pub struct CollateralSource {
    pcs: Option<PcsClient>,
    cache: Option<PathBuf>,
    offline: Option<PathBuf>,
}

impl CollateralSource {
    /// A source asking `pcs` (`None`: never), caching in `cache`, falling back to `offline`.
    pub fn new(
        pcs: Option<PcsConfig>,
        cache: Option<PathBuf>,
        offline: Option<PathBuf>,
    ) -> Result<Self, PcsError> {
        Self::with_resolver(pcs, cache, offline, Arc::new(SystemResolver))
    }

    /// [`new`](Self::new) resolving names with `resolver`.
    pub fn with_resolver(
        pcs: Option<PcsConfig>,
        cache: Option<PathBuf>,
        offline: Option<PathBuf>,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Self, PcsError> {
        Ok(Self {
            pcs: pcs.map(|c| PcsClient::new(c, resolver)).transpose()?,
            cache,
            offline,
        })
    }

    /// The collateral for `fmspc` and `ca`, now.
    pub async fn collateral(&self, fmspc: Fmspc, ca: Ca) -> Result<Vec<u8>, PcsError> {
        self.collateral_at(fmspc, ca, SystemTime::now()).await
    }

    /// The collateral for `fmspc` and `ca` as of `now`: the cached copy while `now` is before
    /// its earliest `nextUpdate`; else the PCS's (then cached); else the operator directory's
    /// `{FMSPC}-{ca}.json`. Unchecked: the TDX verifier checks it on every use.
    pub async fn collateral_at(
        &self,
        fmspc: Fmspc,
        ca: Ca,
        now: SystemTime,
    ) -> Result<Vec<u8>, PcsError> {
        let name = format!("{fmspc}-{}.json", ca.as_str());
        let mut tried = Vec::new();
        if let Some(dir) = &self.cache {
            match read(dir, &name) {
                Ok(Some(doc)) if next_update(&doc).is_some_and(|next| now < next) => {
                    return Ok(doc);
                }
                Ok(Some(_)) => tried.push("cache: past its nextUpdate or unreadable".into()),
                Ok(None) => tried.push("cache: none".into()),
                Err(why) => tried.push(format!("cache: {why}")),
            }
        }
        match &self.pcs {
            Some(pcs) => match pcs.fetch(fmspc, ca).await {
                Ok(doc) => {
                    if let Some(dir) = &self.cache
                        && let Err(why) = write(dir, &name, &doc)
                    {
                        tracing::warn!(%why, "cannot cache TDX collateral");
                    }
                    return Ok(doc);
                }
                Err(e) => tried.push(e.to_string()),
            },
            None => tried.push("PCS: off".into()),
        }
        if let Some(dir) = &self.offline {
            match read(dir, &name) {
                Ok(Some(doc)) => return Ok(doc),
                Ok(None) => tried.push(format!("{}: no {name}", dir.display())),
                Err(why) => tried.push(format!("{}: {why}", dir.display())),
            }
        }
        Err(PcsError::NotFound {
            fmspc: fmspc.to_string(),
            ca: ca.as_str(),
            tried,
        })
    }
}

/// A file of the cache or the directory: no link followed, no FIFO, at most [`MAX_RESPONSE`]
/// bytes... and twice that for the hex of the CRLs inside.
fn read(dir: &std::path::Path, name: &str) -> Result<Option<Vec<u8>>, String> {
    match read_regular_file(&dir.join(name), 2 * MAX_RESPONSE) {
        Ok(doc) => Ok(Some(doc)),
        Err(FileError::NotFound) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes `doc` whole under a random temporary name, then renames it (as the VCEK cache).
fn write(dir: &std::path::Path, name: &str, doc: &[u8]) -> Result<(), String> {
    crate::vcek::VcekCache::new(dir).put_named(name, doc)
}

#[cfg(test)]
mod tests;
