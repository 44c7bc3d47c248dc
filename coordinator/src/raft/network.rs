//! The Raft network: openraft's RPCs to other replicas over the peer API (mutual aTLS). Each RPC carries
//! openraft's own serde JSON of the request, and the reply is the JSON of `Result<reply, RaftError>`.
//!
//! A connection is made lazily and dropped on any error, so a restarted peer is re-dialed (and
//! re-attested) on the next RPC.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_attestation::AtlsClient;
use concord_proto::v1::RaftMessage;
use concord_proto::v1::peer_api_client::PeerApiClient;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::types::{NodeId, TypeConfig};
use crate::transport::connect;

/// Makes a [`PeerConnection`] per target replica. Connections are shared by all of them and dialed in
/// the background: an aTLS handshake (evidence made and checked on both sides) can take longer than
/// openraft gives an RPC (it cancels an AppendEntries after one heartbeat interval), so a dial is
/// never tied to one RPC. An RPC waits for a dial under way until its own time is up, and a dial that
/// failed is not repeated for [`REDIAL_AFTER`]: openraft retries a failed RPC at once, so answering
/// "still connecting" at once made each replica's replication a busy loop while a peer was down or
/// being dialed (about one failed RPC a millisecond per peer, on both sides of a restart), taking the
/// cores the handshakes needed.
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    client: Arc<AtlsClient>,
    /// This replica's own view of where its peers listen (its `--peer` list).
    local: Arc<BTreeMap<NodeId, String>>,
    links: Links,
}

type Links = Arc<Mutex<HashMap<NodeId, Link>>>;

/// How long after a failed dial to a peer the next one may start.
pub const REDIAL_AFTER: Duration = Duration::from_millis(10);

/// The state of the connection to one peer.
#[derive(Debug, Clone)]
enum Link {
    Up(PeerApiClient<Channel>),
    /// Being dialed: the dial drops its sender when it ends, which wakes the waiters.
    Dialing(watch::Receiver<()>),
    /// The last dial failed; the next may start at this instant.
    Failed(Instant),
}

