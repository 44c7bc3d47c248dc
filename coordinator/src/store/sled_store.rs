//! `SledStore`: the store on disk, in one sled tree.
//!
//! A batch is applied with sled's atomic `apply_batch` and acknowledged only after `flush` returns, so an
//! acknowledged write survives a crash. sled is not trusted for integrity: a host can edit its files.

use std::path::Path;

use super::{Key, Store, StoreError, Write};

/// A [`Store`] on a sled database.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
}

impl SledStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = sled::open(dir).map_err(|e| StoreError::Open {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(SledStore { db })
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
        self.db.flush().map_err(|e| StoreError::Io {
            op: "flush to disk",
            reason: e.to_string(),
        })?;
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
}
