//! Checkpoints of the transparency log in the C2SP formats (docs/PROTOCOL.md, "Transparency log"):
//! `signed-note` (a text body and signature lines), `tlog-checkpoint` (origin, size, root hash) and
//! `tlog-cosignature` (a witness's timestamped Ed25519 signature). Pure: no I/O, no clock (the caller
//! passes the time).
//!
//! It owns the byte strings of these formats and must never accept a note that another implementation
//! of them would read differently: every line is checked strictly (no trailing spaces, no `\r`, decimal
//! without leading zeros, canonical base64).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::hash::Hash;

/// The signature type byte of an Ed25519 note signature (signed-note).
pub const ALG_ED25519: u8 = 0x01;
/// The signature type byte of an Ed25519 `cosignature/v1` (tlog-cosignature).
pub const ALG_COSIGNATURE_V1: u8 = 0x04;

/// The prefix of a signature line: U+2014 EM DASH and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// The origin line of a deployment's checkpoints: `concord/v1/deployment/` and the deployment id in
/// lowercase hex (PROTOCOL.md §8.1), so a checkpoint names what pins the deployment.
pub fn origin_for(deployment_id: &[u8; 32]) -> String {
    format!("concord/v1/deployment/{}", hex::encode(deployment_id))
}

/// `SHA-256(name || "\n" || alg || public key)[:4]`: the key ID of signed-note and tlog-cosignature.
pub fn key_id(name: &str, alg: u8, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([alg]);
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The signed-note verifier key string: `<name>+<hex key ID>+<base64(alg || key)>`.
pub fn verifier_key(name: &str, alg: u8, key: &VerifyingKey) -> String {
    let mut material = vec![alg];
    material.extend_from_slice(key.as_bytes());
    format!(
        "{name}+{}+{}",
        hex::encode(key_id(name, alg, key)),
        B64.encode(material)
    )
}

/// Whether `name` may be a key name: non-empty, no Unicode spaces, no `+`.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// A checkpoint body: `origin\nsize\nbase64(root)\n` (no extension lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// Why a note, checkpoint or cosignature is refused. Every variant names what was wrong with the input
/// (the party at fault is whoever produced it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    #[error("malformed note: {0}")]
    Malformed(String),
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(String),
    #[error(
        "the checkpoint's origin is {found:?}, expected {expected:?} (another deployment's log)"
    )]
    WrongOrigin { found: String, expected: String },
    #[error("no valid signature by {name} on the note")]
    NotSigned { name: String },
}

impl Checkpoint {
    /// The note body, exactly as signed.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root.as_bytes())
        )
    }

    /// Parses a checkpoint body (three lines, each ending in `\n`; extension lines are refused: Concord
    /// writes none, and a verifier that ignored them could be shown text it never checked).
    pub fn parse_body(body: &str) -> Result<Checkpoint, NoteError> {
        let bad = |m: &str| NoteError::MalformedCheckpoint(m.to_string());
        let Some(rest) = body.strip_suffix('\n') else {
            return Err(bad("the body does not end in a newline"));
        };
        let lines: Vec<&str> = rest.split('\n').collect();
        if lines.len() != 3 {
            return Err(bad(&format!(
                "{} lines, a checkpoint has origin, size and root hash (no extension lines)",
                lines.len()
            )));
        }
        let origin = lines[0];
        if origin.is_empty() || origin.chars().any(|c| c.is_control()) {
            return Err(bad("empty origin or control characters in it"));
        }
        let size = lines[1];
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(bad(&format!(
                "size {size:?} is not a decimal without leading zeros"
            )));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| bad(&format!("size {size:?} does not fit 64 bits")))?;
        let root = B64
            .decode(lines[2])
            .map_err(|e| bad(&format!("root hash is not base64: {e}")))?;
        let root = Hash::from_slice(&root).map_err(|e| bad(&format!("root hash: {e}")))?;
        if B64.encode(root.as_bytes()) != lines[2] {
            return Err(bad("root hash is not canonical base64"));
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
        })
    }

    /// A signed note of this checkpoint, with the log's signature (key name = origin).
    pub fn sign(&self, key: &SigningKey) -> SignedNote {
        let body = self.body();
        let sig = key.sign(body.as_bytes());
        SignedNote {
            body,
            signatures: vec![NoteSignature {
                name: self.origin.clone(),
                key_id: key_id(&self.origin, ALG_ED25519, &key.verifying_key()),
                bytes: sig.to_bytes().to_vec(),
            }],
        }
    }
}

/// One signature line: key name, key ID, and the signature bytes after the key ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: [u8; 4],
    pub bytes: Vec<u8>,
}

impl NoteSignature {
    fn line(&self) -> String {
        let mut raw = self.key_id.to_vec();
        raw.extend_from_slice(&self.bytes);
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(raw))
    }
}

