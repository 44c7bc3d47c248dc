//! The domain-separation labels of every derivation and encryption this crate performs.
//!
//! This module owns the byte strings that DESIGN.md ("Cryptographic formats") makes normative.
//! It must never hold two uses of one label: every new purpose gets a new constant, each
//! constant serves exactly one purpose (one derivation, or both ends of one encryption), and no
//! label is a prefix of another, so that a variable suffix (a counter, a workload secret id)
//! can never make one derivation's input equal to another's.

/// HKDF info for the Ed25519 key that signs every transition.
pub const TRANSITION_SIGNING: &[u8] = b"concord/v1/transition-signing";

/// HKDF info for the Ed25519 key that signs the transparency-log checkpoints (C2SP signed-note).
pub const CHECKPOINT_SIGNING: &[u8] = b"concord/v1/checkpoint-signing";

/// HKDF info prefix for the root CA's P-256 key; a big-endian `u32` counter follows it.
pub const ROOT_CA_KEY: &[u8] = b"concord/v1/root-ca-key";

/// HKDF info prefix for a workload secret; the manifest's `workload_secret_id` follows it.
pub const WORKLOAD_SECRET: &[u8] = b"concord/v1/workload-secret/";

/// HPKE info of an encrypted seed share.
pub const SEED_SHARE: &[u8] = b"concord/v1/seed-share";

/// HPKE info of a seed share submission: a share owner seals its decrypted share to a coordinator's
/// recovery key in HPKE's Auth mode, so the coordinator knows which owner key sent it. Not
/// `concord/v1/seed-share...`: no label may be a prefix of another.
pub const SHARE_SUBMISSION: &[u8] = b"concord/v1/share-submission";

/// HPKE info of a mesh CA key sealed by the leader to another replica's per-process seal key, in
/// the Raft entry of the transition it belongs to (PROTOCOL.md, "Sealed mesh CA keys").
pub const MESH_CA_SEAL: &[u8] = b"concord/v1/mesh-ca-seal";

/// Domain label of the report data that binds a replica's seal key to the evidence it answers
/// `PeerApi.SealKey` with ([`crate::seal::seal_key_report_data`]).
pub const SEAL_KEY_BINDING: &[u8] = b"concord/v1/seal-key";

/// HKDF info prefix for a transit key (the Vault-compatible encryption API): `u32be(version)` and the
/// key's name (as the manifest's `transit_keys` spells it) follow it. One label for every name and
/// version; the fixed-width version before the name keeps two (name, version) pairs from meeting.
pub const TRANSIT_KEY: &[u8] = b"concord/v1/transit-key/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_prefix_free() {
        let all = [
            TRANSITION_SIGNING,
            CHECKPOINT_SIGNING,
            ROOT_CA_KEY,
            WORKLOAD_SECRET,
            SEED_SHARE,
            SHARE_SUBMISSION,
            TRANSIT_KEY,
            MESH_CA_SEAL,
            SEAL_KEY_BINDING,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(a.starts_with(b"concord/v1/"));
            for (j, b) in all.iter().enumerate() {
                if i != j {
                    assert!(!b.starts_with(a), "{:?} is a prefix of {:?}", a, b);
                }
            }
        }
    }
}
