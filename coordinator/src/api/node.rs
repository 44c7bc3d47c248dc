//! `Node`: one replica as the APIs see it: the core (`Replica`), its Raft handle, its peers, and the
//! write path. SetManifest is prepared by the leader's core, written through Raft (every replica's state
//! machine re-verifies it), then committed; a follower forwards the call to the leader over the peer API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::v1 as pb;
use openraft::Raft;
use tonic::Status;
use tracing::{debug, info, warn};

use super::links::PeerLinks;
use super::replica::Replica;
use super::sealing::Coordinators;
use super::status::to_status;
use crate::error::CoordinatorError;
use crate::raft::network::peer_address;
use crate::raft::{AppendTransition, Command, CommandResponse, NodeId, TypeConfig};
use crate::state::{OpenedMeshCa, Prepared, ReplicaState, SealedOpening, SetOutcome, SetRequest};
use crate::store::Store;

/// How long a write waits for a leader to be elected before answering Unavailable.
pub const LEADER_WAIT: Duration = Duration::from_secs(5);

/// How long a write waits for this leader to apply the entries its log already holds.
pub const APPLY_WAIT: Duration = Duration::from_secs(2);
/// How long a catch-up waits for a free core to open a sealed mesh CA key before it leaves the opening
/// to a normal-priority refresh ([`Node::catch_up`]): a few commits long, and far below the 2 s and
/// 6 s after which an unrecovered mesh CA counts as lost (`server::keep_recovering`).
pub const IDLE_OPEN_WAIT: Duration = Duration::from_millis(20);

/// What [`Node::refresh`] does, in a value a blocking task can own: reload the core if the store
/// moved on, then open a sealed mesh CA key the latest entry brought for this replica.
struct Refresher<S> {
    replica: Arc<Replica<S>>,
    id: NodeId,
    key: Arc<concord_mesh_ca::SealKey>,
    inbox: crate::raft::SealedInbox,
}

impl<S: Store> Refresher<S> {
    /// Blocking: verifies what was appended since the last reload, with this process's sealed copy
    /// of the new mesh CA key opened first and installed in the same write (`reload_sealed`).
    fn run(&self) -> Result<(), CoordinatorError> {
        reload_sealed(&self.replica, self.id, &self.key, &self.inbox)
    }
}

/// The largest manifest whose hash a SetManifest computes in place on a runtime worker (about
/// 40 µs here); larger ones are hashed with the worker's queue handed to another thread.
const BRIEF_MANIFEST_BYTES: usize = 64 << 10;

/// One replica: core, Raft, peers.
pub struct Node<S> {
    pub id: NodeId,
    pub replica: Arc<Replica<S>>,
    pub raft: Raft<TypeConfig>,
    /// Peer API addresses by node id, this node included.
    pub peers: BTreeMap<NodeId, String>,
    /// Attested connections to the peers, kept open (outside Raft's own).
    pub links: PeerLinks,
    /// This process's seal key: the leader seals new mesh CA keys to it (`state::sealed`). Random
    /// per process, in memory only.
    pub seal_key: Arc<concord_mesh_ca::SealKey>,
    /// Where the state machine leaves the sealed mesh CA keys of the entries it applied.
    sealed_inbox: crate::raft::SealedInbox,
    /// Serializes this node's writes, so two calls do not prepare against the same latest.
    write_gate: tokio::sync::Mutex<()>,
    /// The predecessors the SetManifests on this leader are written against: a call racing another
    /// on the same predecessor is refused before it queues on `write_gate` (`api::write_claims`).
    write_claims: super::write_claims::WriteClaims,
    /// Leadership confirmations shared by the linearizable reads that arrive together
    /// (`api::read_rounds`).
    read_rounds: super::read_rounds::ReadRounds,
    /// The transitions this leader is committing: peer recovery does not ask for their secrets,
    /// which the write adopts itself (`api::in_flight`).
    in_flight: super::in_flight::InFlight,
    /// Started with an empty Raft state and not yet known to be a safe voter (`api::join`).
    joining: std::sync::atomic::AtomicBool,
    /// While rejoining: the nonce this replica put in its Join, which it confirms to the leader.
    join_nonce: std::sync::Mutex<Option<[u8; 32]>>,
    /// Serializes this replica's membership changes as leader (owner-authorized changes, rejoins), so
    /// that each starts from the membership it checked.
    membership_gate: tokio::sync::Mutex<()>,
}

impl<S> std::fmt::Debug for Node<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish()
    }
}

