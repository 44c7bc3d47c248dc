//! The relying party's memory of a transparency log (`--state-dir`, docs/PROTOCOL.md §15): per
//! deployment, the last checkpoint it verified, the key that signed it, and the transition hash at its
//! last leaf. `concord verify` moves it forward only over a verified consistency proof; `concord recover`
//! refuses a history that does not extend it.
//!
//! The comparison (`check_extends`) is pure; the file I/O is a thin shell: one JSON file per deployment,
//! `<deployment id hex>.json`, replaced atomically (write, fsync, rename, fsync the directory).

use std::io::Write;
use std::path::{Path, PathBuf};

use concord_attestation::DeploymentId;
use concord_coordinator::Hash;
use concord_coordinator::history::merkle::{ProofError, verify_consistency};
use concord_coordinator::history::note::{Checkpoint, SignedNote};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::exit::{CliError, CliResult, Limit, read_file};

pub const FORMAT: &str = "concord-log-state-v1";

/// What is kept per deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogState {
    pub format: String,
    /// The signed note text of the last verified checkpoint.
    pub checkpoint: String,
    /// hex: the Ed25519 checkpoint key, bound by the coordinator's evidence when first seen.
    pub checkpoint_key: String,
    /// hex: the transition hash of leaf `size - 1` (what `recover --since` sends).
    pub latest: String,
}

/// A state entry, parsed and checked against itself.
#[derive(Debug, Clone)]
pub struct Known {
    pub checkpoint: Checkpoint,
    pub note: SignedNote,
    pub key: VerifyingKey,
    pub latest: Hash,
}

impl Known {
    pub fn to_state(&self) -> LogState {
        LogState {
            format: FORMAT.to_string(),
            checkpoint: self.note.encode(),
            checkpoint_key: hex::encode(self.key.as_bytes()),
            latest: self.latest.to_hex(),
        }
    }
}

/// The file of `deployment` in `dir`.
pub fn path(dir: &Path, deployment: &DeploymentId) -> PathBuf {
    dir.join(format!("{}.json", hex::encode(deployment.as_bytes())))
}

/// The state of `deployment`, if one was saved. A file that does not verify is an error (exit 3):
/// it is the relying party's own record, so someone changed it.
pub fn load(dir: &Path, deployment: &DeploymentId, origin: &str) -> CliResult<Option<Known>> {
    let p = path(dir, deployment);
    if !p.exists() {
        return Ok(None);
    }
    let bytes = read_file(&p, Limit(64 << 10))?;
    let bad = |what: String| {
        CliError::verification(format!(
            "{}: {what}; this is your own record of the log, restore it from a backup or delete it \
             (then the next verify trusts the coordinator's current checkpoint again)",
            p.display()
        ))
    };
    let s: LogState = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if s.format != FORMAT {
        return Err(bad(format!("format {:?}, expected {FORMAT:?}", s.format)));
    }
    let key = hex::decode(&s.checkpoint_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| bad("checkpoint_key is not an Ed25519 key".into()))?;
    let note = SignedNote::parse(&s.checkpoint).map_err(|e| bad(e.to_string()))?;
    let checkpoint = note
        .verify_checkpoint(origin, &key)
        .map_err(|e| bad(e.to_string()))?;
    let latest = Hash::from_hex(&s.latest).map_err(|e| bad(format!("latest: {e}")))?;
    Ok(Some(Known {
        checkpoint,
        note,
        key,
        latest,
    }))
}

