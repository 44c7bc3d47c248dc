//! `StateMachine`: applies committed log entries to the history, after verifying them.
//!
//! The history is the [`Ledger`] on the replica's [`SledStore`] (its default tree); the applied log id,
//! the last membership and the current snapshot live beside it in the `raft-sm` tree of the same
//! database, so a restart resumes where it stopped. Nothing read from Raft is trusted (Invariant 2): a
//! [`Command::Append`] is decoded and checked against the verified history with the same
//! `VerifiedChain::push` that start-up and the audit use, and written with the same `Ledger::append`
//! as `Coordinator::set_manifest`, or not at all. The state machine does no network I/O and holds no
//! secret: it cannot sign, so past the first transition it accepts only what the holder of the signing
//! key signed and a listed workload owner authorized.

use std::io::Cursor;
use std::time::Duration;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, SnapshotMeta,
    StorageError, StoredMembership,
};
use serde::de::DeserializeOwned;
use sled::Transactional;
use x509_parser::certificate::X509Certificate;

use super::early::{Anchors, Checked, EarlyChecks};
use super::error::RaftStoreError;
use super::snapshot::{
    SNAPSHOT_DATA, SNAPSHOT_META, SnapshotBuilder, SnapshotContent, load_current, verify_history,
};
use super::types::{
    AppendTransition, AuthorizeMembers, Command, CommandResponse, NodeId, RotateMeshCa, TypeConfig,
};
use crate::hash::Hash;
use crate::history::{Ledger, LoadedHistory, MeshCerts, NewTransition, VerifiedChain};
use crate::manifest::Manifest;
use crate::store::objects::ObjectKey;
use crate::store::{SledStore, Store};

/// The sled tree of the state machine's own metadata.
pub const SM_TREE: &str = "raft-sm";

const APPLIED: &[u8] = b"applied";
/// The latest transition of the history when the applied log id was written (32 bytes; absent
/// before the first transition): at open, proof that the history holds what the applied log id says.
const APPLIED_LATEST: &[u8] = b"applied-latest";
const MEMBERSHIP: &[u8] = b"membership";

/// How long applying a transition another replica led waits for the background threads' verdict
/// on it (`check_others_early`): then the state machine verifies it in full, at its own priority.
pub const OTHERS_VERDICT_WAIT: Duration = Duration::from_millis(10);

/// The Raft state machine over the history.
#[derive(Debug)]
pub struct StateMachine {
    ledger: Ledger<SledStore>,
    tree: sled::Tree,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    /// The verified history as on disk: loaded (and verified) at open, then kept in step with every
    /// write, so that applying an entry does not re-read the whole line.
    history: Option<LoadedHistory>,
    /// Where the sealed mesh CA keys of applied entries go, for the core to open.
    inbox: super::SealedInbox,
    /// Where it leaves each transition it verified and applied, for the core to catch up with.
    feed: crate::history::feed::VerifiedFeed,
    /// Makes what `apply` wrote durable shortly after, off the commit's path.
    flush_soon: crate::store::FlushSoon,
    /// The verdicts of the checks the log store started when it appended an entry.
    early: EarlyChecks,
    /// The history's anchors (its signing key and root CA), as `early` knows them.
    anchors: Option<Anchors>,
    /// This replica, once [`StateMachine::check_others_early`] was called: the entries others led
    /// are checked early when they are applied.
    own: Option<NodeId>,
    /// For each transition written to the store: whether the feed held it at that moment (the
    /// feed-before-store rule's test).
    #[cfg(test)]
    pub(crate) fed_before_written: Vec<(Hash, bool)>,
}

/// A command that passed every check.
enum Verified {
    /// The transition is already the latest one: the entry is applied again after a crash that
    /// came between writing the history and writing the applied log id.
    AlreadyLatest(Hash),
    /// A new transition, and how the verified history in memory grows once it is written.
    New(Box<(NewTransition, Growth)>),
}

/// How the verified history in memory changes with a new transition: without copying it.
// Built once per apply, and it travels inside `Verified::New`'s box: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Growth {
    /// The first transition: the whole history.
    Genesis(Box<LoadedHistory>),
    /// A later one, checked against the history (`VerifiedChain::check_next`), with its parsed manifest.
    Append(Manifest, crate::history::CheckedNext),
}