impl<S: Store> Node<S> {
    pub fn new(
        id: NodeId,
        replica: Arc<Replica<S>>,
        raft: Raft<TypeConfig>,
        peers: BTreeMap<NodeId, String>,
        links: PeerLinks,
        seal_key: Arc<concord_mesh_ca::SealKey>,
        sealed_inbox: crate::raft::SealedInbox,
    ) -> Node<S> {
        Node {
            id,
            replica,
            raft,
            peers,
            links,
            seal_key,
            sealed_inbox,
            write_gate: tokio::sync::Mutex::new(()),
            write_claims: super::write_claims::WriteClaims::default(),
            read_rounds: super::read_rounds::ReadRounds::default(),
            in_flight: super::in_flight::InFlight::default(),
            joining: std::sync::atomic::AtomicBool::new(false),
            join_nonce: std::sync::Mutex::new(None),
            membership_gate: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether this replica started with an empty Raft state and has not yet rejoined or joined a
    /// formation: it must not vote meanwhile.
    pub fn is_joining(&self) -> bool {
        self.joining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Marks this replica as joining (it must not vote) or done. Done also forgets the Join nonce.
    pub fn set_joining(&self, joining: bool) {
        self.joining
            .store(joining, std::sync::atomic::Ordering::SeqCst);
        if !joining {
            *self.nonce_slot() = None;
        }
    }

    /// The nonce this replica puts in its Joins, chosen on first use; `None` once it is not joining.
    pub fn join_nonce(&self) -> Result<[u8; 32], Status> {
        use rand::RngCore as _;
        let mut slot = self.nonce_slot();
        if let Some(n) = *slot {
            return Ok(n);
        }
        let mut n = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut n)
            .map_err(|e| Status::internal(format!("the OS random generator failed: {e}")))?;
        *slot = Some(n);
        Ok(n)
    }

    /// Whether this replica is rejoining and sent a Join with `nonce` (asked by the leader).
    pub fn confirms_join(&self, nonce: &[u8]) -> bool {
        self.is_joining() && self.nonce_slot().is_some_and(|n| n.as_slice() == nonce)
    }

    fn nonce_slot(&self) -> std::sync::MutexGuard<'_, Option<[u8; 32]>> {
        // A plain load or store: a panic while holding it cannot leave it inconsistent.
        self.join_nonce
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A member that came back with an empty Raft state asks for its seat back (see `api::join`): on
    /// the leader, only under its own id, at the address the membership records for it, and only if
    /// the replica answering at that address confirms `nonce` (so a healthy member, reached there, keeps
    /// its seat). A voter is made a learner, caught up and made a voter again; a learner stays one. A
    /// replica that is not a member is refused: only an owner's `set_members` adds one. A follower
    /// forwards.
    pub async fn join(
        &self,
        member: pb::Member,
        nonce: Vec<u8>,
        forwarded: bool,
    ) -> Result<BTreeMap<NodeId, String>, Status> {
        check_join_member(self.id, &member)?;
        if nonce.len() != 32 {
            return Err(Status::invalid_argument(
                "nonce: a Join carries 32 random bytes",
            ));
        }
        let request = pb::JoinRequest {
            member: Some(member.clone()),
            forwarded: true,
            nonce: nonce.clone(),
        };
        let answer = self
            .via_leader(forwarded, &mut None, |mut api| {
                let request = request.clone();
                async move { api.join(request).await }
            })
            .await?;
        if let Some(r) = answer {
            return Ok(members_from_pb(r));
        }
        let (recorded, _) = self.member_record(member.id);
        let denied = |m: String| to_status(&CoordinatorError::PermissionDenied(m));
        let Some(recorded) = recorded else {
            return Err(to_status(&CoordinatorError::FailedPrecondition(format!(
                "replica {} is not a member of the cluster: a replica becomes one only when a \
                 workload owner adds it (`concord cluster set-members ... --owner-key`); until then \
                 it waits and does not vote",
                member.id
            ))));
        };
        if recorded != member.peer_address {
            return Err(denied(format!(
                "replica {} is recorded at {recorded}; a replica at {} cannot take its seat (a \
                 member rejoins only at its own address; moving one is a membership change by a \
                 workload owner)",
                member.id, member.peer_address
            )));
        }
        // The caller says it is the member at `recorded`: ask whoever answers there, over attested
        // TLS, whether it sent this Join. A healthy member there says no and keeps its seat.
        let ask = self.links.call(member.id, &recorded, |mut api, _| {
            let nonce = nonce.clone();
            async move { api.confirm_join(pb::ConfirmJoinRequest { nonce }).await }
        });
        match tokio::time::timeout(Duration::from_secs(5), ask).await {
            Ok(Ok(r)) if r.confirmed => {}
            Ok(Ok(_)) => {
                return Err(denied(format!(
                    "the replica answering at {recorded}, replica {}'s recorded address, did not \
                     send this Join: replica {} keeps its seat",
                    member.id, member.id
                )));
            }
            Ok(Err(s)) => {
                return Err(Status::unavailable(format!(
                    "cannot confirm the Join with the replica at {recorded}: {}; retry",
                    s.message()
                )));
            }
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "the replica at {recorded} did not confirm the Join within 5 s; retry"
                )));
            }
        }
        // A learner counts for no quorum: it may vote again at once (it only ever becomes a voter
        // through a change that waits until it caught up). Answered without waiting for a membership
        // change under way, which may be the one that adds it. A voter must give up its vote first.
        if let (Some(now), false) = self.member_record(member.id)
            && now == recorded
        {
            info!(
                member = member.id,
                "a learner asked for its seat: it stays a learner until a workload owner's change makes it a voter"
            );
            return Ok(self.membership_nodes());
        }
        let _gate = self.membership_gate.lock().await;
        match self.member_record(member.id) {
            (Some(now), true) if now == recorded => self.rejoin_voter(member.id, recorded).await,
            (Some(now), false) if now == recorded => {
                info!(
                    member = member.id,
                    "a learner asked for its seat: it stays a learner until a workload owner's change makes it a voter"
                );
                Ok(self.membership_nodes())
            }
            _ => Err(Status::unavailable(format!(
                "replica {}'s membership changed while it asked to rejoin; retry",
                member.id
            ))),
        }
    }

    /// The address the membership records for `id`, if it is a member, and whether it is a voter.
    fn member_record(&self, id: NodeId) -> (Option<String>, bool) {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let config = &metrics.membership_config;
        let recorded = config
            .nodes()
            .find(|(n, _)| **n == id)
            .map(|(_, n)| n.addr.clone());
        let voter = config.membership().voter_ids().any(|v| v == id);
        (recorded, voter)
    }

    /// Every member (voters and learners) with its recorded address.
    fn membership_nodes(&self) -> BTreeMap<NodeId, String> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// On the leader, under the membership gate: voter `id`, confirmed at its recorded `addr`, lost its
    /// Raft state. It is first made a learner (so it counts for no quorum while it has forgotten what
    /// it acknowledged), then caught up, then made a voter again.
    async fn rejoin_voter(
        &self,
        id: NodeId,
        addr: String,
    ) -> Result<BTreeMap<NodeId, String>, Status> {
        let failed =
            |e: String| Status::unavailable(format!("rejoining replica {id} did not commit: {e}"));
        let voters = || -> std::collections::BTreeSet<NodeId> {
            self.raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect()
        };
        let term = self.raft.metrics().borrow().current_term;
        let without: std::collections::BTreeSet<NodeId> =
            voters().into_iter().filter(|v| *v != id).collect();
        info!(
            member = id,
            "a voter came back with an empty disk: a learner until it caught up"
        );
        self.raft
            .change_membership(without, true)
            .await
            .map_err(|e| failed(e.to_string()))?;
        info!(member = id, %addr, "adding a learner; it catches up before it votes");
        self.raft
            .add_learner(id, openraft::BasicNode { addr }, true)
            .await
            .map_err(|e| failed(e.to_string()))?;
        // Promote only as the leader that demoted it: another leader may have removed the member
        // meanwhile (an owner's change), and promoting it then would undo that change.
        {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            if metrics.current_leader != Some(self.id) || metrics.current_term != term {
                return Err(Status::unavailable(format!(
                    "the leader changed while replica {id} rejoined (term {term} to {}); it is a \
                     learner now and stays one unless a workload owner's change makes it a voter",
                    metrics.current_term
                )));
            }
        }
        let mut after = voters();
        after.insert(id);
        self.raft
            .change_membership(after, false)
            .await
            .map_err(|e| failed(e.to_string()))?;
        info!(member = id, voters = ?voters(), "a replica rejoined as a voter");
        Ok(self.membership_nodes())
    }

    /// A member's peer API address: this replica's own peer list wins, else the replicated
    /// membership's (see [`peer_address`]).
    pub fn peer_addr(&self, id: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let in_membership = metrics
            .membership_config
            .nodes()
            .find(|(n, _)| **n == id)
            .map(|(_, node)| node.addr.as_str());
        peer_address(&self.peers, id, in_membership)
    }

    /// Sets the voting members, on the leader (a follower forwards). The owner's authorization names
    /// the membership it starts from; it is checked here first (an unauthorized caller costs no log
    /// entry), then written to the Raft log, where every replica's state machine checks it again at
    /// its own place in the log. Only once it applied as authorized does this leader add the new
    /// members as learners (they catch up first) and make the new set the voters, each step only while
    /// it still leads in the term of the authorization and the membership is the one the previous
    /// step left. Every step writes a new membership configuration, so the authorization cannot be
    /// used again.
    pub async fn set_members(
        &self,
        req: pb::SetMembersRequest,
        forwarded: bool,
    ) -> Result<BTreeMap<NodeId, String>, Status> {
        let answer = self
            .via_leader(forwarded, &mut None, |mut api| {
                let req = req.clone();
                async move { api.forward_set_members(req).await }
            })
            .await?;
        if let Some(r) = answer {
            return Ok(members_from_pb(r));
        }
        let members = members_of(&req)?;
        let (owner_key, owner_signature) = members_authorization(&req)?;
        let authorization = crate::history::MembersAuthorization {
            membership_index: req.membership_index,
            members: members.clone(),
            owner_key,
            owner_signature,
        };
        let refused = |e: crate::history::MembersRefusal| {
            if e.is_stale() {
                to_status(&CoordinatorError::FailedPrecondition(e.to_string()))
            } else {
                to_status(&CoordinatorError::PermissionDenied(e.to_string()))
            }
        };

        let _gate = self.membership_gate.lock().await;
        self.refresh().await.map_err(|e| to_status(&e))?;
        let latest = {
            let core = self.replica.read().map_err(|e| to_status(&e))?;
            let chain = core.chain().ok_or_else(|| {
                to_status(&CoordinatorError::FailedPrecondition(
                    "set a manifest first: membership changes are authorized by its workload owner keys".into(),
                ))
            })?;
            let current =
                crate::raft::membership_index(&self.raft.metrics().borrow().membership_config);
            authorization
                .check(
                    &chain.latest_hash(),
                    chain.latest_manifest().workload_owner_keys(),
                    current,
                )
                .map_err(refused)?;
            chain.latest_hash()
        };

        // The check that counts: in the log, by every replica.
        let command = Command::AuthorizeMembers(crate::raft::AuthorizeMembers::new(&authorization));
        let written = match tokio::time::timeout(LEADER_WAIT, self.raft.client_write(command)).await
        {
            Ok(w) => {
                w.map_err(|e| Status::unavailable(format!("the write did not commit: {e}")))?
            }
            Err(_) => return Err(not_committed_in_time()),
        };
        let mut at = match written.data {
            CommandResponse::Authorized { membership_index } => membership_index,
            CommandResponse::Rejected { reason } => {
                return Err(to_status(&CoordinatorError::FailedPrecondition(format!(
                    "the replicas refused the membership authorization: {reason}"
                ))));
            }
            other => return Err(Status::internal(format!("unexpected answer: {other:?}"))),
        };
        let term = written.log_id.leader_id.term;

        let current: BTreeMap<NodeId, String> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        let failed =
            |e: String| Status::unavailable(format!("the membership change did not commit: {e}"));
        for (id, addr) in &members {
            if current.get(id) != Some(addr) {
                self.still_authorized(term, at)?;
                info!(member = id, %addr, "adding a learner; it catches up before it votes");
                at = self
                    .raft
                    .add_learner(*id, openraft::BasicNode { addr: addr.clone() }, true)
                    .await
                    .map_err(|e| failed(e.to_string()))?
                    .log_id
                    .index;
            }
        }
        let voters: std::collections::BTreeSet<NodeId> = members.keys().copied().collect();
        self.still_authorized(term, at)?;
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| failed(e.to_string()))?;
        info!(members = ?members.keys().collect::<Vec<_>>(), authorized_at = %latest, "membership changed");
        Ok(members)
    }

    /// Before each step of an authorized membership change: this replica still leads in `term`, the
    /// term the authorization was written in, and the membership is still the one at log index `at`
    /// (the authorized one, or the one the previous step wrote). Otherwise another leader may have
    /// changed the membership meanwhile, and the rest of this change is no longer what was checked.
    fn still_authorized(&self, term: u64, at: u64) -> Result<(), Status> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let now = crate::raft::membership_index(&metrics.membership_config);
        if metrics.current_leader != Some(self.id) || metrics.current_term != term || now != at {
            return Err(Status::unavailable(format!(
                "the membership change stopped: the leader or the membership changed while it was \
                 under way (term {term} to {}, membership index {at} to {now}); run the command \
                 again (read the status, sign again)",
                metrics.current_term
            )));
        }
        Ok(())
    }

    /// Reloads the core's view if Raft applied entries since, on the calling thread (the sampler's,
    /// which is off the runtime). Parses every manifest applied since the last reload.
    pub fn refresh_now(&self) -> Result<(), CoordinatorError> {
        reload_sealed(&self.replica, self.id, &self.seal_key, &self.sealed_inbox)
    }

    /// [`Node::refresh_now`] off the runtime's threads: a replica that just caught up on many
    /// transitions parses them all, which must not hold up the Raft core or the handshakes.
    pub async fn refresh(&self) -> Result<(), CoordinatorError> {
        // The usual case, a core already current: no hop to the blocking pool and back.
        if self.replica.settled() {
            return Ok(());
        }
        let refresh = self.refresher();
        tokio::task::spawn_blocking(move || refresh.run())
            .await
            .map_err(|e| {
                CoordinatorError::Crypto(format!("internal error: the reload task failed: {e}"))
            })?
    }

    /// Catches up with what the state machine applied, for `server::keep_recovering`, which nobody
    /// waits for: the core's reload on the blocking pool, as [`Node::refresh`] does, and the opening of
    /// a mesh CA key sealed to this process (HPKE and the certificates' checks: the costly part) on the
    /// background threads, which take a core only when no other thread wants it, and without a lock
    /// (`background::run_within`). Right after a commit the followers' openings ran at normal priority,
    /// on the cores that the leader's answer and the next request were waiting for. An opening that
    /// found no free core within [`IDLE_OPEN_WAIT`] is left to the next [`Node::refresh`], which opens
    /// it on the blocking pool.
    ///
    /// When the state machine applied a new transition with a copy sealed to this process, the copy
    /// is opened first and the reload and its install then happen under one write lock
    /// (`refresh_and_install`): until the twenty-third pass on issue 11 a follower read as recovering
    /// from its reload until the install, and refused mesh handshakes and NewMeshCerts as "not
    /// ready" after every manifest update. Meanwhile it serves the transition before, as it did
    /// before the entry arrived. An opening not done on an idle core within [`IDLE_OPEN_WAIT`] is
    /// done before the reload at normal priority.
    pub async fn catch_up(&self) -> Result<(), CoordinatorError> {
        let (replica, id, key, inbox) = (
            self.replica.clone(),
            self.id,
            self.seal_key.clone(),
            self.sealed_inbox.clone(),
        );
        let step = tokio::task::spawn_blocking(move || {
            if let Some(ahead) = opening_ahead(&replica, id, &key, &inbox)? {
                return Ok::<_, CoordinatorError>(CatchUp::OpenFirst(ahead));
            }
            if replica.read()?.is_stale()? {
                replica.write()?.refresh()?;
            }
            Ok(CatchUp::Loaded(sealed_opening(&replica, id, &key, &inbox)?))
        })
        .await
        .map_err(|e| {
            CoordinatorError::Crypto(format!("internal error: the reload task failed: {e}"))
        })??;
        let opening = match step {
            CatchUp::OpenFirst(ahead) => {
                let key = self.seal_key.clone();
                let opened =
                    crate::background::run_within(move || ahead.open(&key), IDLE_OPEN_WAIT).await;
                let (replica, id, key, inbox) = (
                    self.replica.clone(),
                    self.id,
                    self.seal_key.clone(),
                    self.sealed_inbox.clone(),
                );
                return tokio::task::spawn_blocking(move || match opened {
                    Some(opened) => refresh_and_install(&replica, id, &key, &inbox, Some(opened)),
                    None => reload_sealed(&replica, id, &key, &inbox),
                })
                .await
                .map_err(|e| {
                    CoordinatorError::Crypto(format!("internal error: the reload task failed: {e}"))
                })?;
            }
            CatchUp::Loaded(None) => return Ok(()),
            CatchUp::Loaded(Some(opening)) => opening,
        };
        let key = self.seal_key.clone();
        let Some(opened) =
            crate::background::run_within(move || opening.open(&key), IDLE_OPEN_WAIT).await
        else {
            return Ok(());
        };
        let replica = self.replica.clone();
        tokio::task::spawn_blocking(move || install_opened(&replica, opened))
            .await
            .map_err(|e| {
                CoordinatorError::Crypto(format!("internal error: the install task failed: {e}"))
            })?
    }

    fn refresher(&self) -> Refresher<S> {
        Refresher {
            replica: self.replica.clone(),
            id: self.id,
            key: self.seal_key.clone(),
            inbox: self.sealed_inbox.clone(),
        }
    }

    /// The current leader, waiting up to [`LEADER_WAIT`] for an election.
    pub async fn leader(&self) -> Result<NodeId, Status> {
        if let Some(l) = self.raft.current_leader().await {
            return Ok(l);
        }
        let mut metrics = self.raft.metrics();
        let wait = async {
            loop {
                if let Some(l) = metrics.borrow().current_leader {
                    return Some(l);
                }
                if metrics.changed().await.is_err() {
                    return None;
                }
            }
        };
        match tokio::time::timeout(LEADER_WAIT, wait).await {
            Ok(Some(l)) => Ok(l),
            _ => Err(Status::unavailable(
                "no leader yet: the coordinator replicas have no quorum; retry when a majority of them is up",
            )),
        }
    }

    /// Before a linearizable read: the leader confirms its leadership with a quorum; a follower asks the
    /// leader for that read index and waits until it applied it (the read-index protocol). With
    /// `allow_stale`, the replica answers from what it applied, without a round trip.
    pub async fn linearize(&self, allow_stale: bool) -> Result<(), Status> {
        if !allow_stale {
            let index = self.read_index().await?;
            self.raft
                .wait(Some(LEADER_WAIT))
                .applied_index_at_least(Some(index), "applied up to the read index")
                .await
                .map_err(|e| {
                    Status::unavailable(format!("this replica did not catch up for a read: {e}"))
                })?;
        }
        self.refresh().await.map_err(|e| to_status(&e))
    }

    /// On the leader: its commit index, confirmed by a heartbeat round a quorum answered after the
    /// call, shared with the reads that arrive together (`api::read_rounds`), by `deadline`. For this
    /// replica's reads and for its followers' (the peer API's ReadIndex).
    pub(crate) async fn confirmed_read_index(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<u64, Status> {
        // A leader cut off from its quorum waits for heartbeat answers that never come.
        let round = || async {
            // The round's own wait, which is shorter than LEADER_WAIT when its runner came late.
            let started = tokio::time::Instant::now();
            match tokio::time::timeout_at(deadline, self.raft.ensure_linearizable()).await {
                Ok(confirmed) => confirmed.map(|id| id.map_or(0, |l| l.index)).map_err(|e| {
                    Status::unavailable(format!("cannot confirm leadership for a read: {e}"))
                }),
                Err(_) => Err(Status::unavailable(no_quorum_for_read(started.elapsed()))),
            }
        };
        self.read_rounds.read_index(round).await
    }

    /// The log index a linearizable read must see: confirmed by the leader with a quorum. One heartbeat
    /// round can fail right after a peer restarted (a stale connection), so failures are retried within
    /// the window a write waits for a leader.
    pub async fn read_index(&self) -> Result<u64, Status> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            let leader = self.leader().await?;
            let answer = if leader == self.id {
                self.confirmed_read_index(deadline).await
            } else {
                let addr = self.leader_addr(leader)?;
                self.links
                    .call(leader, &addr, |mut api, _| async move {
                        api.read_index(pb::ReadIndexRequest {}).await
                    })
                    .await
                    .map(|r| r.index)
            };
            match answer {
                Ok(index) => return Ok(index),
                Err(s) if retryable(&s) && tokio::time::Instant::now() < deadline => {
                    debug!(error = s.message(), "no read index yet; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(s) => return Err(unavailable_if_transport(s)),
            }
        }
    }

    /// SetManifest from any replica: on the leader, prepared, written through Raft and committed; on a
    /// follower, forwarded to the leader.
    pub async fn set_manifest(
        &self,
        raw: pb::SetManifestRequest,
        req: SetRequest,
        forwarded: bool,
    ) -> Result<SetOutcome, Status> {
        // A refusal after an attempt whose outcome is unknown is reported as unknown too (`after_unknown`).
        let mut unknown: Option<NodeId> = None;
        let answer = self
            .via_leader(forwarded, &mut unknown, |mut api| {
                let raw = raw.clone();
                async move { api.forward_set_manifest(raw).await }
            })
            .await;
        match answer {
            Ok(Some(outcome)) => outcome_from_pb(outcome),
            Ok(None) => self
                .set_on_leader(req)
                .await
                .map_err(|s| after_unknown(unknown, s)),
            Err(s) => Err(after_unknown(unknown, s)),
        }
    }

    /// SetManifest on the leader: prepared, written through Raft, committed.
    async fn set_on_leader(&self, req: SetRequest) -> Result<SetOutcome, Status> {
        let phases = crate::observe::global();
        let queued = std::time::Instant::now();
        // Before queueing: of the calls on one predecessor only one can commit, so a call racing
        // one already under way is refused now, not after that one's commit (issue 11.3); and a
        // stale one too, when the core is known to be as new as the applied log and nothing but
        // claimed calls can move the latest (refreshed in this leader's term, nothing applied since).
        let fresh_at = self.applied_in_own_term();
        // Only a call an owner signed may hold a claim: an unsigned or forged one could otherwise
        // claim the latest transition and have the owner's own update refused as a conflict. It
        // queues instead (unless it races a claimed call: refused first thing below), and is
        // refused by `authorize_set` (a cheap check) once its turn comes.
        let small = req.manifest.len() <= BRIEF_MANIFEST_BYTES;
        // First of all, for a small manifest (hashed right here): a call racing an owner-signed one
        // under way on its predecessor is refused before its signature is checked or the core is
        // read (`WriteClaims::refuse_a_conflict`). Writers that lost a race and learned the
        // winner's transition together arrive together, while the core catches up with that
        // transition; they are answered without waiting for the core or a thread.
        let early_hash = small.then(|| crate::hash::Hash::of(&req.manifest));
        if let Some(manifest_hash) = early_hash {
            self.write_claims
                .refuse_a_conflict(req.expected_previous, manifest_hash)
                .map_err(|e| to_status(&e))?;
        }
        // The signature check, the refresh, and hashing a larger manifest. Brief when the
        // manifest is small and the core current (then it is as new as the store, so as the log
        // applied at `fresh_at`, and the refresh has nothing to do): tens of microseconds, run
        // right here (`in_place::brief_or_off`). Else (a manifest of up to the size cap, a core to
        // catch up) in place with this worker's other tasks handed to another thread meanwhile,
        // which spares the caller the blocking pool's two wake-ups.
        let settled = self.replica.settled();
        let brief = small && settled;
        let (manifest_hash, signed) = crate::in_place::brief_or_off(brief, || {
            if fresh_at.is_some() && !settled {
                self.refresher().run()?;
            }
            let manifest_hash = early_hash.unwrap_or_else(|| crate::hash::Hash::of(&req.manifest));
            let signed = self
                .replica
                .read()
                .is_ok_and(|c| c.owner_signed(&req, &manifest_hash));
            Ok::<_, CoordinatorError>((manifest_hash, signed))
        })
        .map_err(|e| to_status(&e))?;
        let claim = if signed {
            Some(
                self.write_claims
                    .claim(req.expected_previous, manifest_hash, || {
                        self.settled_latest(fresh_at)
                    })
                    .map_err(|e| to_status(&e))?,
            )
        } else {
            None
        };
        let _gate = self.write_gate.lock().await;
        self.applied_whole_log().await;
        let queue_wait = queued.elapsed();
        let started = std::time::Instant::now();
        let now = time::OffsetDateTime::now_utc();
        // Off the runtime's threads: the caps bound it, but parsing, key generation and (first
        // manifest) share encryption are CPU work. The manifest is parsed outside the lock, and only
        // after the cheap checks (compare-and-swap, the owner's signature) passed.
        let replica = self.replica.clone();
        // The other voters whose seal key this replica holds (asked on link setup, never here). If
        // a member runs an older build that cannot decode sealed copies, none are written.
        let targets = self.seal_targets();
        let refresh = self.refresher();
        let prepared = tokio::task::spawn_blocking(move || {
            // Against the latest this replica applied: what the writes before this one made.
            // Timed as part of the queue: it is catching up, not this call's own work.
            let refreshing = std::time::Instant::now();
            refresh.run()?;
            let refreshed = refreshing.elapsed();
            replica.read()?.authorize_set(&req)?;
            let manifest = crate::state::parse_for_set(&req.manifest)?;
            let serving = Coordinators::of(&manifest);
            // The next update's mesh CA key will likely be sealed to the same replicas: their
            // encapsulations are made ahead with it.
            let seal_keys: Vec<[u8; 32]> = targets.iter().map(|t| t.sealing.key()).collect();
            let prepared = replica
                .read()?
                .prepare_parsed(manifest, req, now, &seal_keys)?;
            // The new mesh CA key, sealed to each voter whose evidence matches a `coordinator`
            // policy of the manifest the key will serve. Local work only: a few milliseconds.
            let mut prepared = prepared;
            let (sealed, checked) = match &mut prepared {
                Prepared::Append(p) => {
                    let deployment = replica.read()?.deployment_id();
                    let (recipients, checked) =
                        serving.recipients(&replica.verifier, deployment, &targets);
                    let checked = (serving.fingerprint(deployment), checked);
                    (p.seal_mesh_ca(deployment.0, &recipients), checked)
                }
                Prepared::Unchanged(_) => (Vec::new(), ([0; 32], Vec::new())),
            };
            let ahead = replica.read()?.store().objects_ahead();
            Ok::<_, CoordinatorError>((prepared, sealed, checked, refreshed, ahead))
        })
        .await
        .map_err(|e| Status::internal(format!("the prepare task failed: {e}")))?
        .map_err(|e| to_status(&e))?;
        let (prepared, refreshed, ahead) =
            ((prepared.0, prepared.1, prepared.2), prepared.3, prepared.4);
        phases.commit_phase("queue", queue_wait + refreshed);
        let (p, sealed) = match prepared {
            (Prepared::Unchanged(outcome), _, _) => return Ok(*outcome),
            (Prepared::Append(p), sealed, (fingerprint, checked)) => {
                for (id, dial) in checked {
                    self.links.record_seal_verdict(id, dial, fingerprint);
                }
                (p, sealed)
            }
        };
        // The commit runs on in its own task when the caller stops waiting: should the entry commit
        // after all, this replica still adopts the new secrets, so nothing acknowledged by the
        // cluster is left without them.
        let raft = self.raft.clone();
        let replica = self.replica.clone();
        let prepared_in = started.elapsed().saturating_sub(refreshed);
        phases.commit_phase("prepare", prepared_in);
        let writing = std::time::Instant::now();
        // Marked before the write: the entry is applied here before `commit_set` adopts its mesh CA.
        let committing = self.in_flight.start(p.hash);
        let (previous, hash) = (p.new.transition.previous, p.hash);
        let commit = tokio::spawn(async move {
            // Held until the commit is over, also when the caller stopped waiting: until then the
            // latest may still move to this transition, and this replica adopts its secrets itself.
            let _claim = claim;
            let _committing = committing;
            debug!(
                sealed_to = ?sealed.iter().map(|c| c.recipient).collect::<Vec<_>>(),
                "the new mesh CA key is sealed to these replicas in the entry"
            );
            let command = Command::Append(AppendTransition {
                sealed,
                ..AppendTransition::new(&p.new)
            });
            // The transition's manifest and records, written and synced beside the Raft write
            // (`ObjectsAhead`): applying it here then finds them written.
            let ahead = ahead.map(|ahead| {
                let batch = crate::history::Ledger::<S>::append_batch(&p.new);
                tokio::task::spawn_blocking(move || ahead.write(&batch))
            });
            let written = raft.client_write(command).await;
            if let Some(ahead) = ahead {
                match ahead.await {
                    Ok(Ok(())) => {}
                    // The apply writes them itself, or fails with the same error.
                    Ok(Err(e)) => warn!(error = %e, "writing a transition's records ahead failed"),
                    Err(e) => {
                        warn!(error = %e, "the task writing a transition's records ahead failed")
                    }
                }
            }
            let raft_write = writing.elapsed();
            phases.commit_phase("raft_write", raft_write);
            debug!(
                prepare_us = prepared_in.as_micros() as u64,
                raft_write_us = raft_write.as_micros() as u64,
                "SetManifest written through Raft"
            );
            let written =
                written.map_err(|e| match e.forward_to_leader::<openraft::BasicNode>() {
                    Some(_) => Status::unavailable("leadership moved during the write; retry"),
                    None => Status::unavailable(format!("the write did not commit: {e}")),
                })?;
            match written.data {
                CommandResponse::Applied { hash } if hash == p.hash => {}
                CommandResponse::Rejected { reason } => {
                    return Err(to_status(&CoordinatorError::InvalidInput(format!(
                        "the replicas refused the transition: {reason}"
                    ))));
                }
                other => {
                    return Err(Status::internal(format!(
                        "unexpected answer from the state machine: {other:?}"
                    )));
                }
            }
            // Right here when the core's lock is free and the core has only this transition to
            // take: brief work (the one transition the state machine fed it and the new mesh CA,
            // 0.03 to 0.06 ms) that a hand-over of this worker's queue would more than double
            // (`coordinator/src/in_place.rs`). Otherwise (a reader holds the core, or it must catch
            // up on more) the worker's queue moves away first, as before.
            let commit = move |core: &mut crate::state::Coordinator<S>| {
                let adopted = std::time::Instant::now();
                let outcome = core.commit_set(*p);
                phases.commit_phase("commit", adopted.elapsed());
                outcome
            };
            match replica
                .try_write()
                .filter(|core| core.is_one_behind(&previous, &hash))
            {
                Some(mut core) => commit(&mut core),
                None => crate::in_place::off_the_workers(|| commit(&mut *replica.write()?)),
            }
            .map_err(|e| to_status(&e))
        });
        match tokio::time::timeout(LEADER_WAIT, commit).await {
            Ok(joined) => {
                joined.map_err(|e| Status::internal(format!("the commit task failed: {e}")))?
            }
            Err(_) => Err(not_committed_in_time()),
        }
    }

    /// The last applied log index, if it is of this leader's term: then every entry of earlier
    /// terms is applied, and what is not applied yet was appended by this leader, the transitions
    /// among it by SetManifests that hold a claim until their commit is over. Else None.
    fn applied_in_own_term(&self) -> Option<u64> {
        let m = self.raft.metrics().borrow().clone();
        let applied = m.last_applied?;
        (m.state == openraft::ServerState::Leader && applied.leader_id.term == m.current_term)
            .then_some(applied.index)
    }

    /// The latest transition's hash and its manifest's hash as the core holds them, if nothing was
    /// applied since `fresh_at` (the applied index at which the core was refreshed from the store,
    /// see [`Node::applied_in_own_term`]) and the core is free to read; else None.
    fn settled_latest(
        &self,
        fresh_at: Option<u64>,
    ) -> Option<(crate::hash::Hash, crate::hash::Hash)> {
        let fresh_at = fresh_at?;
        (self.applied_in_own_term() == Some(fresh_at))
            .then(|| self.replica.try_latest())
            .flatten()
    }

    /// Waits (up to [`APPLY_WAIT`]) until this replica applied every entry of its log. A leader just
    /// elected may not have applied what its predecessor committed; preparing a write against that
    /// older view would refuse a caller who is up to date with a spurious "previous transition
    /// mismatch". In steady state the leader's log is applied when a write starts, and this returns at
    /// once; entries that never commit (no quorum) only cost the wait, and the write then fails as before.
    async fn applied_whole_log(&self) {
        let (applied, last) = {
            let m = self.raft.metrics().borrow().clone();
            (m.last_applied.map_or(0, |l| l.index), m.last_log_index)
        };
        if let Some(last) = last.filter(|last| *last > applied) {
            let _ = self
                .raft
                .wait(Some(APPLY_WAIT))
                .applied_index_at_least(Some(last), "applied the whole log before a write")
                .await;
        }
    }

    /// Writes a command through Raft from any replica (on the leader directly, else forwarded to it)
    /// and returns once this replica applied it too. Every state machine verifies it; the answer is
    /// the state machine's.
    pub async fn write_command(&self, command: Command) -> Result<CommandResponse, Status> {
        let (response, index) = self.write_command_anywhere(command).await?;
        self.raft
            .wait(Some(LEADER_WAIT))
            .applied_index_at_least(Some(index), "the command is applied here")
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "the command committed but is not applied here yet: {e}"
                ))
            })?;
        Ok(response)
    }

    async fn write_command_anywhere(
        &self,
        command: Command,
    ) -> Result<(CommandResponse, u64), Status> {
        let json = serde_json::to_vec(&command)
            .map_err(|e| Status::internal(format!("cannot encode a command: {e}")))?;
        let answer = self
            .via_leader(false, &mut None, |mut api| {
                let json = json.clone();
                async move { api.forward_command(pb::RaftMessage { json }).await }
            })
            .await?;
        if let Some(reply) = answer {
            return serde_json::from_slice(&reply.json).map_err(|e| {
                Status::internal(format!(
                    "the leader's answer is not a command response: {e}"
                ))
            });
        }
        match tokio::time::timeout(LEADER_WAIT, self.raft.client_write(command)).await {
            Ok(written) => written
                .map(|w| (w.data, w.log_id.index))
                .map_err(|e| Status::unavailable(format!("the write did not commit: {e}"))),
            Err(_) => Err(not_committed_in_time()),
        }
    }

    /// User recovery: a share submission; at threshold the new mesh CA is recorded through Raft,
    /// then adopted. Answers the share's index with the progress. The submission is authenticated
    /// first, so a forgery costs one HPKE open and never a question to the peers.
    pub async fn recover_with_submission(
        &self,
        key: &concord_mesh_ca::RecoveryKey,
        submission: &concord_mesh_ca::ShareSubmission,
        force: bool,
        known: crate::state::KnownLatest,
    ) -> Result<(u8, crate::state::RecoverProgress), Status> {
        self.refresh().await.map_err(|e| to_status(&e))?;
        let share = self
            .replica
            .read()
            .and_then(|c| c.authenticate_submission(key, submission))
            .map_err(|e| to_status(&e))?;
        let index = share.index();
        let recovering = self
            .replica
            .read()
            .is_ok_and(|c| c.state() == ReplicaState::Recovering);
        let ready_peer = if recovering && !force {
            self.ready_peer().await
        } else {
            None
        };
        if let Some(ready) = ready_peer {
            return Err(Status::failed_precondition(format!(
                "replica {ready} is ready, so this replica recovers from it by itself and needs no \
                 seed share (nothing changed). User recovery would replace the mesh CA every workload \
                 trusts; only if replica {ready} is known to be wrong, submit the share with --force"
            )));
        }
        let outcome = self
            .replica
            .write()
            .and_then(|mut c| {
                // Under the same lock: the history the share is checked against is the one it joins.
                c.check_known_latest(&known)?;
                c.accept_authenticated_share(share, time::OffsetDateTime::now_utc())
            })
            .map_err(|e| to_status(&e))?;
        let recovered = match outcome {
            crate::state::ShareOutcome::Progress(p) => return Ok((index, p)),
            crate::state::ShareOutcome::Recovered(r) => r,
        };
        // Not sealed: after a full outage no other replica holds the seed, so none could use it.
        let command = Command::RotateMeshCa(crate::raft::RotateMeshCa {
            transition: recovered.latest,
            mesh: recovered.mesh.clone(),
            sealed: Vec::new(),
        });
        match self.write_command(command).await? {
            CommandResponse::Applied { .. } => {}
            CommandResponse::Rejected { reason } => {
                return Err(to_status(&CoordinatorError::FailedPrecondition(format!(
                    "the replicas refused the new mesh CA: {reason}; submit the shares again"
                ))));
            }
            other => return Err(Status::internal(format!("unexpected answer: {other:?}"))),
        }
        self.refresh().await.map_err(|e| to_status(&e))?;
        self.replica
            .write()
            .and_then(|mut c| c.commit_recovery(*recovered))
            .map(|p| (index, p))
            .map_err(|e| to_status(&e))
    }

    /// The mesh CA of the latest transition was lost (its maker died before any peer fetched it): make
    /// a new one, record it through Raft, adopt it. Only for a replica that holds the seed.
    pub async fn rotate_lost_mesh_ca(&self) -> Result<(), Status> {
        let targets = self.seal_targets();
        let replica = self.replica.clone();
        let (rotated, sealed) = tokio::task::spawn_blocking(move || {
            let core = replica.read()?;
            let rotated = core.rotate_lost_mesh_ca(time::OffsetDateTime::now_utc())?;
            // Sealed to the other voters that hold the seed too, so they need not fetch it.
            let sealed = match core.chain() {
                Some(chain) => {
                    let deployment = chain.deployment_id();
                    let serving = Coordinators::of(chain.latest_manifest());
                    let (recipients, _) =
                        serving.recipients(&replica.verifier, deployment, &targets);
                    rotated.seal_mesh_ca(deployment.0, &recipients)
                }
                None => Vec::new(),
            };
            Ok::<_, CoordinatorError>((rotated, sealed))
        })
        .await
        .map_err(|e| Status::internal(format!("the rotation task failed: {e}")))?
        .map_err(|e| to_status(&e))?;
        let command = Command::RotateMeshCa(crate::raft::RotateMeshCa {
            transition: rotated.latest,
            mesh: rotated.mesh.clone(),
            sealed,
        });
        match self.write_command(command).await? {
            CommandResponse::Applied { .. } => {}
            other => {
                return Err(Status::failed_precondition(format!(
                    "the rotation was not applied: {other:?}"
                )));
            }
        }
        self.refresh().await.map_err(|e| to_status(&e))?;
        self.replica
            .write()
            .and_then(|mut c| c.commit_recovery(rotated))
            .map_err(|e| to_status(&e))?;
        crate::observe::global().mesh_ca_handoff("rotated");
        tracing::warn!("the latest mesh CA was lost with the replica that made it; made a new one");
        Ok(())
    }

    /// Peer recovery, recovering side: asks each peer (the leader first) for the secrets of the latest
    /// transition. Each peer's evidence is checked again under the admission policy as it is now (the
    /// stored latest manifest's `coordinator` role), also on a connection kept from before it, and the
    /// secrets are adopted only if they verify the whole history.
    pub async fn recover_from_peers(&self) -> Result<bool, CoordinatorError> {
        self.refresh().await?;
        let wanted = {
            let replica = self.replica.read()?;
            if replica.state() != ReplicaState::Recovering {
                return Ok(false);
            }
            replica.chain().map(|c| c.latest_hash())
        };
        // This leader's own write, applied and about to adopt the mesh CA it made: nothing to ask.
        if wanted.is_some_and(|h| self.in_flight.contains(&h)) {
            return Ok(false);
        }
        let leader = self.raft.current_leader().await;
        let mut order: Vec<NodeId> = leader.into_iter().filter(|l| *l != self.id).collect();
        order.extend(
            self.peers
                .keys()
                .filter(|id| **id != self.id && Some(**id) != leader),
        );
        let mut refusals = Vec::new();
        for id in order {
            let Some(addr) = self.peer_addr(id) else {
                continue;
            };
            debug!(peer = id, "asking a peer for the latest secrets");
            let request = pb::PeerRecoverRequest {
                latest: wanted.map(|h| h.as_bytes().to_vec()).unwrap_or_default(),
            };
            let answer = self
                .links
                .call(id, &addr, |mut api, peer| async move {
                    self.links
                        .reverify(&peer)
                        .map_err(Status::permission_denied)?;
                    api.recover(request).await
                })
                .await
                .map_err(|s| s.message().to_string());
            match answer.and_then(|a| super::peer::secrets_from_pb(a).map_err(|e| e.to_string())) {
                Ok(secrets) => {
                    self.refresh().await?;
                    match self.replica.write()?.adopt_from_peer(secrets) {
                        Ok(()) => {
                            crate::observe::global().mesh_ca_handoff("peer");
                            info!(peer = id, "recovered the secrets from a peer; ready");
                            return Ok(true);
                        }
                        Err(e) => refusals.push(format!("replica {id}: {e}")),
                    }
                }
                Err(e) => refusals.push(format!("replica {id}: {e}")),
            }
        }
        if refusals.is_empty() {
            refusals.push("no peer to recover from".into());
        }
        Err(CoordinatorError::FailedPrecondition(refusals.join("; ")))
    }

    /// A peer that answers it is ready, if any: asked over the attested peer connections, each for at
    /// most a second. A peer that cannot be reached is not counted: it serves nobody either.
    async fn ready_peer(&self) -> Option<NodeId> {
        for &id in self.peers.keys().filter(|id| **id != self.id) {
            let Some(addr) = self.peer_addr(id) else {
                continue;
            };
            let ask = self.links.call(id, &addr, |mut api, _| async move {
                api.peer_state(pb::PeerStateRequest {}).await
            });
            let answer = tokio::time::timeout(Duration::from_secs(1), ask).await;
            if answer.is_ok_and(|a| a.is_ok_and(|a| a.state == ReplicaState::Ready.as_str())) {
                return Some(id);
            }
        }
        None
    }

    /// For a call only the leader answers: `Ok(None)` when this replica leads (the caller runs it
    /// here), else the leader's answer to `remote`. While the leader is gone or changing, it waits for
    /// the next one and retries, for up to [`LEADER_WAIT`]; each retried attempt's leader is noted in
    /// `unknown` (its outcome is unknown). A `forwarded` call is not forwarded again.
    async fn via_leader<T, F, Fut>(
        &self,
        forwarded: bool,
        unknown: &mut Option<NodeId>,
        remote: F,
    ) -> Result<Option<T>, Status>
    where
        F: Fn(pb::peer_api_client::PeerApiClient<tonic::transport::Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            let leader = self.leader().await?;
            if leader == self.id {
                return Ok(None);
            }
            if forwarded {
                return Err(Status::unavailable(
                    "this replica is no longer the leader; retry",
                ));
            }
            let addr = self.leader_addr(leader)?;
            debug!(leader, %addr, "forwarding to the leader");
            match self.links.call(leader, &addr, |api, _| remote(api)).await {
                Ok(answer) => return Ok(Some(answer)),
                Err(s) if retryable(&s) && tokio::time::Instant::now() < deadline => {
                    debug!(
                        leader,
                        error = s.message(),
                        "the leader did not answer; waiting for the next one"
                    );
                    *unknown = Some(leader);
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(s) => return Err(unavailable_if_transport(s)),
            }
        }
    }

    /// Checks, off the commit path, the link evidence of the voters whose seal key this replica holds
    /// under the latest manifest's `coordinator` role, so that the next SetManifest (whose manifest
    /// usually keeps the same coordinator policies and reference values) need not.
    pub async fn check_seal_recipients_ahead(&self) {
        let Some((serving, deployment)) = self.replica.read().ok().and_then(|core| {
            let chain = core.chain()?;
            Some((
                Coordinators::of(chain.latest_manifest()),
                chain.deployment_id(),
            ))
        }) else {
            return;
        };
        let fingerprint = serving.fingerprint(deployment);
        let targets = self.links.seal_targets(self.other_voters());
        if targets.iter().all(|t| t.verdict == Some(fingerprint)) {
            return;
        }
        let replica = self.replica.clone();
        let checked = tokio::task::spawn_blocking(move || {
            serving
                .recipients(&replica.verifier, deployment, &targets)
                .1
        })
        .await
        .unwrap_or_default();
        for (id, dial) in checked {
            self.links.record_seal_verdict(id, dial, fingerprint);
        }
    }

    /// The other voters to seal a new mesh CA key to: those whose seal key is cached with their
    /// link; none while a member says it cannot decode sealed copies (an older build).
    fn seal_targets(&self) -> Vec<super::links::SealTarget> {
        if self.links.any_without_sealing(&self.members()) {
            return Vec::new();
        }
        self.links.seal_targets(self.other_voters())
    }

    /// Every member of the membership (voters and learners), this replica included.
    pub(crate) fn members(&self) -> Vec<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .map(|(id, _)| *id)
            .collect()
    }

    /// The voters of the membership other than this replica.
    fn other_voters(&self) -> Vec<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != self.id)
            .collect()
    }

    /// The leader's peer API address, or why there is none.
    fn leader_addr(&self, leader: NodeId) -> Result<String, Status> {
        self.peer_addr(leader).ok_or_else(|| {
            Status::unavailable(format!(
                "the leader is replica {leader}, whose address is unknown here"
            ))
        })
    }
}