/// A signed note: the body (ending in `\n`) and its signature lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote {
    pub body: String,
    pub signatures: Vec<NoteSignature>,
}

/// Most signature lines a note may carry (the log's and its witnesses'); more is refused unread.
pub const MAX_SIGNATURES: usize = 100;
/// Most bytes of a note: a checkpoint body is under 200 bytes, a signature line under 400.
pub const MAX_NOTE_BYTES: usize = 64 * 1024;

impl SignedNote {
    /// The note text: body, a blank line, the signature lines.
    pub fn encode(&self) -> String {
        let mut s = self.body.clone();
        s.push('\n');
        for sig in &self.signatures {
            s.push_str(&sig.line());
        }
        s
    }

    /// Parses a note text strictly.
    pub fn parse(text: &str) -> Result<SignedNote, NoteError> {
        let bad = |m: String| NoteError::Malformed(m);
        if text.len() > MAX_NOTE_BYTES {
            return Err(bad(format!(
                "{} bytes, at most {MAX_NOTE_BYTES}",
                text.len()
            )));
        }
        let Some(split) = text.rfind("\n\n") else {
            return Err(bad("no blank line between body and signatures".into()));
        };
        let body = &text[..split + 1];
        let sigs = &text[split + 2..];
        if sigs.is_empty() || !sigs.ends_with('\n') {
            return Err(bad(
                "no signature lines, or the last one does not end in a newline".into(),
            ));
        }
        let mut signatures = Vec::new();
        for line in sigs[..sigs.len() - 1].split('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(bad(format!("more than {MAX_SIGNATURES} signatures")));
            }
            let Some(rest) = line.strip_prefix(SIG_PREFIX) else {
                return Err(bad(format!(
                    "signature line {line:?} does not start with \"— \""
                )));
            };
            let Some((name, b64)) = rest.split_once(' ') else {
                return Err(bad(format!("signature line {line:?} has no key name")));
            };
            if !valid_key_name(name) {
                return Err(bad(format!("key name {name:?} is not valid")));
            }
            let raw = B64
                .decode(b64)
                .map_err(|e| bad(format!("signature of {name}: not base64: {e}")))?;
            if raw.len() < 5 {
                return Err(bad(format!("signature of {name}: too short")));
            }
            signatures.push(NoteSignature {
                name: name.to_string(),
                key_id: [raw[0], raw[1], raw[2], raw[3]],
                bytes: raw[4..].to_vec(),
            });
        }
        Ok(SignedNote {
            body: body.to_string(),
            signatures,
        })
    }

    /// The checkpoint in this note, if the log's key (named `origin`) signed it and it names `origin`.
    pub fn verify_checkpoint(
        &self,
        origin: &str,
        key: &VerifyingKey,
    ) -> Result<Checkpoint, NoteError> {
        let checkpoint = Checkpoint::parse_body(&self.body)?;
        if checkpoint.origin != origin {
            return Err(NoteError::WrongOrigin {
                found: checkpoint.origin,
                expected: origin.to_string(),
            });
        }
        let id = key_id(origin, ALG_ED25519, key);
        let signed = self.signatures.iter().any(|s| {
            s.name == origin
                && s.key_id == id
                && Signature::from_slice(&s.bytes)
                    .is_ok_and(|sig| key.verify(self.body.as_bytes(), &sig).is_ok())
        });
        if !signed {
            return Err(NoteError::NotSigned {
                name: origin.to_string(),
            });
        }
        Ok(checkpoint)
    }

    /// The timestamp of a valid `cosignature/v1` by the witness `name` with `key`, if the note has one.
    pub fn cosignature_time(&self, name: &str, key: &VerifyingKey) -> Option<u64> {
        let id = key_id(name, ALG_COSIGNATURE_V1, key);
        self.signatures
            .iter()
            .filter(|s| s.name == name && s.key_id == id)
            .find_map(|s| verify_cosignature(&self.body, key, &s.bytes))
    }

    /// Adds a signature line, replacing one with the same name and key ID.
    pub fn add(&mut self, sig: NoteSignature) {
        self.signatures
            .retain(|s| !(s.name == sig.name && s.key_id == sig.key_id));
        self.signatures.push(sig);
    }
}

/// `cosignature/v1\ntime <timestamp>\n` followed by the checkpoint body: what a witness signs.
pub fn cosigned_message(body: &str, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{body}")
}

/// A witness's cosignature of `body` at `timestamp` (seconds since the Epoch, below 2^63).
pub fn cosign(body: &str, name: &str, key: &SigningKey, timestamp: u64) -> NoteSignature {
    let sig = key.sign(cosigned_message(body, timestamp).as_bytes());
    let mut bytes = timestamp.to_be_bytes().to_vec();
    bytes.extend_from_slice(&sig.to_bytes());
    NoteSignature {
        name: name.to_string(),
        key_id: key_id(name, ALG_COSIGNATURE_V1, &key.verifying_key()),
        bytes,
    }
}

