//! `Ledger`: the history in a [`Store`]. Everything read is hash-checked and the whole line verified
//! before it is used; every write is one atomic, durable batch.

use std::collections::{BTreeMap, HashMap};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::chain::{self, ChainVerifier, SignedTransition};
use super::{ChainError, Transition, VerifiedChain};
use crate::hash::{Hash, Hashed};
use crate::manifest::Manifest;
use crate::store::{Key, Store, StoreError, Write};

/// The public certificates made for a transition: the self-signed mesh CA and the intermediate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshCerts {
    #[serde(with = "hex_bytes")]
    pub mesh_ca_der: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub intermediate_der: Vec<u8>,
}

/// What a successful load gives: the verified line and the public CA material.
#[derive(Debug, Clone)]
pub struct LoadedHistory {
    pub chain: VerifiedChain,
    pub root_ca_der: Vec<u8>,
    pub mesh: MeshCerts,
    /// Policy documents that were uploaded, by hash.
    pub policies: BTreeMap<Hash, Vec<u8>>,
}

/// A transition to append, with everything that is written with it.
#[derive(Debug, Clone)]
pub struct NewTransition {
    pub transition: Transition,
    pub manifest_bytes: Vec<u8>,
    pub policies: Vec<Vec<u8>>,
    pub mesh: MeshCerts,
    /// For the first transition: the signing key and the root CA certificate.
    pub genesis: Option<(VerifyingKey, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store holds something that does not verify: the disk was modified outside Concord.
    #[error(
        "the stored history does not verify: {0}. The data directory was modified outside Concord or is damaged; restore it from a backup or start with an empty one and recover"
    )]
    Corrupt(String),
}

impl From<ChainError> for LedgerError {
    fn from(e: ChainError) -> LedgerError {
        LedgerError::Corrupt(e.to_string())
    }
}

/// How many manifests [`Ledger::load`] reads and verifies at a time, at most: enough that each core's
/// share of their signatures fills a batch (`history::batch`) on two cores, and cut at
/// [`LOAD_BATCH_BYTES`].
const LOAD_BATCH: usize = 1024;
/// The manifest bytes of one batch, at most, plus the one manifest that passes it (1 MiB at the
/// cap); the load holds up to three batches (one verified, one waiting, one being read): 51 MiB.
const LOAD_BATCH_BYTES: usize = 16 << 20;
/// How many key ranges of transition records each core reads and checks at start, on average
/// (`Ledger::stored_transitions`).
const RANGES_PER_CORE: usize = 8;

/// Where [`Ledger::load`]'s time went, logged with its result (issue 11.4: start-up time).
#[derive(Debug, Default)]
struct LoadTimes {
    line: std::time::Duration,
    /// Of `line`: reading, decoding and checking the records (on every core), before the walk.
    records: std::time::Duration,
    /// Waiting for the reader thread's next batch of manifests.
    manifests: std::time::Duration,
    verify: std::time::Duration,
    rest: std::time::Duration,
}

/// The history in a store. Clones share the store (a reader of manifests on demand, such as a
/// streamed audit bundle, holds one).
#[derive(Debug)]
pub struct Ledger<S> {
    store: std::sync::Arc<S>,
}

impl<S> Clone for Ledger<S> {
    fn clone(&self) -> Ledger<S> {
        Ledger {
            store: self.store.clone(),
        }
    }
}