impl StateMachine {
    /// Opens the state machine on `store`'s database. Fails if the stored history does not verify
    /// (as `Coordinator::open` does) or the applied log id or membership are unreadable.
    pub fn open(store: &SledStore) -> Result<StateMachine, RaftStoreError> {
        let tree = store
            .db()
            .open_tree(SM_TREE)
            .map_err(|e| RaftStoreError::io("open the raft-sm tree", e))?;
        let ledger = Ledger::new(store.clone());
        let history = ledger.load()?;
        let last_applied = read_json(&tree, APPLIED)?.flatten();
        // The history writes of `apply` and the applied log id ride on a later flush, written in
        // this order. Were the applied log id ever durable without the history it counts, openraft
        // would skip an entry that is not in the history: refuse to start instead of serving a
        // history that silently lacks a committed transition.
        if let Some(latest) = tree
            .get(APPLIED_LATEST)
            .map_err(|e| RaftStoreError::io("read raft-sm/applied-latest", e))?
        {
            let latest = Hash::from_slice(&latest).map_err(|reason| RaftStoreError::Corrupt {
                what: "raft-sm/applied-latest".into(),
                reason,
            })?;
            let held = store
                .get(&crate::store::Key::Transition(latest))
                .map_err(|e| RaftStoreError::io("read the history", e))?
                .is_some();
            if !held {
                return Err(RaftStoreError::Corrupt {
                    what: "the history".into(),
                    reason: format!(
                        "the applied log id counts transition {latest}, which the history does not \
                         hold: the disk lost writes; start this replica with an empty data directory \
                         so it catches up from the others"
                    ),
                });
            }
        }
        let last_membership = read_json(&tree, MEMBERSHIP)?.unwrap_or_default();
        let mut sm = StateMachine {
            ledger,
            tree,
            last_applied,
            last_membership,
            history,
            inbox: super::SealedInbox::default(),
            feed: Default::default(),
            flush_soon: crate::store::FlushSoon::new(store.durable().clone()),
            early: EarlyChecks::default(),
            anchors: None,
            own: None,
            #[cfg(test)]
            fed_before_written: Vec::new(),
        };
        sm.refresh_anchors();
        Ok(sm)
    }

    /// The early checks this state machine takes its verdicts from: the log store starts them for
    /// the entries this replica leads, and the state machine for those others led
    /// ([`StateMachine::check_others_early`]).
    pub fn early_checks(&self) -> EarlyChecks {
        self.early.clone()
    }

    /// From now on, the transitions that a replica other than `own` (this one) led are checked on
    /// the background threads when they are applied, and the apply waits up to
    /// [`OTHERS_VERDICT_WAIT`] for the verdict before it verifies in full itself. No commit waits for
    /// a follower's apply, but it comes when the leader answers and the next request arrives: the
    /// verification then gives way to the work they want (docs/THREAT_MODEL.md, "A follower's
    /// verification").
    pub fn check_others_early(&mut self, own: NodeId) {
        self.own = Some(own);
    }

    /// Makes the anchors follow the history (at open, after its first transition, after a snapshot).
    fn refresh_anchors(&mut self) {
        let anchors = self.history.as_ref().map(|h| Anchors {
            signing_key: *h.chain.signing_key(),
            root_ca_der: h.root_ca_der.as_slice().into(),
        });
        if anchors != self.anchors {
            self.early.set_anchors(anchors.clone());
            self.anchors = anchors;
        }
    }

    /// Where this state machine leaves the sealed mesh CA keys of the entries it applies.
    pub fn sealed_inbox(&self) -> super::SealedInbox {
        self.inbox.clone()
    }

    /// The transitions this state machine verified and applied (`history::feed`).
    pub fn verified_feed(&self) -> crate::history::feed::VerifiedFeed {
        self.feed.clone()
    }