/// Why a read's leadership round failed when no quorum answered within the `waited` it had (at most
/// [`LEADER_WAIT`]; less when it ran a round for reads that had already waited).
fn no_quorum_for_read(waited: Duration) -> String {
    format!(
        "cannot confirm leadership for a read: no quorum answered within {} ms (a read waits at most \
         {} ms); retry when a majority of the replicas is reachable, or ask for a possibly stale read",
        waited.as_millis(),
        LEADER_WAIT.as_millis()
    )
}

/// What [`Node::catch_up`] found to do after its first look at the core.
enum CatchUp {
    /// A copy sealed to this process for a transition the core has not loaded yet: open it, then
    /// reload and install together.
    OpenFirst(SealedOpening),
    /// The core is loaded; a copy for its latest transition to open and install, if any.
    Loaded(Option<SealedOpening>),
}

/// Reloads the core if the store moved on, with this process's copy of the new transition's mesh CA
/// key opened before the reload and installed with it (`refresh_and_install`); then adopts a copy
/// for the loaded transition, as before, if one is still to be opened.
fn reload_sealed<S: Store>(
    replica: &Replica<S>,
    own: NodeId,
    key: &concord_mesh_ca::SealKey,
    inbox: &crate::raft::SealedInbox,
) -> Result<(), CoordinatorError> {
    let opened = opening_ahead(replica, own, key, inbox)?.map(|o| o.open(key));
    refresh_and_install(replica, own, key, inbox, opened)?;
    adopt_sealed(replica, own, key, inbox)
}

