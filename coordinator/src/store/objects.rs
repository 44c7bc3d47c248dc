//! `ObjectFile`: the history's content-addressed records, in an append-only file beside sled's.
//!
//! It holds the manifests and policy documents under their SHA-256 ([`Key::Object`]) and the
//! transition records under their transition hash ([`Key::Transition`]): written once, never
//! changed, read in full at start-up and rarely after (audit bundles, snapshots, a lookup of an old
//! manifest).
//!
//! Why not in sled, as before (issue 11.4, memory): sled 0.34 keeps every page it reads in memory
//! until its cache evicts it, and its cache evicts only in a shard (one of 256) that took 64 reads
//! since it last looked. A start-up that reads every manifest and transition once stays below that
//! on a 10,000-transition history, so its whole history stayed resident after start-up: about
//! 21 MB, 2 KB per transition, whatever the cache's limit. Here only an index stays in memory (a
//! key and where its record is, under 100 bytes per record); a record is read with `pread` when
//! asked for and checked against its checksum, and the history layer checks it against its name.
//!
//! The format ([`crate::record_file`]), after the header `concord/objects1`: `PUT` records (body:
//! the key's kind byte, its 32-byte hash, the value) and `DELETE` records (the kind byte and the
//! hash). The latest record of a key counts. Nothing is ever compacted: the records are written
//! once each (a put of a value already held writes nothing), and deletes happen only when a
//! snapshot replaces the history, or in tests.
//!
//! Every write is synced (`fdatasync`) before it returns, into a file grown ahead with zeros, so the
//! sync commits no size change. [`super::SledStore`] writes a batch's objects before the sled writes
//! that name them, and deletes objects only once sled's writes that stop naming them are durable:
//! a crash at any point leaves every object the history in sled names, and perhaps some it does not
//! name, which nothing reads.
//!
//! The file is not trusted for integrity, only for availability, like everything on the host's disk.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use super::{Key, StoreError};
use crate::hash::Hash;
use crate::record_file::{self, Ending, ScanError, Slot};

/// The file's name in the store's directory.
pub const FILE: &str = "objects";
const HEADER: &[u8; 16] = b"concord/objects1";
/// How much the file grows ahead of its records at a time.
const GROW: u64 = 4 << 20;
const PUT: u8 = 1;
const DELETE: u8 = 2;
/// A record's kind byte and hash, before a put's value.
const NAME: usize = 33;

/// A key this file holds: a [`Key::Object`] or a [`Key::Transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKey {
    Object(Hash),
    Transition(Hash),
}

impl ObjectKey {
    /// The key this file holds `key` under, if it holds it.
    pub fn of(key: &Key) -> Option<ObjectKey> {
        match key {
            Key::Object(h) => Some(ObjectKey::Object(*h)),
            Key::Transition(h) => Some(ObjectKey::Transition(*h)),
            _ => None,
        }
    }

    /// The store's key, whose encoding a snapshot names it by.
    pub fn key(&self) -> Key {
        match self {
            ObjectKey::Object(h) => Key::Object(*h),
            ObjectKey::Transition(h) => Key::Transition(*h),
        }
    }

    /// The key whose [`Key::encode`] is `bytes`, if this file would hold it.
    pub fn decode_key(bytes: &[u8]) -> Option<ObjectKey> {
        let (object, transition) = (
            Key::Object(Hash::ZERO).encode(),
            Key::Transition(Hash::ZERO).encode(),
        );
        let hash = |prefix: usize| Hash::from_slice(&bytes[prefix..]).ok();
        if bytes.len() == object.len() && bytes.starts_with(&object[..object.len() - 32]) {
            hash(object.len() - 32).map(ObjectKey::Object)
        } else if bytes.len() == transition.len() && bytes.starts_with(Key::TRANSITION_PREFIX) {
            hash(Key::TRANSITION_PREFIX.len()).map(ObjectKey::Transition)
        } else {
            None
        }
    }

    fn name(&self) -> [u8; NAME] {
        let (kind, hash) = match self {
            ObjectKey::Object(h) => (1, h),
            ObjectKey::Transition(h) => (2, h),
        };
        let mut out = [0u8; NAME];
        out[0] = kind;
        out[1..].copy_from_slice(hash.as_bytes());
        out
    }

    fn from_name(name: &[u8]) -> Option<ObjectKey> {
        let hash = Hash::from_slice(name.get(1..NAME)?).ok()?;
        match name.first()? {
            1 => Some(ObjectKey::Object(hash)),
            2 => Some(ObjectKey::Transition(hash)),
            _ => None,
        }
    }
}

