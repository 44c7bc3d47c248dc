//! `MemoryStore`: the store in memory, for tests of the core without a disk.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Key, Records, Store, StoreError, Write};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// A [`Store`] in a map. `apply` is atomic under the lock.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: Mutex<Map>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Map>, StoreError> {
        self.map.lock().map_err(|_| StoreError::Io {
            op: "lock the memory store",
            reason: "a writer panicked".into(),
        })
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.get(&key.encode()).cloned())
    }

    fn apply(&self, batch: Vec<Write>) -> Result<(), StoreError> {
        let mut map = self.lock()?;
        for write in batch {
            match write {
                Write::Put(k, v) => map.insert(k.encode(), v),
                Write::Delete(k) => map.remove(&k.encode()),
            };
        }
        Ok(())
    }

    fn transition_records(
        &self,
        first: std::ops::RangeInclusive<u8>,
    ) -> Result<Option<Records>, StoreError> {
        let skip = Key::TRANSITION_PREFIX.len();
        let (from, to) = Key::transition_range(&first);
        Ok(Some(
            self.lock()?
                .range(from..to)
                .map(|(k, v)| (k[skip..].to_vec(), v.clone()))
                .collect(),
        ))
    }
}

impl MemoryStore {
    /// Every key and value, in key order (for the fuzzing harness's snapshot seeds).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Every key and value, concatenated: for tests that search the store for secrets.
    #[doc(hidden)]
    pub fn dump(&self) -> Vec<u8> {
        self.lock()
            .map(|m| {
                m.iter()
                    .flat_map(|(k, v)| k.iter().chain(v.iter()).copied())
                    .collect()
            })
            .unwrap_or_default()
    }
}