impl<S: Store> Ledger<S> {
    pub fn new(store: S) -> Ledger<S> {
        Ledger {
            store: std::sync::Arc::new(store),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Reads a content-addressed object and checks it hashes to its name.
    pub fn object(&self, hash: &Hash) -> Result<Option<Vec<u8>>, LedgerError> {
        Ok(self.hashed_object(hash)?.map(Hashed::into_bytes))
    }

    /// [`object`](Self::object), with the hash it was checked by.
    fn hashed_object(&self, hash: &Hash) -> Result<Option<Hashed>, LedgerError> {
        match self.store.get(&Key::Object(*hash))?.map(Hashed::new) {
            None => Ok(None),
            Some(object) if object.hash() == *hash => Ok(Some(object)),
            Some(_) => Err(LedgerError::Corrupt(format!(
                "object {hash} does not hash to its name"
            ))),
        }
    }

    /// Loads and fully verifies the history; `None` when none was ever written (a fresh replica).
    pub fn load(&self) -> Result<Option<LoadedHistory>, LedgerError> {
        let Some(latest) = self.store.get(&Key::Latest)? else {
            return Ok(None);
        };
        let latest = Hash::from_slice(&latest)
            .map_err(|e| LedgerError::Corrupt(format!("the latest pointer: {e}")))?;
        let signing_key = self.signing_key()?;
        let started = std::time::Instant::now();
        let mut took = LoadTimes::default();

        // The line, newest first: transitions only (a few hundred bytes each), their signatures
        // checked where they were read, on every core.
        let mut stored = self.stored_transitions(&signing_key)?;
        took.records = started.elapsed();
        let mut line = Vec::new();
        let mut cursor = latest;
        while cursor != Hash::ZERO {
            let t = match &mut stored {
                Some(stored) => stored.remove(&cursor).unwrap_or_else(|| {
                    Err(LedgerError::Corrupt(format!(
                        "transition {cursor} is missing"
                    )))
                })?,
                None => SignedTransition::unchecked(self.transition(&cursor)?),
            };
            cursor = t.transition().previous;
            if let (true, Some(stored)) = (line.is_empty(), &stored) {
                // The latest names its index, so the line's length if it is whole (checked below),
                // and the line is never longer than the records stored.
                let whole =
                    usize::try_from(t.transition().index).map_or(0, |i| i.saturating_add(1));
                line.reserve_exact(whole.min(stored.len() + 1));
            }
            line.push(t);
            if line.len() as u64 > line.first().map_or(0, |t| t.transition().index) + 1 {
                return Err(LedgerError::Corrupt(
                    "the transitions do not form a line ending at index 0".into(),
                ));
            }
        }
        // `line` is newest first; it is read from the back.
        if stored.is_none() {
            // A store that cannot list its records (a snapshot under verification) was walked with
            // lookups: their signatures are checked here, in batches on every core.
            let transitions = line.into_iter().map(SignedTransition::into_transition);
            line = SignedTransition::check_all_on_every_core(&signing_key, transitions.collect());
        }
        // The records off the line, and the tables of the ranges, go before the manifests come: held
        // through the load, they sat beneath its later allocations and kept about 9 MB resident after
        // a start at 10,000 transitions (idle RSS 50.9 against 42.3 MB, median of 3 starts each).
        drop(stored);
        took.line = started.elapsed();
        // Then verified oldest first, a batch of manifests at a time: the whole history is never in
        // memory at once, and only the first and latest manifests stay parsed. One thread reads the
        // next batch from the store while this one verifies the last (on every core): at most three
        // batches are held.
        let mut verifier = ChainVerifier::new(signing_key, line.len());
        std::thread::scope(|scope| -> Result<(), LedgerError> {
            let (batches, arriving) = std::sync::mpsc::sync_channel(1);
            scope.spawn(move || {
                let mut line = line.into_iter().rev().peekable();
                // The first batches are smaller, so the verifier starts sooner (it waits for the
                // first one with nothing else to do): 128, 256, 512, then LOAD_BATCH.
                let mut size = LOAD_BATCH / 8;
                while line.peek().is_some() {
                    let mut bytes = 0;
                    let mut read = || -> Result<Vec<_>, LedgerError> {
                        let mut batch = Vec::with_capacity(size);
                        while batch.len() < size && bytes < LOAD_BATCH_BYTES {
                            let Some(t) = line.next() else { break };
                            let hash = t.transition().manifest_hash;
                            let manifest = self.hashed_object(&hash)?.ok_or_else(|| {
                                LedgerError::Corrupt(format!("manifest {hash} is missing"))
                            })?;
                            bytes += manifest.bytes().len();
                            batch.push((t, manifest));
                        }
                        Ok(batch)
                    };
                    let batch = read();
                    size = (size * 2).min(LOAD_BATCH);
                    let failed = batch.is_err();
                    // The verifier stopped (it found a fault): nothing more to read.
                    if batches.send(batch).is_err() || failed {
                        return;
                    }
                }
            });
            // Each batch is parsed on every core, then linked in order on this thread. (Parsing the
            // next batch while this one is linked gained nothing measurable and held two batches of
            // parsed manifests: 4 MB more resident after a start at 10,000 transitions.)
            let mut offset = 0;
            loop {
                let waiting = std::time::Instant::now();
                let Ok(batch) = arriving.recv() else {
                    return Ok(());
                };
                let verifying = std::time::Instant::now();
                took.manifests += verifying - waiting;
                let batch = batch?;
                let first = offset;
                offset += batch.len();
                verifier.link_round(chain::parse_round(first, batch))?;
                took.verify += verifying.elapsed();
            }
        })?;
        let chain = verifier.finish()?;
        let rest = std::time::Instant::now();

        let root_ca_der = self
            .store
            .get(&Key::RootCa)?
            .ok_or_else(|| LedgerError::Corrupt("the root CA certificate is missing".into()))?;
        let mesh = self.mesh_certs(&latest)?;
        let mut policies = BTreeMap::new();
        for hash in chain.policy_hashes().keys() {
            if let Some(doc) = self.object(hash)? {
                policies.insert(*hash, doc);
            }
        }
        took.rest = rest.elapsed();
        tracing::info!(
            transitions = chain.len(),
            total_ms = started.elapsed().as_millis() as u64,
            line_ms = took.line.as_millis() as u64,
            records_ms = took.records.as_millis() as u64,
            manifests_wait_ms = took.manifests.as_millis() as u64,
            verify_ms = took.verify.as_millis() as u64,
            rest_ms = took.rest.as_millis() as u64,
            "read and verified the stored history (line: transitions read, hash-checked and \
             their signatures checked, then walked from the latest; records: of line, before the \
             walk; manifests_wait: waited for manifests read and hash-checked on another thread; \
             verify: manifests parsed, transitions linked)"
        );
        Ok(Some(LoadedHistory {
            chain,
            root_ca_der,
            mesh,
            policies,
        }))
    }

    /// The stored history, given `known`, a history this process verified from this store before:
    /// verifies only the transitions appended since (each against `known`'s signing key and its
    /// predecessor, as [`verify_chain`] does) and rereads the latest mesh CA certificates. A store
    /// whose latest transition does not extend `known` (it was replaced, say by a snapshot) is loaded
    /// and verified in full. Writes nothing.
    pub fn load_since(&self, known: &LoadedHistory) -> Result<Option<LoadedHistory>, LedgerError> {
        let Some(latest) = self.store.get(&Key::Latest)? else {
            return Ok(None);
        };
        let latest = Hash::from_slice(&latest)
            .map_err(|e| LedgerError::Corrupt(format!("the latest pointer: {e}")))?;
        let base = known.chain.latest_hash();
        let mut added = Vec::new();
        let mut cursor = latest;
        while cursor != base {
            if cursor == Hash::ZERO {
                return self.load();
            }
            let t = self.transition(&cursor)?;
            // Below `known`'s end without meeting it: not a continuation of what this process
            // verified, so verify everything again.
            if t.index < known.chain.len() as u64 {
                return self.load();
            }
            cursor = t.previous;
            added.push(t);
        }
        let mut history = known.clone();
        for t in added.into_iter().rev() {
            let bytes = self.object(&t.manifest_hash)?.ok_or_else(|| {
                LedgerError::Corrupt(format!("manifest {} is missing", t.manifest_hash))
            })?;
            let manifest = Manifest::parse(&bytes).map_err(|e| ChainError {
                index: t.index,
                reason: e.to_string(),
            })?;
            for hash in manifest.policies().keys() {
                if !history.policies.contains_key(hash)
                    && let Some(doc) = self.object(hash)?
                {
                    history.policies.insert(*hash, doc);
                }
            }
            history.chain.push(t, manifest)?;
        }
        history.mesh = self.mesh_certs(&latest)?;
        Ok(Some(history))
    }

    /// Extends `known` up to the stored latest transition with what the state machine verified and
    /// applied (`feed`), without reading those transitions back or verifying their signatures again
    /// (`VerifiedChain::push_checked` takes a verdict only for the exact transition and chain end it
    /// was reached on). `Ok(false)`: the feed does not hold the whole line from `known`'s end to the
    /// stored latest, and nothing changed. On an error, `known` holds a verified prefix of the line.
    pub fn extend_from_feed(
        &self,
        known: &mut LoadedHistory,
        feed: &super::feed::VerifiedFeed,
    ) -> Result<bool, LedgerError> {
        let Some(latest) = self.store.get(&Key::Latest)? else {
            return Ok(false);
        };
        let latest = Hash::from_slice(&latest)
            .map_err(|e| LedgerError::Corrupt(format!("the latest pointer: {e}")))?;
        let Some(line) = feed.take_between(known.chain.latest_hash(), latest) else {
            return Ok(false);
        };
        let mesh = self.mesh_certs(&latest)?;
        for v in line {
            known
                .chain
                .push_checked(v.transition, v.manifest, &v.checked)?;
            for (hash, doc) in v.policies {
                known.policies.entry(hash).or_insert(doc);
            }
        }
        known.mesh = mesh;
        Ok(true)
    }

    /// Reads transition `hash` and checks it hashes to its name.
    fn transition(&self, hash: &Hash) -> Result<Transition, LedgerError> {
        let bytes = self
            .store
            .get(&Key::Transition(*hash))?
            .ok_or_else(|| LedgerError::Corrupt(format!("transition {hash} is missing")))?;
        Self::named_transition(hash, &bytes)
    }

    /// Every transition record the store holds, read in one range per core and decoded and checked
    /// against its name there, by name; `None` if the store cannot list them (see
    /// [`Store::transition_records`]). A record that does not decode or does not hash to its name is
    /// kept as its error: it is refused only if the line reaches it, as a lookup of it would be.
    /// Names that are not a hash are no transition's. The signatures of each record are checked
    /// there too, under `signing_key` (in batches): their verdicts are reported where the line is
    /// verified, so a bad one on the line is refused there, and one off it is ignored.
    fn stored_transitions(
        &self,
        signing_key: &VerifyingKey,
    ) -> Result<Option<StoredTransitions>, LedgerError> {
        // Ranges of the hash's first byte, together 0..=255: several per core, handed out to
        // whichever core asks next, so that a core slowed by another process (or by the store's own
        // threads) leaves the rest to the others. One static range per core finished 25 to 55 ms
        // apart, one core idle meanwhile (a profile of a start at 10,000 transitions).
        let parts = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8)
            * RANGES_PER_CORE;
        let ranges: Vec<std::ops::RangeInclusive<u8>> = (0..parts)
            .map(|p| {
                let byte = |p: usize| u8::try_from(p * 256 / parts).unwrap_or(u8::MAX);
                let end = if p + 1 == parts {
                    u8::MAX
                } else {
                    byte(p + 1) - 1
                };
                byte(p)..=end
            })
            .collect();
        let read = |range: &std::ops::RangeInclusive<u8>| {
            let Some(records) = self.store.transition_records(range.clone())? else {
                return Ok(None);
            };
            let mut decoded = HashMap::with_capacity(records.len());
            let (mut names, mut transitions) = (Vec::new(), Vec::new());
            for (name, bytes) in &records {
                let Ok(hash) = Hash::from_slice(name) else {
                    continue;
                };
                match Self::named_transition(&hash, bytes) {
                    Ok(t) => {
                        names.push(hash);
                        transitions.push(t);
                    }
                    Err(e) => {
                        decoded.insert(hash, Err(e));
                    }
                }
            }
            drop(records);
            let signed = SignedTransition::check_all(signing_key, transitions);
            decoded.extend(names.into_iter().zip(signed.into_iter().map(Ok)));
            Ok::<_, LedgerError>(Some(decoded))
        };
        let parts = chain::par_map(&ranges, 1, |_, range| read(range));
        let mut stored = Vec::with_capacity(parts.len());
        for (part, range) in parts.into_iter().zip(ranges) {
            let Some(decoded) = part? else {
                return Ok(None);
            };
            stored.push((range, decoded));
        }
        Ok(Some(StoredTransitions(stored)))
    }

    /// Decodes the record stored under transition `hash` and checks it hashes to that name.
    fn named_transition(hash: &Hash, bytes: &[u8]) -> Result<Transition, LedgerError> {
        let t = Transition::decode(bytes)
            .map_err(|e| LedgerError::Corrupt(format!("transition {hash}: {e}")))?;
        if t.hash() != *hash {
            return Err(LedgerError::Corrupt(format!(
                "transition {hash} does not hash to its name"
            )));
        }
        Ok(t)
    }

    fn signing_key(&self) -> Result<VerifyingKey, LedgerError> {
        let bytes = self
            .store
            .get(&Key::SigningKey)?
            .ok_or_else(|| LedgerError::Corrupt("the signing key is missing".into()))?;
        let bytes = <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| LedgerError::Corrupt("the signing key is not 32 bytes".into()))?;
        VerifyingKey::from_bytes(&bytes)
            .map_err(|_| LedgerError::Corrupt("the signing key is not an Ed25519 key".into()))
    }

