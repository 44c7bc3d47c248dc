//! `LogStore`: the Raft log, the vote and the committed and purged log ids, in two trees of the
//! replica's sled database (the same one the history lives in).
//!
//! `raft-log` maps a big-endian `u64` index (so sled's byte order is index order) to the entry as JSON;
//! `raft-meta` holds `vote`, `committed` and `last-purged` as JSON. An append, a vote, a truncation and
//! a purge return (and an append calls openraft back) only after `flush` returned: Raft's safety rests on
//! a replica never forgetting what it acknowledged. The log is not trusted for integrity (the host can
//! edit sled's files): the state machine re-verifies every command it applies, and an entry whose key
//! and log id disagree is reported as damage rather than used.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, StorageError,
    Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::RaftStoreError;
use super::types::{NodeId, TypeConfig};

/// The sled tree of log entries.
pub const LOG_TREE: &str = "raft-log";
/// The sled tree of the log's metadata.
pub const META_TREE: &str = "raft-meta";

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last-purged";

/// The Raft log on sled. Cloning shares the trees: a clone is the log reader openraft's replication
/// tasks use.
#[derive(Debug, Clone)]
pub struct LogStore {
    /// The flush of the whole database (sled's, then `fdatasync`): what makes an entry durable.
    durable: crate::store::DurableFlush,
    log: sled::Tree,
    meta: sled::Tree,
    /// The test fault hook (`--insecure-test-stall-raft-while`): while this file exists, an append
    /// blocks its thread as a disk that stopped answering would.
    stall_while: Option<std::path::PathBuf>,
}

impl LogStore {
    /// Opens (or creates) the log's trees in `db`.
    pub fn open(
        db: &sled::Db,
        durable: crate::store::DurableFlush,
    ) -> Result<LogStore, RaftStoreError> {
        let log = db
            .open_tree(LOG_TREE)
            .map_err(|e| RaftStoreError::io("open the raft-log tree", e))?;
        let meta = db
            .open_tree(META_TREE)
            .map_err(|e| RaftStoreError::io("open the raft-meta tree", e))?;
        Ok(LogStore {
            durable,
            log,
            meta,
            stall_while: None,
        })
    }

    /// Arms the test fault hook: while `file` exists, every append blocks the thread that calls it
    /// (the Raft core's), as a flush to a disk that stopped answering does. Only an availability
    /// fault, and only for tests of the liveness probe and of shutdown (docs/OPERATIONS.md).
    pub fn stall_while(&mut self, file: std::path::PathBuf) {
        self.stall_while = Some(file);
    }

    /// The last log index openraft saved as committed, for the metrics; None before the first commit.
    pub fn committed_index(&self) -> Result<Option<u64>, RaftStoreError> {
        let committed: Option<Option<LogId<NodeId>>> = self.read_meta(COMMITTED)?;
        Ok(committed.flatten().map(|l| l.index))
    }

    fn flush(&self, op: &'static str) -> Result<(), RaftStoreError> {
        self.durable.flush().map_err(|e| RaftStoreError::io(op, e))
    }

    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &'static [u8],
    ) -> Result<Option<T>, RaftStoreError> {
        let what = || format!("raft-meta/{}", String::from_utf8_lossy(key));
        match self
            .meta
            .get(key)
            .map_err(|e| RaftStoreError::io("read the raft-meta tree", e))?
        {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| RaftStoreError::corrupt(what(), e)),
        }
    }

    fn write_meta<T: Serialize>(
        &self,
        key: &'static [u8],
        value: &T,
    ) -> Result<(), RaftStoreError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| RaftStoreError::io("encode a raft-meta value", e))?;
        self.meta
            .insert(key, bytes)
            .map(|_| ())
            .map_err(|e| RaftStoreError::io("write the raft-meta tree", e))
    }

    fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry<TypeConfig>, RaftStoreError> {
        let index = <[u8; 8]>::try_from(key)
            .map(u64::from_be_bytes)
            .map_err(|_| RaftStoreError::corrupt("raft-log key", "is not 8 bytes"))?;
        let entry: Entry<TypeConfig> = serde_json::from_slice(value)
            .map_err(|e| RaftStoreError::corrupt(format!("raft-log entry {index}"), e))?;
        // A host that moves entries between keys must not make openraft read one index as another.
        if entry.log_id.index != index {
            return Err(RaftStoreError::corrupt(
                format!("raft-log entry {index}"),
                format!("it says it is entry {}", entry.log_id.index),
            ));
        }
        Ok(entry)
    }

    fn range(&self, start: Bound<u64>, end: Bound<u64>) -> sled::Iter {
        let key = |b: Bound<u64>| match b {
            Bound::Included(i) => Bound::Included(i.to_be_bytes()),
            Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.log.range::<[u8; 8], _>((key(start), key(end)))
    }

    fn entries(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStoreError> {
        self.range(start, end)
            .map(|kv| {
                let (k, v) = kv.map_err(|e| RaftStoreError::io("read the raft-log tree", e))?;
                Self::decode_entry(&k, &v)
            })
            .collect()
    }

    fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, RaftStoreError> {
        match self
            .log
            .last()
            .map_err(|e| RaftStoreError::io("read the raft-log tree", e))?
        {
            None => Ok(None),
            Some((k, v)) => Ok(Some(Self::decode_entry(&k, &v)?.log_id)),
        }
    }

    fn append_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> Result<(), RaftStoreError> {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| RaftStoreError::io("encode a log entry", e))?;
            batch.insert(&entry.log_id.index.to_be_bytes(), bytes);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| RaftStoreError::io("append to the raft-log tree", e))?;
        self.flush("flush appended log entries to disk")
    }

    /// Removes the entries whose index is in `range`, as one batch, and flushes.
    fn remove_entries(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), RaftStoreError> {
        // By key, without decoding: a damaged entry must not keep openraft from removing it.
        let mut batch = sled::Batch::default();
        for key in self.range(start, end).keys() {
            batch.remove(key.map_err(|e| RaftStoreError::io("read the raft-log tree", e))?);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| RaftStoreError::io("remove entries from the raft-log tree", e))?;
        self.flush("flush removed log entries to disk")
    }
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
            let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED)?;
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
        self.write_meta(VOTE, vote)
            .and_then(|()| self.flush("flush the vote to disk"))
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(VOTE)
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not flushed on its own: openraft tolerates losing it (it only spares re-applying entries
        // after a restart), and the next append or vote flushes it anyway.
        self.write_meta(COMMITTED, &committed)
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.read_meta::<Option<LogId<NodeId>>>(COMMITTED)
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
            while file.exists() {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        // The callback tells openraft the entries are durable, so it runs only after the flush.
        let started = std::time::Instant::now();
        let appended = self.append_entries(entries);
        crate::observe::global().commit_phase("log_append", started.elapsed());
        match appended {
            Ok(()) => {
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
        self.remove_entries(Bound::Included(log_id.index), Bound::Unbounded)
            .map_err(|e| e.into_storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // The purge mark is durable before any entry goes, so a crash in between leaves a log state
        // that still accounts for the removed entries.
        self.write_meta(LAST_PURGED, &log_id)
            .and_then(|()| self.flush("flush the purge mark to disk"))
            .and_then(|()| self.remove_entries(Bound::Unbounded, Bound::Included(log_id.index)))
            .map_err(|e| e.into_storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }
}
