//! `Coordinator`: one replica's state and the operations of the user and mesh APIs.

use concord_attestation::{EvidenceIssuer, VerifiedReport};
use concord_mesh_ca::{EncryptedShare, MeshCa, RootCa, SeedEngine, encrypt_share, split};
use ed25519_dalek::{Signature, VerifyingKey};
use time::OffsetDateTime;

use super::secrets::Secrets;
use crate::error::CoordinatorError;
use crate::hash::Hash;
use crate::history::audit::{AuditBundle, BundleEvidence};
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

/// What GetManifests answers.
#[derive(Debug, Clone)]
pub struct ManifestsView {
    pub manifests: Vec<Vec<u8>>,
    pub policies: Vec<Vec<u8>>,
    pub root_ca_pem: String,
    pub mesh_ca_pem: String,
    pub latest: Option<(Transition, Hash)>,
}

/// What an attested workload receives.
#[derive(Debug, Clone)]
pub struct MeshCertBundle {
    pub cert_chain_pem: String,
    pub mesh_ca_pem: String,
    pub root_ca_pem: String,
    /// Empty when its policy has no `workload_secret_id`.
    pub workload_secret: Vec<u8>,
    /// The policy name (or hash) it was issued for, for the log line.
    pub workload: String,
}

/// One coordinator replica.
#[derive(Debug)]
pub struct Coordinator<S> {
    pub(super) ledger: Ledger<S>,
    pub(super) history: Option<LoadedHistory>,
    pub(super) secrets: Option<Secrets>,
    /// Seed shares submitted for user recovery, until there are enough (never written anywhere).
    pub(super) pending_shares: Vec<concord_mesh_ca::SeedShare>,
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
        })
    }

    pub fn state(&self) -> ReplicaState {
        match (&self.history, &self.secrets) {
            (None, _) => ReplicaState::Fresh,
            (Some(_), None) => ReplicaState::Recovering,
            (Some(_), Some(_)) => ReplicaState::Ready,
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

    /// SetManifest: checks the request against the history, and appends a transition durably before
    /// answering. On any error nothing was written and the state is unchanged.
    pub fn set_manifest(
        &mut self,
        req: SetRequest,
        now: OffsetDateTime,
    ) -> Result<SetOutcome, CoordinatorError> {
        let manifest = Manifest::parse(&req.manifest)
            .map_err(|e| CoordinatorError::InvalidInput(e.to_string()))?;
        for doc in &req.policies {
            let h = Hash::of(doc);
            if manifest.policy(&h).is_none() {
                return Err(CoordinatorError::InvalidInput(format!(
                    "a policy document hashes to {h}, which the manifest does not list"
                )));
            }
        }
        let stored = self.history.as_ref().map(|h| &h.policies);
        let supplied: Vec<Hash> = req.policies.iter().map(|d| Hash::of(d)).collect();
        let missing: Vec<String> = manifest
            .policies()
            .iter()
            .filter(|(h, _)| !supplied.contains(h) && !stored.is_some_and(|s| s.contains_key(*h)))
            .map(|(h, p)| format!("{h} ({})", p.name.as_deref().unwrap_or("unnamed")))
            .collect();
        if !missing.is_empty() && manifest.hash() != self.latest_manifest_hash() {
            return Err(CoordinatorError::InvalidInput(format!(
                "the policy documents of {} are missing: pass each policy document with the manifest (`concord set -p FILE`), so the history holds what every hash stands for",
                missing.join(", ")
            )));
        }
        match self.state() {
            ReplicaState::Recovering => Err(CoordinatorError::Recovering),
            ReplicaState::Fresh => self.set_first(manifest, req, now),
            ReplicaState::Ready => self.set_next(manifest, req, now),
        }
    }

    fn set_first(
        &mut self,
        manifest: Manifest,
        req: SetRequest,
        now: OffsetDateTime,
    ) -> Result<SetOutcome, CoordinatorError> {
        if req.expected_previous != Hash::ZERO {
            return Err(CoordinatorError::PreviousMismatch {
                expected: req.expected_previous,
                latest: Hash::ZERO,
            });
        }
        if req.owner.is_some() {
            return Err(CoordinatorError::InvalidInput(
                "the first manifest takes no owner signature: there is no previous manifest to list the key"
                    .into(),
            ));
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
            owner: None,
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

        let chain = VerifiedChain::first(signing_key.verifying_key(), transition.clone(), manifest)
            .map_err(|e| {
                CoordinatorError::Crypto(format!("a fresh transition does not verify: {e}"))
            })?;
        let new = NewTransition {
            transition: transition.clone(),
            manifest_bytes: req.manifest,
            policies: req.policies.clone(),
            mesh: mesh_certs(&mesh_ca),
            genesis: Some((signing_key.verifying_key(), root_ca.cert_der().to_vec())),
        };
        self.ledger.append(&new)?;

        let outcome = SetOutcome {
            transition,
            hash,
            seed_shares,
            root_ca_pem: root_ca.cert_pem(),
            mesh_ca_pem: mesh_ca.mesh_ca_pem(),
            unchanged: false,
        };
        self.history = Some(LoadedHistory {
            chain,
            root_ca_der: root_ca.cert_der().to_vec(),
            mesh: new.mesh,
            policies: req
                .policies
                .into_iter()
                .map(|p| (Hash::of(&p), p))
                .collect(),
        });
        self.secrets = Some(Secrets {
            engine,
            signing_key,
            root_ca,
            mesh_ca,
        });
        Ok(outcome)
    }

    fn set_next(
        &mut self,
        manifest: Manifest,
        req: SetRequest,
        now: OffsetDateTime,
    ) -> Result<SetOutcome, CoordinatorError> {
        let (Some(history), Some(secrets)) = (&mut self.history, &mut self.secrets) else {
            return Err(CoordinatorError::Recovering);
        };
        let chain = &history.chain;
        let latest = chain.latest_hash();
        if manifest.hash() == chain.latest_manifest().hash() {
            return Ok(SetOutcome {
                transition: chain.latest_transition().clone(),
                hash: latest,
                seed_shares: Vec::new(),
                root_ca_pem: secrets.root_ca.cert_pem(),
                mesh_ca_pem: secrets.mesh_ca.mesh_ca_pem(),
                unchanged: true,
            });
        }
        if req.expected_previous != latest {
            return Err(CoordinatorError::PreviousMismatch {
                expected: req.expected_previous,
                latest,
            });
        }
        let previous = chain.latest_manifest();
        if previous.is_final() {
            return Err(CoordinatorError::FinalManifest);
        }
        if manifest.seed_share_owners() != previous.seed_share_owners() {
            return Err(CoordinatorError::InvalidInput(
                "at `seed_share_owners`: the threshold and the share owner keys are fixed by the first manifest and cannot change"
                    .into(),
            ));
        }
        let hash = format::transition_hash(&manifest.hash(), &latest);
        let Some((owner_key, owner_signature)) = req.owner else {
            return Err(CoordinatorError::PermissionDenied(
                "an update needs a workload owner's signature over the transition hash; pass the owner key to `concord set`"
                    .into(),
            ));
        };
        if !previous.workload_owner_keys().contains(&owner_key) {
            return Err(CoordinatorError::PermissionDenied(format!(
                "owner key {} is not listed in the latest manifest's workload_owner_keys",
                hex::encode(owner_key.as_bytes())
            )));
        }
        if !format::verify_owner(&owner_key, &hash, &owner_signature) {
            return Err(CoordinatorError::PermissionDenied(format!(
                "the owner signature does not verify over transition {hash}; sign \"concord/v1/set-manifest\" || transition hash with the owner key"
            )));
        }

        let mesh_ca = MeshCa::generate(&secrets.root_ca, now)
            .map_err(|e| CoordinatorError::Crypto(e.to_string()))?;
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
        let mut next_chain = chain.clone();
        next_chain
            .push(transition.clone(), manifest)
            .map_err(|e| CoordinatorError::InvalidInput(e.to_string()))?;
        let new = NewTransition {
            transition: transition.clone(),
            manifest_bytes: req.manifest,
            policies: req.policies.clone(),
            mesh: mesh_certs(&mesh_ca),
            genesis: None,
        };
        self.ledger.append(&new)?;

        history.chain = next_chain;
        history.mesh = new.mesh;
        for p in req.policies {
            history.policies.insert(Hash::of(&p), p);
        }
        secrets.mesh_ca = mesh_ca;
        Ok(SetOutcome {
            transition,
            hash,
            seed_shares: Vec::new(),
            root_ca_pem: secrets.root_ca.cert_pem(),
            mesh_ca_pem: secrets.mesh_ca.mesh_ca_pem(),
            unchanged: false,
        })
    }

    /// GetManifests. Refused while recovering: an unverified history must not be served as trusted.
    pub fn manifests(&self) -> Result<ManifestsView, CoordinatorError> {
        match (self.state(), &self.history) {
            (ReplicaState::Fresh, _) | (_, None) => Ok(ManifestsView {
                manifests: Vec::new(),
                policies: Vec::new(),
                root_ca_pem: String::new(),
                mesh_ca_pem: String::new(),
                latest: None,
            }),
            (ReplicaState::Recovering, _) => Err(CoordinatorError::Recovering),
            (ReplicaState::Ready, Some(h)) => Ok(ManifestsView {
                manifests: h
                    .chain
                    .manifests()
                    .iter()
                    .map(|m| m.bytes().to_vec())
                    .collect(),
                policies: h.policies.values().cloned().collect(),
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
    ) -> Result<AuditBundle, CoordinatorError> {
        let h = match (self.state(), &self.history) {
            (ReplicaState::Ready, Some(h)) => h,
            (ReplicaState::Recovering, _) => return Err(CoordinatorError::Recovering),
            _ => return Err(CoordinatorError::NoManifest),
        };
        let report_data = format::audit_report_data(
            nonce,
            h.chain.signing_key(),
            &h.chain.latest_hash(),
            &h.root_ca_der,
            &h.mesh.mesh_ca_der,
        );
        let evidence = issuer
            .issue(&report_data)
            .map_err(|e| CoordinatorError::Evidence(e.to_string()))?;
        Ok(AuditBundle::new(
            &h.chain,
            &h.policies,
            &h.root_ca_der,
            &h.mesh.mesh_ca_der,
            BundleEvidence::new(&evidence, nonce),
        ))
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
            .issue(spki_der, &name, &sans, now)
            .map_err(|e| {
                CoordinatorError::InvalidInput(format!("cannot issue a certificate: {e}"))
            })?;
        let workload_secret = match &policy.workload_secret_id {
            Some(id) => secrets.engine.workload_secret(id).to_vec(),
            None => Vec::new(),
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

pub(super) fn mesh_certs(mesh_ca: &MeshCa) -> MeshCerts {
    MeshCerts {
        mesh_ca_der: mesh_ca.mesh_ca_der().to_vec(),
        intermediate_der: mesh_ca.intermediate_der().to_vec(),
    }
}