impl PeerNetwork {
    /// `client` attests this replica and verifies peers with the peer admission policy; `local` is
    /// this replica's own peer list, whose addresses win over those in the membership.
    pub fn new(client: Arc<AtlsClient>, local: BTreeMap<NodeId, String>) -> PeerNetwork {
        PeerNetwork {
            client,
            local: Arc::new(local),
            links: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl PeerNetwork {
    /// Starts dialing replica `target` at `addr` unless a connection to it exists or is being made.
    /// Called for every member ahead of need: a follower otherwise first dials the other followers
    /// when the leader dies and it asks them for votes, and that first round fails while the aTLS
    /// handshakes run, costing a whole election timeout.
    pub fn warm(&self, target: NodeId, addr: &str) {
        let _ = link(&self.links, &self.client, target, addr);
    }
}

/// What [`link`] found.
enum LinkState {
    Up(PeerApiClient<Channel>),
    /// A dial is under way (perhaps started by this call): wait on this for it to end.
    Dialing(watch::Receiver<()>),
    /// The last dial failed; the next may start at this instant.
    Resting(Instant),
}

/// The live connection to `target`, or how to wait for one: a dial is started if none is under way
/// and the last one did not fail within [`REDIAL_AFTER`].
fn link(links: &Links, client: &Arc<AtlsClient>, target: NodeId, addr: &str) -> LinkState {
    let mut map = links
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match map.get(&target) {
        Some(Link::Up(api)) => return LinkState::Up(api.clone()),
        // A dial whose sender is gone without an answer (its task ended early) is dialed again.
        Some(Link::Dialing(ended)) if ended.has_changed().is_ok() => {
            return LinkState::Dialing(ended.clone());
        }
        Some(Link::Failed(next)) if *next > Instant::now() => return LinkState::Resting(*next),
        Some(Link::Dialing(_) | Link::Failed(_)) | None => {}
    }
    let (dial_ended, ended) = watch::channel(());
    map.insert(target, Link::Dialing(ended.clone()));
    drop(map);
    let (addr, client, shared) = (addr.to_owned(), client.clone(), links.clone());
    tokio::spawn(async move {
        let dialed = connect(&addr, client).await;
        let mut links = shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match dialed {
            Ok((channel, _)) => {
                let api = PeerApiClient::new(channel)
                    .max_decoding_message_size(concord_proto::limits::PEER_API_MESSAGE_BYTES)
                    .max_encoding_message_size(concord_proto::limits::PEER_API_MESSAGE_BYTES);
                links.insert(target, Link::Up(api));
            }
            Err(e) => {
                tracing::debug!(target, error = %e, "cannot connect to a peer yet");
                links.insert(target, Link::Failed(Instant::now() + REDIAL_AFTER));
            }
        }
        drop(links);
        drop(dial_ended);
    });
    LinkState::Dialing(ended)
}

/// The live connection to `target`, waiting until `deadline` at most for a dial under way, or for
/// the pause after a failed one and the dial after it. Ends with an error when the deadline passes
/// first, or when the dial it waited for failed.
async fn api_by(
    links: &Links,
    client: &Arc<AtlsClient>,
    target: NodeId,
    addr: &str,
    deadline: Instant,
) -> Result<PeerApiClient<Channel>, PeerError> {
    let still = || PeerError(format!("still connecting to replica {target}"));
    let mut waited_for_dial = false;
    // At most: a pause after a failed dial, a dial, then what it left.
    for _ in 0..3 {
        match link(links, client, target, addr) {
            LinkState::Up(api) => return Ok(api),
            LinkState::Dialing(_) | LinkState::Resting(_) if waited_for_dial => break,
            LinkState::Dialing(mut ended) => {
                // Ends (`Err`) when the dial drops its sender.
                let _ = tokio::time::timeout_at(deadline.into(), ended.changed())
                    .await
                    .map_err(|_| still())?;
                waited_for_dial = true;
            }
            LinkState::Resting(next) if next >= deadline => break,
            LinkState::Resting(next) => tokio::time::sleep_until(next.into()).await,
        }
    }
    Err(PeerError(format!("cannot connect to replica {target} yet")))
}

/// Where to dial member `id`: this replica's own peer list wins, else the address the replicated
/// membership records (members added later are only there). Addresses carry no trust (every peer
/// is attested), so each replica may reach a member its own way: a per-pod DNS name, a proxy.
pub fn peer_address(
    local: &BTreeMap<NodeId, String>,
    id: NodeId,
    in_membership: Option<&str>,
) -> Option<String> {
    local
        .get(&id)
        .cloned()
        .or_else(|| in_membership.map(str::to_owned))
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            target,
            addr: peer_address(&self.local, target, Some(&node.addr)).unwrap_or_default(),
            client: self.client.clone(),
            links: self.links.clone(),
        }
    }
}

/// The connection to one peer.
#[derive(Debug)]
pub struct PeerConnection {
    target: NodeId,
    addr: String,
    client: Arc<AtlsClient>,
    links: Links,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PeerError(String);

type Rpc<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerConnection {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Link>> {
        // A panic while holding this map cannot leave it inconsistent (single inserts and removes).
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The live connection, waiting for one until `deadline` at most.
    async fn api(&self, deadline: Instant) -> Result<PeerApiClient<Channel>, PeerError> {
        api_by(&self.links, &self.client, self.target, &self.addr, deadline).await
    }

    /// Forgets a broken connection, so the next RPC dials again.
    fn drop_link(&self) {
        self.lock().remove(&self.target);
    }

    async fn call<Req, Resp, E>(
        &mut self,
        rpc: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Rpc<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: DeserializeOwned + std::error::Error,
    {
        let json = serde_json::to_vec(req).map_err(|e| {
            RPCError::Network(NetworkError::new(&PeerError(format!(
                "encoding {rpc}: {e}"
            ))))
        })?;
        // A missing connection is a network error, not `Unreachable`: openraft backs off from
        // unreachable peers, which would delay catching up a replica that just restarted. The wait
        // for one counts against the RPC's own time.
        let deadline = Instant::now() + option.hard_ttl();
        let mut api = self
            .api(deadline)
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let message = RaftMessage { json };
        let call = async {
            match rpc {
                "vote" => api.vote(message).await,
                "append_entries" => api.append_entries(message).await,
                _ => api.install_snapshot(message).await,
            }
        };
        let reply = match tokio::time::timeout_at(deadline.into(), call).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                if status.code() == tonic::Code::Unavailable
                    || status.code() == tonic::Code::Unknown
                {
                    self.drop_link();
                }
                let e = PeerError(format!(
                    "{rpc} to replica {}: {}",
                    self.target,
                    status.message()
                ));
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
            Err(_) => {
                // Slow, not broken: keep the connection.
                let e = PeerError(format!("{rpc} to replica {} timed out", self.target));
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.json)
            .map_err(|e| {
                RPCError::Network(NetworkError::new(&PeerError(format!(
                    "decoding the {rpc} reply: {e}"
                ))))
            })?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// The most bytes of entries (their JSON) one AppendEntries carries, unless its first entry alone is
/// larger (one entry is at most a SetManifest: MANIFEST.md, Limits). openraft 0.9 cancels an
/// AppendEntries after one heartbeat interval (50 ms) whatever the network's `RPCOption` says, so a
/// batch must be sent, decoded and flushed by the follower within it: a lagging follower is caught up
/// in many small batches rather than never by one large one.
pub const APPEND_BYTES: usize = 256 * 1024;

/// How many of `entries`, from the first, fit in `budget` bytes of JSON; `None` when all do or when
/// there is a single entry (which is sent whatever its size: it cannot be split).
pub fn entries_that_fit<T: Serialize>(entries: &[T], budget: usize) -> Option<u64> {
    if entries.len() < 2 {
        return None;
    }
    let mut total = 0;
    for (i, e) in entries.iter().enumerate() {
        let mut counter = ByteCounter(0);
        // Serializing into a counter cannot fail for these types; count an error as over budget.
        total += match serde_json::to_writer(&mut counter, e) {
            Ok(()) => counter.0,
            Err(_) => budget + 1,
        };
        if total > budget {
            return Some(i.max(1) as u64);
        }
    }
    None
}

/// An `io::Write` that only counts.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        // openraft retries at once with the first `n` entries (and keeps the hint for a few RPCs).
        if let Some(n) = entries_that_fit(&rpc.entries, APPEND_BYTES) {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(n),
            ));
        }
        if rpc.entries.is_empty() {
            return self.call("append_entries", &rpc, &option).await;
        }
        // Only RPCs that carry entries: the round trip a write waits for (heartbeats are not timed).
        let started = std::time::Instant::now();
        let answer = self.call("append_entries", &rpc, &option).await;
        crate::observe::global().commit_phase("replicate", started.elapsed());
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call("install_snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call("vote", &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use concord_attestation::{AcceptPolicy, AttestationError, DeploymentPin, Evidence};

    use super::*;

    /// Accepts no peer: these tests never get as far as evidence.
    #[derive(Debug)]
    struct AcceptsNone;

    impl AcceptPolicy for AcceptsNone {
        fn verify(
            &self,
            _: &Evidence,
            _: &[u8; 64],
        ) -> Result<concord_attestation::VerifiedReport, AttestationError> {
            Err(AttestationError::Malformed {
                what: "nothing is accepted here".into(),
            })
        }

        fn deployment_pin(&self) -> DeploymentPin {
            DeploymentPin::Any
        }
    }

    /// A peer port that accepts connections and counts them; `hold` keeps them open without a word
    /// (a dial that never ends), else each is closed at once (a dial that fails at once).
    async fn peer_port(hold: bool) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                if hold {
                    held.push(socket);
                }
            }
        });
        (addr, accepted)
    }