    fn mesh_certs(&self, transition: &Hash) -> Result<MeshCerts, LedgerError> {
        let bytes = self
            .store
            .get(&Key::MeshCerts(*transition))?
            .ok_or_else(|| {
                LedgerError::Corrupt(format!("the mesh CA of transition {transition} is missing"))
            })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            LedgerError::Corrupt(format!("the mesh CA of transition {transition}: {e}"))
        })
    }

    /// Replaces the mesh CA certificates of `transition`: after a full outage the mesh CA key is gone
    /// (it was only in memory and is never derivable from the seed), so the recovered replica makes a
    /// new mesh CA for the latest manifest.
    pub fn replace_mesh_certs(
        &self,
        transition: &Hash,
        mesh: &MeshCerts,
    ) -> Result<(), LedgerError> {
        // Serializing two byte strings as JSON cannot fail.
        let bytes = serde_json::to_vec(mesh).unwrap_or_default();
        self.store
            .apply(vec![Write::Put(Key::MeshCerts(*transition), bytes)])?;
        Ok(())
    }

    /// The manifest bytes of transition `index` of `chain` (a history verified from this store),
    /// read again from the store and checked against the hash its verified transition names: a store
    /// changed since cannot make this return anything else.
    pub fn manifest_bytes(
        &self,
        chain: &VerifiedChain,
        index: usize,
    ) -> Result<Vec<u8>, LedgerError> {
        let Some(t) = chain.transitions().get(index) else {
            return Err(LedgerError::Corrupt(format!(
                "transition {index} is past the end of the history"
            )));
        };
        self.object(&t.manifest_hash)?.ok_or_else(|| {
            LedgerError::Corrupt(format!(
                "manifest {} of transition {index} is missing",
                t.manifest_hash
            ))
        })
    }

    /// Writes a transition and everything that comes with it in one durable batch, and moves `latest`.
    pub fn append(&self, new: &NewTransition) -> Result<(), LedgerError> {
        self.store.apply(Self::append_batch(new))?;
        Ok(())
    }

    /// [`Ledger::append`] without waiting until the write is durable ([`Store::apply_unflushed`]):
    /// for the Raft state machine, whose writes the committed log makes again after a crash.
    pub fn append_unflushed(&self, new: &NewTransition) -> Result<(), LedgerError> {
        self.store.apply_unflushed(Self::append_batch(new))?;
        Ok(())
    }

    /// The writes of `new`, in the order they are made: the objects, then `Latest`, which makes them
    /// count ([`Store::apply_unflushed`] keeps a prefix after a crash).
    pub(crate) fn append_batch(new: &NewTransition) -> Vec<Write> {
        let hash = new.transition.hash();
        let mut batch = vec![Write::Put(
            Key::Object(Hash::of(&new.manifest_bytes)),
            new.manifest_bytes.clone(),
        )];
        for p in &new.policies {
            batch.push(Write::Put(Key::Object(Hash::of(p)), p.clone()));
        }
        batch.push(Write::Put(Key::Transition(hash), new.transition.encode()));
        // Serializing two byte strings as JSON cannot fail.
        let mesh = serde_json::to_vec(&new.mesh).unwrap_or_default();
        batch.push(Write::Put(Key::MeshCerts(hash), mesh));
        if let Some((key, root)) = &new.genesis {
            batch.push(Write::Put(Key::SigningKey, key.as_bytes().to_vec()));
            batch.push(Write::Put(Key::RootCa, root.clone()));
        }
        batch.push(Write::Put(Key::Latest, hash.as_bytes().to_vec()));
        batch
    }
}