    /// Hands the sealed copies of an applied entry to the core: only when the entry's transition is
    /// now the latest with exactly these certificates.
    fn deliver(&self, transition: Hash, mesh: &MeshCerts, copies: &[super::SealedMeshCaKey]) {
        let current = self
            .history
            .as_ref()
            .is_some_and(|h| h.chain.latest_hash() == transition && h.mesh == *mesh);
        if current && !copies.is_empty() {
            self.inbox.put(super::SealedDelivery {
                transition,
                mesh: mesh.clone(),
                copies: copies.to_vec(),
            });
        }
    }

    /// The verified history, as applied so far; `None` before the first transition.
    pub fn history(&self) -> Option<&LoadedHistory> {
        self.history.as_ref()
    }

    fn db(&self) -> &sled::Db {
        self.ledger.store().db()
    }

    /// Writes the applied log id and the membership (not flushed: see `apply`), one key after the
    /// other and the applied log id last: a crash keeps a prefix of sled's log, so the applied log id
    /// never counts an entry whose other writes were lost (`SledStore::apply_unflushed` says why
    /// these are not one sled batch).
    fn persist_applied(&self) -> Result<(), RaftStoreError> {
        let encode = |e| RaftStoreError::io("encode the applied state", e);
        let write = |key: &[u8], value: Vec<u8>| {
            self.tree
                .insert(key, value)
                .map(drop)
                .map_err(|e| RaftStoreError::io("write the applied log id", e))
        };
        if let Some(history) = &self.history {
            write(
                APPLIED_LATEST,
                history.chain.latest_hash().as_bytes().to_vec(),
            )?;
        }
        write(
            MEMBERSHIP,
            serde_json::to_vec(&self.last_membership).map_err(encode)?,
        )?;
        write(
            APPLIED,
            serde_json::to_vec(&self.last_applied).map_err(encode)?,
        )
    }

    /// Applies one transition, waiting up to `wait` for its early verdict (`EarlyChecks::take_within`).
    fn apply_append(
        &mut self,
        index: u64,
        cmd: &AppendTransition,
        wait: Duration,
    ) -> Result<CommandResponse, RaftStoreError> {
        let phases = crate::observe::global();
        let waiting = std::time::Instant::now();
        let early = match &self.anchors {
            Some(anchors) => self.early.take_within(index, cmd, anchors, wait),
            None => {
                // The first transition: it brings the anchors early checks need.
                phases.early_check("none");
                None
            }
        };
        // Running the early checks, had they not started (ones under way are not waited for).
        phases.commit_phase("verify_wait", waiting.elapsed());
        let started = crate::observe::thread_cpu_time();
        let early_took = early.as_ref().map_or(Duration::ZERO, |e| e.took);
        let verified = self.verify_append(cmd, early.map(|e| e.checked));
        // The verification (decoding, signatures, certificates), early and here: the crypto every
        // replica spends on a SetManifest, which the benchmark's reference counts (issue 11.3). In
        // CPU time, here as in the early checks: not the time spent waiting for a core.
        let here = crate::observe::thread_cpu_time().saturating_sub(started);
        phases.commit_phase("verify", early_took + here);
        match verified {
            Err(reason) => {
                tracing::warn!(%reason, "a command from the Raft log was rejected");
                Ok(CommandResponse::Rejected { reason })
            }
            Ok(Verified::AlreadyLatest(hash)) => Ok(CommandResponse::Applied { hash }),
            Ok(Verified::New(verified)) => {
                let (new, growth) = *verified;
                // The copies sealed to the replicas are left before the store shows the transition,
                // so that a reload that finds it can open this process's copy first and install it
                // with the transition (`api::node`'s `reload_sealed`). The core checks them against
                // its verified history before adopting anything.
                if !cmd.sealed.is_empty() {
                    self.inbox.put(super::SealedDelivery {
                        transition: new.transition.hash(),
                        mesh: new.mesh.clone(),
                        copies: cmd.sealed.clone(),
                    });
                }
                // Pushed to the core's feed before the store shows it (`VerifiedFeed::push`), and
                // announced after.
                let policy_hashes: Vec<Hash> = new.policies.iter().map(|d| Hash::of(d)).collect();
                let pushed = match (&growth, self.history.is_some()) {
                    (Growth::Append(manifest, checked), true) => {
                        let policies: Vec<_> = policy_hashes
                            .iter()
                            .copied()
                            .zip(new.policies.iter().cloned())
                            .collect();
                        let bytes = new.manifest_bytes.len()
                            + policies.iter().map(|(_, d)| d.len()).sum::<usize>();
                        self.feed.push(crate::history::feed::Verified {
                            transition: new.transition.clone(),
                            manifest: manifest.clone(),
                            checked: checked.clone(),
                            policies,
                            bytes,
                        });
                        true
                    }
                    _ => false,
                };
                // Not flushed: see `apply`.
                let writing = std::time::Instant::now();
                self.ledger.append_unflushed(&new)?;
                crate::observe::global().commit_phase("store_write", writing.elapsed());
                #[cfg(test)]
                {
                    let hash = new.transition.hash();
                    self.fed_before_written.push((hash, self.feed.holds(hash)));
                }
                match (growth, self.history.as_mut()) {
                    (Growth::Genesis(history), _) => {
                        self.history = Some(*history);
                        self.refresh_anchors();
                    }
                    (Growth::Append(manifest, checked), Some(history)) => {
                        // Checked against this same history a moment ago, under `&mut self`: its
                        // signatures are not verified twice.
                        history
                            .chain
                            .push_checked(new.transition.clone(), manifest, &checked)
                            .map_err(|e| RaftStoreError::Corrupt {
                                what: "transition".into(),
                                reason: e.to_string(),
                            })?;
                        history.mesh = new.mesh.clone();
                        for (hash, doc) in policy_hashes.iter().zip(&new.policies) {
                            history.policies.insert(*hash, doc.clone());
                        }
                    }
                    (Growth::Append(..), None) => {
                        return Err(RaftStoreError::Corrupt {
                            what: "history".into(),
                            reason: "a transition was verified against a history that is gone"
                                .into(),
                        });
                    }
                }
                if pushed {
                    self.feed.announce();
                }
                Ok(CommandResponse::Applied {
                    hash: new.transition.hash(),
                })
            }
        }
    }

