//! `Coordinator`: one replica's state and the operations of the user and mesh APIs.

use concord_attestation::{DeploymentId, EvidenceIssuer, VerifiedReport};
use concord_mesh_ca::{
    EncryptedShare, MeshCa, RootCa, SealAhead, SeedEngine, encrypt_share, split,
};
use ed25519_dalek::{Signature, VerifyingKey};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::secrets::Secrets;
use crate::error::CoordinatorError;
use crate::hash::Hash;
use crate::history::audit::BundleEvidence;
use crate::history::format;
use crate::history::{
    Ledger, LoadedHistory, MeshCerts, NewTransition, OwnerAuthorization, Transition, VerifiedChain,
};
use crate::manifest::Manifest;
use crate::pem;
use crate::store::Store;

/// Where a replica stands (DESIGN.md, Recovery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    /// No history anywhere.
    Fresh,
    /// History exists, but this replica lacks the secrets of the latest transition.
    Recovering,
    /// Serving.
    Ready,
}

impl ReplicaState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReplicaState::Fresh => "fresh",
            ReplicaState::Recovering => "recovering",
            ReplicaState::Ready => "ready",
        }
    }
}

/// A SetManifest call whose fields were decoded (not yet checked against the history).
#[derive(Debug, Clone)]
pub struct SetRequest {
    pub manifest: Vec<u8>,
    pub policies: Vec<Vec<u8>>,
    pub expected_previous: Hash,
    pub owner: Option<(VerifyingKey, Signature)>,
}

/// What SetManifest answers.
#[derive(Debug, Clone)]
pub struct SetOutcome {
    pub transition: Transition,
    pub hash: Hash,
    /// Only for the first manifest.
    pub seed_shares: Vec<EncryptedShare>,
    pub root_ca_pem: String,
    pub mesh_ca_pem: String,
    pub unchanged: bool,
}

/// A checked SetManifest, before it is written.
#[derive(Debug)]
pub enum Prepared {
    /// The manifest already is the latest: nothing to write.
    Unchanged(Box<SetOutcome>),
    /// A transition to write, then [`Coordinator::commit_set`].
    Append(Box<PreparedSet>),
}

/// A transition ready to be written, with the secrets that become current once it is.
pub struct PreparedSet {
    /// The public parts: what Raft replicates.
    pub new: NewTransition,
    pub hash: Hash,
    mesh_ca: std::sync::Arc<MeshCa>,
    /// Encapsulations to seal `mesh_ca`'s key with, made ahead (`state::ahead`); used at most once.
    pub(super) seals_ahead: Vec<SealAhead>,
    genesis: Option<(SeedEngine, RootCa)>,
    seed_shares: Vec<EncryptedShare>,
}

impl PreparedSet {
    /// Whether this is the first transition (which makes the seed).
    pub(super) fn is_genesis(&self) -> bool {
        self.genesis.is_some()
    }

    /// The new mesh CA (its key never leaves this value except through `state::sealed`).
    pub(super) fn mesh_ca(&self) -> &MeshCa {
        &self.mesh_ca
    }
}

impl std::fmt::Debug for PreparedSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedSet")
            .field("hash", &self.hash)
            .field("secrets", &"[redacted]")
            .finish()
    }
}

/// What GetManifests answers.
#[derive(Debug, Clone)]
pub struct ManifestsView {
    pub manifests: Vec<Vec<u8>>,
    pub policies: Vec<Vec<u8>>,
    pub root_ca_pem: String,
    pub mesh_ca_pem: String,
    pub latest: Option<(Transition, Hash)>,
}

/// What an attested workload receives. Debug leaves out the workload secret.
#[derive(Clone)]
pub struct MeshCertBundle {
    pub cert_chain_pem: String,
    pub mesh_ca_pem: String,
    pub root_ca_pem: String,
    /// Empty when its policy has no `workload_secret_id`. Wiped on drop.
    pub workload_secret: Zeroizing<Vec<u8>>,
    /// The policy name (or hash) it was issued for, for the log line.
    pub workload: String,
}

impl std::fmt::Debug for MeshCertBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCertBundle")
            .field("workload", &self.workload)
            .field("workload_secret", &"[redacted]")
            .finish()
    }
}

/// One coordinator replica.
#[derive(Debug)]
pub struct Coordinator<S> {
    pub(super) ledger: Ledger<S>,
    pub(super) history: Option<LoadedHistory>,
    pub(super) secrets: Option<Secrets>,
    /// Seed shares submitted for user recovery, until there are enough (never written anywhere).
    pub(super) pending_shares: Vec<concord_mesh_ca::SeedShare>,
    /// The deployment this replica was launched for (`--deployment-id`), if any.
    pub(super) pin: Option<DeploymentId>,
    /// The Merkle tree over the transition hashes (derived data, synced from `history` when read:
    /// `transparency.rs`). Behind its own lock because reads of the core share it.
    pub(super) tree: std::sync::Mutex<crate::history::merkle::MerkleTree>,
    /// The transitions this process's Raft state machine verified and applied, to catch up with
    /// without verifying them again (`history::feed`). None: only the store (tests, tools).
    pub(super) feed: Option<crate::history::feed::VerifiedFeed>,
    /// The next manifest update's mesh CA and the encapsulations to seal its key with, made on the
    /// background threads after each prepare (`state::ahead`, issue 11.3), so that the leader's
    /// prepare does not wait for them. Taken at most once; until made, the prepare makes its own.
    pub(super) ahead: super::ahead::Ahead,
    /// The mesh CAs of this replica's own writes prepared and not yet adopted, by the transition
    /// they were made for (at most [`PREPARED_KEPT`]): a reload that finds one of them committed
    /// adopts it at once ([`Coordinator::adopt_prepared`]).
    pub(super) prepared: std::sync::Mutex<Vec<(Hash, std::sync::Arc<MeshCa>)>>,
}

/// How many prepared writes' mesh CAs a replica keeps for [`Coordinator::adopt_prepared`]: one per
/// concurrent write in flight on the leader; an older one is dropped (its write then adopts it in
/// [`Coordinator::commit_set`], as before). A write that lost its race leaves its entry until newer
/// ones push it out.
const PREPARED_KEPT: usize = 4;