/// The decoded transition records of a store, in one map per range of the hash's first byte (each
/// built on its own core).
struct StoredTransitions(Vec<(std::ops::RangeInclusive<u8>, StoredRange)>);

/// The records of one range, by name: each decoded, hash-checked and its signatures checked, or why
/// it could not be.
type StoredRange = HashMap<Hash, Result<SignedTransition, LedgerError>>;

impl StoredTransitions {
    /// The records not yet removed.
    fn len(&self) -> usize {
        self.0.iter().map(|(_, part)| part.len()).sum()
    }

    fn remove(&mut self, hash: &Hash) -> Option<Result<SignedTransition, LedgerError>> {
        let first = hash.as_bytes()[0];
        self.0
            .iter_mut()
            .find(|(range, _)| range.contains(&first))
            .and_then(|(_, part)| part.remove(hash))
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Through `encode_to_slice` (a table per byte), not `hex::encode`, which builds the string
    /// a `char` at a time: these are whole certificates, encoded several times per manifest update
    /// (log entry, each AppendEntries, the store), and `hex::encode` showed in the leader's profile.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut text = vec![0; v.len() * 2];
        hex::encode_to_slice(v, &mut text).map_err(serde::ser::Error::custom)?;
        s.serialize_str(std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::MeshCerts;

    #[test]
    fn mesh_certificates_are_stored_as_lowercase_hex_and_read_back() {
        let certs = MeshCerts {
            mesh_ca_der: vec![0x00, 0xab, 0xff, 0x10],
            intermediate_der: vec![],
        };
        let json = serde_json::to_string(&certs).unwrap();
        assert_eq!(json, r#"{"mesh_ca_der":"00abff10","intermediate_der":""}"#);
        assert_eq!(serde_json::from_str::<MeshCerts>(&json).unwrap(), certs);
        let long = MeshCerts {
            mesh_ca_der: (0..=255).collect(),
            intermediate_der: vec![7; 1000],
        };
        let json = serde_json::to_vec(&long).unwrap();
        assert_eq!(serde_json::from_slice::<MeshCerts>(&json).unwrap(), long);
        assert!(
            String::from_utf8(json)
                .unwrap()
                .contains(&hex::encode(&long.mesh_ca_der))
        );
    }
}