/// The copy sealed to this process in the state machine's last delivery, if the core has not
/// loaded its transition yet (`Coordinator::sealed_opening_ahead`).
fn opening_ahead<S: Store>(
    replica: &Replica<S>,
    own: NodeId,
    key: &concord_mesh_ca::SealKey,
    inbox: &crate::raft::SealedInbox,
) -> Result<Option<SealedOpening>, CoordinatorError> {
    let public = key.public_key();
    let Some(delivery) = inbox.latest_for(own, &public) else {
        return Ok(None);
    };
    let core = replica.read()?;
    if !core.is_stale()? {
        return Ok(None);
    }
    Ok(core.sealed_opening_ahead(own, &public, &delivery))
}

/// Reloads the core if the store moved on and installs `opened` (a copy opened before the reload)
/// under the same write lock: no reader sees the new transition without its mesh CA key. If the
/// reload went past the transition `opened` was for (the store moved on while it was opened), the
/// copy for the transition loaded, if this process has one, is opened under the lock too: readers
/// wait for that (about 0.2 ms) rather than find the replica recovering.
fn refresh_and_install<S: Store>(
    replica: &Replica<S>,
    own: NodeId,
    key: &concord_mesh_ca::SealKey,
    inbox: &crate::raft::SealedInbox,
    opened: Option<Result<OpenedMeshCa, CoordinatorError>>,
) -> Result<(), CoordinatorError> {
    // Nothing to install and nothing new: no write lock.
    if opened.is_none() && !replica.read()?.is_stale()? {
        return Ok(());
    }
    let installed = {
        let mut core = replica.write()?;
        core.refresh()?;
        // The transition the copy was opened for; a copy that did not open is not opened again.
        let opened_for = opened
            .as_ref()
            .and_then(|o| o.as_ref().ok())
            .map(OpenedMeshCa::transition);
        let mut installed = opened.map(|opened| opened.and_then(|o| install(&mut core, o)));
        if installed.as_ref().is_some_and(Result::is_err)
            && core.state() == ReplicaState::Recovering
            && let Some(latest) = core.chain().map(|c| c.latest_hash())
            && opened_for.is_some_and(|t| t != latest)
            && let Some(delivery) = inbox.for_transition(&latest)
            && let Ok(opening) = core.sealed_opening(own, &key.public_key(), &delivery)
        {
            installed = Some(opening.open(key).and_then(|o| install(&mut core, o)));
        }
        installed
    };
    if let Some(installed) = installed {
        report_install(installed);
    }
    Ok(())
}

