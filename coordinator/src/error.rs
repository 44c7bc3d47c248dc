//! `CoordinatorError`: what a coordinator call can fail with, split by who is at fault.
//! The mapping to gRPC codes lives in one place: `api::status`.

use crate::hash::Hash;
use crate::history::LedgerError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinatorError {
    /// The caller sent something malformed or invalid; nothing was changed.
    #[error("{0}")]
    InvalidInput(String),
    /// The caller is not allowed to do this (missing or wrong owner signature, unknown workload).
    #[error("{0}")]
    PermissionDenied(String),
    /// Compare-and-swap failed: the history moved on since the caller looked.
    #[error(
        "previous transition mismatch: the request expects {expected} as the latest transition, but the latest is {latest}; fetch the latest history, re-sign and retry"
    )]
    PreviousMismatch { expected: Hash, latest: Hash },
    /// Another SetManifest after the same transition, with another manifest, is being committed now:
    /// at most one of them can commit, so this one is refused before it queues (`api::write_claims`).
    #[error(
        "write conflict: another SetManifest after transition {previous} is being committed now, so this one (after the same transition) cannot commit; nothing was written: fetch the latest history, re-sign against it and retry"
    )]
    WriteConflict { previous: Hash },
    /// The transition was committed, but a later one was committed before this replica answered
    /// (leadership moved while the write was in flight) and this replica cannot vouch for it further.
    #[error(
        "transition {transition} was committed, but a later transition ({latest}) replaced it before this replica could answer; the write took effect: fetch the latest history to see both"
    )]
    CommittedThenSuperseded { transition: Hash, latest: Hash },
    /// The latest manifest has no owner keys: the history is closed.
    #[error(
        "the latest manifest lists no workload owner keys, so it is final: no update is accepted"
    )]
    FinalManifest,
    /// This replica has history but not the secrets to serve it.
    #[error(
        "this coordinator is recovering: it has a history but not its secrets; recover it with the seed shares (or from a ready peer) first"
    )]
    Recovering,
    /// The call does not fit the replica's state (e.g. recovering a ready replica).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A seed share was refused: the replica's history is not, or does not extend, the one its owner
    /// knew (a rollback or a fork). Nothing changed.
    #[error(
        "refusing the share: the history does not extend the one you know: {0}. If disks were \
         restored from an older backup, the newer state is lost; do not recover this history unless \
         the owners agree to go back"
    )]
    UnknownHistory(String),
    /// Nothing has been set yet.
    #[error("no manifest has been set yet; set one with `concord set`")]
    NoManifest,
    /// The local store failed or holds a history that does not verify.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Making keys, certificates or shares failed (e.g. the OS random generator).
    #[error("{0}")]
    Crypto(String),
    /// This replica could not produce its own evidence.
    #[error("cannot produce attestation evidence: {0}")]
    Evidence(String),
}