/// Where a catch-up ([`Coordinator::catch_up`]) found the transitions it added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CaughtUp {
    /// Every one from the state machine's feed: applied by Raft, so committed.
    Applied,
    /// From the store (verified, but the host's disk may hold what never committed).
    Stored,
}

impl<S: Store> Coordinator<S> {
    /// Opens the store and verifies everything in it. Refuses (an error) if the history does not verify.
    pub fn open(store: S) -> Result<Coordinator<S>, CoordinatorError> {
        let ledger = Ledger::new(store);
        let history = ledger.load()?;
        Ok(Coordinator {
            ledger,
            history,
            secrets: None,
            pending_shares: Vec::new(),
            pin: None,
            tree: Default::default(),
            feed: None,
            ahead: Default::default(),
            prepared: Default::default(),
        })
    }

    /// A replica on `store` with `history`, which this process loaded and verified from this same
    /// store a moment ago (the Raft state machine's, from `StateMachine::open`): start-up verifies the
    /// stored history once, not once per reader. `None`: the store holds no history.
    pub fn open_verified(store: S, history: Option<LoadedHistory>) -> Coordinator<S> {
        Coordinator {
            ledger: Ledger::new(store),
            history,
            secrets: None,
            pending_shares: Vec::new(),
            pin: None,
            tree: Default::default(),
            feed: None,
            ahead: Default::default(),
            prepared: Default::default(),
        }
    }

    /// Catches up from `feed` (the state machine's verified transitions) when it can.
    pub fn follow(&mut self, feed: crate::history::feed::VerifiedFeed) {
        self.feed = Some(feed);
    }

    /// Changes each time the state machine applies a transition (None when the core follows no
    /// state machine: tests, tools).
    pub fn transitions_applied(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.feed.as_ref().map(|f| f.subscribe())
    }

    /// Pins the replica to `id` (`--deployment-id`): a first manifest of another deployment is
    /// refused. Refuses (an error) if the stored history belongs to another deployment: the replica
    /// must not serve it under this launch configuration.
    pub fn pin_deployment(&mut self, id: DeploymentId) -> Result<(), CoordinatorError> {
        if let Some(chain) = self.chain() {
            let stored = chain.deployment_id();
            if stored != id {
                return Err(CoordinatorError::FailedPrecondition(
                    started_for_another_deployment(id, "its stored history", stored),
                ));
            }
        }
        self.pin = Some(id);
        Ok(())
    }

    /// The deployment this replica serves, as its aTLS evidence binds it: its history's (its first
    /// manifest's), else its pin, else [`DeploymentId::UNPINNED`].
    pub fn deployment_id(&self) -> DeploymentId {
        match self.chain() {
            Some(chain) => chain.deployment_id(),
            None => self.pin.unwrap_or(DeploymentId::UNPINNED),
        }
    }

    pub fn state(&self) -> ReplicaState {
        match (&self.history, &self.secrets) {
            (None, _) => ReplicaState::Fresh,
            // Ready only with the mesh CA the history records for the latest transition: after a
            // rotation (user recovery elsewhere) a replica holding the old key must fetch the new one.
            (Some(h), Some(s))
                if s.mesh_for == h.chain.latest_hash()
                    && s.mesh_ca.mesh_ca_der() == h.mesh.mesh_ca_der.as_slice() =>
            {
                ReplicaState::Ready
            }
            (Some(_), _) => ReplicaState::Recovering,
        }
    }

    /// The verified history, if any.
    pub fn chain(&self) -> Option<&VerifiedChain> {
        self.history.as_ref().map(|h| &h.chain)
    }

    /// The latest manifest of a ready replica: what the mesh API admits workloads against.
    pub fn serving_manifest(&self) -> Option<&Manifest> {
        match self.state() {
            ReplicaState::Ready => self.chain().map(|c| c.latest_manifest()),
            _ => None,
        }
    }

    fn latest_manifest_hash(&self) -> Hash {
        self.chain()
            .map_or(Hash::ZERO, |c| c.latest_manifest().hash())
    }

    pub fn store(&self) -> &S {
        self.ledger.store()
    }

    /// SetManifest on a replica that writes its own store (one replica, tests): prepare, append, commit.
    /// On any error nothing was written and the state is unchanged.
    pub fn set_manifest(
        &mut self,
        req: SetRequest,
        now: OffsetDateTime,
    ) -> Result<SetOutcome, CoordinatorError> {
        match self.prepare_set(req, now)? {
            Prepared::Unchanged(outcome) => Ok(*outcome),
            Prepared::Append(p) => {
                self.ledger.append(&p.new)?;
                self.commit_set(*p)
            }
        }
    }

