//! `SledStore`: the store on disk: one sled tree, and the history's content-addressed records
//! (manifests, policy documents, transition records) in an [`ObjectFile`] beside it, which keeps
//! only an index in memory (`objects.rs` says why).
//!
//! A batch is applied with sled's atomic `apply_batch` and acknowledged only after a durable flush
//! returns (`DurableFlush`: sled's flush, then `fdatasync`), so an acknowledged write survives a
//! crash. A batch's objects are written (and synced) first, its deletes of objects last, once the
//! sled writes that stop naming them are durable: the objects are not part of sled's atomic batch,
//! and need not be, since an object no stored history names is never read. Neither sled nor the
//! objects file is trusted for integrity: a host can edit both.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// sled's page cache. Its default (1 GiB) let a replica with a long history grow far past the
/// chart's 256 Mi memory limit. sled enforces it only loosely (`objects.rs`), which is why the
/// history's bulk is no longer in sled.
pub const CACHE_BYTES: u64 = 16 << 20;

/// How long `open` waits for a lock that a closing process still holds.
pub const LOCK_WAIT: Duration = Duration::from_secs(3);

fn is_lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

use super::objects::{ObjectFile, ObjectKey};
use super::{DurableFlush, Key, Records, Store, StoreError, Write};

/// A [`Store`] on a sled database and an objects file.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    durable: DurableFlush,
    objects: Arc<ObjectFile>,
}

/// A batch split by where its writes go.
#[derive(Default)]
struct Split {
    puts: Vec<(ObjectKey, Vec<u8>)>,
    deletes: Vec<ObjectKey>,
    sled: Vec<Write>,
}

fn split(batch: Vec<Write>) -> Split {
    let mut out = Split::default();
    for write in batch {
        match write {
            Write::Put(k, v) => match ObjectKey::of(&k) {
                Some(o) => out.puts.push((o, v)),
                None => out.sled.push(Write::Put(k, v)),
            },
            Write::Delete(k) => match ObjectKey::of(&k) {
                Some(o) => out.deletes.push(o),
                None => out.sled.push(Write::Delete(k)),
            },
        }
    }
    out
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
                    let sled_ms = start.elapsed().as_millis() as u64;
                    let durable =
                        DurableFlush::new(db.clone(), dir).map_err(|e| StoreError::Open {
                            path: dir.display().to_string(),
                            reason: format!("cannot open sled's files to sync them: {e}"),
                        })?;
                    let scanning = Instant::now();
                    let objects = Arc::new(ObjectFile::open(dir)?);
                    let objects_ms = scanning.elapsed().as_millis() as u64;
                    let store = SledStore {
                        db,
                        durable,
                        objects,
                    };
                    store.move_objects_out_of_sled()?;
                    tracing::info!(
                        sled_ms,
                        objects_ms,
                        total_ms = start.elapsed().as_millis() as u64,
                        "opened the store (sled: its database opened and recovered; objects: the \
                         history's objects file scanned and checked)"
                    );
                    return Ok(store);
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

    /// The history's content-addressed records.
    pub fn objects(&self) -> &ObjectFile {
        &self.objects
    }

    /// Moves the objects and transition records a store written before the objects file keeps in
    /// sled into the objects file (synced), then removes them from sled (durably). A crash
    /// between the two leaves them in both, and the next open moves them again.
    fn move_objects_out_of_sled(&self) -> Result<(), StoreError> {
        let read = |e: sled::Error| StoreError::Io {
            op: "read the history's records to move them out of sled",
            reason: e.to_string(),
        };
        let mut moved = Vec::new();
        let mut keys = Vec::new();
        for prefix in [
            &Key::Object(crate::hash::Hash::ZERO).encode()[..4],
            Key::TRANSITION_PREFIX,
        ] {
            for entry in self.db.scan_prefix(prefix) {
                let (k, v) = entry.map_err(read)?;
                if let Some(o) = ObjectKey::decode_key(&k) {
                    moved.push((o, v.to_vec()));
                    keys.push(k);
                }
            }
        }
        if moved.is_empty() {
            return Ok(());
        }
        let records = moved.len();
        self.objects.write(moved, &[])?;
        let mut batch = sled::Batch::default();
        for k in keys {
            batch.remove(k);
        }
        self.sled_batch(batch)?;
        tracing::info!(
            records,
            "moved the history's manifests and transition records from sled into its objects file"
        );
        Ok(())
    }

    /// Writes `batch`'s objects (synced); returns its other writes and its deletes of objects.
    fn put_objects(&self, batch: Vec<Write>) -> Result<(Vec<Write>, Vec<ObjectKey>), StoreError> {
        let Split {
            puts,
            deletes,
            sled,
        } = split(batch);
        self.objects.write(puts, &[])?;
        Ok((sled, deletes))
    }

    /// One sled batch (atomic), then a durable flush.
    fn sled_batch(&self, batch: sled::Batch) -> Result<(), StoreError> {
        self.db.apply_batch(batch).map_err(|e| StoreError::Io {
            op: "write a batch",
            reason: e.to_string(),
        })?;
        self.durable.flush().map_err(|e| StoreError::Io {
            op: "flush to disk",
            reason: e.to_string(),
        })
    }

    /// Writes `value` under `key` without any check: for tests that play a hostile host.
    #[doc(hidden)]
    pub fn tamper_put(&self, key: &Key, value: &[u8]) -> Result<(), StoreError> {
        self.apply(vec![Write::Put(key.clone(), value.to_vec())])
    }
}

