//! The transit API: workload keys as a service, in the shape of the transit secrets engine of Vault
//! and OpenBao, so that their clients (and a Vault's `seal "transit"`) work unchanged.
//!
//! - `cipher.rs`: Vault's `vault:v<N>:` ciphertexts over AES-256-GCM;
//! - `vault.rs`: the pure core: routes, request and response JSON, authorization against the
//!   manifest's `transit_keys`;
//! - `listener.rs`: port 8200, mutual TLS with mesh certificates, HTTP/1.1 within the port's limits.
//!
//! Keys are derived from the seed per name and version (`SeedEngine::transit_key`), inside the replica,
//! for one request at a time; no key ever leaves it, and no key, plaintext or data key is logged.

pub mod cipher;
mod listener;
pub mod vault;

pub use listener::{DEFAULT_MESH_CA_GRACE, TransitServer, TransitSettings};
