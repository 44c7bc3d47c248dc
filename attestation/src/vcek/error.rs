//! Why no VCEK could be obtained, and from where.
//!
//! Owns [`VcekError`]. Every message names the source (the KDS URL and its status, the directory)
//! and says what to do. Messages carry chip IDs and TCB versions, which are public: never a key.

use crate::snp::SignerKind;

/// What to do when no source had the VCEK.
const VCEK_ADVICE: &str = "Let this process reach AMD's KDS (--kds-url), or put the VCEK for this \
     chip and TCB (downloaded from AMD's KDS elsewhere) into the directory --vcek-dir names, or have \
     the host return its certificate table with extended reports";
/// What to do when no source had the VLEK.
const VLEK_ADVICE: &str = "A VLEK is installed by the cloud provider and reaches the guest only \
     through the host's certificate table (extended reports): ask the provider to provide it";

/// Why obtaining the certificate of a report's signing key failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VcekError {
    /// The KDS base URL cannot be used.
    #[error("the KDS URL {url:?} cannot be used: {what}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        what: String,
    },
    /// The KDS answered with a status another attempt will not change (404 and other 4xx).
    #[error("AMD KDS answered {status} to GET {url}: {hint}")]
    Refused {
        /// The full request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What the status means here and what to do.
        hint: String,
    },
    /// The KDS asked to retry later than this process is willing to wait.
    #[error(
        "AMD KDS answered {status} to GET {url} and asked to retry after {seconds} s, longer than \
         the {max} s this process waits; try again later, or put the VCEK into the --vcek-dir directory"
    )]
    Busy {
        /// The full request URL.
        url: String,
        /// The HTTP status (429 or 503).
        status: u16,
        /// The Retry-After the KDS sent.
        seconds: u64,
        /// The longest Retry-After this process honours.
        max: u64,
    },
    /// No usable answer after every attempt (timeouts, refused connections, 5xx, 429).
    #[error("AMD KDS: no usable answer to GET {url} after {attempts} attempt(s); the last: {last}")]
    Unavailable {
        /// The full request URL.
        url: String,
        /// How many requests were made.
        attempts: u32,
        /// What went wrong the last time.
        last: String,
    },
    /// The KDS answered 200 with something that is not the VCEK of this report.
    #[error("AMD KDS answered GET {url} with a certificate that does not fit the report: {what}")]
    Unusable {
        /// The full request URL.
        url: String,
        /// Why it does not fit.
        what: String,
    },
    /// The report does not say enough to look its VCEK up.
    #[error("cannot look up the VCEK of this report: {0}")]
    Report(String),
    /// The operator's VCEK directory cannot be read.
    #[error("cannot read the VCEK directory {dir}: {what}")]
    OfflineDir {
        /// The directory.
        dir: String,
        /// What failed.
        what: String,
    },
    /// No source had a certificate that fits the report.
    #[error("no {kind} found for {wanted}; tried: {}. {}", tried.join("; "), advice(*kind))]
    NotFound {
        /// VCEK or VLEK, as the report's KEY_INFO says.
        kind: SignerKind,
        /// The product, chip and TCB looked for.
        wanted: String,
        /// What each source said, in the order they were tried.
        tried: Vec<String>,
    },
}

fn advice(kind: SignerKind) -> &'static str {
    match kind {
        SignerKind::Vcek => VCEK_ADVICE,
        SignerKind::Vlek => VLEK_ADVICE,
    }
}
