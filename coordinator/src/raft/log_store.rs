//! `LogStore`: the Raft log, the vote and the committed and purged log ids, in the replica's own
//! log file ([`Wal`], `<data dir>/raft/log`).
//!
//! An entry is stored as its JSON, under its index; the vote, the committed id and the purge mark as
//! JSON too. An append, a vote, a truncation and a purge return (and an append calls openraft back)
//! only after the file was synced: Raft's safety rests on a replica never forgetting what it
//! acknowledged. The log is not trusted for integrity (the host can edit the file): the state machine
//! re-verifies every command it applies, and an entry whose index and log id disagree is reported as
//! damage rather than used.
//!
//! Until issue 11.3 the log lived in two trees of the sled database (`raft-log`, `raft-meta`); a
//! replica that still has them moves them into its log file the first time it opens, before it
//! answers anything, and then drops the trees.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader,
    StorageError, Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::early::EarlyChecks;
use super::error::RaftStoreError;
use super::recent::Recent;
use super::types::{Command, NodeId, TypeConfig};
use super::wal::{Syncer, Wal};
use crate::in_place::off_the_workers;

/// The sled tree the log was kept in before it had its own file.
pub const LOG_TREE: &str = "raft-log";
/// The sled tree of the log's metadata before it had its own file.
pub const META_TREE: &str = "raft-meta";

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last-purged";

/// The Raft log in its file. Cloning shares the file: a clone is the log reader openraft's
/// replication tasks use.
#[derive(Debug, Clone)]
pub struct LogStore {
    wal: Arc<Mutex<Wal>>,
    /// The test fault hook (`--insecure-test-stall-raft-while`): while this file exists, an append
    /// blocks its thread as a disk that stopped answering would.
    stall_while: Option<std::path::PathBuf>,
    /// Where the checks of a transition this replica appends as the leader start, while the entry is
    /// flushed and replicated; with this replica's id.
    early: Option<(EarlyChecks, NodeId)>,
    /// This replica's id, when the entries it appends as the leader are synced on the blocking pool
    /// after `append` returns (`sync_own_appends_later`).
    sync_later: Option<NodeId>,
    /// Deferred syncs started and not finished, at most `MAX_DEFERRED_SYNCS`.
    deferred: Arc<AtomicUsize>,
    /// For the tests: while held, the syncs `sync_own_appends_later` defers do not start.
    #[cfg(test)]
    pub(crate) held_syncs: Option<Arc<crate::raft::tests::Hold>>,
    /// The last entries appended, decoded: what replication and apply read back right after.
    /// Locked after `wal`, and changed only under it.
    recent: Arc<Mutex<Recent<Entry<TypeConfig>>>>,
}

/// The most syncs deferred at once (`LogStore::sync_own_appends_later`). A disk that stops answering
/// holds this many blocking-pool threads; the next append syncs on the Raft core, which then stalls as
/// it did before syncs were deferred, and the liveness probe says so.
pub const MAX_DEFERRED_SYNCS: usize = 4;

/// How many of the last appended entries [`LogStore`] keeps decoded, and their encoded bytes at most.
const RECENT_ENTRIES: usize = 64;
const RECENT_BYTES: usize = 4 << 20;

impl LogStore {
    /// Opens (or creates) the log in `dir`; a log still in `db`'s trees from an older version is
    /// moved into the file first.
    pub fn open(
        dir: &Path,
        db: &sled::Db,
        durable: &crate::store::DurableFlush,
    ) -> Result<LogStore, RaftStoreError> {
        let wal = if Wal::exists(dir) {
            Wal::open(dir)?
        } else {
            import_from_sled(dir, db)?
        };
        // After the file holds them (a crash before this line leaves both, and the file counts).
        for tree in [LOG_TREE, META_TREE] {
            if db
                .tree_names()
                .iter()
                .any(|n| n.as_ref() == tree.as_bytes())
            {
                db.drop_tree(tree)
                    .map_err(|e| RaftStoreError::io("drop the old Raft log tree", e))?;
                durable
                    .flush()
                    .map_err(|e| RaftStoreError::io("flush the dropped Raft log tree", e))?;
            }
        }
        Ok(LogStore {
            wal: Arc::new(Mutex::new(wal)),
            stall_while: None,
            early: None,
            sync_later: None,
            deferred: Arc::new(AtomicUsize::new(0)),
            #[cfg(test)]
            held_syncs: None,
            recent: Arc::new(Mutex::new(Recent::new(RECENT_ENTRIES, RECENT_BYTES))),
        })
    }