/// The file and its index.
#[derive(Debug)]
pub struct ObjectFile {
    file: File,
    /// Held by a write through its `fdatasync`: writes go one at a time, and a write that finds a
    /// value held already (written by the one before it) writes nothing.
    writer: Mutex<Writer>,
    /// Where each key's latest record is; held only to look up or to update, never across I/O, so
    /// reads do not wait for a write's sync.
    index: RwLock<HashMap<ObjectKey, Slot>>,
    /// Writes that reached the file (each with its sync), for the tests.
    syncs: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Writer {
    /// The end of the last whole record: where the next one goes.
    end: u64,
    /// The file's size: zeros from `end` on.
    allocated: u64,
    /// Set when a write failed part-way: nothing more is written until a restart replays the file.
    broken: Option<String>,
}

fn io(op: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        op,
        reason: e.to_string(),
    }
}

impl ObjectFile {
    /// Opens the file in `dir`, creating it if there is none, and replays it into the index.
    pub fn open(dir: &Path) -> Result<ObjectFile, StoreError> {
        let path = dir.join(FILE);
        let open = |path: &Path| OpenOptions::new().read(true).write(true).open(path);
        let file = match open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Written whole under another name, synced, then renamed into place: a crash
                // leaves no file, or a whole one.
                let tmp = dir.join(format!("{FILE}.new"));
                let created = (|| {
                    let file = File::create(&tmp)?;
                    file.write_all_at(HEADER, 0)?;
                    file.sync_all()?;
                    std::fs::rename(&tmp, &path)?;
                    File::open(dir)?.sync_all()?;
                    open(&path)
                })();
                created.map_err(|e| io("create the history's objects file", e))?
            }
            Err(e) => return Err(io("open the history's objects file", e)),
        };
        let objects = ObjectFile {
            file,
            writer: Mutex::new(Writer::default()),
            index: RwLock::new(HashMap::new()),
            syncs: std::sync::atomic::AtomicU64::new(0),
        };
        objects.replay()?;
        Ok(objects)
    }

    // A panicking holder leaves both whole: the index changes only after a write succeeded.
    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ObjectKey, Slot>> {
        self.index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ObjectKey, Slot>> {
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn replay(&self) -> Result<(), StoreError> {
        let len = self
            .file
            .metadata()
            .map_err(|e| io("read the history's objects file", e))?
            .len();
        let reader = self
            .file
            .try_clone()
            .map_err(|e| io("read the history's objects file", e))?;
        let mut index = HashMap::new();
        let ending = scan(BufReader::with_capacity(1 << 20, reader), len, &mut index)?;
        let end = match ending {
            Ending::Clean(end) => end,
            Ending::Torn { at, until } => {
                tracing::warn!(
                    offset = at,
                    bytes = until - at,
                    "the history's objects file ends in a record cut short, left by a write that \
                     never completed (a crash or power cut during it); zeroing it"
                );
                self.file
                    .write_all_at(&vec![0; (until - at) as usize], at)
                    .and_then(|()| self.file.sync_data())
                    .map_err(|e| io("zero a partly written record of the objects file", e))?;
                at
            }
        };
        *self.index_mut() = index;
        *self.writer() = Writer {
            end,
            allocated: len,
            broken: None,
        };
        Ok(())
    }

    /// The value stored under `key`, if any, its record's checksum checked.
    pub fn get(&self, key: &ObjectKey) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(slot) = self.index().get(key).copied() else {
            return Ok(None);
        };
        self.read(key, slot).map(Some)
    }

    fn read(&self, key: &ObjectKey, slot: Slot) -> Result<Vec<u8>, StoreError> {
        let mut record = vec![0u8; slot.bytes_on_disk() as usize];
        self.file
            .read_exact_at(&mut record, slot.at)
            .map_err(|e| io("read the history's objects file", e))?;
        value_of(key, slot, &record)
    }

    /// Writes `puts` (skipping any whose value is held already) and then `deletes`, and syncs.
    pub fn write(
        &self,
        puts: Vec<(ObjectKey, Vec<u8>)>,
        deletes: &[ObjectKey],
    ) -> Result<(), StoreError> {
        self.write_counted(puts, deletes, "store")
    }

    /// [`write`](Self::write) of records offered ahead of the apply that names them
    /// ([`super::ObjectsAhead`]), counted apart in `concord_history_records_total{path="ahead"}`.
    pub fn write_ahead(&self, puts: Vec<(ObjectKey, Vec<u8>)>) -> Result<(), StoreError> {
        self.write_counted(puts, &[], "ahead")
    }

    fn write_counted(
        &self,
        puts: Vec<(ObjectKey, Vec<u8>)>,
        deletes: &[ObjectKey],
        path: &'static str,
    ) -> Result<(), StoreError> {
        let mut writer = self.writer();
        if let Some(why) = &writer.broken {
            return Err(io(
                "write the history's objects file",
                format!(
                    "an earlier write failed ({why}); restart the replica, which replays the file"
                ),
            ));
        }
        let mut buf = Vec::new();
        let mut placed = Vec::new();
        let mut held_puts = 0;
        for (key, value) in puts {
            let held = self.index().get(&key).copied();
            if let Some(slot) = held
                && self.read(&key, slot).is_ok_and(|held| held == value)
            {
                held_puts += 1;
                continue;
            }
            let at = writer.end + buf.len() as u64;
            let len = record_file::encode(&mut buf, PUT, &key.name(), &value).ok_or_else(|| {
                io(
                    "write the history's objects file",
                    "a value of 4 GiB or more",
                )
            })?;
            placed.push((key, Some(Slot { at, len })));
        }
        for key in deletes {
            if self.index().contains_key(key) {
                record_file::encode(&mut buf, DELETE, &key.name(), &[])
                    .ok_or_else(|| io("write the history's objects file", "too long"))?;
                placed.push((*key, None));
            }
        }
        let metrics = crate::observe::global();
        metrics.history_records(path, "held", held_puts);
        if buf.is_empty() {
            return Ok(());
        }
        let need = writer.end + buf.len() as u64;
        let written = (|| {
            if need > writer.allocated {
                record_file::grow(&self.file, writer.allocated, need + GROW)?;
                writer.allocated = need + GROW;
            }
            self.file.write_all_at(&buf, writer.end)?;
            self.file.sync_data()
        })();
        if let Err(e) = written {
            // Whatever part of `buf` reached the file is zeroed again if it can be; in any case
            // nothing more is written until a restart replays the file.
            let _ = self.file.write_all_at(&vec![0; buf.len()], writer.end);
            writer.broken = Some(e.to_string());
            return Err(io("write the history's objects file", e));
        }
        writer.end = need;
        self.syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics.history_records(
            path,
            "written",
            placed.iter().filter(|(_, slot)| slot.is_some()).count() as u64,
        );
        let mut index = self.index_mut();
        for (key, slot) in placed {
            match slot {
                Some(slot) => index.insert(key, slot),
                None => index.remove(&key),
            };
        }
        Ok(())
    }

    /// How many writes reached the file (each synced) since it was opened.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where the file's records end (past it: the zeros it was grown with).
    pub fn end(&self) -> u64 {
        self.writer().end
    }

    /// Every key held, in key order.
    pub fn keys(&self) -> Vec<ObjectKey> {
        let mut keys: Vec<ObjectKey> = self.index().keys().copied().collect();
        keys.sort();
        keys
    }

    /// The transition records whose names start with a byte in `first`, in key order.
    pub fn transitions(
        &self,
        first: &std::ops::RangeInclusive<u8>,
    ) -> Result<Vec<(Hash, Vec<u8>)>, StoreError> {
        let mut slots: Vec<(Hash, Slot)> = self
            .index()
            .iter()
            .filter_map(|(key, slot)| match key {
                ObjectKey::Transition(h) if first.contains(&h.as_bytes()[0]) => Some((*h, *slot)),
                _ => None,
            })
            .collect();
        // In file order, which is the order they were written in: reads that move forward.
        slots.sort_by_key(|(_, slot)| slot.at);
        let mut out = slots
            .into_iter()
            .map(|(h, slot)| Ok((h, self.read(&ObjectKey::Transition(h), slot)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by_key(|a| a.0);
        Ok(out)
    }
}

/// The value `record` (the bytes at `slot`) holds for `key`, if it is whole and still names it.
fn value_of(key: &ObjectKey, slot: Slot, record: &[u8]) -> Result<Vec<u8>, StoreError> {
    match record_file::decode(record) {
        Some((PUT, body)) if body.len() >= NAME && body[..NAME] == key.name() => {
            Ok(body[NAME..].to_vec())
        }
        _ => Err(io(
            "read the history's objects file",
            format!(
                "the record of {key:?} at byte {} changed on disk since it was written",
                slot.at
            ),
        )),
    }
}

/// Scans `file` (a whole objects file's bytes) and reads back every live record as the store
/// would: for the fuzzer. Returns the keys and values, in key order, or what the file was refused
/// for.
#[cfg(feature = "fuzzing")]
pub fn replay_bytes(file: &[u8]) -> Result<Vec<(ObjectKey, Vec<u8>)>, StoreError> {
    let mut index = HashMap::new();
    scan(file, file.len() as u64, &mut index)?;
    let mut live: Vec<(ObjectKey, Slot)> = index.into_iter().collect();
    live.sort_by_key(|(key, _)| *key);
    live.into_iter()
        .map(|(key, slot)| {
            let start = usize::try_from(slot.at).unwrap_or(usize::MAX);
            let record = start
                .checked_add(slot.bytes_on_disk() as usize)
                .and_then(|end| file.get(start..end))
                .unwrap_or_default();
            value_of(&key, slot, record).map(|value| (key, value))
        })
        .collect()
}

/// Reads the records of an objects file of `file_len` bytes from `reader` into `index`: pure, so
/// that a fuzzer can run it on any bytes.
fn scan(
    reader: impl std::io::BufRead,
    file_len: u64,
    index: &mut HashMap<ObjectKey, Slot>,
) -> Result<Ending, StoreError> {
    record_file::scan(reader, file_len, HEADER, |kind, body, slot| {
        let key = body
            .get(..NAME)
            .and_then(ObjectKey::from_name)
            .ok_or_else(|| "names no key this file holds".to_string())?;
        match kind {
            PUT => {
                index.insert(key, slot);
            }
            DELETE if body.len() == NAME => {
                index.remove(&key);
            }
            other => return Err(format!("is of unknown kind {other}")),
        }
        Ok(())
    })
    .map_err(|e| match e {
        ScanError::Io(e) => io("read the history's objects file", e),
        ScanError::Corrupt(why) => StoreError::Io {
            op: "read the history's objects file",
            reason: format!(
                "{why}: the file was damaged on disk; restore the replica's volume or recover it \
                 on an empty one from its peers"
            ),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> ObjectKey {
        ObjectKey::Object(Hash::of(&[n]))
    }

    #[test]
    fn what_is_written_is_read_back_after_reopening_and_a_delete_holds() {
        let dir = tempfile::tempdir().unwrap();
        let t = ObjectKey::Transition(Hash([7; 32]));
        {
            let objects = ObjectFile::open(dir.path()).unwrap();
            objects
                .write(vec![(key(1), b"one".to_vec()), (t, b"t".to_vec())], &[])
                .unwrap();
            objects
                .write(vec![(key(2), b"two".to_vec())], &[key(1)])
                .unwrap();
            assert_eq!(objects.get(&key(1)).unwrap(), None);
        }
        let objects = ObjectFile::open(dir.path()).unwrap();
        assert_eq!(objects.get(&key(1)).unwrap(), None);
        assert_eq!(objects.get(&key(2)).unwrap(), Some(b"two".to_vec()));
        assert_eq!(objects.get(&t).unwrap(), Some(b"t".to_vec()));
        assert_eq!(
            objects.transitions(&(7..=7)).unwrap(),
            vec![(Hash([7; 32]), b"t".to_vec())]
        );
        assert!(objects.transitions(&(0..=6)).unwrap().is_empty());
    }

    #[test]
    fn a_value_held_already_is_not_written_again_and_a_new_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let objects = ObjectFile::open(dir.path()).unwrap();
        objects.write(vec![(key(1), b"one".to_vec())], &[]).unwrap();
        let end = objects.writer().end;
        objects.write(vec![(key(1), b"one".to_vec())], &[]).unwrap();
        assert_eq!(objects.writer().end, end);
        objects.write(vec![(key(1), b"uno".to_vec())], &[]).unwrap();
        assert_eq!(objects.get(&key(1)).unwrap(), Some(b"uno".to_vec()));
    }

    /// A record cut short at the end (a crash during its write) is dropped; one garbled in the
    /// middle, or a value changed on disk, is an error, never a wrong value.
    #[test]
    fn damage_is_dropped_at_the_end_and_refused_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        {
            let objects = ObjectFile::open(dir.path()).unwrap();
            objects.write(vec![(key(1), b"one".to_vec())], &[]).unwrap();
            objects.write(vec![(key(2), b"two".to_vec())], &[]).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let second = 16 + 8 + 1 + NAME + 3;
        // The last record cut short: its tail zeroed.
        bytes[second + 10..second + 8 + 1 + NAME + 3].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let objects = ObjectFile::open(dir.path()).unwrap();
        assert_eq!(objects.get(&key(1)).unwrap(), Some(b"one".to_vec()));
        assert_eq!(objects.get(&key(2)).unwrap(), None);
        objects
            .write(vec![(key(3), b"three".to_vec())], &[])
            .unwrap();
        drop(objects);

        // A byte of the first value changed: read as an error; with records after it, the
        // replay refuses the file.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[second - 1] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = ObjectFile::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("fails its checksum"), "{err}");
    }

    #[test]
    fn encoded_store_keys_are_told_apart() {
        let h = Hash([9; 32]);
        for k in [ObjectKey::Object(h), ObjectKey::Transition(h)] {
            assert_eq!(ObjectKey::decode_key(&k.key().encode()), Some(k));
            assert_eq!(ObjectKey::of(&k.key()), Some(k));
        }
        for other in [Key::Latest, Key::MeshCerts(h), Key::RootCa, Key::SigningKey] {
            assert_eq!(ObjectKey::decode_key(&other.encode()), None);
            assert_eq!(ObjectKey::of(&other), None);
        }
        assert_eq!(ObjectKey::decode_key(b"obj/short"), None);
    }
}
