//! Attested connections to the other replicas, kept open and shared by every call this replica makes
//! to a peer outside Raft: forwarded writes, read indexes, membership changes, peer recovery.
//!
//! An aTLS handshake makes and checks evidence on both sides, which costs more than the call it
//! carries; a connection is dialed once per peer and address and reused until a call fails at the
//! transport, then dialed again. A kept connection was accepted under the policy of its handshake:
//! callers that hand a peer something new (secrets) check its evidence again under the policy as it is
//! now ([`VerifiedPeer::reverify`]). This module must never skip that for a caller: it only caches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use concord_attestation::{AcceptPolicy, AtlsClient, VerifiedPeer};
use concord_proto::v1::peer_api_client::PeerApiClient;
use tonic::Status;
use tonic::transport::Channel;

use crate::raft::NodeId;
use crate::transport::connect;

/// The open connections, by peer.
pub struct PeerLinks {
    client: Arc<AtlsClient>,
    policy: Arc<dyn AcceptPolicy>,
    links: Mutex<HashMap<NodeId, Link>>,
}

#[derive(Clone)]
struct Link {
    addr: String,
    api: PeerApiClient<Channel>,
    peer: VerifiedPeer,
}

impl std::fmt::Debug for PeerLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLinks").finish_non_exhaustive()
    }
}

impl PeerLinks {
    /// `client` dials and attests; `policy` is the one its server checks were made with, for
    /// [`reverify`](Self::reverify).
    pub fn new(client: Arc<AtlsClient>, policy: Arc<dyn AcceptPolicy>) -> PeerLinks {
        PeerLinks {
            client,
            policy,
            links: Mutex::new(HashMap::new()),
        }
    }

    /// The client that attests this replica to its peers.
    pub fn client(&self) -> &Arc<AtlsClient> {
        &self.client
    }

    /// Checks `peer`'s evidence again under the peer admission policy as it is now.
    pub fn reverify(&self, peer: &VerifiedPeer) -> Result<(), String> {
        peer.reverify(self.policy.as_ref())
            .map(drop)
            .map_err(|e| format!("its evidence no longer matches: {e}"))
    }

    /// The connection to replica `id` at `addr`, dialed if there is none to that address.
    pub async fn get(
        &self,
        id: NodeId,
        addr: &str,
    ) -> Result<(PeerApiClient<Channel>, VerifiedPeer), Status> {
        if let Some(link) = self.lock().get(&id).filter(|l| l.addr == addr).cloned() {
            return Ok((link.api, link.peer));
        }
        let (channel, peer) = connect(addr, self.client.clone()).await.map_err(|e| {
            Status::unavailable(format!("cannot reach replica {id} at {addr}: {e}"))
        })?;
        let link = Link {
            addr: addr.to_owned(),
            api: PeerApiClient::new(channel)
                .max_decoding_message_size(concord_proto::limits::PEER_API_MESSAGE_BYTES)
                .max_encoding_message_size(concord_proto::limits::PEER_API_MESSAGE_BYTES),
            peer,
        };
        self.lock().insert(id, link.clone());
        Ok((link.api, link.peer))
    }

    /// Forgets the connection to `id` after a transport failure, so the next call dials again.
    pub fn forget(&self, id: NodeId) {
        self.lock().remove(&id);
    }

    /// Runs `rpc` on the connection to replica `id` at `addr`. A failure that may be the connection's
    /// (Unavailable, or tonic's Unknown "transport error") forgets it.
    pub async fn call<T, F, Fut>(&self, id: NodeId, addr: &str, rpc: F) -> Result<T, Status>
    where
        F: FnOnce(PeerApiClient<Channel>, VerifiedPeer) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let (api, peer) = self.get(id, addr).await?;
        match rpc(api, peer).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => {
                if is_transport(&s) {
                    self.forget(id);
                }
                Err(s)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Link>> {
        // Single inserts and removes: a panic while holding the map cannot leave it inconsistent.
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether a failed call may be the connection's fault rather than the peer's answer.
pub fn is_transport(s: &Status) -> bool {
    s.code() == tonic::Code::Unavailable
        || (s.code() == tonic::Code::Unknown && s.message().contains("transport error"))
}
