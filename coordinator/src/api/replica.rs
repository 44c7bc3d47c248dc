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
    /// Changes each time the state machine applies a transition (`Coordinator::transitions_applied`).
    applied: Option<tokio::sync::watch::Receiver<u64>>,
}

impl<S: Store> Replica<S> {
    pub fn new(
        coordinator: Coordinator<S>,
        issuer: Arc<dyn EvidenceIssuer>,
        verifier: Verifier,
    ) -> Replica<S> {
        Replica {
            applied: coordinator.transitions_applied(),
            coordinator: RwLock::new(coordinator),
            issuer,
            verifier,
        }
    }

    /// A receiver that changes each time this replica's state machine applies a transition, for a
    /// reader waiting for the latest to change; None when the core follows no state machine.
    pub fn transitions_applied(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.applied.clone()
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

    /// Whether a refresh of the core has nothing to do, seen without waiting for the core (a writer
    /// holds it: false): it is as new as the store and not waiting to adopt a sealed mesh CA key.
    /// Lets a caller on the runtime's threads skip the hop to the blocking pool that a refresh costs.
    pub fn settled(&self) -> bool {
        self.coordinator.try_read().is_ok_and(|c| {
            c.state() != crate::state::ReplicaState::Recovering && c.is_stale().is_ok_and(|s| !s)
        })
    }

    /// The view `only_latest` asks for, if the core can be read without waiting (a writer holds it
    /// only briefly, but the caller is on the runtime's threads): the certificates and the latest
    /// transition, nothing read from the store.
    pub fn try_latest_view(&self) -> Option<Result<crate::state::ManifestsView, CoordinatorError>> {
        Some(self.coordinator.try_read().ok()?.latest_view())
    }

    /// The latest transition's hash if the core can be read without waiting (see
    /// [`Replica::try_latest_view`]).
    pub fn try_latest_hash(&self) -> Option<Option<crate::hash::Hash>> {
        Some(self.coordinator.try_read().ok()?.latest_hash())
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

    /// The core for writing if no one holds it now (None also when the lock is poisoned: the caller
    /// then takes the waiting path, [`Replica::write`], which reports it).
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, Coordinator<S>>> {
        self.coordinator.try_write().ok()
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use concord_attestation::{PlatformTrust, Verifier};

    use super::*;
    use crate::hash::Hash;
    use crate::store::MemoryStore;
    use crate::testing::TestDeployment;

    fn replica(d: &TestDeployment) -> Replica<MemoryStore> {
        Replica::new(
            Coordinator::open(MemoryStore::new()).unwrap(),
            Arc::new(d.issuer(&d.coordinator_policy)),
            Verifier::new(PlatformTrust::default()),
        )
    }

    #[test]
    fn the_shortcuts_on_the_runtime_threads_never_wait_for_a_writer() {
        let d = TestDeployment::new();
        let r = replica(&d);
        r.write()
            .unwrap()
            .set_manifest(
                d.set_request(d.manifest(1), Hash::ZERO),
                time::OffsetDateTime::now_utc(),
            )
            .unwrap();
        assert!(r.settled(), "a ready core as new as its store");
        let latest = r.try_latest_view().expect("the core is free").unwrap();
        assert!(latest.latest.is_some());
        assert!(latest.manifests.is_empty(), "only the latest, no history");
        let writing = r.write().unwrap();
        assert!(
            !r.settled(),
            "a writer holds the core: the caller takes the slow path"
        );
        assert!(r.try_latest_view().is_none());
        drop(writing);
        assert!(r.settled());
    }

    #[test]
    fn a_core_behind_its_store_is_not_settled() {
        let d = TestDeployment::new();
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let r = Replica::new(
            Coordinator::open(store.clone()).unwrap(),
            Arc::new(d.issuer(&d.coordinator_policy)),
            Verifier::new(PlatformTrust::default()),
        );
        assert!(r.settled(), "nothing stored, nothing to catch up on");
        // Another core over the same store appends a transition, as the state machine does.
        let mut writer = Coordinator::open(store).unwrap();
        writer
            .set_manifest(
                d.set_request(d.manifest(1), Hash::ZERO),
                time::OffsetDateTime::now_utc(),
            )
            .unwrap();
        assert!(!r.settled(), "the store moved: a refresh has work to do");
        r.write().unwrap().refresh().unwrap();
        assert!(!r.read().unwrap().is_stale().unwrap());
        assert_eq!(
            r.read().unwrap().state(),
            crate::state::ReplicaState::Recovering
        );
        assert!(
            !r.settled(),
            "as new as its store, but without the secrets: a refresh may still adopt a sealed key"
        );
    }
}
