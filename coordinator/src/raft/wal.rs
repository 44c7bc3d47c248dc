//! `Wal`: the file the Raft log lives in, an append-only sequence of checksummed records that is
//! synced (`fdatasync`) before a write that must be durable returns.
//!
//! Why not a sled tree, as before (issue 11.3): an append to sled hands its buffers to sled's IO
//! threads, which write them and wait with `sync_file_range`, after which `DurableFlush` still had to
//! `fdatasync` sled's whole log and list its `blobs/` directory; per SetManifest that was 0.6 to 0.9 ms
//! on each replica, and a quarter of all the CPU three replicas spent, beside 0.1 ms for a write and an
//! `fdatasync` of the same bytes. Raft needs nothing sled offers for its log: it appends at the end,
//! cuts the end (a conflict) or the front (a purge after a snapshot), and reads recent ranges.
//!
//! The format (little-endian; `crate::record_file`, shared with the history's objects file), after a
//! 16-byte header `concord/raftlog1`, is one record after another:
//! `len: u32`, `crc32: u32` of the `len` bytes that follow, `kind: u8` and `len - 1` bytes of body:
//! - `ENTRY`: `index: u64` and the entry as its log store encodes it;
//! - `TRUNCATE`: `index: u64`; the entries from that index on are gone;
//! - `PURGE`: `index: u64` and the purge mark; the entries up to that index are gone;
//! - `VOTE` and `COMMITTED`: the value, the latest of each counting.
//!
//! The file is grown ahead of the records, 4 MiB of zeros at a time, synced: an append then writes
//! into blocks the file already has, so its `fdatasync` commits no size or extent change (no journal
//! commit on ext4, which the three replicas' syncs would queue for). A zero record header ends the
//! log.
//!
//! At open the records are replayed into an index of where each live entry is; entries are read
//! from the file when asked for, with their checksum checked again. A record cut short or garbled
//! at the end of the log, with nothing but zeros after it, is what a crash in the middle of an
//! unacknowledged write leaves: it is zeroed. Any other damage is reported, never skipped: Raft's
//! safety rests on a replica keeping what it acknowledged. When more than half the file (and at least 4 MiB) is purged entries and superseded
//! values, a purge rewrites it: into a new file, synced, then renamed over the old one.
//!
//! The file is not trusted for integrity, only for availability, like everything on the host's disk:
//! the checksums catch accidents, not a host, and the state machine verifies every command it applies.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::RaftStoreError;
use crate::record_file::{self, Ending, RECORD_HEADER, ScanError, Slot, decode};

/// The log's file in its directory.
pub const FILE: &str = "log";
/// Where a rewrite is built before it replaces `FILE`.
const REWRITE: &str = "log.rewrite";
const HEADER: &[u8; 16] = b"concord/raftlog1";
/// A rewrite happens only once at least this much of the file is dead, so a small log is never
/// rewritten.
const REWRITE_SLACK: u64 = 4 << 20;
/// How much the file grows ahead of its records at a time.
const GROW: u64 = 4 << 20;

const ENTRY: u8 = 1;
const TRUNCATE: u8 = 2;
const PURGE: u8 = 3;
const VOTE: u8 = 4;
const COMMITTED: u8 = 5;

/// What the records say, in memory: where each live entry is in the file and the latest vote,
/// committed id and purge mark, as their log store encoded them.
#[derive(Debug, Default)]
struct Index {
    entries: BTreeMap<u64, Slot>,
    /// Bytes of the records of live entries, to tell when a rewrite pays.
    live: u64,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    purged: Option<(u64, Vec<u8>)>,
}

/// The Raft log's file and its [`Index`].
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    file: File,
    /// The end of the last whole record: where the next one goes.
    end: u64,
    /// The file's size: zeros from `end` on.
    allocated: u64,
    index: Index,
    /// Set when a write failed part-way: what is in memory may no longer be what is on disk, so
    /// nothing more is written or read (the replica's Raft stops on the error and a restart replays
    /// the file).
    broken: Option<String>,
}

impl Wal {
    /// Whether `dir` holds a log file.
    pub fn exists(dir: &Path) -> bool {
        dir.join(FILE).exists()
    }

