//! `SnapshotBuilder` and the snapshot format: the whole replicated key space of the history plus the
//! applied log id and membership, and the check a received snapshot must pass before it replaces
//! anything.
//!
//! Format (JSON, `concord-raft-snapshot-v1`): `{"format", "last_applied", "last_membership",
//! "history": [{"key": base64, "value": base64}, ...]}`, where `history` is every key and value of
//! the default sled tree (the [`SledStore`](crate::store::SledStore)'s), in key order. A received
//! snapshot is as untrusted as anything else from the network (Invariant 2): [`verify_history`] runs
//! [`Ledger::load`] over it in memory, refuses any key the verified history does not account for,
//! and refuses a history that does not extend the one this replica already applied.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use openraft::storage::Snapshot;
use openraft::{
    BasicNode, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionResult;

use super::encoding::base64_bytes;
use super::error::RaftStoreError;
use super::types::{NodeId, TypeConfig};
use crate::hash::Hash;
use crate::history::{Ledger, LoadedHistory, MeshCerts};
use crate::store::{Key, SledStore, Store, StoreError, Write};

/// The `format` of a snapshot.
pub const SNAPSHOT_FORMAT: &str = "concord-raft-snapshot-v1";

/// Where the state machine keeps the current snapshot (in its `raft-sm` tree).
pub(crate) const SNAPSHOT_META: &[u8] = b"snapshot-meta";
pub(crate) const SNAPSHOT_DATA: &[u8] = b"snapshot-data";

/// A snapshot's content, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotContent {
    pub format: String,
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, BasicNode>,
    pub history: Vec<SnapshotItem>,
}

/// One key and value of the history's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotItem {
    #[serde(with = "base64_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
}

impl SnapshotContent {
    /// Reads the whole history: the default tree of the store's sled database and its objects
    /// file, in key order.
    pub fn capture(
        store: &SledStore,
        last_applied: Option<LogId<NodeId>>,
        last_membership: StoredMembership<NodeId, BasicNode>,
    ) -> Result<SnapshotContent, RaftStoreError> {
        let mut history = store
            .db()
            .iter()
            .map(|kv| {
                kv.map(|(k, v)| SnapshotItem {
                    key: k.to_vec(),
                    value: v.to_vec(),
                })
                .map_err(|e| RaftStoreError::io("read the history for a snapshot", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let objects = store.objects();
        for key in objects.keys() {
            // Held a moment ago: only this state machine deletes objects, and it is borrowed.
            if let Some(value) = objects
                .get(&key)
                .map_err(|e| RaftStoreError::io("read the history for a snapshot", e))?
            {
                history.push(SnapshotItem {
                    key: key.key().encode(),
                    value,
                });
            }
        }
        history.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(SnapshotContent {
            format: SNAPSHOT_FORMAT.into(),
            last_applied,
            last_membership,
            history,
        })
    }

    pub fn decode(bytes: &[u8]) -> Result<SnapshotContent, String> {
        let content: SnapshotContent =
            serde_json::from_slice(bytes).map_err(|e| format!("it does not decode: {e}"))?;
        if content.format != SNAPSHOT_FORMAT {
            return Err(format!(
                "its format is {:?}, this replica reads {SNAPSHOT_FORMAT:?}",
                content.format
            ));
        }
        Ok(content)
    }

    /// The metadata openraft keeps with the snapshot. The id names the applied log id and the content,
    /// so two snapshots with the same id are the same bytes.
    pub fn meta(&self, data: &[u8]) -> SnapshotMeta<NodeId, BasicNode> {
        let applied = self
            .last_applied
            .map_or_else(|| "none".to_string(), |id| id.to_string());
        SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id: format!("{applied}-{}", &Hash::of(data).to_hex()[..16]),
        }
    }
}

/// Builds the snapshot of the state captured when openraft asked for the builder. Capturing then,
/// while the state machine is borrowed exclusively, keeps the data and the applied log id consistent
/// even though openraft builds in another task while entries keep being applied.
#[derive(Debug)]
pub struct SnapshotBuilder {
    /// Flushes the database durably once the snapshot is stored.
    db: crate::store::DurableFlush,
    tree: sled::Tree,
    captured: Result<SnapshotContent, String>,
}

impl SnapshotBuilder {
    pub(crate) fn new(
        db: crate::store::DurableFlush,
        tree: sled::Tree,
        captured: Result<SnapshotContent, RaftStoreError>,
    ) -> SnapshotBuilder {
        SnapshotBuilder {
            db,
            tree,
            captured: captured.map_err(|e| e.to_string()),
        }
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, RaftStoreError> {
        let content = self.captured.clone().map_err(|reason| RaftStoreError::Io {
            op: "capture the state for a snapshot",
            reason,
        })?;
        let data =
            serde_json::to_vec(&content).map_err(|e| RaftStoreError::io("encode a snapshot", e))?;
        let meta = content.meta(&data);
        store_if_newer(&self.tree, &meta, &data)?;
        self.db
            .flush()
            .map_err(|e| RaftStoreError::io("flush the snapshot to disk", e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        self.build()
            .map_err(|e| e.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Write))
    }
}

/// Keeps `meta` and `data` as the current snapshot unless a newer one (installed meanwhile) is kept.
fn store_if_newer(
    tree: &sled::Tree,
    meta: &SnapshotMeta<NodeId, BasicNode>,
    data: &[u8],
) -> Result<(), RaftStoreError> {
    let meta_bytes =
        serde_json::to_vec(meta).map_err(|e| RaftStoreError::io("encode a snapshot's meta", e))?;
    tree.transaction(|t| -> ConflictableTransactionResult<(), String> {
        let kept = t
            .get(SNAPSHOT_META)?
            .and_then(|b| serde_json::from_slice::<SnapshotMeta<NodeId, BasicNode>>(&b).ok());
        if kept.is_some_and(|k| k.last_log_id > meta.last_log_id) {
            return Ok(());
        }
        t.insert(SNAPSHOT_META, meta_bytes.as_slice())?;
        t.insert(SNAPSHOT_DATA, data)?;
        Ok(())
    })
    .map_err(|e| RaftStoreError::io("keep the snapshot", format!("{e:?}")))
}

/// The current snapshot kept in `tree`, if any.
pub(crate) fn load_current(
    tree: &sled::Tree,
) -> Result<Option<Snapshot<TypeConfig>>, RaftStoreError> {
    let read = |key: &[u8]| {
        tree.get(key)
            .map_err(|e| RaftStoreError::io("read the kept snapshot", e))
    };
    let (Some(meta), Some(data)) = (read(SNAPSHOT_META)?, read(SNAPSHOT_DATA)?) else {
        return Ok(None);
    };
    let meta: SnapshotMeta<NodeId, BasicNode> = serde_json::from_slice(&meta)
        .map_err(|e| RaftStoreError::corrupt("raft-sm/snapshot-meta", e))?;
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data.to_vec())),
    }))
}

