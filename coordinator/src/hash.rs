//! `Hash`: a SHA-256 digest, the name of every content-addressed thing in Concord.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Bytes with their SHA-256, computed from them by [`Hashed::new`] and by nothing else: a reader
/// that checked bytes against the name they were stored under hands them on with that hash, so a
/// parser does not hash them again (a replica reads every manifest of its history at start: issue
/// 11.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    bytes: Vec<u8>,
    hash: Hash,
}

impl Hashed {
    pub fn new(bytes: Vec<u8>) -> Hashed {
        let hash = Hash::of(&bytes);
        Hashed { bytes, hash }
    }

    /// SHA-256 of [`bytes`](Self::bytes).
    pub fn hash(&self) -> Hash {
        self.hash
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// A SHA-256 digest. Displays and serializes as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The `previous` of the first transition.
    pub const ZERO: Hash = Hash([0; 32]);

    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(Sha256::digest(bytes).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 hex characters; the error says what was wrong.
    pub fn from_hex(s: &str) -> Result<Hash, String> {
        // The common case without an allocation: a replica reads tens of thousands at start.
        let mut out = [0u8; 32];
        if hex::decode_to_slice(s, &mut out).is_ok() {
            return Ok(Hash(out));
        }
        let bytes = hex::decode(s.trim()).map_err(|e| format!("{s:?} is not hex: {e}"))?;
        Hash::from_slice(&bytes).map_err(|_| {
            format!(
                "{s:?} is {} bytes, a SHA-256 hash is 32 bytes (64 hex characters)",
                bytes.len()
            )
        })
    }

    /// Takes exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Hash, String> {
        <[u8; 32]>::try_from(bytes)
            .map(Hash)
            .map_err(|_| format!("expected 32 bytes, got {}", bytes.len()))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        /// Takes the string where it is (no copy), borrowed or not.
        struct HexHash;
        impl serde::de::Visitor<'_> for HexHash {
            type Value = Hash;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a SHA-256 hash in hex (64 characters)")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Hash, E> {
                Hash::from_hex(s).map_err(E::custom)
            }
        }
        d.deserialize_str(HexHash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_empty_is_the_known_value() {
        assert_eq!(
            Hash::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hex_parsing_names_the_length() {
        let err = Hash::from_hex("abcd").unwrap_err();
        assert!(err.contains("2 bytes"), "{err}");
        assert!(Hash::from_hex("zz").is_err());
    }
}
