//! Sealed mesh CA keys, the core of them (issue 11.5): the leader seals a new mesh CA key to the other
//! replicas' per-process seal keys ([`concord_mesh_ca::SealKey`]) for the Raft entry that commits it;
//! a replica that holds the seed opens its copy when the entry is applied and is ready at once,
//! without a peer round trip, and the key survives the leader's death.
//!
//! Pure: the callers (the node) choose the recipients (peers whose seal key came over an attested link
//! and whose evidence matches a `coordinator`-role policy of the manifest the key will serve) and hand
//! over what the state machine applied. Anything that does not check out changes nothing: the replica
//! recovers from a peer as before. Invariant 3 holds: the seal key is random per process, never
//! derived from the seed, so a seed holder cannot open a copy; Invariant 1: a copy opens only inside
//! the attested process it was sealed to.

#[cfg(test)]
use concord_mesh_ca::seal_mesh_ca_key;
use concord_mesh_ca::{MeshCa, SealAhead, SealContext, SealKey, SealedKey};

use super::ReplicaState;
use super::coordinator::{Coordinator, PreparedSet};
use super::recovery::RecoveredSecrets;
use crate::error::CoordinatorError;
use crate::hash::Hash;
use crate::raft::{NodeId, SealedDelivery, SealedMeshCaKey};
use crate::store::Store;

/// A replica to seal a mesh CA key to: its node id and its process's seal key, which the caller
/// learned over the attested peer link and whose evidence it checked under the manifest the key
/// will serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealRecipient {
    pub node: NodeId,
    pub seal_key: [u8; 32],
}

/// Seals `mesh_ca`'s key to each recipient, bound to the deployment and `transition`, with an
/// encapsulation made ahead to the recipient's very seal key if `ahead` holds one (each is used once;
/// the rest are dropped). A recipient whose key does not seal (not a usable X25519 key) is left out:
/// it recovers from a peer.
fn seal_all(
    mesh_ca: &MeshCa,
    deployment: [u8; 32],
    transition: Hash,
    recipients: &[SealRecipient],
    mut ahead: Vec<SealAhead>,
) -> Vec<SealedMeshCaKey> {
    let key = mesh_ca.key_for_attested_peer();
    let mesh_ca_der_sha256 = SealContext::cert_hash(mesh_ca.mesh_ca_der());
    recipients
        .iter()
        .filter_map(|r| {
            let context = SealContext {
                deployment,
                transition: *transition.as_bytes(),
                mesh_ca_der_sha256,
                recipient: r.node,
            };
            let encapsulated = match ahead.iter().position(|a| *a.recipient_key() == r.seal_key) {
                Some(i) => Ok(ahead.swap_remove(i)),
                None => SealAhead::encapsulate(&r.seal_key),
            };
            match encapsulated.and_then(|a| a.seal(&context, &key)) {
                Ok(SealedKey {
                    encapsulated_key,
                    ciphertext,
                }) => Some(SealedMeshCaKey {
                    recipient: r.node,
                    recipient_key: r.seal_key,
                    encapsulated_key,
                    ciphertext,
                }),
                Err(e) => {
                    tracing::debug!(peer = r.node, error = %e, "not sealing the mesh CA key to a peer");
                    None
                }
            }
        })
        .collect()
}

impl PreparedSet {
    /// The new mesh CA key sealed to `recipients` for this transition of deployment `deployment`.
    /// Empty for the first transition: no other replica holds the seed yet, so none could use it.
    /// Uses (and so empties) the encapsulations made ahead for this mesh CA.
    pub fn seal_mesh_ca(
        &mut self,
        deployment: [u8; 32],
        recipients: &[SealRecipient],
    ) -> Vec<SealedMeshCaKey> {
        let ahead = std::mem::take(&mut self.seals_ahead);
        if self.is_genesis() {
            return Vec::new();
        }
        seal_all(self.mesh_ca(), deployment, self.hash, recipients, ahead)
    }
}

impl RecoveredSecrets {
    /// The new mesh CA key of a rotation sealed to `recipients`, for the latest transition.
    pub fn seal_mesh_ca(
        &self,
        deployment: [u8; 32],
        recipients: &[SealRecipient],
    ) -> Vec<SealedMeshCaKey> {
        seal_all(
            self.mesh_ca(),
            deployment,
            self.latest,
            recipients,
            Vec::new(),
        )
    }
}