    /// The checks of a SetManifest that cost no more than hashing its bytes: the size caps, the
    /// replica's state, compare-and-swap and, for an update, the owner's signature over the transition
    /// hash (SHA-256(SHA-256(manifest bytes) || previous): no parsing needed). Nothing that grows with
    /// the input beyond that runs for a caller who is not authorized.
    pub fn authorize_set(&self, req: &SetRequest) -> Result<(), CoordinatorError> {
        check_set_size(req)?;
        match self.state() {
            ReplicaState::Recovering => Err(CoordinatorError::Recovering),
            ReplicaState::Fresh => {
                if req.expected_previous != Hash::ZERO {
                    return Err(CoordinatorError::PreviousMismatch {
                        expected: req.expected_previous,
                        latest: Hash::ZERO,
                    });
                }
                // The first manifest is authorized by a key it lists itself: the signature is checked
                // here, before parsing; that the manifest lists the key (or lists none, and so takes
                // no signature) once it is parsed (`authorize_first`, in `prepare_first`).
                if let Some((owner_key, owner_signature)) = &req.owner {
                    let hash = format::transition_hash(&Hash::of(&req.manifest), &Hash::ZERO);
                    if !format::verify_owner(owner_key, &hash, owner_signature) {
                        return Err(CoordinatorError::PermissionDenied(format!(
                            "the owner signature does not verify over transition {hash}; sign \
                             \"concord/v1/set-manifest\" || transition hash with the owner key"
                        )));
                    }
                }
                Ok(())
            }
            ReplicaState::Ready => {
                let Some(chain) = self.chain() else {
                    return Err(CoordinatorError::Recovering);
                };
                let manifest_hash = Hash::of(&req.manifest);
                let previous = chain.latest_manifest();
                if manifest_hash == previous.hash() {
                    // Re-applying the latest manifest: a no-op that needs no signature.
                    return Ok(());
                }
                let latest = chain.latest_hash();
                if req.expected_previous != latest {
                    return Err(CoordinatorError::PreviousMismatch {
                        expected: req.expected_previous,
                        latest,
                    });
                }
                if previous.is_final() {
                    return Err(CoordinatorError::FinalManifest);
                }
                let Some((owner_key, owner_signature)) = &req.owner else {
                    return Err(CoordinatorError::PermissionDenied(
                        "an update needs a workload owner's signature over the transition hash; pass the owner key to `concord set`"
                            .into(),
                    ));
                };
                if !previous.workload_owner_keys().contains(owner_key) {
                    return Err(CoordinatorError::PermissionDenied(format!(
                        "owner key {} is not listed in the latest manifest's workload_owner_keys",
                        hex::encode(owner_key.as_bytes())
                    )));
                }
                let hash = format::transition_hash(&manifest_hash, &latest);
                if !format::verify_owner(owner_key, &hash, owner_signature) {
                    return Err(CoordinatorError::PermissionDenied(format!(
                        "the owner signature does not verify over transition {hash}; sign \"concord/v1/set-manifest\" || transition hash with the owner key"
                    )));
                }
                Ok(())
            }
        }
    }

    /// Whether `req` carries a workload owner's signature over the transition it names (its
    /// manifest after `expected_previous`) by a key the latest manifest lists (any key for a first
    /// manifest, whose keys are known only once it is parsed). Cheap (one Ed25519 verification) and
    /// changes nothing: the leader lets only such calls hold a write claim (`api::write_claims`), so a
    /// caller without an owner key can neither hold one nor make a legitimate caller's call refused.
    /// [`Coordinator::authorize_set`] still decides.
    /// `manifest_hash` is `Hash::of(&req.manifest)`, which the caller computes off the runtime's
    /// threads (a manifest may be megabytes).
    pub fn owner_signed(&self, req: &SetRequest, manifest_hash: &Hash) -> bool {
        let Some((owner_key, owner_signature)) = &req.owner else {
            return false;
        };
        let listed = match self.chain() {
            Some(chain) => chain
                .latest_manifest()
                .workload_owner_keys()
                .contains(owner_key),
            None => req.expected_previous == Hash::ZERO,
        };
        let hash = format::transition_hash(manifest_hash, &req.expected_previous);
        listed && format::verify_owner(owner_key, &hash, owner_signature)
    }

    /// Checks a SetManifest against the history and builds the transition, signed, with its new mesh CA
    /// (and, for the first manifest, the new seed, root CA and shares). Writes nothing: the caller has the
    /// transition written (through Raft, which re-verifies it) and then calls [`Coordinator::commit_set`].
    /// [`Coordinator::authorize_set`] runs first; callers that parse the manifest outside a lock use
    /// [`parse_for_set`] and [`Coordinator::prepare_parsed`] instead.
    pub fn prepare_set(
        &self,
        req: SetRequest,
        now: OffsetDateTime,
    ) -> Result<Prepared, CoordinatorError> {
        self.authorize_set(&req)?;
        let manifest = parse_for_set(&req.manifest)?;
        self.prepare_parsed(manifest, req, now, &[])
    }

    /// [`Coordinator::prepare_set`] for a manifest already parsed from `req.manifest`. Authorizes again
    /// (cheap): the history may have moved since the caller's first check. `seal_keys` are the seal
    /// keys of the replicas the next update's mesh CA key will likely be sealed to: the background
    /// threads make encapsulations to them ahead, with the next mesh CA (`state::ahead`).
    pub fn prepare_parsed(
        &self,
        manifest: Manifest,
        req: SetRequest,
        now: OffsetDateTime,
        seal_keys: &[[u8; 32]],
    ) -> Result<Prepared, CoordinatorError> {
        self.authorize_set(&req)?;
        if manifest.hash() != Hash::of(&req.manifest) {
            return Err(CoordinatorError::InvalidInput(
                "internal error: the parsed manifest is not the request's".into(),
            ));
        }
        // A first manifest is authorized by one of its own owner keys, which only the parsed manifest
        // names: checked before any work that grows with the request (policy documents, the seed).
        if self.state() == ReplicaState::Fresh {
            authorize_first(&manifest, req.owner.as_ref())?;
        }
        for doc in &req.policies {
            let h = Hash::of(doc);
            if manifest.policy(&h).is_none() {
                return Err(CoordinatorError::InvalidInput(format!(
                    "a policy document hashes to {h}, which the manifest does not list"
                )));
            }
        }
        let stored = self.history.as_ref().map(|h| &h.policies);
        let supplied: std::collections::HashSet<Hash> =
            req.policies.iter().map(|d| Hash::of(d)).collect();
        let missing: Vec<String> = manifest
            .policies()
            .iter()
            .filter(|(h, _)| !supplied.contains(*h) && !stored.is_some_and(|s| s.contains_key(*h)))
            .map(|(h, p)| format!("{h} ({})", p.name.as_deref().unwrap_or("unnamed")))
            .collect();
        if !missing.is_empty() && manifest.hash() != self.latest_manifest_hash() {
            return Err(CoordinatorError::InvalidInput(format!(
                "the policy documents of {} are missing: pass each policy document with the manifest (`concord set -p FILE`), so the history holds what every hash stands for",
                first_few(&missing)
            )));
        }
        match self.state() {
            ReplicaState::Recovering => Err(CoordinatorError::Recovering),
            ReplicaState::Fresh => self.prepare_first(manifest, req, now),
            ReplicaState::Ready => self.prepare_next(manifest, req, now, seal_keys),
        }
    }

