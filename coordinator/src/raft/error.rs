//! `RaftStoreError`: what the Raft storage can fail with, and its mapping to openraft's `StorageError`.
//!
//! openraft treats any `StorageError` as fatal for the node (it stops rather than risk its data), so
//! these are only ever outages, broken disks or a data directory edited outside Concord; a command that
//! does not verify is not an error here but a `CommandResponse::Rejected`.

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};

use super::types::NodeId;
use crate::history::LedgerError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftStoreError {
    /// sled failed: the disk is full, gone, or not writable.
    #[error(
        "the Raft storage failed to {op}: {reason}; check the data directory's disk (space, permissions, health)"
    )]
    Io { op: &'static str, reason: String },
    /// Something the Raft storage wrote does not read back: the data directory was modified outside
    /// Concord or is damaged.
    #[error(
        "the Raft storage holds an unreadable {what}: {reason}. The data directory was modified outside Concord or is damaged; start the replica with an empty one so that it rejoins and catches up"
    )]
    Corrupt { what: String, reason: String },
    /// A snapshot from the leader did not verify and was not installed. openraft has no way to turn a
    /// snapshot down but a storage error, which stops this replica's Raft node with its old state.
    #[error(
        "snapshot {id} was refused and not installed: {reason}. This replica kept its state and stopped replicating; the leader's history or the network is not trustworthy: investigate before restarting it"
    )]
    SnapshotRefused { id: String, reason: String },
    /// The history the state machine sits on does not verify.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl RaftStoreError {
    pub(crate) fn io(op: &'static str, e: impl std::fmt::Display) -> RaftStoreError {
        RaftStoreError::Io {
            op,
            reason: e.to_string(),
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, e: impl std::fmt::Display) -> RaftStoreError {
        RaftStoreError::Corrupt {
            what: what.into(),
            reason: e.to_string(),
        }
    }

    /// The error openraft receives: `subject` and `verb` say what it was doing, the message what failed.
    pub(crate) fn into_storage(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> StorageError<NodeId> {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}