/// A recovering replica that holds the seed opens its copy of the latest transition's mesh CA key,
/// if the state machine applied one sealed to this process (`Coordinator::adopt_sealed`). A copy
/// that does not check out is ignored: the replica recovers from a peer as before.
fn adopt_sealed<S: Store>(
    replica: &Replica<S>,
    own: NodeId,
    key: &concord_mesh_ca::SealKey,
    inbox: &crate::raft::SealedInbox,
) -> Result<(), CoordinatorError> {
    if let Some(opening) = sealed_opening(replica, own, key, inbox)? {
        install_opened(replica, opening.open(key))?;
    }
    Ok(())
}

/// What opening this process's sealed copy of the latest mesh CA key needs, checked under a read
/// lock of the core: `None` if there is none to open, or it does not check out (logged).
fn sealed_opening<S: Store>(
    replica: &Replica<S>,
    own: NodeId,
    key: &concord_mesh_ca::SealKey,
    inbox: &crate::raft::SealedInbox,
) -> Result<Option<SealedOpening>, CoordinatorError> {
    let core = replica.read()?;
    if core.state() != ReplicaState::Recovering || !core.holds_seed() {
        return Ok(None);
    }
    let Some(latest) = core.chain().map(|c| c.latest_hash()) else {
        return Ok(None);
    };
    let Some(delivery) = inbox.for_transition(&latest) else {
        return Ok(None);
    };
    match core.sealed_opening(own, &key.public_key(), &delivery) {
        Ok(opening) => Ok(Some(opening)),
        Err(e) => {
            debug!(transition = %latest, error = %e, "a sealed mesh CA key was not adopted; recovering from a peer");
            Ok(None)
        }
    }
}