    /// A new mesh CA for the latest transition: the certificates must be a mesh CA pair under the stored
    /// root CA (the same checks as for an appended transition). Applying the same rotation again is a no-op.
    fn apply_rotate(&mut self, cmd: &RotateMeshCa) -> Result<CommandResponse, RaftStoreError> {
        let reject = |reason: String| {
            tracing::warn!(%reason, "a mesh CA rotation from the Raft log was rejected");
            Ok(CommandResponse::Rejected { reason })
        };
        let Some(history) = &self.history else {
            return reject("a mesh CA rotation without a history".into());
        };
        let latest = history.chain.latest_hash();
        if cmd.transition != latest {
            return reject(format!(
                "a mesh CA rotation for transition {}, but the latest is {latest}",
                cmd.transition
            ));
        }
        if history.mesh == cmd.mesh {
            return Ok(CommandResponse::Applied { hash: latest });
        }
        if let Err(reason) = check_certificates(&cmd.mesh, &history.root_ca_der, false) {
            return reject(reason);
        }
        self.ledger.replace_mesh_certs(&latest, &cmd.mesh)?;
        if let Some(h) = &mut self.history {
            h.mesh = cmd.mesh.clone();
        }
        Ok(CommandResponse::Applied { hash: latest })
    }

    /// A workload owner's authorization of a membership change, checked here, at its place in the
    /// log: against the latest manifest and the membership configuration applied before it. Writes
    /// nothing: the membership entries that follow it in the log are the change.
    fn apply_authorize(&self, cmd: &AuthorizeMembers) -> CommandResponse {
        let reject = |reason: String| {
            tracing::warn!(%reason, "a membership authorization from the Raft log was rejected");
            CommandResponse::Rejected { reason }
        };
        let Some(history) = &self.history else {
            return reject("a membership change before any manifest".into());
        };
        let authorization = match cmd.decode() {
            Ok(a) => a,
            Err(reason) => return reject(reason),
        };
        let current = membership_index(&self.last_membership);
        match authorization.check(
            &history.chain.latest_hash(),
            history.chain.latest_manifest().workload_owner_keys(),
            current,
        ) {
            Ok(()) => CommandResponse::Authorized {
                membership_index: current,
            },
            Err(e) => reject(e.to_string()),
        }
    }

