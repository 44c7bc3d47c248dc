//! Wiring one replica: open and verify the store, start Raft on it, form the cluster from the static peer
//! list, keep recovering from peers while the replica lacks the latest secrets, and serve the user API
//! (1313), the mesh API (7777) and the peer API (7778) over aTLS until shutdown, with probes and metrics
//! on plain HTTP (9102, `observe`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use concord_attestation::{
    AtlsAcceptor, AtlsClient, ClientAuth, ClientIdentity, DeploymentId, DeploymentSource, Verifier,
};
use concord_proto::limits;
use concord_proto::v1::{
    mesh_api_server::MeshApiServer, peer_api_server::PeerApiServer, user_api_server::UserApiServer,
};
use openraft::Raft;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::api::{
    MeshAcceptPolicy, MeshService, Node, PeerAcceptPolicy, PeerLinks, PeerService, Replica,
    UserService,
};
use crate::launch::LaunchedPlatform;
use crate::observe::{HealthServer, RpcTimingLayer};
use crate::raft::NodeId;
use crate::raft::network::PeerNetwork;
use crate::state::Coordinator;
use crate::store::SledStore;

/// A replica's launch configuration.
#[derive(Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub user_listen: SocketAddr,
    pub mesh_listen: SocketAddr,
    pub peer_listen: SocketAddr,
    /// Probes and metrics (plain HTTP).
    pub health_listen: SocketAddr,
    /// The transit API (Vault's transit paths; `crate::transit`).
    pub transit_listen: SocketAddr,
    pub transit: crate::transit::TransitSettings,
    /// This replica's id in the cluster.
    pub node_id: NodeId,
    /// Every member's peer API address, this replica included. The lowest id forms a fresh cluster.
    pub peers: BTreeMap<NodeId, String>,
    pub platform: LaunchedPlatform,
    /// The deployment this replica serves (`--deployment-id`); `None`: unpinned until the first manifest.
    pub deployment_id: Option<DeploymentId>,
    /// Log entries after which Raft takes a snapshot and purges the log (`--snapshot-after-entries`).
    pub snapshot_after_entries: u64,
    /// The test fault hook (`--insecure-test-stall-raft-while`): while this file exists, the Raft log's
    /// appends block, wedging the Raft core. `None` in production.
    pub stall_raft_while: Option<PathBuf>,
    /// The test hook `--insecure-test-no-sealed-mesh-ca`: ask no peer for its seal key, so that as
    /// leader this replica seals no mesh CA key into entries. `false` in production.
    pub no_sealed_mesh_ca: bool,
    /// `--evidence batched`: handshakes that wait together share one report (binding v3).
    pub evidence_batching: bool,
}

/// The default of `--snapshot-after-entries` (openraft's own default).
pub const SNAPSHOT_AFTER_ENTRIES: u64 = 5_000;

/// Raft timing: heartbeats every 50 ms. A follower that hears nothing from its leader campaigns after
/// openraft's leader lease (the largest election timeout, 200 ms) plus a random election timeout of 100
/// to 200 ms: after 300 to 400 ms of silence, six to eight missed heartbeats. So a failover completes in
/// well under half a second on a local network (a StatefulSet's pods share one), under half of etcd's
/// fastest with its defaults (issue 11.5). Until the twenty-first pass on issue 11 the timeouts were 150
/// to 300 ms, which with the lease made 450 to 600 ms of silence, not the 150 to 300 ms the docs said.
///
/// A snapshot is taken every `snapshot_after_entries` log entries; a fifth of that many entries stay in
/// the log after it (openraft's defaults: 5,000 and 1,000), so a follower a little behind is sent
/// entries and one far behind (or with an empty disk) a snapshot.
fn raft_config(snapshot_after_entries: u64) -> anyhow::Result<Arc<openraft::Config>> {
    let config = openraft::Config {
        cluster_name: "concord".into(),
        heartbeat_interval: 50,
        election_timeout_min: 100,
        election_timeout_max: 200,
        // Large histories (issue 9.12): a batch is also cut at `raft::network::APPEND_BYTES`; a
        // snapshot goes in chunks of 512 KiB (about 1.8 MB of JSON each), each with 2 s to arrive.
        max_payload_entries: 64,
        snapshot_max_chunk_size: 512 * 1024,
        install_snapshot_timeout: 2_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_after_entries),
        max_in_snapshot_log_to_keep: snapshot_after_entries / 5,
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}

