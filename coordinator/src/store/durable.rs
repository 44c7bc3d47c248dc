//! `DurableFlush`: sled's `flush`, then what makes it durable.
//!
//! sled 0.34's `Db::flush` writes its log buffers with `pwrite` and waits for them with
//! `sync_file_range` (pagecache/iobuf.rs), which writes the pages but neither the file's size nor the
//! disk's volatile write cache (sync_file_range(2): "there are no guarantees that the data will be
//! available after a crash"); sled's background thread (which `SledStore::open` turns off) calls `fsync`
//! only every 500 ms. Values larger
//! than a quarter of a segment (128 KiB: a large manifest, a snapshot) go to files under `blobs/`,
//! which sled never syncs at all. Raft acknowledges an entry as durable, and answers a vote, only after
//! the flush returns, so a power cut (which the host controls) could take back an acknowledged entry
//! from a majority: a committed transition lost, a rollback. After sled's flush, this `fdatasync`s
//! sled's log file and every blob file created since the last call, and the `blobs/` directory when
//! there were any (the new names must survive too).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// sled's database with a flush that returns only once everything flushed is on stable storage.
/// Cloning shares the file handles.
#[derive(Debug, Clone)]
pub struct DurableFlush {
    db: sled::Db,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// sled's one log file (`<dir>/db`).
    log: File,
    blobs: PathBuf,
    /// Blob files already synced, with the length they had when synced: sled writes a blob once,
    /// front to back, so one still being written (by a write this flush does not cover) is synced
    /// again once it grew. Serializes the syncs too: a flush that returns has seen every blob file
    /// that existed when it began synced, whoever synced it.
    synced_blobs: Mutex<HashSet<(OsString, u64)>>,
}

impl DurableFlush {
    /// For the sled database `db` opened at `dir`.
    pub fn new(db: sled::Db, dir: &Path) -> std::io::Result<DurableFlush> {
        let log = File::open(dir.join("db"))?;
        let blobs = dir.join("blobs");
        // Blobs that exist at open were written by an earlier process: sync them once now, since
        // nothing says that process did.
        let flush = DurableFlush {
            db,
            inner: Arc::new(Inner {
                log,
                blobs,
                synced_blobs: Mutex::new(HashSet::new()),
            }),
        };
        flush.sync_new_blobs()?;
        Ok(flush)
    }

    /// sled's flush, then `fdatasync` of its log file and of every new blob file. Returns once all
    /// that was written to the database before the call is on stable storage.
    pub fn flush(&self) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::other)?;
        self.inner.log.sync_data()?;
        self.sync_new_blobs()
    }

    fn sync_new_blobs(&self) -> std::io::Result<()> {
        let mut synced = self
            .inner
            .synced_blobs
            .lock()
            // A set of names stays valid whatever a panicking holder did.
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entries = match std::fs::read_dir(&self.inner.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut any = false;
        let mut present = HashSet::new();
        // sled removes blob files it no longer needs (a value overwritten or deleted, garbage
        // collection) at any time, also between this listing and the sync: a file gone is not
        // needed to recover anything, so it is skipped rather than failing the flush.
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        for entry in entries {
            let entry = entry?;
            // The length before the sync: whatever is written after it is synced by a later flush.
            let len = match entry.metadata() {
                Ok(m) => m.len(),
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            let key = (entry.file_name(), len);
            if !synced.contains(&key) {
                match File::open(entry.path()).and_then(|f| f.sync_data()) {
                    Ok(()) => any = true,
                    Err(e) if gone(&e) => continue,
                    Err(e) => return Err(e),
                }
            }
            present.insert(key);
        }
        if any {
            File::open(&self.inner.blobs)?.sync_all()?;
        }
        // Names sled removed are forgotten, so the set does not grow with garbage collection.
        *synced = present;
        Ok(())
    }
}

/// How long `FlushSoon` waits before it flushes: writes in that time share the flush, and its syncs
/// do not queue on the file system beside every commit's Raft log sync.
const FLUSH_LAG: std::time::Duration = std::time::Duration::from_millis(200);

/// A [`DurableFlush`] made by a background thread shortly after it is asked for, once for all the
/// requests that came meanwhile: for writes that are durable elsewhere already (the state machine's,
/// whose entries are in the Raft log) and only must not stay unflushed for long. The thread ends,
/// after a last flush if one was asked for, when this value is dropped.
#[derive(Debug)]
pub struct FlushSoon {
    /// None if the thread could not be started: then each request flushes at once.
    requests: Option<std::sync::mpsc::SyncSender<()>>,
    flush: DurableFlush,
}

impl FlushSoon {
    pub fn new(flush: DurableFlush) -> FlushSoon {
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let background = flush.clone();
        let started = std::thread::Builder::new()
            .name("concord-flush".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    std::thread::sleep(FLUSH_LAG);
                    while rx.try_recv().is_ok() {}
                    if let Err(e) = background.flush() {
                        tracing::warn!(error = %e, "the background flush of the store failed; the Raft log still holds what it would have made durable, and the next flush tries again");
                    }
                }
            });
        let requests = match started {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the background flush thread; flushing at each write instead");
                None
            }
        };
        FlushSoon { requests, flush }
    }

    /// Asks for a flush soon; returns at once.
    pub fn request(&self) {
        match &self.requests {
            // Full: a flush is asked for already, and it covers this write.
            Some(tx) => drop(tx.try_send(())),
            None => {
                if let Err(e) = self.flush.flush() {
                    tracing::warn!(error = %e, "flushing the store failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_syncs_the_log_and_each_new_blob_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let flush = DurableFlush::new(db.clone(), dir.path()).unwrap();
        db.insert(b"small", &b"x"[..]).unwrap();
        flush.flush().unwrap();
        // Above sled's blob threshold (a quarter of its 512 KiB segments).
        db.insert(b"large", vec![7u8; 300 << 10]).unwrap();
        flush.flush().unwrap();
        let blobs = flush.inner.synced_blobs.lock().unwrap().len();
        assert!(blobs >= 1, "the large value's blob file was synced");
        drop(flush);
        drop(db);
        let db = sled::open(dir.path()).unwrap();
        assert_eq!(db.get(b"large").unwrap().unwrap().len(), 300 << 10);
    }

    #[test]
    fn a_flush_asked_for_soon_is_made_by_the_background_thread() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let flush = DurableFlush::new(db.clone(), dir.path()).unwrap();
        let soon = FlushSoon::new(flush.clone());
        db.insert(b"large", vec![7u8; 300 << 10]).unwrap();
        soon.request();
        soon.request();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while flush.inner.synced_blobs.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "no background flush");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