/// Replaces the state of `deployment` atomically and durably.
pub fn save(dir: &Path, deployment: &DeploymentId, known: &Known) -> CliResult {
    let fail = |what: &str, e: std::io::Error| {
        CliError::error(format!("cannot {what} in {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| fail("create the state directory", e))?;
    let target = path(dir, deployment);
    let tmp = target.with_extension("json.tmp");
    let mut bytes = serde_json::to_vec_pretty(&known.to_state())
        .map_err(|e| CliError::error(format!("cannot encode the log state: {e}")))?;
    bytes.push(b'\n');
    let mut f = std::fs::File::create(&tmp).map_err(|e| fail("write the log state", e))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| fail("write the log state", e))?;
    std::fs::rename(&tmp, &target).map_err(|e| fail("replace the log state", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("sync the state directory", e))?;
    Ok(())
}

/// Why a new checkpoint does not extend the known one: a rollback, a fork, or another key.
pub fn check_extends(
    known: &Known,
    new: &Checkpoint,
    new_key: &VerifyingKey,
    proof: &[Hash],
) -> Result<(), String> {
    let old = &known.checkpoint;
    if new_key != &known.key {
        return Err(format!(
            "the coordinator signs checkpoints with key {}, but you verified checkpoints of this \
             deployment signed with {}: another seed, so another history (a fork)",
            hex::encode(new_key.as_bytes()),
            hex::encode(known.key.as_bytes())
        ));
    }
    if new.size < old.size {
        return Err(format!(
            "ROLLBACK: the coordinator's checkpoint has {} transitions (root {}), but you already \
             verified one with {} (root {}, latest transition {}): the history went back (restored \
             old disks?)",
            new.size, new.root, old.size, old.root, known.latest
        ));
    }
    verify_consistency(old.size, new.size, &old.root, &new.root, proof).map_err(|e| match e {
        ProofError::SameSizeDifferentRoots { .. } => format!(
            "FORK: the coordinator's checkpoint of size {} has root {}, but you verified root {} for \
             that size: two different histories",
            new.size, new.root, old.root
        ),
        e => format!(
            "FORK: the coordinator's checkpoint (size {}, root {}) is not consistent with the one you \
             verified (size {}, root {}): {e}",
            new.size, new.root, old.size, old.root
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_coordinator::history::merkle::MerkleTree;
    use ed25519_dalek::SigningKey;

    fn tree(n: u8, salt: u8) -> MerkleTree {
        let leaves: Vec<Hash> = (0..n).map(|i| Hash::of(&[i, salt])).collect();
        MerkleTree::from_leaves(&leaves)
    }

    fn known(t: &MerkleTree, size: u64, key: &SigningKey) -> Known {
        let checkpoint = Checkpoint {
            origin: "o".into(),
            size,
            root: t.root_at(size).unwrap(),
        };
        Known {
            note: checkpoint.sign(key),
            checkpoint,
            key: key.verifying_key(),
            latest: Hash::ZERO,
        }
    }

    #[test]
    fn growth_rollback_fork_and_another_key() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let good = tree(10, 0);
        let old = known(&good, 4, &key);
        let new = known(&good, 9, &key);
        let proof = good.consistency_proof(4, 9).unwrap();
        check_extends(&old, &new.checkpoint, &new.key, &proof).unwrap();
        check_extends(&old, &old.checkpoint, &old.key, &[]).unwrap();

        let back = known(&good, 3, &key);
        let e = check_extends(&old, &back.checkpoint, &back.key, &[]).unwrap_err();
        assert!(e.starts_with("ROLLBACK"), "{e}");

        let forked = tree(10, 1);
        let same_size = known(&forked, 4, &key);
        let e = check_extends(&old, &same_size.checkpoint, &same_size.key, &[]).unwrap_err();
        assert!(
            e.starts_with("FORK") && e.contains("two different histories"),
            "{e}"
        );
        let longer = known(&forked, 9, &key);
        let e = check_extends(
            &old,
            &longer.checkpoint,
            &longer.key,
            &forked.consistency_proof(4, 9).unwrap(),
        )
        .unwrap_err();
        assert!(e.starts_with("FORK"), "{e}");

        let other = SigningKey::from_bytes(&[2; 32]);
        let e = check_extends(&old, &new.checkpoint, &other.verifying_key(), &proof).unwrap_err();
        assert!(e.contains("another seed"), "{e}");
    }

    #[test]
    fn the_state_file_round_trips_and_a_changed_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[1; 32]);
        let id = concord_attestation::DeploymentId([7; 32]);
        let k = known(&tree(5, 0), 5, &key);
        save(dir.path(), &id, &k).unwrap();
        let back = load(dir.path(), &id, "o").unwrap().unwrap();
        assert_eq!(back.checkpoint, k.checkpoint);
        assert!(
            load(dir.path(), &concord_attestation::DeploymentId([8; 32]), "o")
                .unwrap()
                .is_none()
        );
        // Someone edits the size: the signature no longer verifies.
        let p = path(dir.path(), &id);
        let before = std::fs::read_to_string(&p).unwrap();
        let text = before.replace("\\n5\\n", "\\n6\\n");
        assert_ne!(text, before);
        std::fs::write(&p, text).unwrap();
        assert!(load(dir.path(), &id, "o").is_err());
    }
}