    /// Opens the log in `dir`, creating the directory and an empty log if there is none, and replays it.
    pub fn open(dir: &Path) -> Result<Wal, RaftStoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| RaftStoreError::io("create the Raft log's directory", e))?;
        // A rewrite that did not get renamed into place: the old file is whole.
        match std::fs::remove_file(dir.join(REWRITE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(RaftStoreError::io(
                    "remove an unfinished rewrite of the Raft log",
                    e,
                ));
            }
            _ => {}
        }
        let path = dir.join(FILE);
        if !path.exists() {
            replace_with(dir, None, None, None, &[])?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| RaftStoreError::io("open the Raft log's file", e))?;
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            file,
            end: 0,
            allocated: 0,
            index: Index::default(),
            broken: None,
        };
        wal.replay()?;
        Ok(wal)
    }

    /// Creates the log in `dir` (which must have none) holding what an older store kept, synced
    /// before it is in place.
    pub fn create(
        dir: &Path,
        vote: Option<Vec<u8>>,
        committed: Option<Vec<u8>>,
        purged: Option<(u64, Vec<u8>)>,
        entries: Vec<(u64, Vec<u8>)>,
    ) -> Result<Wal, RaftStoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| RaftStoreError::io("create the Raft log's directory", e))?;
        replace_with(
            dir,
            vote.as_deref(),
            committed.as_deref(),
            purged.as_ref().map(|(i, m)| (*i, m.as_slice())),
            &entries,
        )?;
        Wal::open(dir)
    }

    /// The latest vote written.
    pub fn vote(&self) -> Option<&[u8]> {
        self.index.vote.as_deref()
    }

    /// The latest committed id written.
    pub fn committed(&self) -> Option<&[u8]> {
        self.index.committed.as_deref()
    }

    /// The latest purge: up to which index, and its mark.
    pub fn purged(&self) -> Option<(u64, &[u8])> {
        self.index.purged.as_ref().map(|(i, m)| (*i, m.as_slice()))
    }

    /// The index of the first live entry.
    pub fn first_index(&self) -> Option<u64> {
        self.index.entries.first_key_value().map(|(i, _)| *i)
    }

    /// The index of the last live entry.
    pub fn last_index(&self) -> Option<u64> {
        self.index.entries.last_key_value().map(|(i, _)| *i)
    }

    /// The first and last live index within `start..end`, if the log is usable and any entry lies
    /// there (the range may still have holes: only openraft's storage suite writes any).
    pub fn live_range(&self, start: Bound<u64>, end: Bound<u64>) -> Option<(u64, u64)> {
        self.usable().ok()?;
        let first = match start {
            Bound::Included(s) => s,
            Bound::Excluded(s) => s.checked_add(1)?,
            Bound::Unbounded => 0,
        }
        .max(self.first_index()?);
        let last = match end {
            Bound::Included(e) => e,
            Bound::Excluded(e) => e.checked_sub(1)?,
            Bound::Unbounded => u64::MAX,
        }
        .min(self.last_index()?);
        (first <= last).then_some((first, last))
    }

    /// The length of the log's records, for the tests and the benchmark (the file itself is longer:
    /// it is grown ahead with zeros).
    pub fn file_len(&self) -> u64 {
        self.end
    }

    /// Writes `entries` (index and bytes; an index already held is replaced, as in a map: openraft
    /// appends after the last entry, its storage suite anywhere) and syncs.
    pub fn append(
        &mut self,
        entries: impl IntoIterator<Item = (u64, Vec<u8>)>,
    ) -> Result<(), RaftStoreError> {
        self.append_with(entries, true)
    }

    /// Writes `entries` as [`Wal::append`] does, without the sync: they are readable at once and
    /// durable only after a [`Syncer::sync`] started after this returned (or any later synced write).
    pub fn append_unsynced(
        &mut self,
        entries: impl IntoIterator<Item = (u64, Vec<u8>)>,
    ) -> Result<(), RaftStoreError> {
        self.append_with(entries, false)
    }

    /// What syncs this log's file from another thread, without its lock.
    pub fn syncer(&self) -> Result<Syncer, RaftStoreError> {
        self.usable()?;
        self.file
            .try_clone()
            .map(Syncer)
            .map_err(|e| RaftStoreError::io("open the Raft log's file again for a sync", e))
    }

    /// Marks the log unusable after a sync that failed elsewhere ([`Syncer`]): what the file holds
    /// is then unknown, and only a restart, which replays it, may use it again.
    pub fn sync_failed(&mut self, why: &str) {
        self.broken
            .get_or_insert_with(|| format!("a sync failed: {why}"));
    }

    fn append_with(
        &mut self,
        entries: impl IntoIterator<Item = (u64, Vec<u8>)>,
        sync: bool,
    ) -> Result<(), RaftStoreError> {
        self.usable()?;
        let mut buf = Vec::new();
        let mut slots = Vec::new();
        for (index, bytes) in entries {
            let at = self.end + buf.len() as u64;
            let len = encode(&mut buf, ENTRY, &index.to_le_bytes(), &bytes)?;
            slots.push((index, Slot { at, len }));
        }
        if slots.is_empty() {
            return Ok(());
        }
        self.write(&buf, sync)?;
        for (index, slot) in slots {
            self.index.put(index, slot);
        }
        Ok(())
    }

    /// Removes the entries from `index` on, durably.
    pub fn truncate(&mut self, index: u64) -> Result<(), RaftStoreError> {
        self.write_record(TRUNCATE, &index.to_le_bytes(), &[], true)?;
        self.index.cut_from(index);
        Ok(())
    }

    /// Removes the entries up to `index` and records `mark` as the purge, durably; rewrites the file
    /// when most of it is dead.
    pub fn purge(&mut self, index: u64, mark: Vec<u8>) -> Result<(), RaftStoreError> {
        self.write_record(PURGE, &index.to_le_bytes(), &mark, true)?;
        self.index.cut_to(index);
        self.index.purged = Some((index, mark));
        let live = self.index.live;
        if self.end - live > live + REWRITE_SLACK {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Records the vote, durably.
    pub fn set_vote(&mut self, vote: Vec<u8>) -> Result<(), RaftStoreError> {
        self.write_record(VOTE, &[], &vote, true)?;
        self.index.vote = Some(vote);
        Ok(())
    }

    /// Records the committed id, without a sync of its own: the next durable write carries it.
    pub fn set_committed(&mut self, committed: Vec<u8>) -> Result<(), RaftStoreError> {
        self.write_record(COMMITTED, &[], &committed, false)?;
        self.index.committed = Some(committed);
        Ok(())
    }

    /// The live entries with an index in `start..end`, in order, each with its checksum checked.
    pub fn read(
        &self,
        range: impl std::ops::RangeBounds<u64>,
    ) -> Result<Vec<(u64, Vec<u8>)>, RaftStoreError> {
        self.usable()?;
        self.index
            .entries
            .range(range)
            .map(|(index, slot)| Ok((*index, self.read_entry(*index, *slot)?)))
            .collect()
    }

    fn read_entry(&self, index: u64, slot: Slot) -> Result<Vec<u8>, RaftStoreError> {
        let mut record = vec![0u8; slot.bytes_on_disk() as usize];
        self.file
            .read_exact_at(&mut record, slot.at)
            .map_err(|e| RaftStoreError::io("read the Raft log's file", e))?;
        let what = || format!("Raft log entry {index}");
        let (kind, body) = decode(&record).ok_or_else(|| {
            RaftStoreError::corrupt(what(), "its bytes changed on disk since they were written")
        })?;
        if kind != ENTRY || body.len() < 8 || body[..8] != index.to_le_bytes() {
            return Err(RaftStoreError::corrupt(
                what(),
                "its record changed on disk",
            ));
        }
        Ok(body[8..].to_vec())
    }

    fn usable(&self) -> Result<(), RaftStoreError> {
        match &self.broken {
            None => Ok(()),
            Some(why) => Err(RaftStoreError::Io {
                op: "use the Raft log",
                reason: format!(
                    "an earlier write failed ({why}), so the log in memory may not be what is on \
                     disk; restart the replica, which replays the file"
                ),
            }),
        }
    }

    /// Writes one record at the end (and syncs if `sync`), unless an earlier write failed.
    fn write_record(
        &mut self,
        kind: u8,
        prefix: &[u8],
        body: &[u8],
        sync: bool,
    ) -> Result<(), RaftStoreError> {
        self.usable()?;
        let mut buf = Vec::new();
        encode(&mut buf, kind, prefix, body)?;
        self.write(&buf, sync)
    }

    /// Writes `buf` at the end and, if `sync`, waits until it is on stable storage.
    fn write(&mut self, buf: &[u8], sync: bool) -> Result<(), RaftStoreError> {
        let need = self.end + buf.len() as u64;
        if need > self.allocated {
            self.grow(need + GROW)?;
        }
        let written = self
            .file
            .write_all_at(buf, self.end)
            .and_then(|()| if sync { timed_sync(&self.file) } else { Ok(()) });
        match written {
            Ok(()) => {
                self.end += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Whatever part of `buf` reached the file is zeroed again if it can be; in any case
                // nothing more is done with this log until a restart replays the file.
                let _ = self.file.write_all_at(&vec![0; buf.len()], self.end);
                self.broken = Some(e.to_string());
                Err(RaftStoreError::io("write the Raft log's file", e))
            }
        }
    }

    /// Grows the file with zeros to `size`, synced.
    fn grow(&mut self, size: u64) -> Result<(), RaftStoreError> {
        match record_file::grow(&self.file, self.allocated, size) {
            Ok(()) => {
                self.allocated = size;
                Ok(())
            }
            Err(e) => {
                self.broken = Some(e.to_string());
                Err(RaftStoreError::io("grow the Raft log's file", e))
            }
        }
    }

    /// Replays the file into the index; zeroes a record cut short at the end of the log.
    fn replay(&mut self) -> Result<(), RaftStoreError> {
        let file_len = self
            .file
            .metadata()
            .map_err(|e| RaftStoreError::io("read the Raft log's file", e))?
            .len();
        let handle = self
            .file
            .try_clone()
            .map_err(|e| RaftStoreError::io("read the Raft log's file", e))?;
        let mut index = Index::default();
        let ending = scan(
            BufReader::with_capacity(1 << 20, handle),
            file_len,
            &mut index,
        )?;
        self.index = index;
        self.allocated = file_len;
        self.end = match ending {
            Ending::Clean(end) => end,
            Ending::Torn { at, until } => {
                self.drop_tail(at, until)?;
                at
            }
        };
        Ok(())
    }

    /// Zeroes `at..until`, what a write that never completed left.
    fn drop_tail(&mut self, at: u64, until: u64) -> Result<(), RaftStoreError> {
        tracing::warn!(
            offset = at,
            bytes = until - at,
            "the Raft log's file ends in a record cut short, left by a write that was never \
             acknowledged (a crash or power cut during it); zeroing it"
        );
        self.file
            .write_all_at(&vec![0; (until - at) as usize], at)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| RaftStoreError::io("zero a partly written record of the Raft log", e))
    }

    /// Writes the live state to a new file, syncs it and renames it over the old one.
    fn rewrite(&mut self) -> Result<(), RaftStoreError> {
        let mut entries = Vec::with_capacity(self.index.entries.len());
        for (index, slot) in &self.index.entries {
            entries.push((*index, self.read_entry(*index, *slot)?));
        }
        replace_with(
            &self.dir,
            self.index.vote.as_deref(),
            self.index.committed.as_deref(),
            self.index.purged.as_ref().map(|(i, m)| (*i, m.as_slice())),
            &entries,
        )?;
        let fresh = Wal::open(&self.dir)?;
        let before = self.end;
        *self = fresh;
        tracing::info!(
            before,
            after = self.end,
            entries = self.index.entries.len(),
            "rewrote the Raft log's file without its purged entries"
        );
        Ok(())
    }
}