    /// Every check `Coordinator::set_manifest` makes that does not need a secret, against the
    /// verified history. The error is the reason for the rejection. `early` is what the early checks
    /// found for exactly this command under this history's anchors (`EarlyChecks::take`): its
    /// decoding, manifest, signatures and certificates are not checked again.
    fn verify_append(
        &self,
        cmd: &AppendTransition,
        early: Option<Checked>,
    ) -> Result<Verified, String> {
        let (new, parsed, signatures) = match early {
            Some(c) => (c.new, Some(c.manifest), Some(c.signatures)),
            None => (cmd.decode()?, None, None),
        };
        // Only a later transition has an early verdict: its certificates were checked under the
        // history's root CA, which a first transition does not use.
        let certificates_checked = signatures.is_some() && new.genesis.is_none();
        let t = &new.transition;
        if let Some(h) = &self.history
            && h.chain.latest_transition() == t
        {
            return Ok(Verified::AlreadyLatest(t.hash()));
        }
        let manifest = match parsed {
            Some(manifest) => manifest,
            None => Manifest::parse(&new.manifest_bytes)
                .map_err(|e| format!("the manifest does not parse: {e}"))?,
        };
        // The chain checks: index, previous, manifest hash, coordinator signature, owner
        // authorization by the previous manifest, seed share owners unchanged.
        let chain_error = |e: crate::history::ChainError| e.to_string();
        let (growth, root_ca_der, stored_policies) = match (&self.history, &new.genesis) {
            (None, Some((signing_key, root_ca_der))) => {
                let history = LoadedHistory {
                    chain: VerifiedChain::first(*signing_key, t.clone(), manifest)
                        .map_err(chain_error)?,
                    root_ca_der: root_ca_der.clone(),
                    mesh: new.mesh.clone(),
                    policies: Default::default(),
                };
                (
                    Growth::Genesis(Box::new(history)),
                    root_ca_der.as_slice(),
                    None,
                )
            }
            (None, None) => {
                return Err("the history is empty and the command carries no signing key and root CA: only a first transition can start a history".into());
            }
            (Some(_), Some(_)) => {
                return Err("the command carries a signing key and root CA, which only the first transition may: a later one must not replace them".into());
            }
            (Some(h), None) => {
                let checked = h
                    .chain
                    .check_next_with(t, &manifest, signatures.as_ref())
                    .map_err(chain_error)?;
                (
                    Growth::Append(manifest, checked),
                    h.root_ca_der.as_slice(),
                    Some(&h.policies),
                )
            }
        };
        // The policy documents: each one the manifest lists, and every one it lists present, as
        // `set_manifest` requires, so the history holds what every policy hash stands for.
        let listed = match &growth {
            Growth::Genesis(h) => h.chain.latest_manifest(),
            Growth::Append(m, _) => m,
        };
        for doc in &new.policies {
            let h = Hash::of(doc);
            if listed.policy(&h).is_none() {
                return Err(format!(
                    "a policy document hashes to {h}, which the manifest does not list"
                ));
            }
        }
        let carried: std::collections::HashSet<Hash> =
            new.policies.iter().map(|d| Hash::of(d)).collect();
        if let Some(missing) = listed
            .policies()
            .keys()
            .find(|h| !carried.contains(h) && !stored_policies.is_some_and(|p| p.contains_key(*h)))
        {
            return Err(format!(
                "the policy document {missing} is neither carried nor stored"
            ));
        }
        // Checked early under this history's root CA (`early`'s anchors are this history's).
        if !certificates_checked {
            check_certificates(&new.mesh, root_ca_der, new.genesis.is_some())?;
        }
        let growth = match growth {
            Growth::Genesis(mut h) => {
                for doc in &new.policies {
                    h.policies.insert(Hash::of(doc), doc.clone());
                }
                Growth::Genesis(h)
            }
            append => append,
        };
        Ok(Verified::New(Box::new((new, growth))))
    }

