//! `Replica`: what the services of one replica share: the core behind a lock, and its evidence issuer.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use concord_attestation::{DeploymentId, DeploymentSource, EvidenceIssuer, Verifier};

use crate::error::CoordinatorError;
use crate::state::Coordinator;
use crate::store::Store;

/// The shared state of one replica's services.
#[derive(Debug)]
pub struct Replica<S> {
    coordinator: RwLock<Coordinator<S>>,
    /// This replica's own evidence (for the audit bundle).
    pub issuer: Arc<dyn EvidenceIssuer>,
    /// How this replica verifies others' evidence (its launch configuration's trust).
    pub verifier: Verifier,
}

impl<S: Store> Replica<S> {
    pub fn new(
        coordinator: Coordinator<S>,
        issuer: Arc<dyn EvidenceIssuer>,
        verifier: Verifier,
    ) -> Replica<S> {
        Replica {
            coordinator: RwLock::new(coordinator),
            issuer,
            verifier,
        }
    }

    /// Reads the core. A poisoned lock means a handler panicked mid-way: refuse rather than guess.
    pub fn read(&self) -> Result<RwLockReadGuard<'_, Coordinator<S>>, CoordinatorError> {
        self.coordinator.read().map_err(|_| {
            CoordinatorError::Crypto(
                "internal error: the state lock is poisoned; restart the replica".into(),
            )
        })
    }

    /// The latest transition's hash and its manifest's hash, if the core can be read without waiting
    /// (a writer holds it only briefly, but the caller is on the runtime's threads) and has a history.
    pub fn try_latest(&self) -> Option<(crate::hash::Hash, crate::hash::Hash)> {
        let core = self.coordinator.try_read().ok()?;
        let chain = core.chain()?;
        Some((chain.latest_hash(), chain.latest_manifest().hash()))
    }

    /// Whether the latest manifest names witnesses, or the core is busy (a writer holds it) and the
    /// caller must look on another thread. A write makes a checkpoint for witnesses only when there
    /// are some: signing one nobody asks for costs the next write a core.
    pub fn may_name_witnesses(&self) -> bool {
        self.coordinator
            .try_read()
            .map_or(true, |c| c.names_witnesses())
    }

    /// Whether a handler panicked while holding the core: the replica must be restarted (the liveness
    /// probe fails).
    pub fn is_poisoned(&self) -> bool {
        self.coordinator.is_poisoned()
    }

    pub fn write(&self) -> Result<RwLockWriteGuard<'_, Coordinator<S>>, CoordinatorError> {
        self.coordinator.write().map_err(|_| {
            CoordinatorError::Crypto(
                "internal error: the state lock is poisoned; restart the replica".into(),
            )
        })
    }
}

/// The replica's aTLS certificates name (and its evidence binds) the deployment it serves now.
impl<S: Store> DeploymentSource for Replica<S> {
    fn deployment(&self) -> DeploymentId {
        // A poisoned state serves nothing anyway; name no deployment rather than guess one.
        self.read()
            .map_or(DeploymentId::UNPINNED, |c| c.deployment_id())
    }
}
