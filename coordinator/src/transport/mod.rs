//! aTLS for tonic: a listener that yields attested connections to a tonic server, with the peer's
//! verified evidence attached to every request (`PeerInfo`), and a channel that dials over aTLS.
//!
//! The TLS and evidence logic lives in `concord_attestation::atls`; this module only adapts it to tonic.

mod client;
mod failure_log;
mod gate;
mod limits;
mod server;

pub use client::{ConnectError, connect, connect_from};
pub use gate::{GateLimits, Rate};
pub use limits::ListenerLimits;
pub use server::{AtlsIo, PeerInfo, attested_peer, incoming};
// For listeners that run a TLS handshake of their own (the transit API, `crate::transit`).
pub(crate) use failure_log::FailureLog;
pub(crate) use gate::Gate;
