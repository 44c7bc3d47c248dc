//! `TypeConfig`: openraft's type configuration for Concord, and the commands the Raft log carries.
//!
//! A [`Command`] is public by construction (DESIGN.md, Replication): it carries the signed transition
//! record, the manifest and policy documents it names, the public mesh CA certificates and, for the first
//! transition, the signing *public* key and the root CA certificate. No field can hold a seed, a share,
//! a private key or a workload secret in the clear; adding one would break Invariant 1 on every
//! replica's disk and on the wire. The one secret a command carries is sealed: the new mesh CA key,
//! HPKE-sealed to other replicas' per-process seal keys ([`SealedMeshCaKey`], PROTOCOL.md "Sealed
//! mesh CA keys"), which only those processes can open (not the disk, not a seed holder). Byte fields are base64 (hex for the 32-byte key) because serde_json is the log format.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::encoding::{base64_bytes, base64_list, hex_32};
use crate::hash::Hash;
use crate::history::{MeshCerts, NewTransition, Transition};

openraft::declare_raft_types!(
    /// Concord's Raft types: node ids are `u64`, a node's address is its peer API address, log entries
    /// carry [`Command`]s and snapshots are byte buffers.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A node id in the cluster.
pub type NodeId = u64;

/// What a replica proposes to the Raft log. Nothing read from the log is trusted: the state machine
/// verifies a command against the stored history before writing it (Invariant 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Append one transition to the history.
    Append(AppendTransition),
    /// Replace the mesh CA certificates of the latest transition: after a full outage the old mesh CA
    /// key is gone (Invariant 3), so the replica that recovered with the seed shares makes a new one.
    RotateMeshCa(RotateMeshCa),
    /// A workload owner's authorization of a membership change: the state machine checks it against
    /// the membership configuration that precedes it in the log; only once it was applied as
    /// [`CommandResponse::Authorized`] does the leader change the membership.
    AuthorizeMembers(AuthorizeMembers),
}

/// The signed request to make `members` the voting members, from the membership at log index
/// `membership_index` (see [`crate::history::MembersAuthorization`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeMembers {
    pub membership_index: u64,
    pub members: std::collections::BTreeMap<u64, String>,
    #[serde(with = "hex_32")]
    pub owner_key: [u8; 32],
    #[serde(with = "base64_bytes")]
    pub owner_signature: Vec<u8>,
}

impl AuthorizeMembers {
    /// The command that carries `a`.
    pub fn new(a: &crate::history::MembersAuthorization) -> AuthorizeMembers {
        AuthorizeMembers {
            membership_index: a.membership_index,
            members: a.members.clone(),
            owner_key: a.owner_key.to_bytes(),
            owner_signature: a.owner_signature.to_bytes().to_vec(),
        }
    }

    /// Decodes the key and signature. Checks only their form.
    pub fn decode(&self) -> Result<crate::history::MembersAuthorization, String> {
        let owner_key = VerifyingKey::from_bytes(&self.owner_key)
            .map_err(|_| "the owner key is not an Ed25519 public key".to_string())?;
        let owner_signature = <[u8; 64]>::try_from(self.owner_signature.as_slice())
            .map(|s| ed25519_dalek::Signature::from_bytes(&s))
            .map_err(|_| "an Ed25519 signature is 64 bytes".to_string())?;
        Ok(crate::history::MembersAuthorization {
            membership_index: self.membership_index,
            members: self.members.clone(),
            owner_key,
            owner_signature,
        })
    }
}

/// The new public mesh CA certificates for `transition`, which must be the latest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateMeshCa {
    pub transition: Hash,
    pub mesh: MeshCerts,
    /// The new mesh CA key sealed to other replicas (absent in entries written before them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed: Vec<SealedMeshCaKey>,
}

/// The mesh CA key of an entry, sealed by the leader to one replica process's seal key
/// (`concord_mesh_ca::seal`). Public: only that process can open it, and only for this entry's
/// deployment, transition and mesh CA certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedMeshCaKey {
    /// The recipient's node id.
    pub recipient: NodeId,
    /// The recipient process's seal key (X25519 public key) the copy is sealed to.
    #[serde(with = "hex_32")]
    pub recipient_key: [u8; 32],
    /// HPKE's encapsulated key.
    #[serde(with = "base64_bytes")]
    pub encapsulated_key: Vec<u8>,
    /// The sealed 32-byte P-256 scalar with its tag.
    #[serde(with = "base64_bytes")]
    pub ciphertext: Vec<u8>,
}

