//! The normative formats of DESIGN.md ("Cryptographic formats"), restated in docs/PROTOCOL.md.
//!
//! Every byte string that is hashed or signed is built here and nowhere else.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256, Sha512};

use crate::hash::Hash;

/// Prefix of the coordinator's signature over a transition hash.
pub const TRANSITION_LABEL: &[u8] = b"concord/v1/transition";
/// Prefix of a workload owner's authorization of a transition hash.
pub const SET_MANIFEST_LABEL: &[u8] = b"concord/v1/set-manifest";
/// Prefix of a workload owner's authorization of a membership change.
pub const SET_MEMBERS_LABEL: &[u8] = b"concord/v1/set-members";

/// `"concord/v1/set-members" || latest transition hash || u64be(membership index) || SHA-256(encoding)`,
/// where the encoding is, for each member in increasing id order,
/// `u64be(id) || u32be(len(address)) || address`: what a workload owner signs to set the cluster's voting
/// members. The membership index is the Raft log index of the membership configuration the change
/// starts from; every membership change writes a new configuration at a higher index, so an
/// authorization is good for one change only and an older one can never be replayed (the latest hash
/// alone did not do that: a membership change does not advance the history).
pub fn members_message(
    latest: &Hash,
    membership_index: u64,
    members: &std::collections::BTreeMap<u64, String>,
) -> Vec<u8> {
    let mut h = Sha256::new();
    for (id, addr) in members {
        h.update(id.to_be_bytes());
        h.update((addr.len() as u32).to_be_bytes());
        h.update(addr.as_bytes());
    }
    [
        SET_MEMBERS_LABEL,
        latest.as_bytes(),
        &membership_index.to_be_bytes(),
        &h.finalize(),
    ]
    .concat()
}

/// Prefix of the report data that binds an audit bundle.
pub const AUDIT_LABEL: &[u8] = b"concord/v1/audit";

/// `SHA-256(manifest_hash || previous_transition_hash)`.
pub fn transition_hash(manifest_hash: &Hash, previous: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(manifest_hash.as_bytes());
    h.update(previous.as_bytes());
    Hash(h.finalize().into())
}

/// `"concord/v1/transition" || transition_hash`: what the coordinator signs.
pub fn coordinator_message(transition: &Hash) -> Vec<u8> {
    [TRANSITION_LABEL, transition.as_bytes()].concat()
}

/// `"concord/v1/set-manifest" || transition_hash`: what a workload owner signs.
pub fn owner_message(transition: &Hash) -> Vec<u8> {
    [SET_MANIFEST_LABEL, transition.as_bytes()].concat()
}

/// The coordinator's signature over `transition`.
pub fn sign_transition(key: &SigningKey, transition: &Hash) -> Signature {
    key.sign(&coordinator_message(transition))
}

/// Checks a coordinator signature (strict Ed25519: no malleable signatures).
/// A signature that verified moments ago is not verified again (`history::verified`).
pub fn verify_transition(key: &VerifyingKey, transition: &Hash, sig: &Signature) -> bool {
    super::verified::verify_strict(TRANSITION_LABEL, key, transition, sig)
}

/// A workload owner's authorization of `transition`.
pub fn sign_owner(key: &SigningKey, transition: &Hash) -> Signature {
    key.sign(&owner_message(transition))
}

/// Checks a workload owner's authorization.
/// A signature that verified moments ago is not verified again (`history::verified`).
pub fn verify_owner(key: &VerifyingKey, transition: &Hash, sig: &Signature) -> bool {
    super::verified::verify_strict(SET_MANIFEST_LABEL, key, transition, sig)
}

/// The report data of the evidence in an audit bundle:
/// `SHA-512("concord/v1/audit" || nonce || signing_key || latest || SHA-256(root CA DER) || SHA-256(mesh CA DER))`.
pub fn audit_report_data(
    nonce: &[u8],
    signing_key: &VerifyingKey,
    latest: &Hash,
    root_ca_der: &[u8],
    mesh_ca_der: &[u8],
) -> [u8; 64] {
    audit_report_data_with_checkpoint_key(
        nonce,
        signing_key,
        latest,
        root_ca_der,
        mesh_ca_der,
        None,
    )
}

