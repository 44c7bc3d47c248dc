//! `Key`: the layout of the replicated state in the key-value store.

use crate::hash::Hash;

/// A key of the store. The byte encoding is stable: it is what is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A content-addressed object (a manifest or a policy document), named by its SHA-256.
    Object(Hash),
    /// A transition record, named by its transition hash.
    Transition(Hash),
    /// The mesh CA certificates made for a transition.
    MeshCerts(Hash),
    /// The hash of the latest transition.
    Latest,
    /// The Ed25519 public key of the transition signing key.
    SigningKey,
    /// The root CA certificate (DER).
    RootCa,
}

impl Key {
    /// What every [`Key::Transition`] starts with; its transition hash follows.
    pub const TRANSITION_PREFIX: &'static [u8] = b"transition/";

    /// The encoded keys of the transitions whose hash starts with a byte in `first`: from the
    /// first key (included) to the end (excluded).
    pub fn transition_range(first: &std::ops::RangeInclusive<u8>) -> (Vec<u8>, Vec<u8>) {
        let mut from = Key::TRANSITION_PREFIX.to_vec();
        from.push(*first.start());
        let mut to = Key::TRANSITION_PREFIX.to_vec();
        match first.end().checked_add(1) {
            Some(next) => to.push(next),
            // Past every hash: the prefix with its last byte (`/`) raised by one.
            None => {
                if let Some(last) = to.last_mut() {
                    *last += 1;
                }
            }
        }
        (from, to)
    }

    /// The bytes stored on disk for this key.
    pub fn encode(&self) -> Vec<u8> {
        let (prefix, hash): (&[u8], Option<&Hash>) = match self {
            Key::Object(h) => (b"obj/", Some(h)),
            Key::Transition(h) => (Key::TRANSITION_PREFIX, Some(h)),
            Key::MeshCerts(h) => (b"mesh-certs/", Some(h)),
            Key::Latest => (b"meta/latest", None),
            Key::SigningKey => (b"meta/signing-key", None),
            Key::RootCa => (b"meta/root-ca", None),
        };
        let mut out = prefix.to_vec();
        if let Some(h) = hash {
            out.extend_from_slice(h.as_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ranges start-up reads the transitions in (one per core) hold every transition key and
    /// nothing else, whatever the first byte of its hash, and no key twice.
    #[test]
    fn transition_ranges_cover_every_transition_key_once() {
        let ranges = [0u8..=0, 1..=127, 128..=254, 255..=255];
        let inside = |key: &[u8], r: &std::ops::RangeInclusive<u8>| {
            let (from, to) = Key::transition_range(r);
            from.as_slice() <= key && key < to.as_slice()
        };
        for first in [0u8, 1, 127, 128, 254, 255] {
            for rest in [0u8, 0xff] {
                let mut hash = [rest; 32];
                hash[0] = first;
                let key = Key::Transition(Hash(hash)).encode();
                let holding = ranges.iter().filter(|r| inside(&key, r)).count();
                assert_eq!(holding, 1, "first byte {first}, then {rest}");
            }
        }
        for other in [
            Key::Object(Hash([0xff; 32])),
            Key::MeshCerts(Hash([0; 32])),
            Key::Latest,
            Key::SigningKey,
            Key::RootCa,
        ] {
            let key = other.encode();
            assert!(ranges.iter().all(|r| !inside(&key, r)), "{other:?}");
        }
        // The whole span in one range, as a single core reads it.
        let key = Key::Transition(Hash([0xff; 32])).encode();
        assert!(inside(&key, &(0..=255)));
    }
}
