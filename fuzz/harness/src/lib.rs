//! The bodies of Concord's fuzz targets: one function per target, each taking the fuzzer's bytes.
//!
//! `fuzz/fuzz_targets/*.rs` (cargo-fuzz, nightly) call these and nothing else, and
//! `tests/corpus.rs` runs every file of `fuzz/corpus/TARGET/` through the same function on stable, so
//! the corpus is a regression suite on any machine. A body calls the crates' own parsers and checks
//! (through their `fuzzing` entry points where those are private), never a copy of them; it does no
//! I/O, never sleeps and never reads the clock (times of check are fixed). Only panics, hangs and
//! runaway allocations count: what a parser answers is dropped.
#![forbid(unsafe_code)]

pub mod amd_crl;
pub mod atls_evidence;
pub mod audit_bundle;
pub mod manifest;
pub mod objects_file;
pub mod raft_log;
pub mod requests;
pub mod seed_share;
pub mod snp_cert_table;
pub mod snp_report;
pub mod tdx_quote;
mod times;
pub mod witness_request;

/// A target's name (the directory of its corpus and the `cargo fuzz run` name) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: [Target; 12] = [
    ("manifest", manifest::run),
    ("audit_bundle", audit_bundle::run),
    ("seed_share", seed_share::run),
    ("snp_report", snp_report::run),
    ("atls_evidence", atls_evidence::run),
    ("requests", requests::run),
    ("snp_cert_table", snp_cert_table::run),
    ("witness_request", witness_request::run),
    ("tdx_quote", tdx_quote::run),
    ("amd_crl", amd_crl::run),
    ("raft_log", raft_log::run),
    ("objects_file", objects_file::run),
];
