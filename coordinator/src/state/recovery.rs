//! User recovery: after a full outage no replica holds the secrets. Seed share owners each submit their
//! own decrypted share, sealed with their own X25519 key to this process's recovery key, so a share is
//! taken only from the owner the first manifest lists for its index (a forgery by anyone else never
//! gets in beside or instead of a real share: issue 9.6); once `threshold` distinct shares of this
//! deployment are here, they are combined,
//! the seed is checked against the stored history (the derived signing key must be the history's), the
//! root CA is rebuilt from its derived key, and a new mesh CA is made (the old one's key was only in
//! memory and is never derivable from the seed: Invariant 3). Only then is the replica ready.
//!
//! Shares live only in memory, are never logged or written, and are discarded after a failed attempt.

use concord_mesh_ca::{
    MeshCa, MeshCaError, RecoveryKey, RootCa, SeedEngine, SeedShare, ShareSubmission, combine,
};
use time::OffsetDateTime;

use super::ReplicaState;
use super::coordinator::{Coordinator, mesh_certs};
use super::secrets::Secrets;
use crate::error::CoordinatorError;
use crate::hash::Hash;
use crate::history::MeshCerts;
use crate::store::Store;

/// A seed share that was sealed by the owner key the verified first manifest lists for its index, and
/// belongs to this deployment: only [`Coordinator::authenticate_submission`] makes one.
#[derive(Debug)]
pub struct AuthenticatedShare(SeedShare);

impl AuthenticatedShare {
    /// The share's index (public), for log lines.
    pub fn index(&self) -> u8 {
        self.0.index
    }
}

/// Where a user recovery stands after a share was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoverProgress {
    pub shares_received: u32,
    pub threshold: u32,
    pub ready: bool,
}

/// What a share did: not enough yet, or the secrets are recovered and wait for their new mesh CA
/// certificates to be written (through Raft) before [`Coordinator::commit_recovery`] adopts them.
#[derive(Debug)]
pub enum ShareOutcome {
    Progress(RecoverProgress),
    Recovered(Box<RecoveredSecrets>),
}

/// Secrets rebuilt from the seed shares, with the new mesh CA. Debug is redacted.
pub struct RecoveredSecrets {
    secrets: Secrets,
    /// The public certificates of the new mesh CA, to be recorded for `latest`.
    pub mesh: MeshCerts,
    pub latest: Hash,
    pub progress: RecoverProgress,
}

impl RecoveredSecrets {
    /// The new mesh CA (for `state::sealed`).
    pub(super) fn mesh_ca(&self) -> &MeshCa {
        &self.secrets.mesh_ca
    }

    /// Secrets from `engine` with a new `mesh_ca` for `latest`.
    fn new(
        engine: SeedEngine,
        root_ca: RootCa,
        mesh_ca: MeshCa,
        latest: Hash,
        progress: RecoverProgress,
    ) -> Self {
        let signing_key = engine.transition_signing_key();
        let mesh = mesh_certs(&mesh_ca);
        RecoveredSecrets {
            secrets: Secrets {
                engine,
                signing_key,
                root_ca: std::sync::Arc::new(root_ca),
                mesh_ca: std::sync::Arc::new(mesh_ca),
                mesh_for: latest,
            },
            mesh,
            latest,
            progress,
        }
    }
}

impl std::fmt::Debug for RecoveredSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveredSecrets")
            .field("latest", &self.latest)
            .field("secrets", &"[redacted]")
            .finish()
    }
}

/// What a seed share owner last knew of the history, which the replica's latest must be or extend
/// before a share is taken: restoring old disks after a full outage must not bring the deployment back
/// on an older manifest with the owners' help (issue 9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KnownLatest {
    /// The latest must be exactly this transition.
    pub exactly: Option<Hash>,
    /// This transition must be in the history (equal to or an ancestor of the latest).
    pub since: Option<Hash>,
}

impl<S: Store> Coordinator<S> {
    /// Refuses (the history is older than, or forked from, what the share owner knew) unless the
    /// verified history's latest transition is `known.exactly` and contains `known.since`. The
    /// history was verified link by link and signature by signature at load; a forged one is caught
    /// later, when the shares derive another signing key.
    pub fn check_known_latest(&self, known: &KnownLatest) -> Result<(), CoordinatorError> {
        let Some(chain) = self.chain() else {
            return Ok(()); // Fresh: accept_share refuses with "nothing to recover".
        };
        let t = chain.latest_transition();
        let here = || {
            format!(
                "this replica's latest transition is #{} {} (manifest {})",
                t.index,
                chain.latest_hash(),
                t.manifest_hash
            )
        };
        if let Some(h) = known.exactly
            && h != chain.latest_hash()
        {
            let relation = match chain.position(&h) {
                Some(i) => format!("{h} is its transition #{i}: the history you know is NEWER"),
                None => format!("{h} is not in its history (a rollback to before it, or a fork)"),
            };
            return Err(CoordinatorError::UnknownHistory(format!(
                "{}; you expected {h}, but {relation}",
                here()
            )));
        }
        if let Some(h) = known.since
            && chain.position(&h).is_none()
        {
            return Err(CoordinatorError::UnknownHistory(format!(
                "{}, and its history does not contain {h} (a rollback to before it, or a fork)",
                here()
            )));
        }
        Ok(())
    }