    /// Replaces the history, the applied log id and the membership with a snapshot's, after the
    /// snapshot verified; otherwise leaves everything as it was.
    fn install(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        data: Vec<u8>,
    ) -> Result<(), RaftStoreError> {
        let refuse = |reason: String| RaftStoreError::SnapshotRefused {
            id: meta.snapshot_id.clone(),
            reason,
        };
        let content = SnapshotContent::decode(&data).map_err(refuse)?;
        if content.last_applied != meta.last_log_id
            || content.last_membership != meta.last_membership
        {
            return Err(refuse(
                "its content and its metadata disagree on the applied log id or the membership"
                    .into(),
            ));
        }
        verify_history(&content.history, self.history.as_ref()).map_err(refuse)?;

        let encode = |e| RaftStoreError::io("encode the applied state", e);
        let applied = serde_json::to_vec(&meta.last_log_id).map_err(encode)?;
        let membership = serde_json::to_vec(&meta.last_membership).map_err(encode)?;
        let meta_bytes = serde_json::to_vec(meta).map_err(encode)?;
        // The snapshot's objects go to the objects file first (synced), so that the history the
        // transaction below writes never names one that is missing; the objects only the history
        // being replaced names are deleted after it, once nothing names them.
        let mut objects: Vec<(ObjectKey, Vec<u8>)> = Vec::new();
        let mut items = Vec::new();
        for item in &content.history {
            match ObjectKey::decode_key(&item.key) {
                Some(key) => objects.push((key, item.value.clone())),
                None => items.push(item),
            }
        }
        let kept: std::collections::HashSet<ObjectKey> = objects.iter().map(|(k, _)| *k).collect();
        let object_file = self.ledger.store().objects();
        object_file
            .write(objects, &[])
            .map_err(|e| RaftStoreError::io("write the snapshot's objects", e))?;
        // The keys to drop are read before the transaction: this state machine is the only writer
        // of the history (it holds `&mut self`), so none appears meanwhile.
        let old: Vec<sled::IVec> = self
            .db()
            .iter()
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| RaftStoreError::io("read the history's keys", e))?;
        let history_tree: &sled::Tree = self.db();
        (history_tree, &self.tree)
            .transaction(
                |(kv, sm)| -> sled::transaction::ConflictableTransactionResult<(), String> {
                    for key in &old {
                        kv.remove(key)?;
                    }
                    for item in &items {
                        kv.insert(item.key.as_slice(), item.value.as_slice())?;
                    }
                    sm.insert(APPLIED, applied.as_slice())?;
                    sm.insert(MEMBERSHIP, membership.as_slice())?;
                    sm.insert(SNAPSHOT_META, meta_bytes.as_slice())?;
                    sm.insert(SNAPSHOT_DATA, data.as_slice())?;
                    Ok(())
                },
            )
            .map_err(|e| {
                RaftStoreError::io("replace the history with a snapshot", format!("{e:?}"))
            })?;
        self.ledger
            .store()
            .durable()
            .flush()
            .map_err(|e| RaftStoreError::io("flush the installed snapshot to disk", e))?;
        let stale: Vec<ObjectKey> = object_file
            .keys()
            .into_iter()
            .filter(|k| !kept.contains(k))
            .collect();
        object_file
            .write(Vec::new(), &stale)
            .map_err(|e| RaftStoreError::io("delete the replaced history's objects", e))?;
        // Read back what is on disk now, through the same verification as at start-up.
        self.history = self.ledger.load()?;
        self.refresh_anchors();
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = data.len(),
            transitions = self.history.as_ref().map_or(0, |h| h.chain.len()),
            "installed a snapshot after it verified"
        );
        Ok(())
    }
}

impl StateMachine {
    /// Whether `entry` is one that another replica led, when this replica checks those early.
    fn led_by_another(&self, entry: &Entry<TypeConfig>) -> bool {
        self.own
            .is_some_and(|own| entry.log_id.leader_id.node_id != own)
    }

