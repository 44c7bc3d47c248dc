//! A transparency-log witness (C2SP `tlog-witness`, docs/PROTOCOL.md §15.5): `concord witness`.
//!
//! `Witness` owns the decision (pure, tested in memory): it cosigns a checkpoint only if a log key it
//! was configured with signed it, the old size the caller names is the size it last cosigned for that
//! origin, and the consistency proof from its last checkpoint verifies; it never cosigns two roots for
//! one size. `WitnessState` is its memory, one JSON file replaced atomically and fsynced *before* a
//! cosignature leaves (`server` holds one lock across check, persist and answer, so two requests can
//! never roll the state back). It must never cosign without persisting first.

pub mod client;
pub mod server;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::hash::Hash;
use crate::history::merkle::verify_consistency;
use crate::history::note::{self, Checkpoint, SignedNote};

/// Most consistency proof lines a request may carry (tlog-witness).
pub const MAX_PROOF_LINES: usize = 63;

/// The witness's identity and the logs it follows.
#[derive(Debug)]
pub struct Witness {
    pub name: String,
    pub key: SigningKey,
    /// origin → the log's checkpoint key.
    pub logs: BTreeMap<String, VerifyingKey>,
}

/// What the witness last cosigned, per origin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessState {
    pub format: String,
    pub logs: BTreeMap<String, Cosigned>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cosigned {
    pub size: u64,
    pub root: Hash,
}

pub const STATE_FORMAT: &str = "concord-witness-state-v1";

/// Why a checkpoint was not cosigned, with the HTTP status tlog-witness assigns to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("unknown log origin {0:?}")]
    UnknownLog(String),
    #[error("no signature by the log's key verifies")]
    NotSigned,
    /// The caller's old size is not what the witness last cosigned: it answers its size.
    #[error("old size {given} is not the size this witness last cosigned ({latest})")]
    OldSizeMismatch { given: u64, latest: u64 },
    #[error(
        "a different root for size {size}: this witness cosigned {cosigned}, the checkpoint says {offered} (a fork)"
    )]
    SameSizeDifferentRoot {
        size: u64,
        cosigned: Hash,
        offered: Hash,
    },
    #[error("the consistency proof does not verify: {0}")]
    BadProof(String),
}

impl Refusal {
    pub fn http_status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::UnknownLog(_) => 404,
            Refusal::NotSigned => 403,
            Refusal::OldSizeMismatch { .. } | Refusal::SameSizeDifferentRoot { .. } => 409,
            Refusal::BadProof(_) => 422,
        }
    }
}

/// An `add-checkpoint` request body, parsed.
#[derive(Debug, Clone)]
pub struct AddCheckpoint {
    pub old_size: u64,
    pub proof: Vec<Hash>,
    pub note: SignedNote,
}

