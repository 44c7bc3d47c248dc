//! The replica's core: its state (fresh, recovering, ready), its secrets, and the operations on them.
//!
//! Pure apart from the store: no sockets, no clocks (the time is an argument), so it is tested in memory.
//! It must never write a secret to the store or return one to anyone but an attested workload (its own
//! workload secret) or the seed share owners (encrypted shares).

mod ahead;
mod coordinator;
mod peer;
mod recovery;
mod sealed;
mod secrets;
mod transit;
mod transparency;

pub use coordinator::{
    AuditDraft, Coordinator, FinishedBundle, MAX_POLICY_DOCUMENT_BYTES, ManifestsView,
    MeshCertBundle, Prepared, PreparedSet, ReplicaState, SetOutcome, SetRequest, parse_for_set,
    started_for_another_deployment,
};
pub use peer::{PeerAcceptance, PeerSecrets};
pub use recovery::{
    AuthenticatedShare, KnownLatest, RecoverProgress, RecoveredSecrets, ShareOutcome,
};
#[cfg(test)]
pub(crate) use sealed::sealed_for_tests;
pub use sealed::{OpenedMeshCa, SealRecipient, SealedOpening};
pub use transit::{ServiceCert, TransitMaterial};
pub use transparency::CheckpointView;

#[cfg(test)]
mod tests;