    /// Starts the early checks of the transitions in `entries` that another replica led (only after
    /// [`StateMachine::check_others_early`]). True if any was started.
    fn start_others_checks(&self, entries: &[Entry<TypeConfig>]) -> bool {
        let mut started = false;
        for entry in entries {
            if let EntryPayload::Normal(Command::Append(cmd)) = &entry.payload
                && self.led_by_another(entry)
            {
                self.early.start_at_apply(entry.log_id.index, cmd);
                started = true;
            }
        }
        started
    }

    /// With several transitions to apply at once (a replica catching up), writes their records to
    /// the objects file in one synced write first, so that each apply finds them written instead of
    /// syncing the file once per entry. Unverified, and harmless: a record is named by its hash, and
    /// one no applied transition names is never read. A failure here is only logged: each apply
    /// then writes its records itself.
    fn write_records_ahead(&self, entries: &[Entry<TypeConfig>]) {
        let appends: Vec<&AppendTransition> = entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(Command::Append(cmd)) => Some(cmd),
                _ => None,
            })
            .collect();
        if appends.len() < 2 {
            return;
        }
        let Some(ahead) = self.ledger.store().objects_ahead() else {
            return;
        };
        let batch: Vec<_> = appends
            .iter()
            .filter_map(|cmd| cmd.decode().ok())
            .flat_map(|new| Ledger::<SledStore>::append_batch(&new))
            .collect();
        if let Err(e) = ahead.write(&batch) {
            tracing::warn!(error = %e, "writing the records of the transitions to apply ahead failed; each apply writes its own");
        }
    }

    /// Applies committed entries in order.
    // openraft's error type, as `RaftStateMachine::apply` returns it.
    #[allow(clippy::result_large_err)]
    fn apply_entries(
        &mut self,
        entries: Vec<Entry<TypeConfig>>,
    ) -> Result<Vec<CommandResponse>, StorageError<NodeId>> {
        let started = std::time::Instant::now();
        self.write_records_ahead(&entries);
        let mut responses = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let failed =
                |e: RaftStoreError| e.into_storage(ErrorSubject::Apply(log_id), ErrorVerb::Write);
            let wait = if self.led_by_another(&entry) {
                OTHERS_VERDICT_WAIT
            } else {
                Duration::ZERO
            };
            let response = match entry.payload {
                EntryPayload::Blank => CommandResponse::NoCommand,
                EntryPayload::Normal(Command::Append(cmd)) => {
                    let response = self
                        .apply_append(log_id.index, &cmd, wait)
                        .map_err(failed)?;
                    if let CommandResponse::Applied { hash } = &response {
                        self.deliver(*hash, &cmd.mesh, &cmd.sealed);
                    }
                    response
                }
                EntryPayload::Normal(Command::RotateMeshCa(cmd)) => {
                    let response = self.apply_rotate(&cmd).map_err(failed)?;
                    if let CommandResponse::Applied { hash } = &response {
                        self.deliver(*hash, &cmd.mesh, &cmd.sealed);
                    }
                    response
                }
                EntryPayload::Normal(Command::AuthorizeMembers(cmd)) => self.apply_authorize(&cmd),
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(log_id), membership);
                    CommandResponse::NoCommand
                }
            };
            // Written after the history: a crash in between leaves the applied log id behind (sled
            // keeps a prefix of its log), and the entry is applied again as `AlreadyLatest`.
            self.last_applied = Some(log_id);
            let writing = std::time::Instant::now();
            self.persist_applied().map_err(failed)?;
            crate::observe::global().commit_phase("applied_write", writing.elapsed());
            responses.push(response);
        }
        // Neither the history writes nor the applied log id are flushed here (they were two more
        // fsyncs on every commit's path): the committed entries are durable in the log on a
        // majority before they commit, and this replica's log holds every entry it applies until
        // a snapshot (whose build flushes the database) covers it. A background flush made
        // shortly after (`FlushSoon`, which also syncs sled's blob files; sled's own flusher, which
        // did not, is off) makes them durable, in the order they were written (sled's log). Losing them
        // in a crash only moves the applied log id back: openraft applies the entries after it
        // again from the log, a transition already written as `AlreadyLatest`. `open` refuses a
        // history behind its applied log id.
        self.flush_soon.request();
        crate::observe::global().commit_phase("apply", started.elapsed());
        Ok(responses)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    // openraft's error type, which `off_the_workers` below passes on.
    #[allow(clippy::result_large_err)]
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if self.start_others_checks(&entries) {
            // Waits for the background threads' verdicts: off the runtime's workers.
            crate::in_place::off_the_workers(|| self.apply_entries(entries))
        } else {
            self.apply_entries(entries)
        }
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let captured = SnapshotContent::capture(
            self.ledger.store(),
            self.last_applied,
            self.last_membership.clone(),
        );
        SnapshotBuilder::new(
            self.ledger.store().durable().clone(),
            self.tree.clone(),
            captured,
        )
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.install(meta, snapshot.into_inner()).map_err(|e| {
            e.into_storage(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
            )
        })
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        load_current(&self.tree)
            .map_err(|e| e.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}