impl AddCheckpoint {
    /// `old <size>\n`, proof lines (base64 hashes), an empty line, the signed checkpoint.
    pub fn parse(body: &[u8]) -> Result<AddCheckpoint, Refusal> {
        let bad = |m: String| Refusal::BadRequest(m);
        let text = std::str::from_utf8(body).map_err(|_| bad("not UTF-8".into()))?;
        let Some((head, note_text)) = text.split_once("\n\n") else {
            return Err(bad("no empty line before the checkpoint".into()));
        };
        let mut lines = head.split('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .ok_or_else(|| bad("the first line is not `old <size>`".into()))?;
        if old.is_empty()
            || !old.bytes().all(|b| b.is_ascii_digit())
            || (old.len() > 1 && old.starts_with('0'))
        {
            return Err(bad(format!("old size {old:?} is not a decimal")));
        }
        let old_size: u64 = old
            .parse()
            .map_err(|_| bad(format!("old size {old:?} too large")))?;
        let mut proof = Vec::new();
        for line in lines {
            if proof.len() == MAX_PROOF_LINES {
                return Err(bad(format!("more than {MAX_PROOF_LINES} proof lines")));
            }
            let h = B64
                .decode(line)
                .map_err(|e| bad(format!("proof line {line:?}: {e}")))?;
            proof.push(Hash::from_slice(&h).map_err(|e| bad(format!("proof line: {e}")))?);
        }
        let note = SignedNote::parse(note_text).map_err(|e| bad(e.to_string()))?;
        Ok(AddCheckpoint {
            old_size,
            proof,
            note,
        })
    }

    /// The request body for `note`, from `old_size` with `proof`.
    pub fn encode(old_size: u64, proof: &[Hash], note: &SignedNote) -> String {
        let mut s = format!("old {old_size}\n");
        for h in proof {
            s.push_str(&B64.encode(h.as_bytes()));
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&note.encode());
        s
    }
}

impl Witness {
    /// Decides on a request against `state`; on success returns the new state entry (to persist
    /// before answering) and the cosignature line(s).
    pub fn add_checkpoint(
        &self,
        state: &WitnessState,
        req: &AddCheckpoint,
        now: u64,
    ) -> Result<(String, Cosigned, String), Refusal> {
        let origin = Checkpoint::parse_body(&req.note.body)
            .map_err(|e| Refusal::BadRequest(e.to_string()))?
            .origin;
        let log_key = self
            .logs
            .get(&origin)
            .ok_or_else(|| Refusal::UnknownLog(origin.clone()))?;
        let cp = req
            .note
            .verify_checkpoint(&origin, log_key)
            .map_err(|_| Refusal::NotSigned)?;
        if req.old_size > cp.size {
            return Err(Refusal::BadRequest(format!(
                "old size {} is larger than the checkpoint's size {}",
                req.old_size, cp.size
            )));
        }
        let latest = state.logs.get(&origin);
        let latest_size = latest.map_or(0, |c| c.size);
        if req.old_size != latest_size {
            return Err(Refusal::OldSizeMismatch {
                given: req.old_size,
                latest: latest_size,
            });
        }
        match latest {
            None => {
                if !req.proof.is_empty() {
                    return Err(Refusal::BadRequest(
                        "a proof from size 0 must be empty".into(),
                    ));
                }
            }
            Some(last) if last.size == cp.size => {
                if last.root != cp.root {
                    return Err(Refusal::SameSizeDifferentRoot {
                        size: cp.size,
                        cosigned: last.root,
                        offered: cp.root,
                    });
                }
                if !req.proof.is_empty() {
                    return Err(Refusal::BadProof("equal sizes need an empty proof".into()));
                }
            }
            Some(last) => {
                verify_consistency(last.size, cp.size, &last.root, &cp.root, &req.proof)
                    .map_err(|e| Refusal::BadProof(e.to_string()))?;
            }
        }
        let sig = note::cosign(&req.note.body, &self.name, &self.key, now);
        let mut one = SignedNote {
            body: req.note.body.clone(),
            signatures: Vec::new(),
        };
        one.add(sig);
        // The note's encoding is body, blank line, signature lines: the answer is the lines alone.
        let lines = one.encode()[one.body.len() + 1..].to_string();
        Ok((
            origin,
            Cosigned {
                size: cp.size,
                root: cp.root,
            },
            lines,
        ))
    }
}

impl WitnessState {
    /// The state file in `dir`, or an empty state if there is none yet.
    pub fn load(dir: &Path) -> Result<WitnessState, String> {
        let path = state_path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let s: WitnessState = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if s.format != STATE_FORMAT {
                    return Err(format!(
                        "{}: format {:?}, expected {STATE_FORMAT:?}",
                        path.display(),
                        s.format
                    ));
                }
                Ok(s)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(WitnessState {
                format: STATE_FORMAT.into(),
                logs: BTreeMap::new(),
            }),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Replaces the state file atomically: write a temporary file, fsync it, rename, fsync the directory.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let path = state_path(dir);
        let tmp = dir.join("witness-state.json.tmp");
        let mut bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("witness-state.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::merkle::MerkleTree;

    fn log_key() -> SigningKey {
        SigningKey::from_bytes(&[3; 32])
    }
    const ORIGIN: &str = "concord/v1/deployment/aa";

    fn witness() -> Witness {
        Witness {
            name: "w1.example".into(),
            key: SigningKey::from_bytes(&[4; 32]),
            logs: [(ORIGIN.to_string(), log_key().verifying_key())].into(),
        }
    }

    fn leaves(n: u8, salt: u8) -> Vec<Hash> {
        (0..n).map(|i| Hash::of(&[i, salt])).collect()
    }

    fn request(tree: &MerkleTree, old: u64, size: u64) -> AddCheckpoint {
        let cp = Checkpoint {
            origin: ORIGIN.into(),
            size,
            root: tree.root_at(size).unwrap(),
        };
        let proof = if old == 0 || old == size {
            vec![]
        } else {
            tree.consistency_proof(old, size).unwrap()
        };
        let body = AddCheckpoint::encode(old, &proof, &cp.sign(&log_key()));
        AddCheckpoint::parse(body.as_bytes()).unwrap()
    }

    fn apply(w: &Witness, s: &mut WitnessState, r: &AddCheckpoint) -> Result<String, Refusal> {
        let (origin, c, lines) = w.add_checkpoint(s, r, 1_700_000_000)?;
        s.logs.insert(origin, c);
        Ok(lines)
    }

    #[test]
    fn cosigns_a_growing_log_and_the_cosignature_verifies() {
        let w = witness();
        let mut s = WitnessState::default();
        let tree = MerkleTree::from_leaves(&leaves(9, 0));
        for (old, size) in [(0, 1), (1, 2), (2, 5), (5, 9), (9, 9)] {
            let r = request(&tree, old, size);
            let lines = apply(&w, &mut s, &r).unwrap();
            let note = SignedNote::parse(&format!("{}\n{lines}", r.note.body)).unwrap();
            assert_eq!(
                note.cosignature_time("w1.example", &w.key.verifying_key()),
                Some(1_700_000_000)
            );
        }
        assert_eq!(s.logs[ORIGIN].size, 9);
    }

    #[test]
    fn refuses_a_second_root_for_the_same_size_and_a_fork_and_a_rollback() {
        let w = witness();
        let mut s = WitnessState::default();
        let good = MerkleTree::from_leaves(&leaves(6, 0));
        let forked = MerkleTree::from_leaves(&leaves(6, 1));
        apply(&w, &mut s, &request(&good, 0, 4)).unwrap();
        let same_size = apply(&w, &mut s, &request(&forked, 4, 4)).unwrap_err();
        assert!(matches!(
            same_size,
            Refusal::SameSizeDifferentRoot { size: 4, .. }
        ));
        assert_eq!(same_size.http_status(), 409);
        // A longer forked tree, with its own (valid for it) proof: the proof does not lead to the
        // root this witness cosigned.
        let fork = apply(&w, &mut s, &request(&forked, 4, 6)).unwrap_err();
        assert_eq!(fork.http_status(), 422, "{fork}");
        // Going back: the caller must name size 4; a smaller checkpoint is a bad request.
        let back = apply(&w, &mut s, &request(&good, 2, 3)).unwrap_err();
        assert_eq!(back.http_status(), 409, "{back}");
        let back = apply(&w, &mut s, &request(&good, 4, 4)).map(|_| ());
        assert!(back.is_ok());
        let r = request(&good, 4, 4);
        let smaller = AddCheckpoint {
            old_size: 4,
            ..request(&good, 0, 3)
        };
        assert_eq!(apply(&w, &mut s, &smaller).unwrap_err().http_status(), 400);
        assert!(apply(&w, &mut s, &r).is_ok());
        assert_eq!(s.logs[ORIGIN].root, good.root_at(4).unwrap());
    }

    #[test]
    fn refuses_unknown_logs_and_unsigned_checkpoints() {
        let w = witness();
        let s = WitnessState::default();
        let tree = MerkleTree::from_leaves(&leaves(2, 0));
        let other = Checkpoint {
            origin: "other".into(),
            size: 2,
            root: tree.root(),
        };
        let r =
            AddCheckpoint::parse(AddCheckpoint::encode(0, &[], &other.sign(&log_key())).as_bytes())
                .unwrap();
        assert_eq!(w.add_checkpoint(&s, &r, 0).unwrap_err().http_status(), 404);
        let forged = Checkpoint {
            origin: ORIGIN.into(),
            ..other
        };
        let r = AddCheckpoint::parse(
            AddCheckpoint::encode(0, &[], &forged.sign(&SigningKey::from_bytes(&[5; 32])))
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(w.add_checkpoint(&s, &r, 0).unwrap_err().http_status(), 403);
        for bad in ["", "old 01\n\nx", "new 1\n\nx", "old 1\nnot-base64\n\nx"] {
            assert!(AddCheckpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_state_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = WitnessState::load(dir.path()).unwrap();
        s.logs.insert(
            ORIGIN.into(),
            Cosigned {
                size: 3,
                root: Hash([1; 32]),
            },
        );
        s.save(dir.path()).unwrap();
        assert_eq!(WitnessState::load(dir.path()).unwrap(), s);
    }
}
