//! Tests of the Raft storage, and their fixtures: a sled database in a temporary directory, real signed
//! transitions made by a `Coordinator` in memory, and log entries that carry them.

mod apply;
mod membership;
mod no_secret;
mod others_early;
mod persistence;
mod snapshot;
mod suite;
mod sync_later;
mod vendored;

pub(crate) use sync_later::Hold;

use std::collections::BTreeSet;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership};
use tempfile::TempDir;
use time::OffsetDateTime;

use super::{AppendTransition, Command, CommandResponse, LogStore, StateMachine, TypeConfig};
use crate::hash::Hash;
use crate::history::{MeshCerts, NewTransition, Transition};
use crate::manifest::Manifest;
use crate::state::Coordinator;
use crate::store::{Key, MemoryStore, SledStore, Store};
use crate::testing::TestDeployment;

/// A replica's disk: a sled database in a temporary directory that lives as long as this value.
pub(super) struct Disk {
    pub dir: TempDir,
    pub store: SledStore,
}

impl Disk {
    pub fn new() -> Disk {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("store")).unwrap();
        Disk { dir, store }
    }

    /// The Raft log's directory on this disk.
    pub fn log_dir(&self) -> std::path::PathBuf {
        self.dir.path().join(super::LOG_DIR)
    }

    /// The Raft log and state machine on this disk.
    pub fn open(&self) -> (LogStore, StateMachine) {
        super::open(&self.store, &self.log_dir()).unwrap()
    }

    /// Closes the database and opens it again from the directory, as after a restart.
    pub fn reopen(self) -> Disk {
        let Disk { dir, store } = self;
        drop(store);
        let store = SledStore::open(&dir.path().join("store")).unwrap();
        Disk { dir, store }
    }

    /// Every key and value of the history's tree (sled's default tree).
    pub fn history_dump(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.store
            .db()
            .iter()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    /// The latest transition on disk, unverified.
    pub fn latest(&self) -> Option<Hash> {
        self.store
            .get(&Key::Latest)
            .unwrap()
            .map(|b| Hash::from_slice(&b).unwrap())
    }
}

/// A history made by a real coordinator (in memory): `hashes[i]` is transition `i`, each manifest
/// signed by the coordinator and authorized by the deployment's owner (the first too).
pub(super) struct History {
    pub deployment: TestDeployment,
    pub coordinator: Coordinator<MemoryStore>,
    pub hashes: Vec<Hash>,
    /// The encrypted seed shares the first transition handed out.
    pub seed_shares: Vec<concord_mesh_ca::EncryptedShare>,
}

impl History {
    pub fn new(transitions: u32) -> History {
        let deployment = TestDeployment::new();
        let mut coordinator = Coordinator::open(MemoryStore::new()).unwrap();
        let mut hashes = Vec::new();
        let mut seed_shares = Vec::new();
        for version in 1..=transitions {
            let previous = hashes.last().copied().unwrap_or(Hash::ZERO);
            let out = coordinator
                .set_manifest(
                    deployment.set_request(deployment.manifest(version), previous),
                    OffsetDateTime::now_utc(),
                )
                .unwrap();
            hashes.push(out.hash);
            seed_shares.extend(out.seed_shares);
        }
        History {
            deployment,
            coordinator,
            hashes,
            seed_shares,
        }
    }

    /// The transition `i` and everything written with it, read back from the coordinator's store.
    pub fn new_transition(&self, i: usize) -> NewTransition {
        let store = self.coordinator.store();
        let get = |k: Key| store.get(&k).unwrap().unwrap();
        let hash = self.hashes[i];
        let transition = Transition::decode(&get(Key::Transition(hash))).unwrap();
        let manifest_bytes = get(Key::Object(transition.manifest_hash));
        let policies = Manifest::parse(&manifest_bytes)
            .unwrap()
            .policies()
            .keys()
            .map(|h| get(Key::Object(*h)))
            .collect();
        let mesh: MeshCerts = serde_json::from_slice(&get(Key::MeshCerts(hash))).unwrap();
        let genesis = (i == 0).then(|| {
            let key = <[u8; 32]>::try_from(get(Key::SigningKey).as_slice()).unwrap();
            (
                ed25519_dalek::VerifyingKey::from_bytes(&key).unwrap(),
                get(Key::RootCa),
            )
        });
        NewTransition {
            transition,
            manifest_bytes,
            policies,
            mesh,
            genesis,
        }
    }

    /// The command that carries transition `i`.
    pub fn command(&self, i: usize) -> AppendTransition {
        AppendTransition::new(&self.new_transition(i))
    }
}

pub(super) fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 0), index)
}

/// A log entry at `index` that carries `cmd`.
pub(super) fn command_entry(index: u64, cmd: AppendTransition) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Command::Append(cmd)),
    }
}

/// A membership entry at `index` with `voters`.
pub(super) fn membership_entry(index: u64, voters: &[u64]) -> Entry<TypeConfig> {
    let voters: BTreeSet<u64> = voters.iter().copied().collect();
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], None)),
    }
}

/// Applies one entry and returns its response.
pub(super) async fn apply_one(sm: &mut StateMachine, entry: Entry<TypeConfig>) -> CommandResponse {
    let mut responses = sm.apply([entry]).await.unwrap();
    assert_eq!(responses.len(), 1);
    responses.remove(0)
}
