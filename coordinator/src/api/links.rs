//! Attested connections to the other replicas, kept open and shared by every call this replica makes
//! to a peer outside Raft: forwarded writes, read indexes, membership changes, peer recovery.
//!
//! An aTLS handshake makes and checks evidence on both sides, which costs more than the call it
//! carries; a connection is dialed once per peer and address and reused until a call fails at the
//! transport, then dialed again. A kept connection was accepted under the policy of its handshake:
//! callers that hand a peer something new (secrets) check its evidence again under the policy as it is
//! now ([`VerifiedPeer::reverify`]). This module must never skip that for a caller: it only caches.
//!
//! With each link it caches the peer process's seal key (PeerApi `SealKey`) with the fresh evidence
//! that binds it to this replica's nonce ([`PeerLinks::seal_key`], `api::sealing`): the leader seals
//! new mesh CA keys to it (`state::sealed`) if that evidence, not the link's, matches the manifest.
//! Evidence is asked for only when the link is new or has no key; afterwards a bare `SealKey` (no
//! nonce, no report made) only checks that the key is unchanged. A redial forgets it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use concord_attestation::{AcceptPolicy, AtlsClient, VerifiedPeer};
use concord_proto::v1 as pb;
use concord_proto::v1::peer_api_client::PeerApiClient;
use tonic::Status;
use tonic::transport::Channel;
use tracing::warn;

use super::sealing::SealKeyEvidence;
use crate::raft::NodeId;
use crate::transport::connect;

/// The open connections, by peer.
pub struct PeerLinks {
    client: Arc<AtlsClient>,
    policy: Arc<dyn AcceptPolicy>,
    links: Mutex<HashMap<NodeId, Link>>,
    /// Counts dials, so a seal key asked on one connection is never cached on a later one.
    dials: std::sync::atomic::AtomicU64,
    /// Peers that last answered `SealKey` with Unimplemented (an older build, which would refuse
    /// to decode a Raft entry that carries sealed copies).
    without_sealing: Mutex<std::collections::HashSet<NodeId>>,
}

#[derive(Clone)]
struct Link {
    addr: String,
    api: PeerApiClient<Channel>,
    peer: VerifiedPeer,
    /// Which dial made this connection.
    dial: u64,
    /// The peer process's seal key with the evidence that binds it, once asked on this connection.
    seal: Option<Arc<SealKeyEvidence>>,
    /// The last time this connection's evidence was checked for sealing, and under which policy
    /// (`Coordinators::fingerprint` in `node.rs`): a check younger than [`SEAL_VERDICT_TTL`] under
    /// the same policy is not repeated on the commit path.
    seal_verdict: Option<([u8; 32], std::time::Instant)>,
}