    fn prepare_first(
        &self,
        manifest: Manifest,
        req: SetRequest,
        now: OffsetDateTime,
    ) -> Result<Prepared, CoordinatorError> {
        if req.expected_previous != Hash::ZERO {
            return Err(CoordinatorError::PreviousMismatch {
                expected: req.expected_previous,
                latest: Hash::ZERO,
            });
        }
        let owner = authorize_first(&manifest, req.owner.as_ref())?;
        if let Some(pin) = self.pin
            && manifest.deployment_id() != pin
        {
            return Err(CoordinatorError::PermissionDenied(format!(
                "this coordinator is pinned to deployment {pin} (--deployment-id), but this first \
                 manifest makes deployment {} (its seed share owners and workload owner keys differ): \
                 set the manifest the deployment was made for (`concord deployment-id -m FILE` prints \
                 a manifest's id)",
                manifest.deployment_id()
            )));
        }
        let crypto = |e: concord_mesh_ca::MeshCaError| CoordinatorError::Crypto(e.to_string());
        let engine = SeedEngine::generate().map_err(crypto)?;
        let signing_key = engine.transition_signing_key();
        let root_ca =
            RootCa::create(&engine.root_ca_key().map_err(crypto)?, now).map_err(crypto)?;
        let mesh_ca = MeshCa::generate(&root_ca, now).map_err(crypto)?;

        let hash = format::transition_hash(&manifest.hash(), &Hash::ZERO);
        let transition = Transition {
            index: 0,
            manifest_hash: manifest.hash(),
            previous: Hash::ZERO,
            signature: format::sign_transition(&signing_key, &hash),
            owner,
        };
        let owners = manifest.seed_share_owners();
        // The manifest parser allows at most 255 owners, so the count fits a u8.
        let shares = split(
            &engine,
            *hash.as_bytes(),
            owners.threshold,
            owners.keys.len() as u8,
        )
        .map_err(crypto)?;
        let seed_shares = owners
            .keys
            .iter()
            .zip(&shares)
            .map(|(key, share)| encrypt_share(key, share))
            .collect::<Result<Vec<_>, _>>()
            .map_err(crypto)?;
        // Check the transition with the same rules every replica's state machine applies.
        VerifiedChain::first(signing_key.verifying_key(), transition.clone(), manifest).map_err(
            |e| CoordinatorError::Crypto(format!("a fresh transition does not verify: {e}")),
        )?;
        let new = NewTransition {
            transition,
            manifest_bytes: req.manifest,
            policies: req.policies,
            mesh: mesh_certs(&mesh_ca),
            genesis: Some((signing_key.verifying_key(), root_ca.cert_der().to_vec())),
        };
        Ok(Prepared::Append(Box::new(PreparedSet {
            new,
            hash,
            mesh_ca: std::sync::Arc::new(mesh_ca),
            seals_ahead: Vec::new(),
            genesis: Some((engine, root_ca)),
            seed_shares,
        })))
    }

    fn prepare_next(
        &self,
        manifest: Manifest,
        req: SetRequest,
        now: OffsetDateTime,
        seal_keys: &[[u8; 32]],
    ) -> Result<Prepared, CoordinatorError> {
        let (Some(history), Some(secrets)) = (&self.history, &self.secrets) else {
            return Err(CoordinatorError::Recovering);
        };
        let chain = &history.chain;
        let latest = chain.latest_hash();
        if manifest.hash() == chain.latest_manifest().hash() {
            return Ok(Prepared::Unchanged(Box::new(SetOutcome {
                transition: chain.latest_transition().clone(),
                hash: latest,
                seed_shares: Vec::new(),
                root_ca_pem: secrets.root_ca.cert_pem(),
                mesh_ca_pem: secrets.mesh_ca.mesh_ca_pem(),
                unchanged: true,
            })));
        }
        // `authorize_set` checked compare-and-swap, finality and the owner's signature.
        let previous = chain.latest_manifest();
        if manifest.seed_share_owners() != previous.seed_share_owners() {
            return Err(CoordinatorError::InvalidInput(
                "at `seed_share_owners`: the threshold and the share owner keys are fixed by the first manifest and cannot change"
                    .into(),
            ));
        }
        let hash = format::transition_hash(&manifest.hash(), &latest);
        let Some((owner_key, owner_signature)) = req.owner else {
            return Err(CoordinatorError::PermissionDenied(
                "an update needs a workload owner's signature over the transition hash".into(),
            ));
        };

        let next = self.next_mesh_ca(&secrets.root_ca, now, seal_keys)?;
        let transition = Transition {
            index: chain.len() as u64,
            manifest_hash: manifest.hash(),
            previous: latest,
            signature: format::sign_transition(&secrets.signing_key, &hash),
            owner: Some(OwnerAuthorization {
                key: owner_key,
                signature: owner_signature,
            }),
        };
        chain
            .check_next(&transition, &manifest)
            .map_err(|e| CoordinatorError::InvalidInput(e.to_string()))?;
        let new = NewTransition {
            transition,
            manifest_bytes: req.manifest,
            policies: req.policies,
            mesh: mesh_certs(&next.mesh_ca),
            genesis: None,
        };
        let mesh_ca = std::sync::Arc::new(next.mesh_ca);
        self.keep_prepared(hash, &mesh_ca);
        Ok(Prepared::Append(Box::new(PreparedSet {
            new,
            hash,
            mesh_ca,
            seals_ahead: next.seals,
            genesis: None,
            seed_shares: Vec::new(),
        })))
    }

    /// The mesh CA for a manifest update under `root` at `now`: the one made ahead if it fits,
    /// else a new one. Then asks the background threads to make the next, with encapsulations to
    /// `seal_keys`. Each is taken once.
    fn next_mesh_ca(
        &self,
        root: &std::sync::Arc<RootCa>,
        now: OffsetDateTime,
        seal_keys: &[[u8; 32]],
    ) -> Result<super::ahead::NextMeshCa, CoordinatorError> {
        let next = match self.ahead.take(root, now) {
            Some(next) => Ok(next),
            None => MeshCa::generate(root, now)
                .map(|mesh_ca| super::ahead::NextMeshCa {
                    mesh_ca,
                    seals: Vec::new(),
                })
                .map_err(|e| CoordinatorError::Crypto(e.to_string())),
        };
        self.ahead.refill(root.clone(), now, seal_keys.to_vec());
        next
    }