/// The history held by a snapshot, in memory, read-only: what [`Ledger::load`] verifies before
/// anything is written.
#[derive(Debug)]
struct SnapshotView(BTreeMap<Vec<u8>, Vec<u8>>);

impl Store for SnapshotView {
    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(&key.encode()).cloned())
    }

    fn apply(&self, _batch: Vec<Write>) -> Result<(), StoreError> {
        Err(StoreError::Io {
            op: "write to a snapshot under verification",
            reason: "it is read-only".into(),
        })
    }
}

/// Checks a snapshot's history before it may replace `current` (this replica's verified history):
/// it verifies as a whole ([`Ledger::load`]), holds no key the verified history does not name (no
/// unverified byte gets in beside it), and extends `current` with the same signing key and root CA
/// (Raft never takes back an applied entry, so anything else is a fork or a rollback). `Ok(None)`
/// for an empty history, which only an empty replica accepts.
pub(crate) fn verify_history(
    items: &[SnapshotItem],
    current: Option<&LoadedHistory>,
) -> Result<Option<LoadedHistory>, String> {
    let mut map = BTreeMap::new();
    for item in items {
        if map.insert(item.key.clone(), item.value.clone()).is_some() {
            return Err(format!(
                "it holds the key {:?} twice",
                String::from_utf8_lossy(&item.key)
            ));
        }
    }
    let count = map.len();
    let ledger = Ledger::new(SnapshotView(map));
    let loaded = ledger
        .load()
        .map_err(|e| format!("its history does not verify: {e}"))?;
    let Some(loaded) = loaded else {
        if count > 0 {
            return Err(format!(
                "it holds {count} history keys but no latest transition"
            ));
        }
        if let Some(cur) = current {
            return Err(format!(
                "it holds no history, but this replica applied {} transitions: installing it would roll the history back",
                cur.chain.len()
            ));
        }
        return Ok(None);
    };

    let chain = &loaded.chain;
    let mut named: BTreeSet<Vec<u8>> = [Key::Latest, Key::SigningKey, Key::RootCa]
        .iter()
        .map(Key::encode)
        .collect();
    let mut mesh_keys = Vec::new();
    let mut object_keys = Vec::new();
    for (i, t) in chain.transitions().iter().enumerate() {
        let hash = chain.hash_at(i).unwrap_or(Hash::ZERO);
        named.insert(Key::Transition(hash).encode());
        mesh_keys.push(Key::MeshCerts(hash));
        object_keys.push(t.manifest_hash);
    }
    object_keys.extend(chain.policy_hashes().keys().copied());
    for key in &mesh_keys {
        named.insert(key.encode());
        // `load` reads only the latest transition's; the others must be certificates too.
        if let Some(bytes) = ledger.store().get(key).map_err(|e| e.to_string())? {
            serde_json::from_slice::<MeshCerts>(&bytes)
                .map_err(|e| format!("the mesh CA of {key:?} does not decode: {e}"))?;
        }
    }
    for hash in &object_keys {
        named.insert(Key::Object(*hash).encode());
        // Hash-checks the object (a policy document `load` found no use for is checked here).
        ledger.object(hash).map_err(|e| e.to_string())?;
    }
    if let Some(stray) = ledger.store().0.keys().find(|k| !named.contains(*k)) {
        return Err(format!(
            "it holds the key {:?}, which its verified history does not name",
            String::from_utf8_lossy(stray)
        ));
    }

    if let Some(cur) = current {
        if chain.signing_key() != cur.chain.signing_key() {
            return Err("its history is signed by another signing key than this replica's".into());
        }
        if loaded.root_ca_der != cur.root_ca_der {
            return Err("its root CA is not this replica's".into());
        }
        // The index of this replica's latest transition (a verified chain is never empty).
        let mine = cur.chain.len().saturating_sub(1);
        if chain.hash_at(mine) != Some(cur.chain.latest_hash()) {
            return Err(format!(
                "its history does not contain this replica's latest transition {} at index {}: a fork or a rollback",
                cur.chain.latest_hash(),
                mine
            ));
        }
    }
    Ok(Some(loaded))
}