    /// User recovery on a replica that writes its own store (one replica, tests): takes a share
    /// submission, and at threshold records the new mesh CA and adopts the secrets.
    pub fn recover_with_submission(
        &mut self,
        key: &RecoveryKey,
        submission: &ShareSubmission,
        now: OffsetDateTime,
    ) -> Result<RecoverProgress, CoordinatorError> {
        match self.accept_submission(key, submission, now)? {
            ShareOutcome::Progress(p) => Ok(p),
            ShareOutcome::Recovered(r) => {
                self.ledger.replace_mesh_certs(&r.latest, &r.mesh)?;
                self.commit_recovery(*r)
            }
        }
    }

    /// After the new mesh CA certificates were written: adopts the recovered secrets if the store's
    /// latest transition and its mesh CA are the ones they were made for.
    pub fn commit_recovery(
        &mut self,
        r: RecoveredSecrets,
    ) -> Result<RecoverProgress, CoordinatorError> {
        let history = self.ledger.load()?.ok_or(CoordinatorError::NoManifest)?;
        if history.chain.latest_hash() != r.latest || history.mesh != r.mesh {
            return Err(CoordinatorError::FailedPrecondition(
                "the history moved on while recovering (another replica recovered first?); submit the shares again if this replica is still recovering".into(),
            ));
        }
        self.history = Some(history);
        self.secrets = Some(r.secrets);
        Ok(r.progress)
    }

    /// A replica that holds the seed but whose mesh CA belongs to an older transition, when no peer can
    /// supply the current one (the replica that made it died before anyone fetched it): a new random
    /// mesh CA for the latest transition (Invariant 3 holds), to be recorded through Raft like the one
    /// user recovery makes, then adopted with [`Coordinator::commit_recovery`].
    pub fn rotate_lost_mesh_ca(
        &self,
        now: OffsetDateTime,
    ) -> Result<RecoveredSecrets, CoordinatorError> {
        let (Some(h), Some(secrets)) = (&self.history, &self.secrets) else {
            return Err(CoordinatorError::FailedPrecondition(
                "this replica does not hold the seed; it cannot make a mesh CA".into(),
            ));
        };
        if self.state() != ReplicaState::Recovering {
            return Err(CoordinatorError::FailedPrecondition(
                "this replica's mesh CA is current".into(),
            ));
        }
        let mesh_ca = MeshCa::generate(&secrets.root_ca, now)
            .map_err(|e| CoordinatorError::Crypto(e.to_string()))?;
        let latest = h.chain.latest_hash();
        let engine = secrets.engine.clone();
        let root_ca = RootCa::from_parts(
            secrets.root_ca.cert_der().to_vec(),
            &engine
                .root_ca_key()
                .map_err(|e| CoordinatorError::Crypto(e.to_string()))?,
        )
        .map_err(|e| CoordinatorError::Crypto(e.to_string()))?;
        let progress = RecoverProgress {
            shares_received: 0,
            threshold: 0,
            ready: true,
        };
        Ok(RecoveredSecrets::new(
            engine, root_ca, mesh_ca, latest, progress,
        ))
    }

    /// Whether this replica holds the seed (it was ready once since it started).
    pub fn holds_seed(&self) -> bool {
        self.secrets.is_some()
    }

    /// Checks a share submission without changing anything: this replica is recovering, the
    /// submission was sealed to `key` by the owner key the verified first manifest lists for the
    /// share's index, and the share belongs to this deployment. Cheap (one HPKE open): callers run it
    /// before anything costly, such as asking the peers whether one is ready.
    pub fn authenticate_submission(
        &self,
        key: &RecoveryKey,
        submission: &ShareSubmission,
    ) -> Result<AuthenticatedShare, CoordinatorError> {
        let history = self.recoverable_history()?;
        let chain = &history.chain;
        let owners = chain.first_manifest().seed_share_owners();
        let share = key.open(submission, &owners.keys).map_err(|e| match e {
            MeshCaError::UnknownShareOwner { .. }
            | MeshCaError::SubmissionNotAuthentic { .. }
            | MeshCaError::SubmissionIndexMismatch { .. } => {
                CoordinatorError::PermissionDenied(e.to_string())
            }
            other => CoordinatorError::InvalidInput(format!("the submitted share: {other}")),
        })?;
        let deployment = chain.hash_at(0).unwrap_or(Hash::ZERO);
        if share.deployment != *deployment.as_bytes() {
            return Err(CoordinatorError::InvalidInput(format!(
                "this share belongs to another deployment ({}); this history's first transition is {deployment}",
                Hash(share.deployment)
            )));
        }
        if share.threshold != owners.threshold {
            return Err(CoordinatorError::InvalidInput(format!(
                "this share (index {}, threshold {}) does not fit this deployment's {}-of-{} seed share owners",
                share.index,
                share.threshold,
                owners.threshold,
                owners.keys.len()
            )));
        }
        Ok(AuthenticatedShare(share))
    }

