//! The store: where a replica keeps the replicated state on its local disk.
//!
//! The store is *untrusted*: the host can read and modify it (DESIGN.md, trust model). This module only
//! moves bytes; everything read through it is checked by the history layer before use, and nothing secret
//! is ever written to it. Writes are atomic batches that are durable (flushed) when `apply` returns.

mod durable;
mod key;
mod memory;
pub mod objects;
mod sled_store;

pub use durable::{DurableFlush, FlushSoon};
pub use key::Key;
pub use memory::MemoryStore;
pub use sled_store::SledStore;

/// What a store can fail with. A store error is an outage or a broken disk, never bad user input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("the store at {path} cannot be opened: {reason}; check the path and its permissions")]
    Open { path: String, reason: String },
    #[error("the store failed to {op}: {reason}")]
    Io { op: &'static str, reason: String },
}

/// Stored records as (the rest of the key after its prefix, the value).
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// One write in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(Key, Vec<u8>),
    Delete(Key),
}

/// The key-value store beneath the history. Implementations: [`SledStore`] (disk), [`MemoryStore`] (tests).
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// The value of `key`, if any. Not verified: callers check it.
    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError>;
    /// Applies every write or none, and returns only once they are durable.
    fn apply(&self, batch: Vec<Write>) -> Result<(), StoreError>;
    /// Applies the writes one after the other, without waiting until they are durable and without
    /// making them one atomic unit: for writes that can be made again from a durable source after a
    /// crash (the Raft state machine's, from the log). A crash keeps a prefix of them, in order, so
    /// the caller puts last the write that makes the others count (the history's `Latest`); readers
    /// see each write once it is made. The next [`Store::apply`] on the same store makes them durable
    /// too, in order.
    fn apply_unflushed(&self, batch: Vec<Write>) -> Result<(), StoreError> {
        self.apply(batch)
    }
    /// The stored transition records whose names (transition hashes) start with a byte in `first`,
    /// as (name, bytes), in key order: a replica at start-up reads every record in a few ranges at
    /// once, one per core, and decodes them there, instead of looking each one up in turn as it
    /// walks the line (issue 11.4). `None` if this store cannot list its keys; then the line is
    /// walked with [`Store::get`]. Not verified: callers check every record they use against its
    /// name, and ignore the others.
    fn transition_records(
        &self,
        first: std::ops::RangeInclusive<u8>,
    ) -> Result<Option<Records>, StoreError> {
        let _ = first;
        Ok(None)
    }
    /// What writes a transition's content-addressed records ahead of its commit, if this store
    /// syncs them on a write of their own ([`ObjectsAhead`]).
    fn objects_ahead(&self) -> Option<ObjectsAhead> {
        None
    }
}

/// Writes a transition's content-addressed records (its manifest, policy documents and transition
/// record: the [`Key::Object`] and [`Key::Transition`] writes of a batch, nothing else) durably,
/// from any thread, before the transition commits. The leader's SetManifest starts it beside its
/// Raft write, so that applying the transition finds them written and the objects file's sync
/// costs the commit nothing. What it writes for a transition that never commits is named by no
/// history and never read.
#[derive(Debug, Clone)]
pub struct ObjectsAhead(std::sync::Arc<objects::ObjectFile>);

impl ObjectsAhead {
    pub fn write(&self, batch: &[Write]) -> Result<(), StoreError> {
        let puts = batch
            .iter()
            .filter_map(|w| match w {
                Write::Put(k, v) => Some((objects::ObjectKey::of(k)?, v.clone())),
                Write::Delete(_) => None,
            })
            .collect();
        self.0.write_ahead(puts)
    }
}
