//! `Transition`: one step of the history, as stored and as checked.

use std::borrow::Cow;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::format;
use crate::hash::Hash;

/// A transition: the manifest it sets, its predecessor, the coordinator's signature, and the workload
/// owner's authorization (absent only on a first transition whose manifest lists no owner key). Its
/// hash is computed, never stored or trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub index: u64,
    pub manifest_hash: Hash,
    pub previous: Hash,
    pub signature: Signature,
    pub owner: Option<OwnerAuthorization>,
}

/// A workload owner's signature over the transition hash, with the key that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerAuthorization {
    pub key: VerifyingKey,
    pub signature: Signature,
}

impl Transition {
    /// `SHA-256(manifest_hash || previous)`.
    pub fn hash(&self) -> Hash {
        format::transition_hash(&self.manifest_hash, &self.previous)
    }

    /// The record's stable on-disk encoding (JSON, hex fields).
    pub fn encode(&self) -> Vec<u8> {
        let record = Record {
            index: self.index,
            manifest_hash: self.manifest_hash,
            previous: self.previous,
            signature: hex::encode(self.signature.to_bytes()).into(),
            owner_key: self
                .owner
                .as_ref()
                .map(|o| hex::encode(o.key.as_bytes()).into()),
            owner_signature: self
                .owner
                .as_ref()
                .map(|o| hex::encode(o.signature.to_bytes()).into()),
        };
        // Serializing a struct of strings and integers to JSON cannot fail.
        serde_json::to_vec(&record).unwrap_or_default()
    }

    /// Decodes a record; says what is wrong with it. Does not check signatures: see `verify_chain`.
    pub fn decode(bytes: &[u8]) -> Result<Transition, String> {
        let r: Record = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        Transition::from_parts(
            r.index,
            r.manifest_hash,
            r.previous,
            &r.signature,
            r.owner_key.as_deref(),
            r.owner_signature.as_deref(),
        )
    }

    /// Builds a transition from hex fields, as found in a record or an audit bundle.
    pub fn from_parts(
        index: u64,
        manifest_hash: Hash,
        previous: Hash,
        signature: &str,
        owner_key: Option<&str>,
        owner_signature: Option<&str>,
    ) -> Result<Transition, String> {
        let signature = parse_signature(signature).map_err(|e| format!("signature: {e}"))?;
        let owner = match (owner_key, owner_signature) {
            (None, None) => None,
            (Some(k), Some(s)) => {
                let mut key = [0u8; 32];
                if hex::decode_to_slice(k, &mut key).is_err() {
                    key = <[u8; 32]>::try_from(
                        hex::decode(k)
                            .map_err(|e| format!("owner_key: {e}"))?
                            .as_slice(),
                    )
                    .map_err(|_| "owner_key: expected 32 bytes".to_string())?;
                }
                let key = verifying_key(&key)
                    .ok_or_else(|| "owner_key: not an Ed25519 public key".to_string())?;
                let signature = parse_signature(s).map_err(|e| format!("owner_signature: {e}"))?;
                Some(OwnerAuthorization { key, signature })
            }
            _ => return Err("owner_key and owner_signature come together or not at all".into()),
        };
        Ok(Transition {
            index,
            manifest_hash,
            previous,
            signature,
            owner,
        })
    }
}

/// `VerifyingKey::from_bytes`, remembered for the last few distinct keys: a history of 10,000
/// transitions names a handful of owner keys 20,000 times (each record and each manifest), and each
/// decoding costs a field exponentiation (issue 11.4: start-up time). The memo holds only what
/// `from_bytes` itself computed from the same bytes, so it cannot answer anything else. One memo per
/// thread: start-up decodes on every core, and a shared memo's lock was taken 20,000 times.
pub(crate) fn verifying_key(bytes: &[u8; 32]) -> Option<VerifyingKey> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    /// Distinct keys remembered per thread; later ones are decoded each time.
    const REMEMBERED: usize = 256;
    thread_local! {
        static KEYS: RefCell<HashMap<[u8; 32], VerifyingKey>> = RefCell::new(HashMap::new());
    }
    if let Some(key) = KEYS.with(|k| k.borrow().get(bytes).copied()) {
        return Some(key);
    }
    let key = VerifyingKey::from_bytes(bytes).ok()?;
    KEYS.with(|k| {
        let mut keys = k.borrow_mut();
        if keys.len() < REMEMBERED {
            keys.insert(*bytes, key);
        }
    });
    Some(key)
}

fn parse_signature(s: &str) -> Result<Signature, String> {
    // The common case without an allocation (issue 11.4: every record is decoded at start).
    let mut out = [0u8; 64];
    if hex::decode_to_slice(s, &mut out).is_ok() {
        return Ok(Signature::from_bytes(&out));
    }
    let bytes = hex::decode(s).map_err(|e| e.to_string())?;
    let bytes = <[u8; 64]>::try_from(bytes.as_slice())
        .map_err(|_| format!("expected 64 bytes, got {}", bytes.len()))?;
    Ok(Signature::from_bytes(&bytes))
}

/// The stored record. The hex fields borrow from the bytes being decoded when they can (they hold no
/// escapes unless a host wrote some): a replica decodes every stored record at start (issue 11.4).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record<'a> {
    index: u64,
    manifest_hash: Hash,
    previous: Hash,
    #[serde(borrow)]
    signature: Cow<'a, str>,
    #[serde(borrow)]
    owner_key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    owner_signature: Option<Cow<'a, str>>,
}