/// A transition and the public material written with it, as carried by the log. Unverified: see
/// [`AppendTransition::decode`] and the state machine's checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendTransition {
    /// The transition record, exactly as [`Transition::encode`] writes it.
    #[serde(with = "base64_bytes")]
    pub transition: Vec<u8>,
    /// The manifest bytes exactly as the workload owner submitted them.
    #[serde(with = "base64_bytes")]
    pub manifest: Vec<u8>,
    /// The policy documents uploaded with the manifest.
    #[serde(with = "base64_list")]
    pub policies: Vec<Vec<u8>>,
    /// The public mesh CA certificates made for this transition.
    pub mesh: MeshCerts,
    /// Only on the first transition: the public half of the transition signing key and the root CA.
    pub genesis: Option<Genesis>,
    /// The new mesh CA key sealed to other replicas (absent in entries written before them, and on
    /// the first transition: no other replica holds the seed yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed: Vec<SealedMeshCaKey>,
}

/// What the first transition brings with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// The Ed25519 public key that signs every transition.
    #[serde(with = "hex_32")]
    pub signing_key: [u8; 32],
    /// The root CA certificate, DER.
    #[serde(with = "base64_bytes")]
    pub root_ca_der: Vec<u8>,
}

/// What applying a log entry answers. A rejected command was still applied in Raft's sense (the log
/// moved past it); it changed nothing in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum CommandResponse {
    /// The transition verified and is the latest one now. Also the answer when the same transition
    /// is applied again after a restart (it is then already the latest and nothing is written).
    Applied { hash: Hash },
    /// The command did not verify against the stored history; nothing was written.
    Rejected { reason: String },
    /// The entry was openraft's own (blank or membership), not a command.
    NoCommand,
    /// The membership change is authorized, from the membership at log index `membership_index`
    /// (the one the authorization named).
    Authorized { membership_index: u64 },
}

impl AppendTransition {
    /// The command that carries `new`.
    pub fn new(new: &NewTransition) -> AppendTransition {
        AppendTransition {
            transition: new.transition.encode(),
            manifest: new.manifest_bytes.clone(),
            policies: new.policies.clone(),
            mesh: new.mesh.clone(),
            genesis: new.genesis.as_ref().map(|(key, root)| Genesis {
                signing_key: key.to_bytes(),
                root_ca_der: root.clone(),
            }),
            sealed: Vec::new(),
        }
    }

    /// Decodes the transition record and the signing key. Checks only their form: the caller
    /// verifies the result against the history.
    pub fn decode(&self) -> Result<NewTransition, String> {
        let transition = Transition::decode(&self.transition)
            .map_err(|e| format!("the transition record does not decode: {e}"))?;
        let genesis = match &self.genesis {
            None => None,
            Some(g) => {
                let key = VerifyingKey::from_bytes(&g.signing_key).map_err(|_| {
                    "the genesis signing key is not an Ed25519 public key".to_string()
                })?;
                Some((key, g.root_ca_der.clone()))
            }
        };
        Ok(NewTransition {
            transition,
            manifest_bytes: self.manifest.clone(),
            policies: self.policies.clone(),
            mesh: self.mesh.clone(),
            genesis,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries written before sealed copies existed (on disk, in snapshots' logs, from older
    /// leaders) decode with none; an entry without copies is written exactly as before, and one with
    /// copies round-trips. Unknown fields are still refused.
    #[test]
    fn sealed_copies_are_optional_in_the_log_format() {
        let old = serde_json::json!({
            "transition": "AA==", "manifest": "AA==", "policies": [],
            "mesh": serde_json::to_value(MeshCerts { mesh_ca_der: vec![1], intermediate_der: vec![2] }).unwrap(),
            "genesis": null
        });
        let cmd: AppendTransition = serde_json::from_value(old.clone()).unwrap();
        assert!(cmd.sealed.is_empty());
        assert_eq!(serde_json::to_value(&cmd).unwrap(), old);

        let with = AppendTransition {
            sealed: vec![SealedMeshCaKey {
                recipient: 2,
                recipient_key: [7; 32],
                encapsulated_key: vec![1; 32],
                ciphertext: vec![2; 48],
            }],
            ..cmd
        };
        let json = serde_json::to_vec(&Command::Append(with.clone())).unwrap();
        assert_eq!(
            serde_json::from_slice::<Command>(&json).unwrap(),
            Command::Append(with)
        );
        let mut extra = old;
        extra["sealed_by"] = serde_json::json!(1);
        assert!(serde_json::from_value::<AppendTransition>(extra).is_err());
        let rotate: RotateMeshCa = serde_json::from_value(serde_json::json!({
            "transition": Hash([3; 32]),
            "mesh": MeshCerts { mesh_ca_der: vec![1], intermediate_der: vec![2] },
        }))
        .unwrap();
        assert!(rotate.sealed.is_empty());
    }
}