/// Runs the replica until `shutdown` resolves. Fails at once if the stored history does not verify.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // First, so the startup probe answers (503) while the store is verified.
    let health = HealthServer::start(config.health_listen)?;
    let store_dir = config.data_dir.join("store");
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    if !config.peers.contains_key(&config.node_id) {
        anyhow::bail!(
            "the peer list does not name this replica (id {}); list every member with --peer ID=HOST:PORT",
            config.node_id
        );
    }
    let store = SledStore::open(&store_dir)?;
    let others: Vec<String> = config
        .peers
        .keys()
        .filter(|id| **id != config.node_id)
        .map(u64::to_string)
        .collect();
    let refuse = |e: &dyn std::fmt::Display| {
        let repair = if others.is_empty() {
            "Restore the data directory from a backup, or start a new deployment; the audit bundle \
             (`concord verify --out`) shows what the history was."
                .to_string()
        } else {
            format!(
                "The other replicas ({}) serve on without this one. To repair it from them: move {} \
                 aside for inspection and start this replica again with an empty data directory; it \
                 rejoins by itself as a learner, copies the verified history from its peers, recovers \
                 its secrets from them, and becomes a voter again.",
                others.join(", "),
                config.data_dir.display()
            )
        };
        anyhow::anyhow!(
            "refusing to serve the store in {}: {e}. The files were changed outside this replica, \
             so nothing in them is served. {repair}",
            store_dir.display()
        )
    };
    // The state machine loads and verifies the stored history; the core takes that same verified
    // history rather than verifying it again (issue 11.4: start-up verified it twice).
    let (mut log_store, mut state_machine) =
        crate::raft::open(&store, &config.data_dir.join(crate::raft::LOG_DIR))
            .map_err(|e| refuse(&e))?;
    // The transitions this replica appends as the leader are verified while they are flushed and
    // replicated (`raft::early`).
    log_store.check_early(state_machine.early_checks(), config.node_id);
    // Those other replicas led are verified on the background threads when they are applied.
    state_machine.check_others_early(config.node_id);
    // And synced while they are replicated: the leader's sync and the followers' round trip overlap.
    log_store.sync_own_appends_later(config.node_id);
    let mut coordinator =
        Coordinator::open_verified(store.clone(), state_machine.history().cloned());
    coordinator.follow(state_machine.verified_feed());
    if let Some(id) = config.deployment_id {
        coordinator.pin_deployment(id)?;
        // And the history the Raft log would apply again (see `LogStore::first_manifest`).
        let first = log_store.first_manifest().map_err(|e| refuse(&e))?;
        if let Some(stored) = first
            .and_then(|m| crate::manifest::Manifest::parse(&m).ok())
            .map(|m| m.deployment_id())
            .filter(|stored| *stored != id)
        {
            anyhow::bail!(crate::state::started_for_another_deployment(
                id,
                "the history in its Raft log",
                stored,
            ));
        }
    }
    if let Some(file) = &config.stall_raft_while {
        tracing::warn!(
            file = %file.display(),
            "INSECURE test fault hook: the Raft core stalls while this file exists; never in production"
        );
        log_store.stall_while(file.clone());
    }
    let state = coordinator.state();
    if let Some(chain) = coordinator.chain() {
        info!(transitions = chain.len(), latest = %chain.latest_hash(), "loaded and verified the stored history");
    }

    let platform = &config.platform;
    if platform.trust.insecure_simulated_root.is_some() {
        warn!(
            "INSECURE: simulated attestation: this coordinator's evidence proves nothing; never use it in production"
        );
    }
    let issuer = platform.issuer.clone();
    let replica = Arc::new(Replica::new(
        coordinator,
        issuer.clone(),
        Verifier::new(platform.trust.clone()).with_snp_revocation(platform.snp_revocation),
    ));
    info!(deployment = %replica.deployment(), "serving deployment");
    let deployment: Arc<dyn DeploymentSource> = replica.clone();
    let key = Arc::new(rcgen::KeyPair::generate()?);
    let peer_policy = Arc::new(PeerAcceptPolicy::new(
        replica.clone(),
        platform.policy_hash,
        platform.own_reference.clone(),
    ));
    let peer_client = Arc::new(AtlsClient::new(
        peer_policy.clone(),
        Some(ClientIdentity {
            issuer: issuer.clone(),
            key: key.clone(),
            deployment: deployment.clone(),
        }),
    )?);
    let sampled_log = log_store.clone();
    let sealed_inbox = state_machine.sealed_inbox();
    // Random per process, never stored: a restarted replica cannot open what was sealed to its
    // predecessor (it recovers from a peer instead).
    let seal_key = Arc::new(concord_mesh_ca::SealKey::generate()?);
    let network = PeerNetwork::new(peer_client.clone(), config.peers.clone());
    let raft = Raft::new(
        config.node_id,
        raft_config(config.snapshot_after_entries)?,
        network.clone(),
        log_store,
        state_machine,
    )
    .await?;
    let node = Arc::new(Node::new(
        config.node_id,
        replica.clone(),
        raft.clone(),
        config.peers.clone(),
        PeerLinks::new(peer_client, peer_policy.clone()),
        seal_key,
        sealed_inbox,
    ));

    let batching = |acceptor: AtlsAcceptor| match config.evidence_batching {
        true => Arc::new(acceptor),
        false => Arc::new(acceptor.one_report_per_handshake()),
    };
    let user_acceptor = batching(AtlsAcceptor::new(
        issuer.clone(),
        key.clone(),
        deployment.clone(),
        ClientAuth::None,
    )?);
    let mesh_acceptor = batching(AtlsAcceptor::new(
        issuer.clone(),
        key.clone(),
        deployment.clone(),
        ClientAuth::Required(Arc::new(MeshAcceptPolicy::new(replica.clone()))),
    )?);
    let peer_acceptor = batching(AtlsAcceptor::new(
        issuer,
        key,
        deployment,
        ClientAuth::Required(peer_policy),
    )?);
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({what}): {e}"))
    };
    // The ports that face workloads run on their own runtime, at a lower CPU priority, so that a
    // flood of attested handshakes does not queue Raft and the owner's calls behind it
    // (`workload_lane`). Their listeners are bound there, so their connections' I/O is driven there.
    let lane = crate::workload_lane::WorkloadLane::start()
        .map_err(|e| anyhow::anyhow!("cannot start the workload ports' runtime: {e}"))?;
    let on_lane = |addr: SocketAddr, what: &'static str| {
        let bound = lane.handle().spawn(bind(addr, what));
        async move {
            bound
                .await
                .map_err(|e| anyhow::anyhow!("binding {addr} ({what}) did not finish: {e}"))?
        }
    };
    let user_listener = bind(config.user_listen, "user API").await?;
    let mesh_listener = on_lane(config.mesh_listen, "mesh API").await?;
    let peer_listener = bind(config.peer_listen, "peer API").await?;
    let transit_listener = on_lane(config.transit_listen, "transit API").await?;
    info!(
        node_id = config.node_id,
        user_api = %user_listener.local_addr()?,
        mesh_api = %mesh_listener.local_addr()?,
        peer_api = %peer_listener.local_addr()?,
        transit_api = %transit_listener.local_addr()?,
        members = config.peers.len(),
        state = state.as_str(),
        "coordinator serving"
    );
    health.serving(node.clone(), sampled_log);
    let shutdown = health.draining_on(shutdown);

    // An empty Raft state: form the cluster, take part in its formation, or rejoin it (api::join).
    // Until that is decided this replica does not vote; set before the peer API serves.
    if !raft.is_initialized().await? {
        node.set_joining(true);
        tokio::spawn(crate::api::join::form_or_join(
            node.clone(),
            config.peers.clone(),
        ));
    }
    tokio::spawn(keep_recovering(node.clone()));
    tokio::spawn(keep_links_warm(
        raft.clone(),
        network,
        config.node_id,
        config.peers.clone(),
    ));
    tokio::spawn(log_leadership(raft.clone()));
    if config.no_sealed_mesh_ca {
        warn!(
            "INSECURE test hook: no seal keys are asked, so no mesh CA key is sealed into Raft entries; never in production"
        );
    } else {
        tokio::spawn(keep_seal_keys(node.clone()));
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let grace_over = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Every port's limits come from one place (transport::ListenerLimits); docs/THREAT_MODEL.md says
    // what an unauthenticated caller can cost on each.
    let limits = |api: &str| crate::transport::ListenerLimits::for_api(api);
    let (user_limits, mesh_limits, peer_limits) = (limits("user"), limits("mesh"), limits("peer"));
    let main = tokio::runtime::Handle::current();
    let user = user_limits
        .server()
        .layer(RpcTimingLayer)
        .add_service(
            UserApiServer::new(UserService::new(node.clone())?)
                .max_decoding_message_size(limits::USER_API_MESSAGE_BYTES)
                .max_encoding_message_size(limits::USER_API_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            crate::transport::incoming(user_listener, user_acceptor, "user", &user_limits, &main),
            stopped(stop_rx.clone()),
        );
    let mesh = mesh_limits
        .server()
        .layer(RpcTimingLayer)
        .add_service(
            MeshApiServer::new(MeshService::new(replica.clone()))
                .max_decoding_message_size(limits::MESH_API_MESSAGE_BYTES)
                .max_encoding_message_size(limits::MESH_API_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            crate::transport::incoming(
                mesh_listener,
                mesh_acceptor,
                "mesh",
                &mesh_limits,
                lane.handle(),
            ),
            stopped(stop_rx.clone()),
        );
    let peer = peer_limits
        .server()
        .layer(RpcTimingLayer)
        .add_service(
            PeerApiServer::new(PeerService::new(node))
                .max_decoding_message_size(limits::PEER_API_MESSAGE_BYTES)
                .max_encoding_message_size(limits::PEER_API_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            crate::transport::incoming(peer_listener, peer_acceptor, "peer", &peer_limits, &main),
            stopped(stop_rx.clone()),
        );
    let transit = crate::transit::TransitServer::new(replica, config.transit).serve(
        transit_listener,
        limits("transit"),
        stopped(stop_rx),
    );
    let transit = async move {
        transit.await;
        Ok::<(), tonic::transport::Error>(())
    };
    // Each server is a task of its own, so that the handshake task that hands a connection to its
    // server wakes it on the same worker pool, instead of waking the main thread (which polls this
    // function's future) once per connection: that was a thread switch per NewMeshCert.
    // A server task ends with the future that waits for it: a stop that gives up on the grace
    // period leaves no server running.
    let serving = |server: ServerFuture, on: &tokio::runtime::Handle| {
        let mut task = AbortOnDrop(on.spawn(server));
        async move {
            match (&mut task.0).await {
                Ok(result) => result.map_err(anyhow::Error::from),
                Err(e) => Err(anyhow::anyhow!("a server task ended abnormally: {e}")),
            }
        }
    };
    let (user, mesh, peer, transit) = (
        serving(Box::pin(user), &main),
        serving(Box::pin(mesh), lane.handle()),
        serving(Box::pin(peer), &main),
        serving(Box::pin(transit), lane.handle()),
    );
    let durable = store.durable().clone();
    let graceful = async {
        tokio::try_join!(user, mesh, peer, transit)?;
        let _ = raft.shutdown().await;
        // What the state machine applied becomes durable up to 200 ms later (`FlushSoon`); a stop
        // makes it durable now, so a stopped replica's store holds all it applied.
        match tokio::task::spawn_blocking(move || durable.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the store's last flush failed; the Raft log still holds what it would have made durable")
            }
            Err(e) => tracing::warn!(error = %e, "the store's last flush did not run"),
        }
        Ok::<_, anyhow::Error>(())
    };
    // A stop waits for calls in flight and for the Raft core, but not for ever: a core wedged in a
    // flush (or a call waiting on it) would otherwise keep the process from stopping on SIGTERM
    // until Kubernetes kills it (issue 9.12). Every acknowledged write is already on disk.
    tokio::select! {
        result = graceful => result?,
        () = grace_over => {
            tracing::warn!(
                grace_s = SHUTDOWN_GRACE.as_secs(),
                "calls in flight or the Raft core did not finish within the shutdown grace period; stopping without them"
            );
        }
    }
    info!("coordinator stopped");
    Ok(())
}

/// A task aborted when this handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A server's future, boxed so that the four can be spawned alike.
type ServerFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
>;

/// How long a stop waits for calls in flight and the Raft core before the process exits anyway.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps a Raft connection to every member open or being made (`PeerNetwork::warm`), so that the
/// survivors of a dead leader can ask each other for votes at once.
async fn keep_links_warm(
    raft: Raft<crate::raft::TypeConfig>,
    network: PeerNetwork,
    own: NodeId,
    local: BTreeMap<NodeId, String>,
) {
    loop {
        let members: Vec<(NodeId, String)> = raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        for (id, addr) in members.iter().filter(|(id, _)| *id != own) {
            if let Some(addr) = crate::raft::network::peer_address(&local, *id, Some(addr)) {
                network.warm(*id, &addr);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Keeps every other member's seal key at hand, asked on the attested link when it is set up (and
/// again after a redial), so that a leader seals a new mesh CA key without any I/O on the commit
/// path. A link that fails is forgotten and dialed again on the next round.
async fn keep_seal_keys<S: crate::store::Store>(node: Arc<Node<S>>) {
    const EVERY: Duration = Duration::from_millis(250);
    const WITHIN: Duration = Duration::from_secs(1);
    loop {
        let members: Vec<NodeId> = node
            .members()
            .into_iter()
            .filter(|id| *id != node.id)
            .collect();
        let asks = members.iter().filter_map(|&id| {
            let addr = node.peer_addr(id)?;
            let node = node.clone();
            Some(tokio::spawn(async move {
                match node.links.seal_key(id, &addr, WITHIN).await {
                    Ok(key) => key.is_some(),
                    Err(e) => {
                        debug!(
                            peer = id,
                            error = e.message(),
                            "no seal key from a peer yet"
                        );
                        false
                    }
                }
            }))
        });
        let asks: Vec<_> = asks.collect();
        let mut known = 0;
        for ask in asks {
            if ask.await.unwrap_or(false) {
                known += 1;
            }
        }
        crate::observe::global().set_peer_seal_keys(known);
        node.check_seal_recipients_ahead().await;
        tokio::time::sleep(EVERY).await;
    }
}

/// One log line per leadership change, for operators.
async fn log_leadership(raft: Raft<crate::raft::TypeConfig>) {
    let mut metrics = raft.metrics();
    let mut seen = None;
    loop {
        let (leader, term) = {
            let m = metrics.borrow();
            (m.current_leader, m.current_term)
        };
        if leader != seen {
            match leader {
                Some(l) => info!(leader = l, term, "leader elected"),
                None => info!(term, "no leader: election in progress"),
            }
            seen = leader;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// What peer recovery acts on in Raft's metrics: the last applied log id (a new transition, or a new
/// mesh CA for the latest), the leader and the membership. The metrics change several times per write
/// for other reasons (each follower's acknowledgement on the leader, the commit index); each used to
/// wake the loop for a reload check off the runtime, on the cores the next write waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RecoveryInputs {
    applied: Option<openraft::LogId<NodeId>>,
    leader: Option<NodeId>,
    membership: Option<openraft::LogId<NodeId>>,
}

impl RecoveryInputs {
    fn of(m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>) -> RecoveryInputs {
        RecoveryInputs {
            applied: m.last_applied,
            leader: m.current_leader,
            membership: *m.membership_config.log_id(),
        }
    }

    /// Waits at most `within` until the inputs differ from these; whether they did.
    async fn wait_for_change(
        &self,
        metrics: &mut tokio::sync::watch::Receiver<
            openraft::RaftMetrics<NodeId, openraft::BasicNode>,
        >,
        within: Duration,
    ) -> bool {
        let changed = async {
            loop {
                if RecoveryInputs::of(&metrics.borrow_and_update()) != *self {
                    return;
                }
                if metrics.changed().await.is_err() {
                    // Raft stopped: nothing will change; the caller's timeout ends the wait.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(within, changed).await.is_ok()
    }
}

/// Peer recovery starts at once when the replica starts or falls behind (the state machine applied a
/// transition whose secrets it lacks), retries with backoff, and otherwise waits for the next change.
async fn keep_recovering<S: crate::store::Store>(node: Arc<Node<S>>) {
    const FIRST: Duration = Duration::from_millis(10);
    // Short: a failed attempt usually means a peer is one step behind (it has not committed the
    // transition it just wrote yet), which resolves within milliseconds.
    const MAX: Duration = Duration::from_millis(200);
    // How long a replica that holds the seed waits for a peer to supply the latest mesh CA before it
    // concludes the CA died with its maker and makes a new one (the leader first; others later, so
    // two replicas rarely rotate at once).
    const LOST_AFTER_LEADER: Duration = Duration::from_secs(2);
    const LOST_AFTER_FOLLOWER: Duration = Duration::from_secs(6);
    // Failing this long is no longer a peer one step behind: the operator should hear why.
    const REPORT_AFTER: Duration = Duration::from_secs(1);
    const REPORT_EVERY: Duration = Duration::from_secs(30);
    let mut metrics = node.raft.metrics();
    let mut delay = FIRST;
    let mut failing_since: Option<tokio::time::Instant> = None;
    let mut reported: Option<(String, tokio::time::Instant)> = None;
    loop {
        let seen = RecoveryInputs::of(&metrics.borrow_and_update());
        // Catching up with what was applied is nobody's request: the costly part, opening a sealed
        // mesh CA key, waits for a free core first (`Node::catch_up`); `recover_from_peers` then
        // finds it done, or does it itself.
        if let Err(e) = node.catch_up().await {
            debug!(error = %e, "catching up with the applied transitions failed; recovering as usual");
        }
        let outcome = node.recover_from_peers().await;
        match (&outcome, failing_since) {
            (Err(e), Some(since)) if since.elapsed() >= REPORT_AFTER => {
                let why = e.to_string();
                let due = reported
                    .as_ref()
                    .is_none_or(|(last, at)| *last != why || at.elapsed() >= REPORT_EVERY);
                if due {
                    warn!(
                        failing_for_s = since.elapsed().as_secs(),
                        reasons = %why,
                        "still recovering: no peer gave this replica the latest secrets; it keeps trying \
                         (a ready coordinator of the manifest must be reachable, or seed share owners must run `concord recover`)"
                    );
                    reported = Some((why, tokio::time::Instant::now()));
                }
            }
            (Ok(_), _) => reported = None,
            _ => {}
        }
        if outcome.is_err() {
            let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
            let holds_seed = node.replica.read().is_ok_and(|c| c.holds_seed());
            let leads = node.raft.current_leader().await == Some(node.id);
            let wait = if leads {
                LOST_AFTER_LEADER
            } else {
                LOST_AFTER_FOLLOWER
            };
            if holds_seed && since.elapsed() >= wait {
                match node.rotate_lost_mesh_ca().await {
                    Ok(()) => failing_since = None,
                    Err(e) => debug!(error = e.message(), "could not replace a lost mesh CA yet"),
                }
            }
        } else {
            failing_since = None;
        }
        match outcome {
            Ok(true) => delay = FIRST,
            Ok(false) => {
                delay = FIRST;
                seen.wait_for_change(&mut metrics, Duration::from_secs(1))
                    .await;
            }
            Err(e) => {
                debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "peer recovery did not succeed yet");
                if seen.wait_for_change(&mut metrics, delay).await {
                    // Raft applied something, or the leader or membership changed: try again at
                    // once, from the start of the backoff.
                    delay = FIRST;
                } else {
                    delay = (delay * 2).min(MAX);
                }
            }
        }
    }
}