    /// The verified history of a recovering replica; an error naming why there is nothing to recover.
    fn recoverable_history(&self) -> Result<&crate::history::LoadedHistory, CoordinatorError> {
        match (self.state(), &self.history) {
            (ReplicaState::Fresh, _) | (_, None) => Err(CoordinatorError::FailedPrecondition(
                "there is nothing to recover: no history exists yet; set a manifest instead".into(),
            )),
            (ReplicaState::Ready, _) => Err(CoordinatorError::FailedPrecondition(
                "this coordinator is ready: there is nothing to recover".into(),
            )),
            (ReplicaState::Recovering, Some(h)) => Ok(h),
        }
    }

    /// Takes one seed share submission. See the module documentation. A ready replica has nothing
    /// to recover, forced or not; whether a ready *peer* exists is the caller's question
    /// (`Node::recover_with_submission` asks, and `--force` skips it). Writes nothing.
    ///
    /// An owner that submits again replaces its own pending share (it may have sent a damaged
    /// one); nobody else can, since every share is authenticated to its owner.
    pub fn accept_submission(
        &mut self,
        key: &RecoveryKey,
        submission: &ShareSubmission,
        now: OffsetDateTime,
    ) -> Result<ShareOutcome, CoordinatorError> {
        let share = self.authenticate_submission(key, submission)?;
        self.accept_authenticated_share(share, now)
    }

    /// [`Coordinator::accept_submission`] after [`Coordinator::authenticate_submission`] (which the
    /// caller may run first, to do nothing costly for a forgery).
    pub fn accept_authenticated_share(
        &mut self,
        share: AuthenticatedShare,
        now: OffsetDateTime,
    ) -> Result<ShareOutcome, CoordinatorError> {
        let AuthenticatedShare(share) = share;
        self.recoverable_history()?;
        // Direct field access (not the method's borrow of all of `self`): `pending_shares` changes below.
        let Some(history) = self.history.as_ref() else {
            return Err(CoordinatorError::NoManifest);
        };
        let chain = &history.chain;
        let owners = chain.first_manifest().seed_share_owners().clone();
        // Authenticated to its owner: a second submission for an index is that owner's own.
        match self
            .pending_shares
            .iter_mut()
            .find(|s| s.index == share.index)
        {
            Some(known) => *known = share,
            None => self.pending_shares.push(share),
        }
        let received = self.pending_shares.len() as u32;
        let threshold = u32::from(owners.threshold);
        if received < threshold {
            return Ok(ShareOutcome::Progress(RecoverProgress {
                shares_received: received,
                threshold,
                ready: false,
            }));
        }

        // Enough shares: whatever happens next, they are used once and dropped (zeroized).
        let shares = std::mem::take(&mut self.pending_shares);
        let engine = combine(&shares).map_err(|e| {
            CoordinatorError::InvalidInput(format!(
                "the shares do not combine: {e}; they were discarded, submit them again"
            ))
        })?;
        let signing_key = engine.transition_signing_key();
        if signing_key.verifying_key() != *chain.signing_key() {
            return Err(CoordinatorError::PermissionDenied(
                "the shares reconstruct a seed whose signing key is not this history's: at least one owner submitted a wrong share (a damaged share file, or one of an earlier deployment). They were discarded; nothing changed"
                    .into(),
            ));
        }
        let crypto = |e: concord_mesh_ca::MeshCaError| CoordinatorError::Crypto(e.to_string());
        let root_ca = RootCa::from_parts(
            history.root_ca_der.clone(),
            &engine.root_ca_key().map_err(crypto)?,
        )
        .map_err(|e| {
            CoordinatorError::Ledger(crate::history::LedgerError::Corrupt(format!(
                "the stored root CA certificate does not belong to the recovered seed: {e}"
            )))
        })?;
        let mesh_ca = MeshCa::generate(&root_ca, now).map_err(crypto)?;
        let progress = RecoverProgress {
            shares_received: received,
            threshold,
            ready: true,
        };
        Ok(ShareOutcome::Recovered(Box::new(RecoveredSecrets::new(
            engine,
            root_ca,
            mesh_ca,
            chain.latest_hash(),
            progress,
        ))))
    }
}