impl Index {
    fn put(&mut self, index: u64, slot: Slot) {
        self.live += slot.bytes_on_disk();
        if let Some(old) = self.entries.insert(index, slot) {
            self.live -= old.bytes_on_disk();
        }
    }

    fn cut_from(&mut self, index: u64) {
        let gone = self.entries.split_off(&index);
        self.live -= gone.values().map(Slot::bytes_on_disk).sum::<u64>();
    }

    fn cut_to(&mut self, index: u64) {
        let kept = self.entries.split_off(&index.saturating_add(1));
        let gone = std::mem::replace(&mut self.entries, kept);
        self.live -= gone.values().map(Slot::bytes_on_disk).sum::<u64>();
    }

    fn replay_record(&mut self, kind: u8, body: &[u8], slot: Slot) -> Result<(), String> {
        let index = || {
            body.get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .ok_or_else(|| "is too short for its kind".to_string())
        };
        match kind {
            ENTRY => self.put(index()?, slot),
            TRUNCATE => self.cut_from(index()?),
            PURGE => {
                let index = index()?;
                self.cut_to(index);
                self.purged = Some((index, body[8..].to_vec()));
            }
            VOTE => self.vote = Some(body.to_vec()),
            COMMITTED => self.committed = Some(body.to_vec()),
            other => return Err(format!("is of unknown kind {other}")),
        }
        Ok(())
    }
}

