//! Raft storage (DESIGN.md, Replication): openraft 0.9's log store in its own file and the state
//! machine on the replica's sled database, beside the history.
//!
//! What it owns: the type configuration and the commands ([`types`]), the log with the vote and the
//! committed and purged log ids ([`LogStore`] on [`wal`]'s file), and the state machine
//! that applies committed commands to the history ([`StateMachine`], tree `raft-sm`; the history itself
//! stays where [`SledStore`] and [`Ledger`](crate::history::Ledger) keep it, in the default tree), with
//! its snapshots ([`SnapshotBuilder`]). The network and the `Raft` instance come later and plug into
//! these through openraft.
//!
//! What it must never do:
//! - put a secret in a [`Command`]: the log is replicated to every peer and written to disks the host
//!   reads. A command carries only the signed transition and public documents and certificates.
//! - trust what it reads from the log, a snapshot or its own trees: every command and every snapshot
//!   is verified against the verified history before anything is written (Invariant 2), and the
//!   history is written only through `Ledger::append`, or replaced whole by a snapshot that verified.
//! - acknowledge an append or a vote before `flush` returned.
//!
//! Known limits: the first transition is trusted on first use: it brings its own signing key and root
//! CA, so a replica with an empty history accepts any self-consistent first transition; every later
//! one must chain to it. The vote and the log sit on the untrusted disk like everything else: a host
//! that rolls them back can make this replica vote twice in a term, which Raft cannot detect; the
//! history itself stays verified.

pub(crate) mod early;
mod encoding;
mod error;
mod log_store;
pub mod network;
mod recent;
pub mod sealed;
pub(crate) mod snapshot;
mod state_machine;
pub mod types;
pub mod wal;

pub use error::RaftStoreError;
pub use log_store::{LOG_TREE, LogStore, META_TREE};
pub use sealed::{SealedDelivery, SealedInbox};
pub use snapshot::{SNAPSHOT_FORMAT, SnapshotBuilder};
pub use state_machine::{SM_TREE, StateMachine, membership_index};
pub use types::{
    AppendTransition, AuthorizeMembers, Command, CommandResponse, Genesis, NodeId, RotateMeshCa,
    SealedMeshCaKey, TypeConfig,
};

use crate::store::SledStore;

/// The Raft log's directory in a replica's data directory.
pub const LOG_DIR: &str = "raft";

/// Opens the Raft log in `log_dir` and the state machine on `store`'s database. Fails if the stored
/// history does not verify or the log or the Raft trees cannot be read.
pub fn open(
    store: &SledStore,
    log_dir: &std::path::Path,
) -> Result<(LogStore, StateMachine), RaftStoreError> {
    Ok((
        LogStore::open(log_dir, store.db(), store.durable())?,
        StateMachine::open(store)?,
    ))
}

#[cfg(test)]
mod tests;