/// How long a check of a link's evidence for sealing stands (under an unchanged policy).
pub const SEAL_VERDICT_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// A peer the leader may seal a mesh CA key to: its id and its seal key with the evidence that binds
/// it (to check under the manifest the key will serve).
#[derive(Debug, Clone)]
pub struct SealTarget {
    pub id: NodeId,
    pub sealing: Arc<SealKeyEvidence>,
    /// Which dial made the link (to record a verdict on that connection only).
    pub dial: u64,
    /// The policy fingerprint this link's evidence was accepted under within [`SEAL_VERDICT_TTL`].
    pub verdict: Option<[u8; 32]>,
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
            dials: std::sync::atomic::AtomicU64::new(0),
            without_sealing: Mutex::new(std::collections::HashSet::new()),
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
        self.link(id, addr).await.map(|l| (l.api, l.peer))
    }

    async fn link(&self, id: NodeId, addr: &str) -> Result<Link, Status> {
        if let Some(link) = self.lock().get(&id).filter(|l| l.addr == addr).cloned() {
            return Ok(link);
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
            dial: self
                .dials
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            seal: None,
            seal_verdict: None,
        };
        self.lock().insert(id, link.clone());
        Ok(link)
    }

    /// Replica `id`'s seal key, learned on the link (dialed if need be) within `within` and cached
    /// with it. On a link without a key, the request carries a fresh nonce and the answer's evidence
    /// must bind the key, the nonce and the deployment and pass the peer admission policy, or it is
    /// refused (PermissionDenied) and nothing is cached. On a link with one, a bare request (no
    /// evidence made) checks that it is unchanged. `Ok(None)`: the peer offers none (an older
    /// build), or its key changed under the same link (tonic reconnected to a restarted process):
    /// the link is then forgotten, to be dialed, attested and asked afresh on the next call.
    pub async fn seal_key(
        &self,
        id: NodeId,
        addr: &str,
        within: std::time::Duration,
    ) -> Result<Option<[u8; 32]>, Status> {
        let ask = async {
            let link = self.link(id, addr).await?;
            let nonce = match &link.seal {
                Some(_) => None,
                None => Some(rand::random::<[u8; 32]>()),
            };
            let request = pb::SealKeyRequest {
                nonce: nonce.map(|n| n.to_vec()).unwrap_or_default(),
            };
            let answer = match link.api.clone().seal_key(request).await {
                Ok(a) => a.into_inner(),
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    self.sealing_support(id, false);
                    return Ok(None);
                }
                Err(s) => {
                    if is_transport(&s) {
                        self.forget(id);
                    }
                    return Err(s);
                }
            };
            self.sealing_support(id, true);
            let Some(nonce) = nonce else {
                // A key is bound on this link: the answer only says whether it is still the one.
                let unchanged = link
                    .seal
                    .as_ref()
                    .filter(|s| answer.public_key.as_slice() == s.key().as_slice());
                return match unchanged {
                    Some(s) => Ok(Some(s.key())),
                    None => {
                        self.forget(id);
                        Ok(None)
                    }
                };
            };
            let policy = self.policy.clone();
            let accepted = tokio::task::spawn_blocking(move || {
                SealKeyEvidence::accept(policy.as_ref(), &nonce, &answer)
            })
            .await
            .map_err(|e| Status::internal(format!("the seal key check failed: {e}")))?;
            let sealing = match accepted {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    warn!(peer = id, error = %e, "refused a seal key whose evidence does not bind it to this replica's nonce or does not pass the peer policy; no mesh CA key is sealed to it");
                    return Err(Status::permission_denied(format!(
                        "replica {id} answered a seal key its evidence does not bind: {e}"
                    )));
                }
            };
            let key = sealing.key();
            if let Some(l) = self.lock().get_mut(&id).filter(|l| l.dial == link.dial) {
                l.seal = Some(sealing);
            }
            Ok(Some(key))
        };
        tokio::time::timeout(within, ask).await.map_err(|_| {
            Status::deadline_exceeded(format!(
                "replica {id} did not answer its seal key within {within:?}"
            ))
        })?
    }

    fn sealing_support(&self, id: NodeId, supported: bool) {
        let mut set = self
            .without_sealing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if supported {
            set.remove(&id);
        } else {
            set.insert(id);
        }
    }

    /// Whether one of `ids` last said it does not know sealed copies (an older build): a leader then
    /// writes entries without them, which every build decodes.
    pub fn any_without_sealing(&self, ids: &[NodeId]) -> bool {
        let set = self
            .without_sealing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ids.iter().any(|id| set.contains(id))
    }

    /// The peers among `ids` whose seal key is cached with a live link: no I/O, for the commit path.
    pub fn seal_targets(&self, ids: impl IntoIterator<Item = NodeId>) -> Vec<SealTarget> {
        let links = self.lock();
        ids.into_iter()
            .filter_map(|id| {
                let l = links.get(&id)?;
                Some(SealTarget {
                    id,
                    sealing: l.seal.clone()?,
                    dial: l.dial,
                    verdict: l
                        .seal_verdict
                        .filter(|(_, at)| at.elapsed() < SEAL_VERDICT_TTL)
                        .map(|(f, _)| f),
                })
            })
            .collect()
    }

    /// Records that the evidence of the link to `id` made by `dial` was accepted for sealing under
    /// the policy `fingerprint` just now.
    pub fn record_seal_verdict(&self, id: NodeId, dial: u64, fingerprint: [u8; 32]) {
        if let Some(l) = self.lock().get_mut(&id).filter(|l| l.dial == dial) {
            l.seal_verdict = Some((fingerprint, std::time::Instant::now()));
        }
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