/// Reads the records of a log file of `file_len` bytes from `reader` into `index`: pure, so that the
/// fuzzer runs it on any bytes (`crate::fuzzing::raft_log`).
fn scan(
    reader: impl std::io::BufRead,
    file_len: u64,
    index: &mut Index,
) -> Result<Ending, RaftStoreError> {
    record_file::scan(reader, file_len, HEADER, |kind, body, slot| {
        index.replay_record(kind, body, slot)
    })
    .map_err(|e| match e {
        ScanError::Io(e) => RaftStoreError::io("read the Raft log's file", e),
        ScanError::Corrupt(why) => RaftStoreError::corrupt("the Raft log's file", why),
    })
}

/// Syncs a [`Wal`]'s file without holding the log: every write that returned before
/// [`Syncer::sync`] was called is durable when it returns `Ok`. The file of a log rewritten since
/// is synced to no purpose, and harmlessly: the rewrite synced its new file before it took its place.
#[derive(Debug)]
pub struct Syncer(File);

impl Syncer {
    pub fn sync(&self) -> std::io::Result<()> {
        timed_sync(&self.0)
    }
}

/// `fdatasync` of the log's file after a record that must be durable (an append's entries, and the
/// rare vote, truncation and purge), timed as the `log_sync` phase, as etcd's
/// `etcd_disk_wal_fsync_duration_seconds` times every sync of its WAL.
fn timed_sync(file: &File) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    let synced = file.sync_data();
    crate::observe::global().commit_phase("log_sync", started.elapsed());
    synced
}