/// The Raft log index of a membership configuration: what a membership authorization names. Every
/// membership change writes a new configuration at a higher index. 0 before the first (the entry that
/// formed the cluster is at index 0 too, and nothing can be authorized before a manifest exists).
pub fn membership_index(m: &StoredMembership<NodeId, BasicNode>) -> u64 {
    m.log_id().map_or(0, |l| l.index)
}

fn read_json<T: DeserializeOwned>(
    tree: &sled::Tree,
    key: &'static [u8],
) -> Result<Option<T>, RaftStoreError> {
    match tree
        .get(key)
        .map_err(|e| RaftStoreError::io("read the raft-sm tree", e))?
    {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            RaftStoreError::corrupt(format!("raft-sm/{}", String::from_utf8_lossy(key)), e)
        }),
    }
}

/// The public certificates carried with a transition fit the history: the mesh CA is self-signed, and
/// the intermediate certifies the mesh CA's key and is signed by the root CA's key, which only a
/// replica holding the seed has. The root CA's own self-signature is checked with the first transition
/// (`new_root`), which brings it; later ones take it from the verified history. No clock is read (the
/// state machine must be deterministic), so validity periods are not checked here. The signatures go
/// through `concord_mesh_ca::ca::verify_certificate_signature`, which keeps the last verdicts: the core
/// checks the same certificates again when it opens the mesh CA key sealed to this replica.
pub(super) fn check_certificates(
    mesh: &MeshCerts,
    root_ca_der: &[u8],
    new_root: bool,
) -> Result<(), String> {
    use concord_mesh_ca::ca::verify_certificate_signature;
    let why = |e: Option<String>| e.unwrap_or_else(|| "the signature does not verify".into());
    let root = parse_certificate("the root CA certificate", root_ca_der)?;
    if new_root {
        root.verify_signature(None)
            .map_err(|e| format!("the root CA certificate is not self-signed: {e}"))?;
    }
    let mesh_ca = parse_certificate("the mesh CA certificate", &mesh.mesh_ca_der)?;
    verify_certificate_signature(&mesh_ca, &mesh_ca.public_key().subject_public_key.data)
        .map_err(|e| format!("the mesh CA certificate is not self-signed: {}", why(e)))?;
    let intermediate = parse_certificate(
        "the mesh CA intermediate certificate",
        &mesh.intermediate_der,
    )?;
    if intermediate.public_key().raw != mesh_ca.public_key().raw {
        return Err("the mesh CA intermediate certifies another key than the mesh CA's".into());
    }
    if intermediate.issuer().as_raw() != root.subject().as_raw() {
        return Err("the mesh CA intermediate does not name the root CA as its issuer".into());
    }
    verify_certificate_signature(&intermediate, &root.public_key().subject_public_key.data)
        .map_err(|e| {
            format!(
                "the mesh CA intermediate is not signed by the root CA: {}",
                why(e)
            )
        })?;
    Ok(())
}

fn parse_certificate<'a>(what: &str, der: &'a [u8]) -> Result<X509Certificate<'a>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(format!("{what} has {} bytes after its DER", rest.len())),
        Err(e) => Err(format!("{what} does not parse: {e}")),
    }
}
