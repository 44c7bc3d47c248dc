//! `Secrets`: what a ready replica holds in memory only: the seed engine, the keys derived from it, and
//! the current mesh CA. Never serialized; Debug is redacted.

use concord_mesh_ca::{MeshCa, RootCa, SeedEngine};
use ed25519_dalek::SigningKey;

pub(crate) struct Secrets {
    pub engine: SeedEngine,
    pub signing_key: SigningKey,
    /// Shared with the mesh CA openings under way (`state::sealed::SealedOpening`), which run unlocked.
    pub root_ca: std::sync::Arc<RootCa>,
    /// Shared with the prepared write that made it (`Coordinator::adopt_prepared`).
    pub mesh_ca: std::sync::Arc<MeshCa>,
    /// The transition `mesh_ca` belongs to: the replica is ready only while it is the latest.
    pub mesh_for: crate::hash::Hash,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(redacted)")
    }
}