/// Replays `file` (a whole log file's bytes) and reads back every live entry as the log store
/// would: for the fuzzer. Returns the entries' indexes and bytes, or what the file was refused for.
#[cfg(feature = "fuzzing")]
pub fn replay_bytes(file: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, RaftStoreError> {
    let mut index = Index::default();
    scan(file, file.len() as u64, &mut index)?;
    index
        .entries
        .iter()
        .map(|(i, slot)| {
            let start = usize::try_from(slot.at).unwrap_or(usize::MAX);
            let record = start
                .checked_add(slot.bytes_on_disk() as usize)
                .and_then(|end| file.get(start..end))
                .ok_or_else(|| RaftStoreError::corrupt("an entry", "past the end"))?;
            let (_, body) =
                decode(record).ok_or_else(|| RaftStoreError::corrupt("an entry", "checksum"))?;
            Ok((*i, body[8..].to_vec()))
        })
        .collect()
}

/// Appends one record to `buf`; returns its `len`.
fn encode(buf: &mut Vec<u8>, kind: u8, prefix: &[u8], body: &[u8]) -> Result<u32, RaftStoreError> {
    record_file::encode(buf, kind, prefix, body)
        .ok_or_else(|| RaftStoreError::io("append to the Raft log", "an entry of 4 GiB or more"))
}

/// Writes records to a new file.
struct NewFile(BufWriter<File>);

impl NewFile {
    fn record(&mut self, kind: u8, prefix: &[u8], body: &[u8]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(RECORD_HEADER as usize + 1 + prefix.len() + body.len());
        encode(&mut buf, kind, prefix, body).map_err(std::io::Error::other)?;
        self.0.write_all(&buf)
    }
}

/// Writes a log file holding exactly this state beside the log (`REWRITE`), syncs it, and renames it
/// over the log or into place: a crash at any point leaves the old file (or none) whole, and an
/// unfinished new one that `Wal::open` removes.
fn replace_with(
    dir: &Path,
    vote: Option<&[u8]>,
    committed: Option<&[u8]>,
    purged: Option<(u64, &[u8])>,
    entries: &[(u64, Vec<u8>)],
) -> Result<(), RaftStoreError> {
    let tmp = dir.join(REWRITE);
    let written = (|| {
        let mut out = NewFile(BufWriter::new(File::create(&tmp)?));
        out.0.write_all(HEADER)?;
        if let Some(v) = vote {
            out.record(VOTE, &[], v)?;
        }
        if let Some(c) = committed {
            out.record(COMMITTED, &[], c)?;
        }
        if let Some((index, mark)) = purged {
            out.record(PURGE, &index.to_le_bytes(), mark)?;
        }
        for (index, bytes) in entries {
            out.record(ENTRY, &index.to_le_bytes(), bytes)?;
        }
        let file = out.0.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, dir.join(FILE))?;
        sync_dir(dir)
    })();
    written.map_err(|e| RaftStoreError::io("write a new Raft log file", e))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
