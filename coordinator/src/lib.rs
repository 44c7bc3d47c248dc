//! Concord's coordinator: the manifest, the signed history on an untrusted store, the replica state, and
//! the user and mesh APIs around them.
//!
//! Where to look: `manifest` (the manifest model), `history` (formats, chain verification, ledger,
//! audit bundle), `store` (the store trait and its sled backend), `raft` (the Raft log store and state
//! machine, on the same sled database), `state` (the replica's core logic, free of I/O), `api` (the
//! gRPC services and the one error-to-status mapping), `transport` (aTLS listeners and channels for
//! tonic), `observe` (probes and metrics on port 9102), `launch` and `peer_args` (launch flags),
//! `server` (wiring a replica's listeners together).
#![forbid(unsafe_code)]

pub mod api;
pub mod background;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod hash;
pub mod history;
pub mod in_place;
pub mod input_file;
pub mod launch;
pub mod manifest;
pub mod observe;
pub mod peer_args;
pub mod pem;
pub mod raft;
pub mod record_file;
pub mod server;
pub mod state;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod transit;
pub mod transport;
pub mod witness;
pub mod workload_lane;

pub use error::CoordinatorError;
pub use hash::Hash;