    /// After the prepared transition was written (by Raft or by [`Coordinator::set_manifest`]): reloads the
    /// verified history and adopts the secrets that belong to the new transition. Fails (and adopts
    /// nothing) if the store's latest is not this transition: another write won the race.
    pub fn commit_set(&mut self, p: PreparedSet) -> Result<SetOutcome, CoordinatorError> {
        // This write's mesh CA is adopted below, or never: no reload needs it kept.
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(hash, _)| *hash != p.hash);
        self.refresh()?;
        let chain = &self
            .history
            .as_ref()
            .ok_or_else(|| {
                CoordinatorError::Crypto("the transition was written but the store is empty".into())
            })?
            .chain;
        let latest = chain.latest_hash();
        if latest != p.hash {
            // Committed, and already followed by another transition (leadership moved while the
            // write was in flight, and the next leader committed it and more): the write took
            // effect, so it must not be answered as a mismatch. This replica does not adopt the
            // superseded mesh CA.
            if chain.position(&p.hash).is_some() {
                return match (&p.genesis, &self.secrets) {
                    (None, Some(secrets)) => Ok(SetOutcome {
                        root_ca_pem: secrets.root_ca.cert_pem(),
                        mesh_ca_pem: p.mesh_ca.mesh_ca_pem(),
                        transition: p.new.transition,
                        hash: p.hash,
                        seed_shares: Vec::new(),
                        unchanged: false,
                    }),
                    _ => Err(CoordinatorError::CommittedThenSuperseded {
                        transition: p.hash,
                        latest,
                    }),
                };
            }
            return Err(CoordinatorError::PreviousMismatch {
                expected: p.new.transition.previous,
                latest,
            });
        }
        let PreparedSet {
            new,
            hash,
            mesh_ca,
            genesis,
            seed_shares,
            seals_ahead: _,
        } = p;
        match (genesis, self.secrets.take()) {
            (Some((engine, root_ca)), _) => {
                let signing_key = engine.transition_signing_key();
                self.secrets = Some(Secrets {
                    engine,
                    signing_key,
                    root_ca: std::sync::Arc::new(root_ca),
                    mesh_ca,
                    mesh_for: hash,
                });
            }
            (None, Some(mut secrets)) => {
                secrets.mesh_ca = mesh_ca;
                secrets.mesh_for = hash;
                self.secrets = Some(secrets);
            }
            (None, None) => return Err(CoordinatorError::Recovering),
        }
        let secrets = self.secrets.as_ref().ok_or(CoordinatorError::Recovering)?;
        Ok(SetOutcome {
            transition: new.transition,
            hash,
            seed_shares,
            root_ca_pem: secrets.root_ca.cert_pem(),
            mesh_ca_pem: secrets.mesh_ca.mesh_ca_pem(),
            unchanged: false,
        })
    }

    /// Whether the store moved on since this replica last loaded it (Raft applied entries).
    pub fn is_stale(&self) -> Result<bool, CoordinatorError> {
        use crate::store::Key;
        let get = |k: &Key| {
            self.ledger
                .store()
                .get(k)
                .map_err(crate::history::LedgerError::from)
        };
        let stored = get(&Key::Latest)?;
        let Some(h) = &self.history else {
            return Ok(stored.is_some());
        };
        let latest = h.chain.latest_hash();
        if stored.as_deref() != Some(&latest.as_bytes()[..]) {
            return Ok(true);
        }
        // The latest transition's mesh CA can be rotated (user recovery) without a new transition.
        let Some(stored) = get(&Key::MeshCerts(latest))? else {
            return Ok(true);
        };
        // Asked before every write and after every apply: the stored bytes are the known certificates'
        // encoding unless they were rotated, so compare bytes first and decode only when they differ.
        if serde_json::to_vec(&h.mesh).is_ok_and(|known| known == stored) {
            return Ok(false);
        }
        let mesh = serde_json::from_slice::<crate::history::MeshCerts>(&stored).ok();
        Ok(mesh.as_ref() != Some(&h.mesh))
    }

    /// Whether committing the transition `hash` after `previous` takes at most that one transition
    /// into this core: the core's latest is `previous` or `hash` itself. Then [`Self::commit_set`]
    /// is brief work (the caller may run it in place on a runtime worker).
    pub fn is_one_behind(&self, previous: &Hash, hash: &Hash) -> bool {
        self.history.as_ref().is_some_and(|h| {
            let latest = h.chain.latest_hash();
            latest == *previous || latest == *hash
        })
    }

    /// Reloads and verifies the history if the store moved on. A replica whose mesh CA belongs to an
    /// older transition is recovering until it gets the new one from a peer.
    pub fn refresh(&mut self) -> Result<(), CoordinatorError> {
        if self.is_stale()? && self.catch_up()? == CaughtUp::Applied {
            self.adopt_prepared();
        }
        Ok(())
    }

    /// Keeps the mesh CA a write of this replica's prepared for transition `hash`, for
    /// [`Coordinator::adopt_prepared`].
    fn keep_prepared(&self, hash: Hash, mesh_ca: &std::sync::Arc<MeshCa>) {
        let mut prepared = self
            .prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if prepared.len() >= PREPARED_KEPT {
            prepared.remove(0);
        }
        prepared.push((hash, mesh_ca.clone()));
    }

    /// A write of this replica's own (the leader's), seen committed by a reload before the write's
    /// answer adopted its mesh CA (the state machine's catch-up often runs first): the mesh CA it
    /// prepared is adopted now, if the committed transition records exactly its certificate. Until
    /// the twenty-second pass on issue 11 the leader read as recovering in between and refused mesh
    /// handshakes and NewMeshCerts ("not ready, retry later") on every manifest update.
    ///
    /// Called only after a catch-up that took every new transition from the state machine's feed
    /// ([`CaughtUp::Applied`]): those were committed. A transition that reached only the store (the
    /// host's disk, which can hold a write this leader signed that never committed) is not enough;
    /// its write's answer ([`Coordinator::commit_set`], after Raft committed it) adopts it instead.
    fn adopt_prepared(&mut self) {
        let (Some(h), Some(secrets)) = (&self.history, self.secrets.as_mut()) else {
            return;
        };
        let latest = h.chain.latest_hash();
        let mut prepared = self
            .prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if secrets.mesh_for != latest
            && let Some(i) = prepared.iter().position(|(hash, ca)| {
                *hash == latest && ca.mesh_ca_der() == h.mesh.mesh_ca_der.as_slice()
            })
        {
            let (hash, mesh_ca) = prepared.swap_remove(i);
            secrets.mesh_ca = mesh_ca;
            secrets.mesh_for = hash;
        }
    }

    /// Brings the verified history up to the store: from the state machine's feed when it holds
    /// the whole line (nothing read back, no signature verified twice), else by [`Self::reload`].
    fn catch_up(&mut self) -> Result<CaughtUp, CoordinatorError> {
        if let (Some(feed), Some(known)) = (&self.feed, self.history.as_mut()) {
            match self.ledger.extend_from_feed(known, feed) {
                Ok(true) => return Ok(CaughtUp::Applied),
                Ok(false) => {}
                // What was pushed is verified; the store path verifies the rest, or names the fault.
                Err(e) => {
                    tracing::debug!(error = %e, "catching up from the state machine failed; reading the store")
                }
            }
        }
        self.history = self.reload()?;
        Ok(CaughtUp::Stored)
    }

    /// The stored history, verified: only what was appended since the history this replica already
    /// verified (`Ledger::load_since`), or all of it when there is none yet.
    fn reload(&self) -> Result<Option<LoadedHistory>, CoordinatorError> {
        Ok(match &self.history {
            Some(known) => self.ledger.load_since(known)?,
            None => self.ledger.load()?,
        })
    }

    /// GetManifests. Refused while recovering: an unverified history must not be served as trusted.
    pub fn manifests(&self) -> Result<ManifestsView, CoordinatorError> {
        self.view(true)
    }

    /// StreamManifests: the view without its manifests, and a reader of each manifest (by position,
    /// oldest first) from the store, hash-checked against its verified transition, for the caller to
    /// send one piece at a time. Refused like GetManifests.
    pub fn manifests_on_demand(
        &self,
    ) -> Result<(ManifestsView, usize, ManifestReader), CoordinatorError> {
        let mut view = self.view(false)?;
        let Some(h) = &self.history else {
            return Ok((view, 0, Box::new(|_| Err("no history".into()))));
        };
        if view.latest.is_none() {
            return Ok((view, 0, Box::new(|_| Err("no history".into()))));
        }
        view.policies = h.policies.values().cloned().collect();
        let ledger = self.ledger.clone();
        let chain = h.chain.clone();
        let count = chain.len();
        let reader: ManifestReader =
            Box::new(move |i| ledger.manifest_bytes(&chain, i).map_err(|e| e.to_string()));
        Ok((view, count, reader))
    }

    /// GetManifests with `only_latest`: the CAs and the latest transition, without copying the history.
    pub fn latest_view(&self) -> Result<ManifestsView, CoordinatorError> {
        self.view(false)
    }

    /// The latest transition's hash, as [`Coordinator::latest_view`] names it (None before the first
    /// manifest), without the certificates.
    pub fn latest_hash(&self) -> Option<Hash> {
        match (self.state(), &self.history) {
            (ReplicaState::Fresh, _) | (_, None) => None,
            (_, Some(h)) => Some(h.chain.latest_hash()),
        }
    }

    fn view(&self, with_history: bool) -> Result<ManifestsView, CoordinatorError> {
        match (self.state(), &self.history) {
            (ReplicaState::Fresh, _) | (_, None) => Ok(ManifestsView {
                manifests: Vec::new(),
                policies: Vec::new(),
                root_ca_pem: String::new(),
                mesh_ca_pem: String::new(),
                latest: None,
            }),
            // Public data may be served by a replica that verified its history with the seed, even
            // while it is fetching the latest mesh CA; never by one that never held the seed.
            (ReplicaState::Recovering, _) if !self.holds_seed() => {
                Err(CoordinatorError::Recovering)
            }
            (_, Some(h)) => Ok(ManifestsView {
                manifests: match with_history {
                    true => (0..h.chain.len())
                        .map(|i| self.ledger.manifest_bytes(&h.chain, i))
                        .collect::<Result<_, _>>()?,
                    false => Vec::new(),
                },
                policies: match with_history {
                    true => h.policies.values().cloned().collect(),
                    false => Vec::new(),
                },
                root_ca_pem: pem::encode_certificate(&h.root_ca_der),
                mesh_ca_pem: pem::encode_certificate(&h.mesh.mesh_ca_der),
                latest: Some((h.chain.latest_transition().clone(), h.chain.latest_hash())),
            }),
        }
    }

    /// GetHistory: the audit bundle, with this replica's evidence bound to `nonce`.
    pub fn audit_bundle(
        &self,
        nonce: &[u8; 32],
        issuer: &dyn EvidenceIssuer,
    ) -> Result<FinishedBundle, CoordinatorError> {
        let draft = self.audit_draft(nonce)?;
        let evidence = issuer
            .issue(&draft.report_data())
            .map_err(|e| CoordinatorError::Evidence(e.to_string()))?;
        Ok(draft.finish(&evidence))
    }

    /// GetHistory's first half: the bundle without its evidence, and the report data the evidence
    /// must carry. It reads the core only, so a caller can release the core's lock before asking
    /// for evidence (a device call that may be slow) and [`AuditDraft::finish`] after.
    pub fn audit_draft(&self, nonce: &[u8; 32]) -> Result<AuditDraft, CoordinatorError> {
        let h = match (self.state(), &self.history) {
            (ReplicaState::Ready, Some(h)) => h,
            // Like GetManifests: public data, from a history verified with the seed.
            (ReplicaState::Recovering, Some(h)) if self.holds_seed() => h,
            (ReplicaState::Recovering, _) => return Err(CoordinatorError::Recovering),
            _ => return Err(CoordinatorError::NoManifest),
        };
        // The latest checkpoint travels with the bundle, its key bound by the evidence (§10, §15).
        let checkpoint = self.checkpoint()?;
        let report_data = format::audit_report_data_with_checkpoint_key(
            nonce,
            h.chain.signing_key(),
            &h.chain.latest_hash(),
            &h.root_ca_der,
            &h.mesh.mesh_ca_der,
            Some(&checkpoint.key),
        );
        let ledger = self.ledger.clone();
        let chain = h.chain.clone();
        let manifests: ManifestReader =
            Box::new(move |i| ledger.manifest_bytes(&chain, i).map_err(|e| e.to_string()));
        Ok(AuditDraft {
            history: h.clone(),
            manifests,
            report_data,
            nonce: *nonce,
            checkpoint: checkpoint.note.encode(),
            checkpoint_key: hex::encode(checkpoint.key.as_bytes()),
        })
    }

    /// NewMeshCert for a workload whose evidence (`report`) was verified against the current manifest,
    /// for the key it attested (`spki_der`, the SubjectPublicKeyInfo of its aTLS certificate).
    pub fn issue_mesh_cert(
        &self,
        report: &VerifiedReport,
        spki_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<MeshCertBundle, CoordinatorError> {
        let (Some(h), Some(secrets)) = (&self.history, &self.secrets) else {
            return match self.state() {
                ReplicaState::Recovering => Err(CoordinatorError::Recovering),
                _ => Err(CoordinatorError::NoManifest),
            };
        };
        let host_data = Hash(*report.host_data());
        let manifest = h.chain.latest_manifest();
        let Some(policy) = manifest.policy(&host_data) else {
            return Err(CoordinatorError::PermissionDenied(format!(
                "the workload's policy {host_data} is not in the current manifest"
            )));
        };
        let name = policy.name.clone().unwrap_or_else(|| host_data.to_hex());
        let sans: Vec<String> = policy.sans.iter().map(|s| s.as_string()).collect();
        let leaf = secrets
            .mesh_ca
            .issue_attested(spki_der, &name, &sans, &leaf_claims(report), now)
            .map_err(|e| {
                CoordinatorError::InvalidInput(format!("cannot issue a certificate: {e}"))
            })?;
        let workload_secret = match &policy.workload_secret_id {
            Some(id) => Zeroizing::new(secrets.engine.workload_secret(id).to_vec()),
            None => Zeroizing::new(Vec::new()),
        };
        Ok(MeshCertBundle {
            cert_chain_pem: secrets.mesh_ca.chain_pem(&leaf),
            mesh_ca_pem: secrets.mesh_ca.mesh_ca_pem(),
            root_ca_pem: secrets.root_ca.cert_pem(),
            workload_secret,
            workload: name,
        })
    }
}