/// Adopts what [`SealedOpening::open`] gave, under the core's write lock (the opening itself ran
/// without a lock).
fn install_opened<S: Store>(
    replica: &Replica<S>,
    opened: Result<OpenedMeshCa, CoordinatorError>,
) -> Result<(), CoordinatorError> {
    report_install(opened.and_then(|o| install(&mut *replica.write()?, o)));
    Ok(())
}

/// Installs `opened` in `core` (`Coordinator::install_opened`): the transition it is for, or why not.
fn install<S: Store>(
    core: &mut crate::state::Coordinator<S>,
    opened: OpenedMeshCa,
) -> Result<crate::hash::Hash, CoordinatorError> {
    let transition = opened.transition();
    core.install_opened(opened).map(|()| transition)
}

/// Logs and counts the install of a mesh CA opened from a sealed copy, or why it was not adopted.
fn report_install(installed: Result<crate::hash::Hash, CoordinatorError>) {
    match installed {
        Ok(transition) => {
            crate::observe::global().mesh_ca_handoff("sealed");
            info!(%transition, "opened the mesh CA key the leader sealed to this replica; ready");
        }
        Err(e) => {
            debug!(error = %e, "a sealed mesh CA key was not adopted; recovering from a peer")
        }
    }
}

/// The checks of a Join request that need no state: not this replica, a host:port address.
pub(crate) fn check_join_member(own_id: NodeId, member: &pb::Member) -> Result<(), Status> {
    if member.id == own_id {
        return Err(Status::invalid_argument(
            "a replica cannot ask itself to join",
        ));
    }
    if !member.peer_address.contains(':') {
        return Err(Status::invalid_argument(format!(
            "member {}: {:?} is not a host:port address",
            member.id, member.peer_address
        )));
    }
    Ok(())
}