/// The timestamp of `bytes` (a `timestamped_signature`) if it is a valid cosignature of `body`.
fn verify_cosignature(body: &str, key: &VerifyingKey, bytes: &[u8]) -> Option<u64> {
    if bytes.len() != 8 + 64 {
        return None;
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&bytes[..8]);
    let timestamp = u64::from_be_bytes(ts);
    if timestamp > i64::MAX as u64 {
        return None;
    }
    let sig = Signature::from_slice(&bytes[8..]).ok()?;
    key.verify(cosigned_message(body, timestamp).as_bytes(), &sig)
        .ok()?;
    Some(timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }
    fn witness_key() -> SigningKey {
        SigningKey::from_bytes(&[9u8; 32])
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: origin_for(&[0x11; 32]),
            size: 3,
            root: Hash([0xab; 32]),
        }
    }

    /// The exact bytes of a signed checkpoint and a cosignature: PROTOCOL.md's worked example (computed
    /// independently with Python's `cryptography` from the C2SP texts when written down).
    #[test]
    fn signed_checkpoint_bytes_are_fixed() {
        let note = checkpoint().sign(&log_key());
        let mut note2 = note.clone();
        note2.add(cosign(
            &note.body,
            "witness.example/w1",
            &witness_key(),
            1_700_000_000,
        ));
        let text = note2.encode();
        assert_eq!(
            text,
            "concord/v1/deployment/1111111111111111111111111111111111111111111111111111111111111111\n\
             3\n\
             q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n\
             \n\
             \u{2014} concord/v1/deployment/1111111111111111111111111111111111111111111111111111111111111111 uA07QdVu8wP+Ox1IRDu4IR49d5CojS1aho9FoUyUWm9nFrB1Rymevvvk0rB7b4W7dr8GcX+ATpKHYivYg+aJTFk52ws=\n\
             \u{2014} witness.example/w1 JLXZ/gAAAABlU/EAPdRWdPuMtAXOBfGO07tySWAnOouS3YI4d6wTgnTaSO5Q1BCbZk2EHsgN2VSS1MYja/0VqOTpQ65AMVXaBA7GCg==\n"
        );
    }

    #[test]
    fn a_checkpoint_round_trips_and_verifies() {
        let cp = checkpoint();
        let note = cp.sign(&log_key());
        let parsed = SignedNote::parse(&note.encode()).unwrap();
        assert_eq!(parsed, note);
        let vk = log_key().verifying_key();
        assert_eq!(parsed.verify_checkpoint(&cp.origin, &vk).unwrap(), cp);
        // another origin, another key, a changed body
        assert!(matches!(
            parsed.verify_checkpoint("concord/v1/deployment/00", &vk),
            Err(NoteError::WrongOrigin { .. })
        ));
        assert!(
            parsed
                .verify_checkpoint(&cp.origin, &witness_key().verifying_key())
                .is_err()
        );
        let mut changed = parsed.clone();
        changed.body = changed.body.replace("\n3\n", "\n4\n");
        assert!(matches!(
            changed.verify_checkpoint(&cp.origin, &vk),
            Err(NoteError::NotSigned { .. })
        ));
    }

    #[test]
    fn cosignatures_verify_only_for_their_body_and_key() {
        let note = checkpoint().sign(&log_key());
        let mut n = note.clone();
        n.add(cosign(&n.body, "w1", &witness_key(), 42));
        let wk = witness_key().verifying_key();
        assert_eq!(n.cosignature_time("w1", &wk), Some(42));
        assert_eq!(n.cosignature_time("w2", &wk), None);
        assert_eq!(n.cosignature_time("w1", &log_key().verifying_key()), None);
        let mut other = n.clone();
        other.body = Checkpoint {
            size: 4,
            ..checkpoint()
        }
        .body();
        assert_eq!(other.cosignature_time("w1", &wk), None);
    }

    #[test]
    fn malformed_checkpoints_are_refused() {
        for body in [
            "o\n3\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=",
            "o\n03\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
            "o\n3 \nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
            "o\n3\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\next\n",
            "o\n3\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6t=\n",
            "o\n3\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urqw==\n",
            "o\n-3\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
            "o\n99999999999999999999\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
        ] {
            assert!(Checkpoint::parse_body(body).is_err(), "{body:?}");
        }
        for note in [
            "o\n3\nq6s=\n",
            "o\n3\nq6s=\n\n",
            "o\n3\nq6s=\n\n- o AAAAAAA=\n",
            "o\n3\nq6s=\n\n\u{2014} o AAAAAAA=",
            "o\n3\nq6s=\n\n\u{2014} a+b AAAAAAA=\n",
            "o\n3\nq6s=\n\n\u{2014} o AAAA\n",
        ] {
            assert!(SignedNote::parse(note).is_err(), "{note:?}");
        }
    }

    #[test]
    fn verifier_key_has_the_signed_note_layout() {
        let vk = log_key().verifying_key();
        let s = verifier_key("example.com/log", ALG_ED25519, &vk);
        let parts: Vec<&str> = s.split('+').collect();
        assert_eq!(parts[0], "example.com/log");
        assert_eq!(parts[1].len(), 8);
        assert_eq!(B64.decode(parts[2]).unwrap()[0], ALG_ED25519);
    }

    /// PROTOCOL.md §15's worked example, every value computed independently with Python's hashlib and
    /// `cryptography` from the RFC 9162 and C2SP texts: the transitions of §3/§5 (manifest `{}` three
    /// times), the checkpoint key of the §4 seed vector, the deployment id of §8.1's second vector.
    #[test]
    fn protocol_worked_example() {
        use crate::history::merkle::MerkleTree;
        let h = |s: &str| Hash::from_hex(s).unwrap();
        let m = Hash::of(b"{}");
        let t0 = crate::history::format::transition_hash(&m, &Hash::ZERO);
        let t1 = crate::history::format::transition_hash(&m, &t0);
        let t2 = crate::history::format::transition_hash(&m, &t1);
        assert_eq!(
            t2,
            h("181540902ed0e451d2dfa45d9b990847ff2949c5d07ac9987facb9f9f3530d4d")
        );
        let tree = MerkleTree::from_leaves(&[t0, t1, t2]);
        let (l1, l2) = (
            h("2e52b40702a5b4695f5efb9f48eecbf93ab428a7aa909108751772018bcd3eb1"),
            h("742de6c96788af3357b4c0b3dca2d64a43fc9c835660b83d3a9775b9c7d931b0"),
        );
        let root2 = h("754b64172d21abac74e351415a17eab659e2376db3ea9f18f383d067c9646afe");
        assert_eq!(tree.root_at(2).unwrap(), root2);
        assert_eq!(
            tree.root(),
            h("1ae2a68b967cb26306e5765a3c387bf7f350d73070d5a6531c7f6b90edc90b07")
        );
        assert_eq!(tree.inclusion_proof(0, 3).unwrap(), vec![l1, l2]);
        assert_eq!(tree.inclusion_proof(2, 3).unwrap(), vec![root2]);
        assert_eq!(tree.consistency_proof(2, 3).unwrap(), vec![l2]);
        assert_eq!(tree.consistency_proof(1, 3).unwrap(), vec![l1, l2]);

        let key = SigningKey::from_bytes(
            &<[u8; 32]>::try_from(
                hex::decode("0ef061bfa9c0b09e2c4b3a42efb80eea84bc6659dde42138636602d941139786")
                    .unwrap()
                    .as_slice(),
            )
            .unwrap(),
        );
        let id = h("7eb052c20c851b763af80dcd8417b76e4372a6e57c78d55c81dd8a68e0ae61a5");
        let cp = Checkpoint {
            origin: origin_for(id.as_bytes()),
            size: 3,
            root: tree.root(),
        };
        let mut n = cp.sign(&key);
        n.add(cosign(
            &n.body,
            "witness.example/w1",
            &log_key(),
            1_700_000_000,
        ));
        assert_eq!(
            n.encode(),
            "concord/v1/deployment/7eb052c20c851b763af80dcd8417b76e4372a6e57c78d55c81dd8a68e0ae61a5\n\
             3\n\
             GuKmi5Z8smMG5XZaPDh79/NQ1zBw1aZTHH9rkO3JCwc=\n\
             \n\
             \u{2014} concord/v1/deployment/7eb052c20c851b763af80dcd8417b76e4372a6e57c78d55c81dd8a68e0ae61a5 G2R7VsVLreqEgy1UTm81dNYHqM0a9tFo1EdTQJ2s31ji00YpQ7jqd5wgTtLDuMlATUJTaYAt3DM5ufi5RA69r8dYTAU=\n\
             \u{2014} witness.example/w1 qkoJ0QAAAABlU/EAGW9hxlKu6k9TrrAwZ6LV/mHU4oazLhzZ3cVep0rcidRDUe1tNu/+09l7nAlxHEA2arKbU9mhpAfwYW0AhJJYCg==\n"
        );
        assert_eq!(
            verifier_key(&cp.origin, ALG_ED25519, &key.verifying_key()),
            "concord/v1/deployment/7eb052c20c851b763af80dcd8417b76e4372a6e57c78d55c81dd8a68e0ae61a5+1b647b56+AYMrn63mqOI9lCbIhxDqL4q8TNSUWyp7TCja0dnSFwSj"
        );
    }
}