/// The most bytes of policy documents one SetManifest may carry (besides the manifest itself): they
/// travel in one Raft entry. Documents already in the history need not be sent again.
pub const MAX_POLICY_DOCUMENT_BYTES: usize = 4 << 20;

/// The size caps of a SetManifest, checked before anything else.
fn check_set_size(req: &SetRequest) -> Result<(), CoordinatorError> {
    if req.manifest.len() > crate::manifest::MAX_MANIFEST_BYTES {
        return Err(CoordinatorError::InvalidInput(crate::manifest::too_large(
            req.manifest.len(),
        )));
    }
    if req.policies.len() > crate::manifest::MAX_POLICIES {
        return Err(CoordinatorError::InvalidInput(format!(
            "the request carries {} policy documents, more than the {} policies a manifest may list",
            req.policies.len(),
            crate::manifest::MAX_POLICIES
        )));
    }
    let bytes: usize = req.policies.iter().map(Vec::len).sum();
    if bytes > MAX_POLICY_DOCUMENT_BYTES {
        return Err(CoordinatorError::InvalidInput(format!(
            "the request carries {bytes} bytes of policy documents, more than the {MAX_POLICY_DOCUMENT_BYTES} Concord accepts in one SetManifest; \
             set the manifest in steps, a few new policies at a time (documents already in the history need not be sent again)"
        )));
    }
    Ok(())
}

