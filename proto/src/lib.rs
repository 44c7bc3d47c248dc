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

/// The message size limits of every Concord gRPC server and client, both directions
/// (docs/PROTOCOL.md §2, "Message sizes"). tonic's default is 4 MiB for decoding and no limit for
/// encoding; Concord sets both, per API, so neither side allocates for a message larger than the API
/// can need, and a history of any length travels in pieces (`StreamHistory`, `StreamManifests`).
pub mod limits {
    /// User API: a SetManifest carries at most a 1 MiB manifest and 4 MiB of policy documents.
    pub const USER_API_MESSAGE_BYTES: usize = 8 << 20;
    /// Peer API: Raft messages (the sender bounds an AppendEntries to `RAFT_APPEND_BYTES` unless a
    /// single entry is larger; one entry is at most a SetManifest, base64 in JSON) and forwarded calls.
    pub const PEER_API_MESSAGE_BYTES: usize = 16 << 20;
    /// Mesh API: a certificate chain and a secret.
    pub const MESH_API_MESSAGE_BYTES: usize = 1 << 20;
    /// The most bytes of history one message of `StreamHistory` or `StreamManifests` carries (a single
    /// manifest or policy document larger than this travels alone).
    pub const STREAM_PIECE_BYTES: usize = 1 << 20;
    /// The longest a `GetManifests` (or `StreamManifests`) with `changed_from` waits for the latest
    /// transition to change before it answers with the unchanged one.
    pub const LATEST_CHANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
}