    /// Arms the test fault hook: while `file` exists, every append blocks the thread that calls it
    /// (the Raft core's), as a flush to a disk that stopped answering does. Only an availability
    /// fault, and only for tests of the liveness probe and of shutdown (docs/OPERATIONS.md).
    pub fn stall_while(&mut self, file: std::path::PathBuf) {
        self.stall_while = Some(file);
    }

    /// Starts the early checks (`raft::early`) of every transition that replica `own` (this one)
    /// appends as the leader from now on. A follower's checks start when it applies
    /// (`StateMachine::check_others_early`): at append they would run while it acknowledges, on the
    /// cores the leader's commit waits for.
    pub fn check_early(&mut self, early: EarlyChecks, own: NodeId) {
        self.early = Some((early, own));
    }

    /// From now on, entries that replica `own` (this one) appends as the leader are written by
    /// `append` and synced after it returned, on the blocking pool; the flush callback reports the
    /// sync. The patched openraft (vendor/README.md) sends them to the followers meanwhile and counts
    /// the leader's own copy toward the quorum only when the callback came: the leader's sync and the
    /// replication round trip overlap instead of following each other. Every other append (a
    /// follower's, for which openraft waits for the callback before it acknowledges) is synced
    /// before `append` returns. Either way the callback comes only after the sync.
    pub fn sync_own_appends_later(&mut self, own: NodeId) {
        self.sync_later = Some(own);
    }

    /// The manifest of the first transition in the log, if the log still holds it: the first command
    /// that appends a transition, when it is a first transition (one that brings its signing key).
    /// A replica pinned to a deployment checks it at start-up beside its stored history: the state
    /// machine applies the log again after a crash that lost its latest writes (or on a disk the host
    /// prepared), so a history can come from the log as well as from the store.
    pub fn first_manifest(&self) -> Result<Option<Vec<u8>>, RaftStoreError> {
        const WINDOW: u64 = 16;
        let Some(mut from) = self.wal().first_index() else {
            return Ok(None);
        };
        let last = self.wal().last_index().unwrap_or(from);
        while from <= last {
            let to = from.saturating_add(WINDOW - 1).min(last);
            for entry in self.entries(Bound::Included(from), Bound::Included(to))? {
                if let EntryPayload::Normal(Command::Append(cmd)) = entry.payload {
                    return Ok(cmd.genesis.is_some().then_some(cmd.manifest));
                }
            }
            from = to + 1;
        }
        Ok(None)
    }

    /// The last log index openraft saved as committed, for the metrics; None before the first commit.
    pub fn committed_index(&self) -> Result<Option<u64>, RaftStoreError> {
        let committed: Option<Option<LogId<NodeId>>> =
            decode_value(COMMITTED, self.wal().committed())?;
        Ok(committed.flatten().map(|l| l.index))
    }