/// Parses the manifest of a SetManifest (bounded by [`crate::manifest::MAX_MANIFEST_BYTES`], linear in
/// its size). Needs no replica state, so it runs outside the replica's lock.
pub fn parse_for_set(bytes: &[u8]) -> Result<Manifest, CoordinatorError> {
    Manifest::parse(bytes).map_err(|e| CoordinatorError::InvalidInput(e.to_string()))
}

/// The first items of a list for an error message, and how many more there are: a message that grows
/// with the input could exceed what a gRPC status header carries.
fn first_few(items: &[String]) -> String {
    const SHOWN: usize = 5;
    if items.len() <= SHOWN {
        items.join(", ")
    } else {
        format!(
            "{} and {} more",
            items[..SHOWN].join(", "),
            items.len() - SHOWN
        )
    }
}

/// The verified claims a workload's leaf carries (`concord_mesh_ca::claims` has the OIDs).
fn leaf_claims(report: &VerifiedReport) -> concord_mesh_ca::AttestedClaims {
    let tcb = report.reported_tcb();
    concord_mesh_ca::AttestedClaims {
        platform: report.platform().as_str().to_string(),
        measurement: report.measurement().to_vec(),
        host_data: *report.host_data(),
        chip_id: report.chip_id().to_vec(),
        reported_tcb: concord_mesh_ca::TcbClaims {
            bootloader: tcb.bootloader,
            tee: tcb.tee,
            snp: tcb.snp,
            microcode: tcb.microcode,
            fmc: tcb.fmc,
        },
        tdx: report.tdx_claims().map(|t| {
            let bytes = |h: &str| hex::decode(h).unwrap_or_default();
            concord_mesh_ca::TdxLeafClaims {
                rtmr: [
                    bytes(&t.rtmr0),
                    bytes(&t.rtmr1),
                    bytes(&t.rtmr2),
                    bytes(&t.rtmr3),
                ],
                mrseam: bytes(&t.mrseam),
                tee_tcb_svn: bytes(&t.tee_tcb_svn),
                td_attributes: bytes(&t.td_attributes),
                xfam: bytes(&t.xfam),
                tcb_status: t.tcb_status.clone().unwrap_or_default(),
                fmspc: t.fmspc.as_deref().map(bytes).unwrap_or_default(),
            }
        }),
    }
}

