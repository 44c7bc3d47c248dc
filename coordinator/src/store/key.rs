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
