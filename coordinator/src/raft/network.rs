//! The Raft network: openraft's RPCs to other replicas over the peer API (mutual aTLS). Each RPC carries
//! openraft's own serde JSON of the request, and the reply is the JSON of `Result<reply, RaftError>`.
//!
//! A connection is made lazily and dropped on any error, so a restarted peer is re-dialed (and
//! re-attested) on the next RPC.

use std::sync::Arc;

use concord_attestation::AtlsClient;
use concord_proto::v1::RaftMessage;
use concord_proto::v1::peer_api_client::PeerApiClient;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
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

/// Makes a [`PeerConnection`] per target replica.
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    client: Arc<AtlsClient>,
}

impl PeerNetwork {
    /// `client` attests this replica and verifies peers with the peer admission policy.
    pub fn new(client: Arc<AtlsClient>) -> PeerNetwork {
        PeerNetwork { client }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            target,
            addr: node.addr.clone(),
            client: self.client.clone(),
            api: None,
        }
    }
}

/// The connection to one peer.
#[derive(Debug)]
pub struct PeerConnection {
    target: NodeId,
    addr: String,
    client: Arc<AtlsClient>,
    api: Option<PeerApiClient<Channel>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PeerError(String);

type Rpc<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerConnection {
    async fn api(&mut self) -> Result<PeerApiClient<Channel>, PeerError> {
        if let Some(api) = &self.api {
            return Ok(api.clone());
        }
        let (channel, _) = connect(&self.addr, self.client.clone())
            .await
            .map_err(|e| PeerError(e.to_string()))?;
        let api = PeerApiClient::new(channel);
        self.api = Some(api.clone());
        Ok(api)
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
        let mut api = self
            .api()
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
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
                self.api = None;
                let e = PeerError(format!(
                    "{rpc} to replica {}: {}",
                    self.target,
                    status.message()
                ));
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
            Err(_) => {
                self.api = None;
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

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call("append_entries", &rpc, &option).await
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