impl Store for SledStore {
    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(o) = ObjectKey::of(key) {
            return self.objects.get(&o);
        }
        self.db
            .get(key.encode())
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| StoreError::Io {
                op: "read",
                reason: e.to_string(),
            })
    }

    /// The objects (synced), then one sled batch (atomic) and a durable flush, then the deletes of
    /// objects.
    fn apply(&self, batch: Vec<Write>) -> Result<(), StoreError> {
        let (sled, deletes) = self.put_objects(batch)?;
        let mut b = sled::Batch::default();
        for write in sled {
            match write {
                Write::Put(k, v) => b.insert(k.encode(), v),
                Write::Delete(k) => b.remove(k.encode()),
            }
        }
        self.sled_batch(b)?;
        self.objects.write(Vec::new(), &deletes)
    }

    fn objects_ahead(&self) -> Option<super::ObjectsAhead> {
        Some(super::ObjectsAhead(self.objects.clone()))
    }

    fn transition_records(
        &self,
        first: std::ops::RangeInclusive<u8>,
    ) -> Result<Option<Records>, StoreError> {
        let records = self.objects.transitions(&first)?;
        Ok(Some(
            records
                .into_iter()
                .map(|(h, v)| (h.as_bytes().to_vec(), v))
                .collect(),
        ))
    }

    /// Each write on its own, in order, not flushed: sled writes its log in order and recovers a
    /// prefix of it, so a later flush (of any tree of this database) makes them durable with everything
    /// written before them. Not a sled batch: sled seals its current IO buffer and hands it to its IO
    /// threads at the start and end of every batch (`PageCache::pin_log`), which woke a thread and
    /// started a write and a `sync_file_range` on every apply of the state machine, on the commit's
    /// path (issue 11.3: 0.3 to 0.4 ms per batch on two shared cores, 13 us on idle ones).
    ///
    /// The batch's objects are written first and synced (`objects.rs`): sled may write its own
    /// buffers to disk at any time, and the history it names must never reach the disk before the
    /// records it names. Deletes of objects wait for a durable flush of sled's writes.
    fn apply_unflushed(&self, batch: Vec<Write>) -> Result<(), StoreError> {
        let (sled, deletes) = self.put_objects(batch)?;
        for write in sled {
            let written = match write {
                Write::Put(k, v) => self.db.insert(k.encode(), v).map(drop),
                Write::Delete(k) => self.db.remove(k.encode()).map(drop),
            };
            written.map_err(|e| StoreError::Io {
                op: "write",
                reason: e.to_string(),
            })?;
        }
        if !deletes.is_empty() {
            self.durable.flush().map_err(|e| StoreError::Io {
                op: "flush to disk",
                reason: e.to_string(),
            })?;
            self.objects.write(Vec::new(), &deletes)?;
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

    /// A store written before the objects file (its manifests and transition records in sled)
    /// opens with them moved into the objects file, once, and reads the same.
    #[test]
    fn records_an_older_store_kept_in_sled_are_moved_to_the_objects_file() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = Key::Object(Hash::of(b"m"));
        let transition = Key::Transition(Hash([3; 32]));
        {
            let store = SledStore::open(dir.path()).unwrap();
            // As an older build wrote them: straight into sled's tree.
            for (k, v) in [
                (&manifest, &b"m"[..]),
                (&transition, b"t"),
                (&Key::Latest, b"l"),
            ] {
                store.db().insert(k.encode(), v).unwrap();
            }
            store.durable().flush().unwrap();
        }
        for _ in 0..2 {
            let store = SledStore::open(dir.path()).unwrap();
            assert_eq!(store.get(&manifest).unwrap(), Some(b"m".to_vec()));
            assert_eq!(store.get(&transition).unwrap(), Some(b"t".to_vec()));
            assert_eq!(store.get(&Key::Latest).unwrap(), Some(b"l".to_vec()));
            assert_eq!(store.db().get(manifest.encode()).unwrap(), None);
            assert_eq!(store.db().get(transition.encode()).unwrap(), None);
            assert_eq!(
                store.transition_records(0..=255).unwrap(),
                Some(vec![(vec![3; 32], b"t".to_vec())])
            );
        }
    }

    /// A batch's objects are in the objects file, its other writes in sled, and a delete of an
    /// object holds across a reopen.
    #[test]
    fn objects_go_to_their_file_and_deletes_hold() {
        let dir = tempfile::tempdir().unwrap();
        let object = Key::Object(Hash::of(b"x"));
        {
            let store = SledStore::open(dir.path()).unwrap();
            store
                .apply(vec![
                    Write::Put(object.clone(), b"x".to_vec()),
                    Write::Put(Key::Latest, vec![1; 32]),
                ])
                .unwrap();
            assert_eq!(store.db().get(object.encode()).unwrap(), None);
            assert!(store.db().get(Key::Latest.encode()).unwrap().is_some());
            store
                .apply_unflushed(vec![Write::Delete(object.clone())])
                .unwrap();
            assert_eq!(store.get(&object).unwrap(), None);
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.get(&object).unwrap(), None);
        assert_eq!(store.get(&Key::Latest).unwrap(), Some(vec![1; 32]));
    }

    #[test]
    fn a_directory_in_use_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another process"), "{err}");
    }
}
