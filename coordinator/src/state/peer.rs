//! Peer recovery, the core of it (the peer API that carries it over mutual aTLS is the shell around it).
//!
//! Serving side: a ready replica hands its secrets only to a caller whose verified evidence names a
//! `coordinator`-role policy of its verified latest manifest (Invariant 1(b)).
//! Recovering side, in DESIGN.md's order: the serving peer was accepted only if its evidence matched a
//! `coordinator`-role policy (and the reference values) of the latest manifest in this replica's store
//! ([`Coordinator::peer_acceptance`]); the received seed must derive the signing key the history is signed
//! with, and the received mesh CA must be the one the history records for the latest transition; only then
//! are the secrets adopted.
//!
//! Before any manifest exists, peers accept exactly their own measurement and policy hash.

use concord_attestation::{ReferenceValues, VerifiedReport};
use concord_mesh_ca::{MeshCa, RootCa, Salt, Seed, SeedEngine};
use zeroize::Zeroizing;

use super::ReplicaState;
use super::coordinator::Coordinator;
use super::secrets::Secrets;
use crate::error::CoordinatorError;
use crate::hash::Hash;
use crate::history::MeshCerts;
use crate::store::Store;

/// Everything secret a ready replica holds, for one attested peer. Never logged, stored or put in Raft.
pub struct PeerSecrets {
    pub seed: Zeroizing<[u8; 32]>,
    pub salt: [u8; 32],
    pub mesh_ca_key: Zeroizing<[u8; 32]>,
    /// The transition these secrets serve (the sender's latest).
    pub latest: Hash,
}

impl std::fmt::Debug for PeerSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSecrets")
            .field("latest", &self.latest)
            .field("secrets", &"[redacted]")
            .finish()
    }
}

/// What a replica requires of a peer's evidence (the policy hashes and reference values to accept).
#[derive(Debug, Clone)]
pub enum PeerAcceptance {
    /// No manifest yet: exactly this replica's own identity.
    OwnIdentity,
    /// A `coordinator`-role policy of the latest manifest, with its reference values.
    Manifest {
        policies: Vec<Hash>,
        reference_values: ReferenceValues,
    },
}

impl<S: Store> Coordinator<S> {
    /// What peers must prove, from the latest manifest in this replica's store (verified against the stored
    /// signing key at load; ready or recovering alike), or this replica's own identity before any manifest.
    pub fn peer_acceptance(&self) -> PeerAcceptance {
        match self.chain() {
            None => PeerAcceptance::OwnIdentity,
            Some(chain) => {
                let m = chain.latest_manifest();
                PeerAcceptance::Manifest {
                    policies: m.coordinator_policies(),
                    reference_values: m.reference_values().clone(),
                }
            }
        }
    }

    /// Serving side: the secrets, for a caller whose evidence (already verified by the peer API's aTLS
    /// against [`Coordinator::peer_acceptance`]) names a `coordinator`-role policy of the latest manifest.
    pub fn secrets_for_peer(
        &self,
        caller: &VerifiedReport,
    ) -> Result<PeerSecrets, CoordinatorError> {
        let (Some(h), Some(secrets)) = (&self.history, &self.secrets) else {
            return Err(match self.state() {
                ReplicaState::Recovering => CoordinatorError::Recovering,
                _ => CoordinatorError::NoManifest,
            });
        };
        let policy = Hash(*caller.host_data());
        if !h
            .chain
            .latest_manifest()
            .coordinator_policies()
            .contains(&policy)
        {
            return Err(CoordinatorError::PermissionDenied(format!(
                "the caller runs policy {policy}, which has no coordinator role in the current manifest; no secret leaves for it"
            )));
        }
        Ok(PeerSecrets {
            seed: Zeroizing::new(*secrets.engine.seed().as_bytes()),
            salt: *secrets.engine.salt().as_bytes(),
            mesh_ca_key: secrets.mesh_ca.key_for_attested_peer(),
            latest: h.chain.latest_hash(),
        })
    }

    /// Recovering side: checks the received secrets against this replica's history and adopts them.
    /// On any error nothing changes.
    pub fn adopt_from_peer(&mut self, received: PeerSecrets) -> Result<(), CoordinatorError> {
        let h = match (self.state(), &self.history) {
            (ReplicaState::Recovering, Some(h)) => h,
            (ReplicaState::Ready, _) => {
                return Err(CoordinatorError::FailedPrecondition(
                    "this coordinator is ready: there is nothing to recover".into(),
                ));
            }
            _ => {
                return Err(CoordinatorError::FailedPrecondition(
                    "this replica has no history yet; it must receive the history (Raft) before its secrets".into(),
                ));
            }
        };
        let latest = h.chain.latest_hash();
        if received.latest != latest {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "the peer serves transition {}, but this replica's latest is {latest}; catch up with the log first",
                received.latest
            )));
        }
        let engine = SeedEngine::new(
            Seed::from_bytes(*received.seed),
            Salt::from_bytes(received.salt),
        );
        let signing_key = engine.transition_signing_key();
        if signing_key.verifying_key() != *h.chain.signing_key() {
            return Err(CoordinatorError::PermissionDenied(
                "the peer's seed does not derive the key this history is signed with: refusing its secrets".into(),
            ));
        }
        let crypto = |e: concord_mesh_ca::MeshCaError| {
            CoordinatorError::PermissionDenied(format!(
                "the peer's secrets do not match this history: {e}"
            ))
        };
        let root_ca = RootCa::from_parts(
            h.root_ca_der.clone(),
            &engine.root_ca_key().map_err(crypto)?,
        )
        .map_err(crypto)?;
        let MeshCerts {
            mesh_ca_der,
            intermediate_der,
        } = h.mesh.clone();
        let mesh_ca = MeshCa::from_parts(
            &received.mesh_ca_key,
            mesh_ca_der,
            intermediate_der,
            &root_ca,
        )
        .map_err(crypto)?;
        self.secrets = Some(Secrets {
            engine,
            signing_key,
            root_ca: std::sync::Arc::new(root_ca),
            mesh_ca: std::sync::Arc::new(mesh_ca),
            mesh_for: latest,
        });
        Ok(())
    }
}