pub(super) fn mesh_certs(mesh_ca: &MeshCa) -> MeshCerts {
    MeshCerts {
        mesh_ca_der: mesh_ca.mesh_ca_der().to_vec(),
        intermediate_der: mesh_ca.intermediate_der().to_vec(),
    }
}

/// The owner authorization of a first manifest: by a key that manifest itself lists, over transition
/// `SHA-256(manifest_hash || 0^32)`. A manifest with no owner key (final from the start) has nobody to
/// sign and takes none; its deployment id binds the whole manifest instead (docs/PROTOCOL.md §8.1).
fn authorize_first(
    manifest: &Manifest,
    owner: Option<&(VerifyingKey, Signature)>,
) -> Result<Option<OwnerAuthorization>, CoordinatorError> {
    let hash = format::transition_hash(&manifest.hash(), &Hash::ZERO);
    match owner {
        None if manifest.is_final() => Ok(None),
        None => Err(CoordinatorError::PermissionDenied(format!(
            "the first manifest lists workload owner keys, so one of them must authorize it: sign \
             \"concord/v1/set-manifest\" || transition hash {hash} with an owner key the manifest lists \
             (`concord set --owner-key`)"
        ))),
        Some(_) if manifest.is_final() => Err(CoordinatorError::InvalidInput(
            "this first manifest lists no workload owner key, so it takes no owner signature"
                .into(),
        )),
        Some((key, signature)) => {
            if !manifest.workload_owner_keys().contains(key) {
                return Err(CoordinatorError::PermissionDenied(format!(
                    "owner key {} is not listed in this first manifest's workload_owner_keys: the \
                     first manifest is authorized by one of its own owner keys",
                    hex::encode(key.as_bytes())
                )));
            }
            if !format::verify_owner(key, &hash, signature) {
                return Err(CoordinatorError::PermissionDenied(format!(
                    "the owner signature does not verify over transition {hash}; sign \
                     \"concord/v1/set-manifest\" || transition hash with the owner key"
                )));
            }
            Ok(Some(OwnerAuthorization {
                key: *key,
                signature: *signature,
            }))
        }
    }
}

/// Reads the manifest bytes of transition `i` of a draft's history from the store, hash-checked.
pub type ManifestReader = Box<dyn FnMut(usize) -> Result<Vec<u8>, String> + Send>;

/// An audit bundle waiting for its evidence ([`Coordinator::audit_draft`]). It holds the verified
/// history's small parts and a reader of the store: manifests are read when the bundle is written.
pub struct AuditDraft {
    history: LoadedHistory,
    manifests: ManifestReader,
    report_data: [u8; 64],
    nonce: [u8; 32],
    /// The latest checkpoint's note text and the hex key that signs checkpoints (§15).
    checkpoint: String,
    checkpoint_key: String,
}

impl std::fmt::Debug for AuditDraft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditDraft")
            .field("transitions", &self.history.chain.len())
            .field("latest", &self.history.chain.latest_hash())
            .finish()
    }
}

impl AuditDraft {
    /// The report data the evidence must carry: it binds the nonce, the signing key, the latest
    /// transition and both CA certificates of the bundle.
    pub fn report_data(&self) -> [u8; 64] {
        self.report_data
    }

    /// The bundle's checkpoint note (PROTOCOL.md §15), to add the witness cosignatures the replica
    /// holds: signature lines are not bound by the report data (only the checkpoint key is).
    pub fn checkpoint_note_mut(&mut self) -> Option<&mut String> {
        Some(&mut self.checkpoint)
    }

    /// The bundle with `evidence`, which must carry [`report_data`](Self::report_data) (an auditor
    /// rejects it otherwise), ready to be written.
    pub fn finish(self, evidence: &concord_attestation::Evidence) -> FinishedBundle {
        FinishedBundle {
            evidence: BundleEvidence::new(evidence, &self.nonce),
            history: self.history,
            manifests: self.manifests,
            checkpoint: self.checkpoint,
            checkpoint_key: self.checkpoint_key,
        }
    }
}

/// An audit bundle with its evidence, written as JSON one transition at a time.
pub struct FinishedBundle {
    history: LoadedHistory,
    manifests: ManifestReader,
    evidence: BundleEvidence,
    checkpoint: String,
    checkpoint_key: String,
}

impl std::fmt::Debug for FinishedBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinishedBundle")
            .field("transitions", &self.history.chain.len())
            .finish()
    }
}

impl FinishedBundle {
    /// How many transitions the bundle holds.
    pub fn transitions(&self) -> usize {
        self.history.chain.len()
    }

    /// Writes the bundle's JSON (`history.json`) to `out`, reading each manifest from the store when
    /// its turn comes: memory stays at one manifest, whatever the history's length. Fails if a
    /// manifest cannot be read or no longer hashes to what its verified transition names, or if
    /// `out` fails.
    pub fn write_json(self, out: impl std::io::Write) -> Result<(), String> {
        let h = &self.history;
        crate::history::audit::BundleWriter {
            chain: &h.chain,
            manifest: std::cell::RefCell::new(self.manifests),
            policies: &h.policies,
            root_ca_der: &h.root_ca_der,
            mesh_ca_der: &h.mesh.mesh_ca_der,
            evidence: &self.evidence,
            checkpoint: Some((&self.checkpoint, &self.checkpoint_key)),
        }
        .write_json(out)
    }

    /// The bundle's JSON in memory (tests, and GetHistory's one message: see `write_json` with a
    /// bounded writer for that).
    pub fn to_json(self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.write_json(&mut out)?;
        Ok(out)
    }
}

/// Why a replica pinned to `id` (`--deployment-id`) refuses to start on `what` (its stored history,
/// or the one its Raft log would apply again), which belongs to deployment `stored`.
pub fn started_for_another_deployment(
    id: DeploymentId,
    what: &str,
    stored: DeploymentId,
) -> String {
    format!(
        "this replica was started for deployment {id} (--deployment-id), but {what} belongs to \
         deployment {stored}: fix the launch configuration (the chart's deploymentId), or move the \
         data directory aside if it is another deployment's"
    )
}
