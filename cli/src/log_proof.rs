//! The offline proof file of the transparency log (`concord-log-proof-v1`, docs/PROTOCOL.md §15):
//! checkpoints of one deployment (oldest first, each a C2SP signed note), consistency proofs between
//! them and inclusion proofs of transitions. `concord history prove` writes it, `concord history audit`
//! checks it; `tests/independent/tlog.py` checks the same file. Pure: no I/O.

use concord_coordinator::Hash;
use concord_coordinator::history::merkle::{verify_consistency, verify_inclusion};
use concord_coordinator::history::note::{Checkpoint, SignedNote};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "concord-log-proof-v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofFile {
    pub format: String,
    pub origin: String,
    /// hex Ed25519 checkpoint key.
    pub checkpoint_key: String,
    pub witnesses: Vec<WitnessKey>,
    pub witness_threshold: usize,
    /// Signed notes, oldest first.
    pub checkpoints: Vec<String>,
    pub consistency: Vec<ConsistencyEntry>,
    pub inclusion: Vec<InclusionEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessKey {
    pub name: String,
    /// hex Ed25519 key.
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyEntry {
    /// Indexes into `checkpoints`.
    pub old: usize,
    pub new: usize,
    pub proof: Vec<Hash>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionEntry {
    /// Index into `checkpoints`.
    pub checkpoint: usize,
    /// The transition index (leaf index).
    pub index: u64,
    /// The transition hash.
    pub leaf: Hash,
    pub proof: Vec<Hash>,
}

/// What a clean proof file showed.
#[derive(Debug, Clone)]
pub struct Checked {
    pub checkpoints: Vec<Checkpoint>,
    pub key: VerifyingKey,
}

pub fn parse_key(hex_key: &str) -> Result<VerifyingKey, String> {
    hex::decode(hex_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| format!("{hex_key:?} is not a hex Ed25519 public key"))
}

/// Checks every checkpoint (signed by the file's key under its origin, with the witness threshold of
/// valid cosignatures), every consistency proof and every inclusion proof. The caller pins the key
/// and origin it trusts; the file's own are only compared with them.
pub fn check(f: &ProofFile) -> Result<Checked, String> {
    if f.format != FORMAT {
        return Err(format!("format {:?}, expected {FORMAT:?}", f.format));
    }
    let key = parse_key(&f.checkpoint_key).map_err(|e| format!("checkpoint_key: {e}"))?;
    let witnesses = f
        .witnesses
        .iter()
        .map(|w| parse_key(&w.key).map(|k| (w.name.as_str(), k)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut checkpoints = Vec::new();
    for (i, text) in f.checkpoints.iter().enumerate() {
        let note = SignedNote::parse(text).map_err(|e| format!("checkpoint {i}: {e}"))?;
        let cp = note
            .verify_checkpoint(&f.origin, &key)
            .map_err(|e| format!("checkpoint {i}: {e}"))?;
        let cosigned = witnesses
            .iter()
            .filter(|(name, k)| note.cosignature_time(name, k).is_some())
            .count();
        if cosigned < f.witness_threshold {
            return Err(format!(
                "checkpoint {i} (size {}): {cosigned} valid witness cosignatures, {} required",
                cp.size, f.witness_threshold
            ));
        }
        checkpoints.push(cp);
    }
    let get = |i: usize| {
        checkpoints
            .get(i)
            .ok_or_else(|| format!("checkpoint {i} is not in the file"))
    };
    for c in &f.consistency {
        let (old, new) = (get(c.old)?, get(c.new)?);
        verify_consistency(old.size, new.size, &old.root, &new.root, &c.proof).map_err(|e| {
            format!(
                "checkpoint {} (size {}) is not consistent with checkpoint {} (size {}): {e}",
                c.old, old.size, c.new, new.size
            )
        })?;
    }
    for p in &f.inclusion {
        let cp = get(p.checkpoint)?;
        verify_inclusion(&p.leaf, p.index, cp.size, &p.proof, &cp.root).map_err(|e| {
            format!(
                "transition #{} {} is not in checkpoint {} (size {}): {e}",
                p.index, p.leaf, p.checkpoint, cp.size
            )
        })?;
    }
    Ok(Checked { checkpoints, key })
}
