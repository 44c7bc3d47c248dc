//! Concord's gRPC API: the generated code for `proto/concord/v1/*.proto`.
//!
//! This crate owns the wire format only; no logic lives here, but for the codec that wipes secret
//! fields after encoding ([`wipe`]).
#![forbid(unsafe_code)]

pub mod wipe;

/// `concord.v1`: the user, mesh and evidence messages and services.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("concord.v1");
}