/// This replica's sealed copy of its latest transition's mesh CA key, checked against the core
/// ([`Coordinator::sealed_opening`]) and opened without it ([`SealedOpening::open`]): the HPKE opening
/// and the certificates' checks take no lock, and can run on any thread.
pub struct SealedOpening {
    latest: Hash,
    context: SealContext,
    sealed: SealedKey,
    mesh_ca_der: Vec<u8>,
    intermediate_der: Vec<u8>,
    root_ca: std::sync::Arc<concord_mesh_ca::RootCa>,
}

/// A mesh CA opened from a sealed copy, for [`Coordinator::install_opened`].
pub struct OpenedMeshCa {
    latest: Hash,
    mesh_ca: MeshCa,
}

impl OpenedMeshCa {
    /// The transition whose mesh CA this is.
    pub fn transition(&self) -> Hash {
        self.latest
    }
}

impl SealedOpening {
    /// Opens the copy with `key`, this process's seal key, and checks that the opened key is the key
    /// of the mesh CA certificate the history records, under this deployment's root CA.
    pub fn open(self, key: &SealKey) -> Result<OpenedMeshCa, CoordinatorError> {
        let opened = key
            .open(&self.context, &self.sealed)
            .map_err(|e| CoordinatorError::PermissionDenied(e.to_string()))?;
        let mesh_ca = MeshCa::from_parts(
            &opened,
            self.mesh_ca_der,
            self.intermediate_der,
            &self.root_ca,
        )
        .map_err(|e| {
            CoordinatorError::PermissionDenied(format!(
                "the sealed key is not the key of the mesh CA this history records: {e}"
            ))
        })?;
        Ok(OpenedMeshCa {
            latest: self.latest,
            mesh_ca,
        })
    }
}

impl<S: Store> Coordinator<S> {
    /// Opens this replica's copy in `delivery` (what the state machine applied for the latest
    /// transition) with `key`, this process's seal key, and adopts the mesh CA: only if this replica
    /// is recovering, holds the seed of this history (its secrets derive the history's signing key),
    /// the delivery is for its latest transition with the certificates its verified history records,
    /// and the opened key is the key of that mesh CA certificate. On any error nothing changes.
    pub fn adopt_sealed(
        &mut self,
        own: NodeId,
        key: &SealKey,
        delivery: &SealedDelivery,
    ) -> Result<(), CoordinatorError> {
        let opened = self
            .sealed_opening(own, &key.public_key(), delivery)?
            .open(key)?;
        self.install_opened(opened)
    }

    /// The checks of [`Coordinator::adopt_sealed`] that need the core, and what opening the copy
    /// sealed to `own`'s process key `public` needs without it.
    pub fn sealed_opening(
        &self,
        own: NodeId,
        public: &[u8; 32],
        delivery: &SealedDelivery,
    ) -> Result<SealedOpening, CoordinatorError> {
        let refused = |m: String| CoordinatorError::FailedPrecondition(m);
        if self.state() != ReplicaState::Recovering {
            return Err(refused("this replica is not recovering".into()));
        }
        let (Some(h), Some(secrets)) = (&self.history, &self.secrets) else {
            return Err(refused(
                "this replica does not hold the seed: a sealed mesh CA key is of no use to it"
                    .into(),
            ));
        };
        if secrets.signing_key.verifying_key() != *h.chain.signing_key() {
            return Err(refused(
                "the seed this replica holds is not this history's".into(),
            ));
        }
        let latest = h.chain.latest_hash();
        if delivery.transition != latest || delivery.mesh != h.mesh {
            return Err(refused(format!(
                "the sealed key is for transition {}, not for this replica's latest {latest} and its mesh CA",
                delivery.transition
            )));
        }
        let Some(copy) = delivery
            .copies
            .iter()
            .find(|c| c.recipient == own && c.recipient_key == *public)
        else {
            return Err(refused(
                "no copy is sealed to this replica process's seal key".into(),
            ));
        };
        Ok(SealedOpening {
            latest,
            context: SealContext {
                deployment: h.chain.deployment_id().0,
                transition: *latest.as_bytes(),
                mesh_ca_der_sha256: SealContext::cert_hash(&h.mesh.mesh_ca_der),
                recipient: own,
            },
            sealed: SealedKey {
                encapsulated_key: copy.encapsulated_key.clone(),
                ciphertext: copy.ciphertext.clone(),
            },
            mesh_ca_der: h.mesh.mesh_ca_der.clone(),
            intermediate_der: h.mesh.intermediate_der.clone(),
            root_ca: secrets.root_ca.clone(),
        })
    }