/// The members of a SetMembers request: each once, each at a host:port address, at least one.
pub(crate) fn members_of(req: &pb::SetMembersRequest) -> Result<BTreeMap<NodeId, String>, Status> {
    let invalid = |m: String| to_status(&CoordinatorError::InvalidInput(m));
    let mut members = BTreeMap::new();
    for m in &req.members {
        if !m.peer_address.contains(':') || m.peer_address.trim() != m.peer_address {
            return Err(invalid(format!(
                "member {}: {:?} is not a host:port address",
                m.id, m.peer_address
            )));
        }
        if members.insert(m.id, m.peer_address.clone()).is_some() {
            return Err(invalid(format!("member {} is listed twice", m.id)));
        }
    }
    if members.is_empty() {
        return Err(invalid("a cluster needs at least one member".into()));
    }
    Ok(members)
}

/// The owner key and signature of a SetMembers request, by their form only (the caller verifies).
pub(crate) fn members_authorization(
    req: &pb::SetMembersRequest,
) -> Result<(ed25519_dalek::VerifyingKey, ed25519_dalek::Signature), Status> {
    let invalid = |m: &str| to_status(&CoordinatorError::InvalidInput(m.into()));
    let key = <[u8; 32]>::try_from(req.owner_key.as_slice())
        .ok()
        .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).ok())
        .ok_or_else(|| invalid("owner_key: not a 32-byte Ed25519 public key"))?;
    let sig = <[u8; 64]>::try_from(req.owner_signature.as_slice())
        .map(|s| ed25519_dalek::Signature::from_bytes(&s))
        .map_err(|_| invalid("owner_signature: an Ed25519 signature is 64 bytes"))?;
    Ok((key, sig))
}

