//! Obtaining the certificate of the key that signed this guest's SEV-SNP report (the VCEK, or a
//! VLEK), so the issuer can send it with the evidence.
//!
//! Owns the sources and their order ([`VcekResolver`]): the host's certificate table returned with
//! an extended report ([`HostCertificates`]); the on-disk cache ([`VcekCache`]) and AMD's Key
//! Distribution Service ([`KdsClient`], over [`KdsConfig`]); a directory of operator-provided VCEKs
//! ([`OfflineDir`]). A certificate is taken only if it chains to the pinned AMD root of the report's
//! product and names the report's chip and TCB.
//!
//! It lives beside `snp`, not in it: the verifier must never fetch anything, and what this module
//! finds is only a candidate that every verifier checks again. It must never send anything to the
//! KDS but a chip ID and a TCB (both public), and never treat the host's table, the cache or the
//! network as trusted.

mod cache;
mod cert_table;
mod crl_source;
mod error;
pub(crate) mod http;
mod kds;
mod offline;
mod query;
mod resolver;
mod table;

pub use cache::VcekCache;
pub use cert_table::{
    CertTableError, Guid, MAX_ENTRIES, MAX_TABLE_LEN, TableEntry, encode_cert_table, guid_name,
    parse_cert_table,
};
pub use crl_source::{CrlSource, crl_path};
pub use error::VcekError;
pub use http::{Resolve, SystemResolver};
pub use kds::{KdsClient, KdsConfig};
pub use offline::{OfflineCertificate, OfflineDir};
pub use query::{VcekQuery, candidate_products};
pub use resolver::{ResolvedSigner, VcekResolver, VcekSource};
pub use table::HostCertificates;