    fn client() -> Arc<AtlsClient> {
        Arc::new(AtlsClient::new(Arc::new(AcceptsNone), None).unwrap())
    }

    /// openraft retries a failed RPC at once: a peer whose dials fail must not be dialed again on
    /// every retry (hundreds of dials in 200 ms before `REDIAL_AFTER`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_whose_dials_fail_is_dialed_again_only_after_a_pause() {
        let (addr, accepted) = peer_port(false).await;
        let (links, client) = (Links::default(), client());
        let (start, mut calls) = (Instant::now(), 0);
        while start.elapsed() < Duration::from_millis(200) {
            let deadline = Instant::now() + Duration::from_millis(5);
            assert!(api_by(&links, &client, 1, &addr, deadline).await.is_err());
            calls += 1;
        }
        let dials = accepted.load(Ordering::SeqCst);
        let most = (200 / REDIAL_AFTER.as_millis() + 2) as usize;
        assert!(
            dials >= 2,
            "the peer was dialed again after a pause: {dials} dials"
        );
        assert!(
            dials <= most,
            "{dials} dials in 200 ms ({calls} RPCs); at most {most} expected"
        );
    }

    /// An RPC that finds a dial under way waits for it until its own deadline, instead of failing
    /// at once (and being retried at once), and starts no second dial.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_rpc_waits_for_a_dial_under_way_until_its_deadline() {
        let (addr, accepted) = peer_port(true).await;
        let (links, client) = (Links::default(), client());
        for _ in 0..3 {
            let started = Instant::now();
            let deadline = started + Duration::from_millis(60);
            let answer = api_by(&links, &client, 1, &addr, deadline).await;
            assert!(answer.is_err(), "the held dial never ends");
            assert!(
                started.elapsed() >= Duration::from_millis(55),
                "gave up after {:?}, before its deadline",
                started.elapsed()
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one dial, waited for");
    }

    #[test]
    fn a_batch_is_cut_where_the_bytes_run_out_but_one_entry_always_goes() {
        let entries: Vec<String> = (0..10).map(|_| "x".repeat(98)).collect(); // 100 bytes of JSON each
        assert_eq!(entries_that_fit(&entries, 10_000), None);
        assert_eq!(entries_that_fit(&entries, 350), Some(3));
        assert_eq!(entries_that_fit(&entries, 50), Some(1));
        assert_eq!(entries_that_fit(&entries[..1], 50), None);
        assert_eq!(entries_that_fit::<String>(&[], 50), None);
    }
}