    /// What opening this process's copy in `delivery` needs, before this core has loaded the
    /// delivery's transition: the state machine applied it, and the node opens the copy first, then
    /// reloads and installs it under one write lock (`api::node`'s `refresh_and_install`), so that
    /// the replica never reads as recovering in between (mesh handshakes and NewMeshCerts refused as
    /// "not ready"). Needs only the seed of this history; the checks that need the new transition
    /// are [`Coordinator::install_opened`]'s, after the reload. None if there is nothing to open
    /// ahead: the core is already at that transition, holds no seed, or no copy is this process's.
    pub fn sealed_opening_ahead(
        &self,
        own: NodeId,
        public: &[u8; 32],
        delivery: &SealedDelivery,
    ) -> Option<SealedOpening> {
        let (Some(h), Some(secrets)) = (&self.history, &self.secrets) else {
            return None;
        };
        if h.chain.latest_hash() == delivery.transition
            || secrets.signing_key.verifying_key() != *h.chain.signing_key()
        {
            return None;
        }
        let copy = delivery
            .copies
            .iter()
            .find(|c| c.recipient == own && c.recipient_key == *public)?;
        Some(SealedOpening {
            latest: delivery.transition,
            context: SealContext {
                deployment: h.chain.deployment_id().0,
                transition: *delivery.transition.as_bytes(),
                mesh_ca_der_sha256: SealContext::cert_hash(&delivery.mesh.mesh_ca_der),
                recipient: own,
            },
            sealed: SealedKey {
                encapsulated_key: copy.encapsulated_key.clone(),
                ciphertext: copy.ciphertext.clone(),
            },
            mesh_ca_der: delivery.mesh.mesh_ca_der.clone(),
            intermediate_der: delivery.mesh.intermediate_der.clone(),
            root_ca: secrets.root_ca.clone(),
        })
    }

    /// Adopts a mesh CA opened from a sealed copy ([`SealedOpening::open`]) if this replica is still
    /// recovering at the transition it was opened for, with the same certificates and the seed it had
    /// then; otherwise nothing changes.
    pub fn install_opened(&mut self, opened: OpenedMeshCa) -> Result<(), CoordinatorError> {
        let refused = |m: String| CoordinatorError::FailedPrecondition(m);
        if self.state() != ReplicaState::Recovering {
            return Err(refused("this replica is not recovering".into()));
        }
        let (Some(h), Some(secrets)) = (&self.history, &mut self.secrets) else {
            return Err(refused("this replica no longer holds the seed".into()));
        };
        if h.chain.latest_hash() != opened.latest
            || h.mesh.mesh_ca_der != opened.mesh_ca.mesh_ca_der()
            || secrets.signing_key.verifying_key() != *h.chain.signing_key()
        {
            return Err(refused(format!(
                "the history moved on while the sealed key for transition {} was opened",
                opened.latest
            )));
        }
        secrets.mesh_ca = std::sync::Arc::new(opened.mesh_ca);
        secrets.mesh_for = opened.latest;
        Ok(())
    }
}

/// A copy of `key` sealed to `recipient` as a leader would seal it, for tests that need a copy of a
/// key no mesh CA of theirs holds.
#[cfg(test)]
pub(crate) fn sealed_for_tests(
    deployment: [u8; 32],
    transition: Hash,
    mesh_ca_der: &[u8],
    recipient: NodeId,
    recipient_key: &SealKey,
    key: &[u8; 32],
) -> SealedMeshCaKey {
    let context = SealContext {
        deployment,
        transition: *transition.as_bytes(),
        mesh_ca_der_sha256: SealContext::cert_hash(mesh_ca_der),
        recipient,
    };
    let sealed = seal_mesh_ca_key(&recipient_key.public_key(), &context, key).unwrap();
    SealedMeshCaKey {
        recipient,
        recipient_key: recipient_key.public_key(),
        encapsulated_key: sealed.encapsulated_key,
        ciphertext: sealed.ciphertext,
    }
}
