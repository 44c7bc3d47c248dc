//! The Raft network: openraft's RPCs to other replicas over the peer API (mutual aTLS). Each RPC carries
//! openraft's own serde JSON of the request, and the reply is the JSON of `Result<reply, RaftError>`.
//!
//! A connection is made lazily and dropped on any error, so a restarted peer is re-dialed (and
//! re-attested) on the next RPC.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

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
use tonic::transport::Channel;

use super::types::{NodeId, TypeConfig};
use crate::transport::connect;

/// Makes a [`PeerConnection`] per target replica. Connections are shared by all of them and dialed in
/// the background: openraft bounds each RPC by the heartbeat interval, and an aTLS handshake (evidence
/// made and checked on both sides) can take longer than that, so no RPC ever waits for one.
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    client: Arc<AtlsClient>,
    /// This replica's own view of where its peers listen (its `--peer` list).
    local: Arc<BTreeMap<NodeId, String>>,
    links: Arc<Mutex<HashMap<NodeId, Link>>>,
}

/// The state of the connection to one peer.
#[derive(Debug, Clone)]
enum Link {
    Up(PeerApiClient<Channel>),
    Dialing,
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

/// The live connection to `target`, or an error while one is being dialed in the background (a dial
/// is started if none is under way).
fn link(
    links: &Arc<Mutex<HashMap<NodeId, Link>>>,
    client: &Arc<AtlsClient>,
    target: NodeId,
    addr: &str,
) -> Result<PeerApiClient<Channel>, PeerError> {
    let mut map = links
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match map.get(&target) {
        Some(Link::Up(api)) => return Ok(api.clone()),
        Some(Link::Dialing) => {
            return Err(PeerError(format!("still connecting to replica {target}")));
        }
        None => {}
    }
    map.insert(target, Link::Dialing);
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
                links.remove(&target);
            }
        }
    });
    Err(PeerError(format!("connecting to replica {target}")))
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
    links: Arc<Mutex<HashMap<NodeId, Link>>>,
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

    /// The live connection, or an error while one is being dialed in the background.
    fn api(&self) -> Result<PeerApiClient<Channel>, PeerError> {
        link(&self.links, &self.client, self.target, &self.addr)
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
        // unreachable peers, which would delay catching up a replica that just restarted.
        let mut api = self
            .api()
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let message = RaftMessage { json };
        let call = async {
            match rpc {
                "vote" => api.vote(message).await,
                "append_entries" => api.append_entries(message).await,
                _ => api.install_snapshot(message).await,
            }
        };
        let reply = match tokio::time::timeout(option.hard_ttl(), call).await {
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
    use super::*;

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
