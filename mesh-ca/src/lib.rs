//! Concord's key material: the seed engine, the root and mesh CAs, and the seed shares.
//!
//! This crate owns every secret the coordinator holds and every certificate it makes, and the
//! normative formats of DESIGN.md ("Cryptographic formats") that go with them. It does no I/O:
//! no files, no network, no clock (callers pass `now`). It must never derive the mesh CA key from
//! the seed (Invariant 3), never expose the mesh CA key or the seed except as the API below
//! allows, never print a secret in `Debug`, and never fall back to weak randomness.
//!
//! - [`seed`]: [`SeedEngine`], the HKDF derivations from the seed.
//! - [`ca`]: [`RootCa`], [`MeshCa`] and leaf issuance ([`IssuedCert`]).
//! - [`shares`]: Shamir sharing of the seed and HPKE encryption of each share.
//! - [`seal`]: a mesh CA key sealed to another replica's per-process seal key (HPKE).
//! - [`labels`]: the domain-separation labels, each used once.

#![forbid(unsafe_code)]

pub mod ca;
pub mod claims;
mod error;
mod gf256;
pub mod labels;
mod rng;
pub mod seal;
pub mod seed;
pub mod shares;
pub mod submission;

#[cfg(test)]
mod testing;

pub use ca::{IssuedCert, MeshCa, RootCa, check_subject_alt_name};
pub use claims::{AttestedClaims, TcbClaims, TdxLeafClaims};
pub use error::MeshCaError;
pub use seal::{
    SealAhead, SealContext, SealKey, SealedKey, seal_key_report_data, seal_mesh_ca_key,
};
pub use seed::{Salt, Seed, SeedEngine};
pub use shares::{
    EncryptedShare, SHARE_LEN, SHARE_MAGIC, SeedShare, ShareOwnerKeyPair, combine, decrypt_share,
    encrypt_share, split,
};
pub use submission::{RecoveryKey, ShareSubmission, seal_submission};