    fn wal(&self) -> MutexGuard<'_, Wal> {
        lock_wal(&self.wal)
    }

    fn recent(&self) -> MutexGuard<'_, Recent<Entry<TypeConfig>>> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An entry as stored under `index`; refused if it does not decode or names another index.
    pub(crate) fn decode_entry(
        index: u64,
        value: &[u8],
    ) -> Result<Entry<TypeConfig>, RaftStoreError> {
        let entry: Entry<TypeConfig> = serde_json::from_slice(value)
            .map_err(|e| RaftStoreError::corrupt(format!("raft log entry {index}"), e))?;
        // A host that moves entries between indexes must not make openraft read one as another.
        if entry.log_id.index != index {
            return Err(RaftStoreError::corrupt(
                format!("raft log entry {index}"),
                format!("it says it is entry {}", entry.log_id.index),
            ));
        }
        Ok(entry)
    }

    pub(crate) fn entries(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStoreError> {
        let wal = self.wal();
        if let Some(kept) = wal
            .live_range(start, end)
            .and_then(|(first, last)| self.recent().get(first, last))
        {
            return Ok(kept);
        }
        let raw = wal.read((start, end))?;
        drop(wal);
        raw.iter()
            .map(|(index, bytes)| Self::decode_entry(*index, bytes))
            .collect()
    }

    /// The entries in `start..end` as the file holds them, never from [`LogStore::recent`]: for the
    /// tests that check the two agree.
    #[cfg(test)]
    pub(crate) fn entries_from_file(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStoreError> {
        let raw = self.wal().read((start, end))?;
        raw.iter()
            .map(|(index, bytes)| Self::decode_entry(*index, bytes))
            .collect()
    }

    fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, RaftStoreError> {
        let Some(last) = self.wal().last_index() else {
            return Ok(None);
        };
        Ok(self
            .entries(Bound::Included(last), Bound::Included(last))?
            .pop()
            .map(|e| e.log_id))
    }

    /// Writes `entries`; syncs them too if `sync`, else returns what syncs them.
    fn append_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
        sync: bool,
    ) -> Result<Option<Syncer>, RaftStoreError> {
        let entries: Vec<_> = entries.into_iter().collect();
        let encoded = entries
            .iter()
            .map(|entry| {
                serde_json::to_vec(entry)
                    .map(|bytes| (entry.log_id.index, bytes))
                    .map_err(|e| RaftStoreError::io("encode a log entry", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let kept = entries
            .into_iter()
            .zip(&encoded)
            .map(|(entry, (index, bytes))| (*index, entry, bytes.len()))
            .collect();
        let mut wal = self.wal();
        let appended = match sync {
            true => wal.append(encoded),
            false => wal.append_unsynced(encoded),
        };
        match &appended {
            Ok(()) => self.recent().appended(kept),
            Err(_) => self.recent().clear(),
        }
        appended?;
        (!sync).then(|| wal.syncer()).transpose()
    }
}

/// One deferred sync, counted in `LogStore::deferred` while this lives.
struct Deferred(Arc<AtomicUsize>);

impl Drop for Deferred {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock_wal(wal: &Mutex<Wal>) -> MutexGuard<'_, Wal> {
    // The log keeps its own consistency (`Wal::broken`) whatever a panicking holder did.
    wal.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn encode_value<T: Serialize>(value: &T) -> Result<Vec<u8>, RaftStoreError> {
    serde_json::to_vec(value).map_err(|e| RaftStoreError::io("encode a raft log value", e))
}

fn decode_value<T: DeserializeOwned>(
    name: &[u8],
    bytes: Option<&[u8]>,
) -> Result<Option<T>, RaftStoreError> {
    bytes
        .map(|b| {
            serde_json::from_slice(b).map_err(|e| {
                RaftStoreError::corrupt(format!("raft log {}", String::from_utf8_lossy(name)), e)
            })
        })
        .transpose()
}

/// Writes the log an older version kept in `db`'s trees to a new log file in `dir`.
fn import_from_sled(dir: &Path, db: &sled::Db) -> Result<Wal, RaftStoreError> {
    let io = |e| RaftStoreError::io("read the old Raft log tree", e);
    let meta = db.open_tree(META_TREE).map_err(io)?;
    let log = db.open_tree(LOG_TREE).map_err(io)?;
    let value = |key: &[u8]| -> Result<Option<Vec<u8>>, RaftStoreError> {
        Ok(meta.get(key).map_err(io)?.map(|v| v.to_vec()))
    };
    let purged = match value(LAST_PURGED)? {
        None => None,
        Some(bytes) => {
            let id: LogId<NodeId> =
                decode_value(LAST_PURGED, Some(&bytes))?.expect("a value was given");
            Some((id.index, bytes))
        }
    };
    let mut entries = Vec::new();
    for kv in log.iter() {
        let (k, v) = kv.map_err(io)?;
        let index = <[u8; 8]>::try_from(k.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| RaftStoreError::corrupt("old raft-log key", "is not 8 bytes"))?;
        LogStore::decode_entry(index, &v)?;
        entries.push((index, v.to_vec()));
    }
    if !entries.is_empty() || purged.is_some() {
        tracing::info!(
            entries = entries.len(),
            dir = %dir.display(),
            "moving the Raft log from the sled database into its own file"
        );
    }
    Wal::create(dir, value(VOTE)?, value(COMMITTED)?, purged, entries)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.entries(range.start_bound().cloned(), range.end_bound().cloned())
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let read = || -> Result<LogState<TypeConfig>, RaftStoreError> {
            let last_purged_log_id: Option<LogId<NodeId>> =
                decode_value(LAST_PURGED, self.wal().purged().map(|(_, mark)| mark))?;
            // With every entry purged, the last log id is the last purged one (openraft's contract).
            let last_log_id = self.last_log_id()?.or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        };
        read().map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        off_the_workers(|| encode_value(vote).and_then(|bytes| self.wal().set_vote(bytes)))
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        decode_value(VOTE, self.wal().vote())
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not synced on its own: openraft tolerates losing it (it only spares re-applying entries
        // after a restart), and the next append or vote syncs it anyway.
        encode_value(&committed)
            .and_then(|bytes| self.wal().set_committed(bytes))
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        decode_value::<Option<LogId<NodeId>>>(COMMITTED, self.wal().committed())
            .map(Option::flatten)
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Read))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Some(file) = &self.stall_while {
            off_the_workers(|| {
                while file.exists() {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            });
        }
        // The callback tells openraft the entries are durable, so it runs only after the sync.
        let started = std::time::Instant::now();
        let entries: Vec<_> = entries.into_iter().collect();
        // Started before the write: the checks run while this thread waits for the sync.
        if let Some((early, own)) = &self.early {
            for entry in &entries {
                if let EntryPayload::Normal(Command::Append(cmd)) = &entry.payload
                    && entry.log_id.leader_id.node_id == *own
                {
                    early.start(entry.log_id.index, cmd);
                }
            }
        }
        let later = self
            .sync_later
            .is_some_and(|own| entries.iter().all(|e| e.log_id.leader_id.node_id == own))
            && tokio::runtime::Handle::try_current().is_ok()
            && self
                .deferred
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < MAX_DEFERRED_SYNCS).then_some(n + 1)
                })
                .is_ok();
        if later {
            // Counted until the sync is over, or its task is dropped unrun.
            let deferred = Deferred(self.deferred.clone());
            // Written here, synced on the blocking pool. The write goes to the page cache, but a disk
            // that stopped answering blocks it too once enough is dirty: off the workers as well.
            match off_the_workers(|| self.append_entries(entries, false)) {
                Ok(Some(syncer)) => {
                    let wal = self.wal.clone();
                    #[cfg(test)]
                    let held = self.held_syncs.clone();
                    tokio::task::spawn_blocking(move || {
                        let _deferred = deferred;
                        #[cfg(test)]
                        if let Some(held) = held {
                            held.wait();
                        }
                        let synced = syncer.sync();
                        if let Err(e) = &synced {
                            lock_wal(&wal).sync_failed(&e.to_string());
                        }
                        crate::observe::global().commit_phase("log_append", started.elapsed());
                        callback.log_io_completed(synced);
                    });
                    return Ok(());
                }
                Ok(None) => {
                    callback.log_io_completed(Ok(()));
                    return Ok(());
                }
                Err(e) => {
                    callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                    return Err(e.into_storage(ErrorSubject::Logs, ErrorVerb::Write));
                }
            }
        }
        let appended = off_the_workers(|| self.append_entries(entries, true));
        crate::observe::global().commit_phase("log_append", started.elapsed());
        match appended {
            Ok(_) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e.into_storage(ErrorSubject::Logs, ErrorVerb::Write))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        off_the_workers(|| {
            let mut wal = self.wal();
            let truncated = wal.truncate(log_id.index);
            match &truncated {
                Ok(()) => self.recent().truncated(log_id.index),
                Err(_) => self.recent().clear(),
            }
            truncated
        })
        .map_err(|e| e.into_storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // The mark and the removal are one record: a crash leaves both or neither.
        off_the_workers(|| {
            let mark = encode_value(&log_id)?;
            let mut wal = self.wal();
            let purged = wal.purge(log_id.index, mark);
            match &purged {
                Ok(()) => self.recent().purged(log_id.index),
                Err(_) => self.recent().clear(),
            }
            purged
        })
        .map_err(|e| e.into_storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }
}
