//! `SealedInbox`: where the state machine leaves the sealed mesh CA keys of the last entry it applied
//! that carried some, for the replica's core to open (`Coordinator::adopt_sealed`).
//!
//! The state machine holds no secret and cannot open them; it only hands over what it applied (public
//! data, checked again by the core). Only the latest delivery is kept: an older transition's key is of
//! no use once a later one is applied.

use std::sync::{Arc, Mutex, PoisonError};

use super::NodeId;
use super::types::SealedMeshCaKey;
use crate::hash::Hash;
use crate::history::MeshCerts;

/// The sealed copies of one applied entry, with what they belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedDelivery {
    /// The transition whose mesh CA key is sealed.
    pub transition: Hash,
    /// The mesh CA certificates the entry recorded for it.
    pub mesh: MeshCerts,
    pub copies: Vec<SealedMeshCaKey>,
}

/// Shared between the state machine (which writes) and the node (which reads).
#[derive(Debug, Clone, Default)]
pub struct SealedInbox(Arc<Mutex<Option<SealedDelivery>>>);

impl SealedInbox {
    /// Leaves `delivery`, replacing what was there.
    pub fn put(&self, delivery: SealedDelivery) {
        *self.lock() = Some(delivery);
    }

    /// The last delivery for `transition`, if any.
    pub fn for_transition(&self, transition: &Hash) -> Option<SealedDelivery> {
        self.lock()
            .as_ref()
            .filter(|d| d.transition == *transition)
            .cloned()
    }

    /// The last delivery, whatever its transition, if it holds a copy sealed to node `own`'s
    /// process key `public`: a core that has not loaded that transition yet opens its copy ahead
    /// (`Coordinator::sealed_opening_ahead`). None on a leader, whose own writes seal no copy to it.
    pub fn latest_for(&self, own: NodeId, public: &[u8; 32]) -> Option<SealedDelivery> {
        self.lock()
            .as_ref()
            .filter(|d| {
                d.copies
                    .iter()
                    .any(|c| c.recipient == own && c.recipient_key == *public)
            })
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SealedDelivery>> {
        // A plain replace or clone: a panic while holding it cannot leave it inconsistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
