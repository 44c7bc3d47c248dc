//! `SledStore`: the store on disk, in one sled tree.
//!
//! A batch is applied with sled's atomic `apply_batch` and acknowledged only after a durable flush
//! returns (`DurableFlush`: sled's flush, then `fdatasync`), so an acknowledged write survives a crash. sled is not trusted for integrity: a host can edit its files.

use std::path::Path;
use std::time::{Duration, Instant};

/// sled's page cache. Its default (1 GiB) let a replica with a long history (the manifests, the
/// Raft log and snapshots all live in this database) grow far past the chart's 256 Mi memory limit;
/// the hot paths keep what they need in memory (the latest manifest, the transitions), so the cache
/// only speeds up reads of old history (audit bundles, catching a follower up).
pub const CACHE_BYTES: u64 = 16 << 20;

/// How long `open` waits for a lock that a closing process still holds.
pub const LOCK_WAIT: Duration = Duration::from_secs(3);

fn is_lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

use super::{DurableFlush, Key, Records, Store, StoreError, Write};

/// A [`Store`] on a sled database.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    durable: DurableFlush,
}

impl SledStore {
    /// Opens (or creates) the database in `dir`. sled locks its files, and a process that just closed
    /// them may still hold the lock for a moment (its flusher thread), so a held lock is retried for
    /// up to `LOCK_WAIT` before giving up with an error that says another process may be using it.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let start = Instant::now();
        loop {
            match sled::Config::new()
                .path(dir)
                .cache_capacity(CACHE_BYTES)
                // No flusher thread of sled's own: it made nothing durable (`DurableFlush` says why)
                // and, every 500 ms, stalled writers behind its `sync_file_range` (a standalone
                // batch of a SetManifest's history writes: p99 1.1 ms with it, 0.25 ms without).
                // Every write is flushed by someone: `Store::apply` and snapshots durably at once,
                // the state machine's by `FlushSoon` shortly after.
                .flush_every_ms(None)
                .open()
            {
                Ok(db) => {
                    let durable =
                        DurableFlush::new(db.clone(), dir).map_err(|e| StoreError::Open {
                            path: dir.display().to_string(),
                            reason: format!("cannot open sled's files to sync them: {e}"),
                        })?;
                    return Ok(SledStore { db, durable });
                }
                Err(e) if is_lock_held(&e) && start.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    let hint = if is_lock_held(&e) {
                        "; another process (a second replica?) is using this data directory"
                    } else {
                        ""
                    };
                    return Err(StoreError::Open {
                        path: dir.display().to_string(),
                        reason: format!("{e}{hint}"),
                    });
                }
            }
        }
    }

    /// The sled database beneath this store. The Raft log and state machine (`crate::raft`) keep their
    /// own trees in it, so that one directory and one lock hold a replica's whole disk state; this
    /// store itself only ever uses the default tree.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The flush that returns once everything written is on stable storage (sled's own does not).
    pub fn durable(&self) -> &DurableFlush {
        &self.durable
    }

    /// Writes `value` under `key` without any check: for tests that play a hostile host.
    #[doc(hidden)]
    pub fn tamper_put(&self, key: &Key, value: &[u8]) -> Result<(), StoreError> {
        self.apply(vec![Write::Put(key.clone(), value.to_vec())])
    }
}

impl Store for SledStore {
    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get(key.encode())
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| StoreError::Io {
                op: "read",
                reason: e.to_string(),
            })
    }

    /// One sled batch (atomic), then a durable flush.
    fn apply(&self, batch: Vec<Write>) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for write in batch {
            match write {
                Write::Put(k, v) => b.insert(k.encode(), v),
                Write::Delete(k) => b.remove(k.encode()),
            }
        }
        self.db.apply_batch(b).map_err(|e| StoreError::Io {
            op: "write a batch",
            reason: e.to_string(),
        })?;
        self.durable.flush().map_err(|e| StoreError::Io {
            op: "flush to disk",
            reason: e.to_string(),
        })?;
        Ok(())
    }

    fn transition_records(
        &self,
        first: std::ops::RangeInclusive<u8>,
    ) -> Result<Option<Records>, StoreError> {
        let skip = Key::TRANSITION_PREFIX.len();
        let (from, to) = Key::transition_range(&first);
        self.db
            .range(from..to)
            .map(|entry| {
                entry
                    .map(|(k, v)| (k[skip..].to_vec(), v.to_vec()))
                    .map_err(|e| StoreError::Io {
                        op: "read the transitions",
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// Each write on its own, in order, not flushed: sled writes its log in order and recovers a
    /// prefix of it, so a later flush (of any tree of this database) makes them durable with everything
    /// written before them. Not a sled batch: sled seals its current IO buffer and hands it to its IO
    /// threads at the start and end of every batch (`PageCache::pin_log`), which woke a thread and
    /// started a write and a `sync_file_range` on every apply of the state machine, on the commit's
    /// path (issue 11.3: 0.3 to 0.4 ms per batch on two shared cores, 13 us on idle ones).
    fn apply_unflushed(&self, batch: Vec<Write>) -> Result<(), StoreError> {
        for write in batch {
            let written = match write {
                Write::Put(k, v) => self.db.insert(k.encode(), v).map(drop),
                Write::Delete(k) => self.db.remove(k.encode()).map(drop),
            };
            written.map_err(|e| StoreError::Io {
                op: "write",
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;

    #[test]
    fn a_batch_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store
                .apply(vec![
                    Write::Put(Key::Latest, vec![1; 32]),
                    Write::Put(Key::Object(Hash::of(b"x")), b"x".to_vec()),
                ])
                .unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.get(&Key::Latest).unwrap(), Some(vec![1; 32]));
        assert_eq!(
            store.get(&Key::Object(Hash::of(b"x"))).unwrap(),
            Some(b"x".to_vec())
        );
        assert_eq!(store.get(&Key::RootCa).unwrap(), None);
    }

    #[test]
    fn a_directory_in_use_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another process"), "{err}");
    }
}