/// Errors worth retrying against the next leader: the leader is gone or changed. tonic reports a
/// connection that broke mid-call as `Unknown` ("transport error").
fn retryable(s: &Status) -> bool {
    super::links::is_transport(s)
}

/// A leader that cannot reach a quorum waits for it indefinitely; its caller gets this instead. The
/// entry may still commit once the quorum is back, hence DeadlineExceeded, not a refusal.
fn not_committed_in_time() -> Status {
    Status::deadline_exceeded(format!(
        "the write was not committed within {LEADER_WAIT:?}: this leader cannot reach a majority of \
         the replicas; it may still commit when they are back, so check `concord status` before retrying"
    ))
}

/// The voters a leader answered with, by id.
fn members_from_pb(r: pb::SetMembersResponse) -> BTreeMap<NodeId, String> {
    r.voters
        .into_iter()
        .map(|m| (m.id, m.peer_address))
        .collect()
}

/// A refusal that follows a forwarded attempt whose outcome is unknown (the leader died or the
/// connection broke mid-call) may be that attempt's own consequence: it committed, and the retry then
/// finds the transition already there, or the new leader still recovering its secrets. Such a refusal
/// is no proof that nothing changed, so the caller hears that the outcome is unknown. Refusals of the
/// request itself (invalid, unauthorized) stay as they are.
fn after_unknown(unknown: Option<NodeId>, s: Status) -> Status {
    use tonic::Code;
    match (unknown, s.code()) {
        (None, _)
        | (
            _,
            Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unavailable
            | Code::DeadlineExceeded,
        ) => s,
        (Some(leader), _) => Status::unavailable(format!(
            "{}; an earlier attempt through replica {leader}, the leader then, may have committed: \
             read the latest transition (`concord status`) before retrying",
            s.message()
        )),
    }
}

/// What a caller sees when the leader could not be reached even after retrying: Unavailable, never
/// tonic's transport-level Unknown.
fn unavailable_if_transport(s: Status) -> Status {
    if retryable(&s) && s.code() != tonic::Code::Unavailable {
        Status::unavailable(format!("the leader could not be reached: {}", s.message()))
    } else {
        s
    }
}

/// The SetManifest answer as the user API sends it.
pub fn outcome_to_pb(out: &SetOutcome) -> pb::SetManifestResponse {
    pb::SetManifestResponse {
        transition: Some(super::user::transition_to_pb(&out.transition)),
        seed_shares: out
            .seed_shares
            .iter()
            .map(|s| pb::EncryptedSeedShare {
                owner_public_key: s.owner_public_key.to_vec(),
                encapsulated_key: s.encapsulated_key.clone(),
                ciphertext: s.ciphertext.clone(),
            })
            .collect(),
        root_ca: out.root_ca_pem.clone(),
        mesh_ca: out.mesh_ca_pem.clone(),
        unchanged: out.unchanged,
    }
}

pub(crate) fn outcome_from_pb(r: pb::SetManifestResponse) -> Result<SetOutcome, Status> {
    let t = r
        .transition
        .ok_or_else(|| Status::internal("the leader answered without a transition"))?;
    let hash = crate::hash::Hash::from_slice(&t.hash).map_err(Status::internal)?;
    let transition = crate::history::Transition::from_parts(
        t.index,
        crate::hash::Hash::from_slice(&t.manifest_hash).map_err(Status::internal)?,
        crate::hash::Hash::from_slice(&t.previous).map_err(Status::internal)?,
        &hex::encode(&t.signature),
        (!t.owner_key.is_empty())
            .then(|| hex::encode(&t.owner_key))
            .as_deref(),
        (!t.owner_signature.is_empty())
            .then(|| hex::encode(&t.owner_signature))
            .as_deref(),
    )
    .map_err(Status::internal)?;
    let seed_shares = r
        .seed_shares
        .into_iter()
        .map(|s| {
            Ok(concord_mesh_ca::EncryptedShare {
                owner_public_key: <[u8; 32]>::try_from(s.owner_public_key.as_slice())
                    .map_err(|_| Status::internal("a share's owner key is not 32 bytes"))?,
                encapsulated_key: s.encapsulated_key,
                ciphertext: s.ciphertext,
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    Ok(SetOutcome {
        transition,
        hash,
        seed_shares,
        root_ca_pem: r.root_ca,
        mesh_ca_pem: r.mesh_ca,
        unchanged: r.unchanged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_read_round_names_the_time_it_waited_not_the_longest_wait() {
        let why = no_quorum_for_read(Duration::from_millis(1234));
        assert!(why.contains("within 1234 ms"), "{why}");
        assert!(
            why.contains(&format!("at most {} ms", LEADER_WAIT.as_millis())),
            "{why}"
        );
        assert!(why.contains("retry when a majority"), "{why}");
    }
}