/// [`audit_report_data`] of a bundle that carries a checkpoint: the checkpoint key's 32 bytes follow
/// (PROTOCOL.md §10, "Report binding"), so the evidence vouches for the key that signs checkpoints.
pub fn audit_report_data_with_checkpoint_key(
    nonce: &[u8],
    signing_key: &VerifyingKey,
    latest: &Hash,
    root_ca_der: &[u8],
    mesh_ca_der: &[u8],
    checkpoint_key: Option<&VerifyingKey>,
) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(AUDIT_LABEL);
    h.update(nonce);
    h.update(signing_key.as_bytes());
    h.update(latest.as_bytes());
    h.update(Sha256::digest(root_ca_der));
    h.update(Sha256::digest(mesh_ca_der));
    if let Some(key) = checkpoint_key {
        h.update(key.as_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden values. Computed independently of this code with Python's hashlib and the `cryptography`
    // package (Ed25519), e.g.
    //   python3 -c "import hashlib; m=hashlib.sha256(b'{}').digest(); print(hashlib.sha256(m+bytes(32)).hexdigest())"
    // The signing key is the Ed25519 key with secret bytes 0x00..=0x1f.
    const MANIFEST: &[u8] = b"{}";
    const MANIFEST_HASH: &str = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
    const TRANSITION_0: &str = "a48bf97e27b31e740c70c45c448a6662348ac17929be75f4575cad36401c8211";
    const SIGNATURE_0: &str = "e61aed49d9b4651bc0ad35419d375f272f2a0938356034468d08921eec1eef866ee08c429ba7279b045a19e3557978a5c1f85144b74a16871dd4348a2641380f";
    const OWNER_SIGNATURE_1: &str = "6a7157a452e4c1a18cc08a7c507417e988f3ce4fbd5e7249718fc959654baf4eabb03f507ce9c15bb8e55c36511dd604d92bca1d24b0c37fbb8daf574f0a7e06";
    const TRANSITION_1: &str = "d64ed2e599f892fe4dab03191df07e1cc9d3fc05ab9f2d1df6cdd1d972c10471";

    fn key() -> SigningKey {
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = i as u8;
        }
        SigningKey::from_bytes(&secret)
    }

    #[test]
    fn golden_manifest_and_transition_hashes() {
        let m = Hash::of(MANIFEST);
        assert_eq!(m.to_hex(), MANIFEST_HASH);
        let t0 = transition_hash(&m, &Hash::ZERO);
        assert_eq!(t0.to_hex(), TRANSITION_0);
        let t1 = transition_hash(&m, &t0);
        assert_eq!(t1.to_hex(), TRANSITION_1);
    }

    #[test]
    fn golden_signatures() {
        let t0 = transition_hash(&Hash::of(MANIFEST), &Hash::ZERO);
        let sig = sign_transition(&key(), &t0);
        assert_eq!(hex::encode(sig.to_bytes()), SIGNATURE_0);
        assert!(verify_transition(&key().verifying_key(), &t0, &sig));
        let t1 = transition_hash(&Hash::of(MANIFEST), &t0);
        let owner = sign_owner(&key(), &t1);
        assert_eq!(hex::encode(owner.to_bytes()), OWNER_SIGNATURE_1);
    }

    #[test]
    fn the_two_signatures_are_not_interchangeable() {
        let t = transition_hash(&Hash::of(MANIFEST), &Hash::ZERO);
        let coordinator = sign_transition(&key(), &t);
        let owner = sign_owner(&key(), &t);
        assert!(!verify_owner(&key().verifying_key(), &t, &coordinator));
        assert!(!verify_transition(&key().verifying_key(), &t, &owner));
    }

    #[test]
    fn a_signature_does_not_carry_over_to_another_transition() {
        let t0 = transition_hash(&Hash::of(MANIFEST), &Hash::ZERO);
        let t1 = transition_hash(&Hash::of(MANIFEST), &t0);
        let sig = sign_owner(&key(), &t1);
        assert!(verify_owner(&key().verifying_key(), &t1, &sig));
        assert!(!verify_owner(&key().verifying_key(), &t0, &sig));
    }
}
