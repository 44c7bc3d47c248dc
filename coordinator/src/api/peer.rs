//! The peer API (port 7778) between coordinator replicas, over mutual aTLS checked by
//! [`super::PeerAcceptPolicy`]: openraft's RPCs, peer recovery, and writes forwarded to the leader.

use std::sync::Arc;
use std::time::Duration;

use concord_proto::v1 as pb;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::node::{Node, outcome_to_pb};
use super::status::to_status;
use crate::error::CoordinatorError;
use crate::hash::Hash;
use crate::state::{PeerSecrets, ReplicaState};
use crate::store::Store;

/// The peer API service.
#[derive(Debug)]
pub struct PeerService<S> {
    node: Arc<Node<S>>,
    /// Bounds the reports `SealKey` answers cost (one at a time, spaced).
    seal_evidence: super::sealing::SealEvidenceGate,
}

impl<S: Store> PeerService<S> {
    pub fn new(node: Arc<Node<S>>) -> PeerService<S> {
        PeerService {
            node,
            seal_evidence: super::sealing::SealEvidenceGate::default(),
        }
    }
}

impl<S: Store> PeerService<S> {
    /// Waits, for at most [`READY_WAIT`], until this replica is ready at `wanted`: a peer asks for the
    /// secrets of a transition as soon as it applied it, often before this replica (its maker, or a
    /// replica that is recovering them itself) has committed them. Waiting here saves the caller a
    /// round of retries; not being ready in time is answered as usual (recovering, or another latest).
    /// A caller that is behind (`wanted` is an earlier transition here) is answered at once.
    async fn ready_at(&self, wanted: Option<Hash>) {
        let Some(wanted) = wanted else { return };
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        loop {
            // Done waiting when ready at `wanted`, or when `wanted` is already behind this replica's
            // latest: the caller must catch up through Raft first, and waiting would only delay it.
            let done = self.node.refresh().await.is_ok()
                && self.node.replica.read().is_ok_and(|c| {
                    let chain = c.chain();
                    let at_wanted = chain.map(|c| c.latest_hash()) == Some(wanted);
                    let past_wanted =
                        !at_wanted && chain.is_some_and(|c| c.position(&wanted).is_some());
                    (at_wanted && c.state() == ReplicaState::Ready) || past_wanted
                });
            if done || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// How long a serving replica waits to become ready at the transition a recovering peer asks for.
const READY_WAIT: Duration = Duration::from_millis(500);

/// The transition a PeerRecover caller wants the secrets of: none, or a 32-byte hash.
pub(crate) fn wanted_latest(req: &pb::PeerRecoverRequest) -> Result<Option<Hash>, Status> {
    match req.latest.as_slice() {
        [] => Ok(None),
        bytes => Hash::from_slice(bytes)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("latest: not a transition hash: {e}"))),
    }
}

pub(crate) fn decode<T: DeserializeOwned>(m: &pb::RaftMessage) -> Result<T, Status> {
    serde_json::from_slice(&m.json)
        .map_err(|e| Status::invalid_argument(format!("not a Raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<pb::RaftMessage>, Status> {
    serde_json::to_vec(v)
        .map(|json| Response::new(pb::RaftMessage { json }))
        .map_err(|e| Status::internal(format!("cannot encode a Raft reply: {e}")))
}

/// The secrets as they travel to an attested peer.
/// The answer carrying the secrets. Its `seed` and `mesh_ca_key` copies are wiped by the codec once
/// tonic has encoded them (`concord_proto::wipe`); `s` itself wipes on drop.
pub(crate) fn secrets_to_pb(s: &PeerSecrets) -> pb::PeerRecoverResponse {
    pb::PeerRecoverResponse {
        seed: s.seed.to_vec(),
        salt: s.salt.to_vec(),
        mesh_ca_key: s.mesh_ca_key.to_vec(),
        latest: s.latest.as_bytes().to_vec(),
    }
}

pub(crate) fn secrets_from_pb(r: pb::PeerRecoverResponse) -> Result<PeerSecrets, CoordinatorError> {
    let bad =
        |what: &str| CoordinatorError::InvalidInput(format!("the peer sent a malformed {what}"));
    let seed = Zeroizing::new(<[u8; 32]>::try_from(r.seed.as_slice()).map_err(|_| bad("seed"))?);
    let mesh_ca_key = Zeroizing::new(
        <[u8; 32]>::try_from(r.mesh_ca_key.as_slice()).map_err(|_| bad("mesh CA key"))?,
    );
    let salt = <[u8; 32]>::try_from(r.salt.as_slice()).map_err(|_| bad("salt"))?;
    let latest = Hash::from_slice(&r.latest).map_err(|_| bad("latest transition"))?;
    // The response's own copies are dropped here; these are the only ones left.
    drop(Zeroizing::new(r.seed));
    drop(Zeroizing::new(r.mesh_ca_key));
    Ok(PeerSecrets {
        seed,
        salt,
        mesh_ca_key,
        latest,
    })
}

#[tonic::async_trait]
impl<S: Store> pb::peer_api_server::PeerApi for PeerService<S> {
    async fn append_entries(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let req: openraft::raft::AppendEntriesRequest<crate::raft::TypeConfig> =
            decode(request.get_ref())?;
        if req.entries.is_empty() {
            return encode(&self.node.raft.append_entries(req).await);
        }
        // The follower's share of the leader's `replicate`: the Raft core, the log append and its
        // sync, the reply's encoding. The rest of `replicate` is the network, TLS, gRPC and JSON.
        let started = std::time::Instant::now();
        let reply = encode(&self.node.raft.append_entries(req).await);
        crate::observe::global().commit_phase("peer_append", started.elapsed());
        reply
    }

    async fn vote(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        if self.node.is_joining() {
            return Err(Status::unavailable(
                "this replica started with an empty Raft state and does not vote until it has \
                 rejoined its cluster or joined its formation",
            ));
        }
        let req = decode(request.get_ref())?;
        encode(&self.node.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let req = decode(request.get_ref())?;
        encode(&self.node.raft.install_snapshot(req).await)
    }

    async fn recover(
        &self,
        request: Request<pb::PeerRecoverRequest>,
    ) -> Result<Response<pb::PeerRecoverResponse>, Status> {
        let peer = crate::transport::attested_peer(&request, "peer API")?;
        let policy = hex::encode(peer.report().host_data());
        let refuse = |e: &CoordinatorError| {
            warn!(rpc = "PeerRecover", %policy, error = %e, "refused");
            to_status(e)
        };
        // The connection may predate the latest manifest: its evidence must match the manifest now.
        if let Err(why) = self.node.links.reverify(&peer) {
            return Err(refuse(&CoordinatorError::PermissionDenied(format!(
                "the caller is not a coordinator of the latest manifest: {why}"
            ))));
        }
        let wanted = wanted_latest(request.get_ref())?;
        let waiting = tokio::time::Instant::now();
        self.ready_at(wanted).await;
        debug!(
            rpc = "PeerRecover",
            waited_ms = waiting.elapsed().as_millis() as u64,
            "ready for the caller's latest"
        );
        let secrets = self
            .node
            .replica
            .read()
            .and_then(|c| c.secrets_for_peer(peer.report()))
            .map_err(|e| refuse(&e))?;
        info!(rpc = "PeerRecover", %policy, latest = %secrets.latest, "secrets sent to an attested coordinator");
        Ok(Response::new(secrets_to_pb(&secrets)))
    }

    async fn peer_state(
        &self,
        _request: Request<pb::PeerStateRequest>,
    ) -> Result<Response<pb::PeerStateResponse>, Status> {
        self.node.refresh().await.map_err(|e| to_status(&e))?;
        let state = self.node.replica.read().map_err(|e| to_status(&e))?.state();
        let initialized = self
            .node
            .raft
            .is_initialized()
            .await
            .map_err(|e| Status::internal(format!("cannot read the Raft state: {e}")))?;
        let last_log_index = self.node.raft.metrics().borrow().last_log_index;
        Ok(Response::new(pb::PeerStateResponse {
            state: state.as_str().to_string(),
            initialized,
            last_log_index,
        }))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::SetMembersResponse>, Status> {
        let req = request.into_inner();
        let member = req
            .member
            .ok_or_else(|| Status::invalid_argument("member: missing"))?;
        let id = member.id;
        match self.node.join(member, req.nonce, req.forwarded).await {
            Ok(members) => {
                info!(rpc = "Join", member = id, "ok");
                Ok(Response::new(super::user::members_to_pb(&members)))
            }
            Err(status) => {
                warn!(rpc = "Join", member = id, code = ?status.code(), error = status.message(), "not done");
                Err(status)
            }
        }
    }

    async fn confirm_join(
        &self,
        request: Request<pb::ConfirmJoinRequest>,
    ) -> Result<Response<pb::ConfirmJoinResponse>, Status> {
        let confirmed = self.node.confirms_join(&request.get_ref().nonce);
        debug!(rpc = "ConfirmJoin", confirmed, "answered");
        Ok(Response::new(pb::ConfirmJoinResponse { confirmed }))
    }

    async fn seal_key(
        &self,
        request: Request<pb::SealKeyRequest>,
    ) -> Result<Response<pb::SealKeyResponse>, Status> {
        // The peer API admits only attested coordinators (PeerAcceptPolicy). The key is public; what
        // it is worth comes from the evidence that binds it to the caller's nonce (PROTOCOL.md §7.1),
        // made at most once per SEAL_EVIDENCE_GAP. Without a nonce: the key alone, no report.
        let public_key = self.node.seal_key.public_key();
        let nonce = match request.get_ref().nonce.as_slice() {
            [] => {
                return Ok(Response::new(pb::SealKeyResponse {
                    public_key: public_key.to_vec(),
                    ..Default::default()
                }));
            }
            n => <[u8; 32]>::try_from(n).map_err(|_| {
                Status::invalid_argument(format!("nonce: {} bytes, not 32 (or none)", n.len()))
            })?,
        };
        let deployment = concord_attestation::DeploymentSource::deployment(&*self.node.replica);
        let report_data = concord_mesh_ca::seal_key_report_data(&nonce, &public_key, &deployment.0);
        let evidence = self
            .seal_evidence
            .issue(self.node.replica.issuer.clone(), report_data)
            .await?;
        debug!(
            rpc = "SealKey",
            "answered the seal key with evidence that binds it"
        );
        Ok(Response::new(pb::SealKeyResponse {
            public_key: public_key.to_vec(),
            evidence: evidence.to_bytes(),
            deployment: deployment.0.to_vec(),
        }))
    }

    async fn forward_command(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let command: crate::raft::Command = decode(request.get_ref())?;
        if self.node.raft.current_leader().await != Some(self.node.id) {
            return Err(Status::unavailable("this replica is not the leader; retry"));
        }
        let written = self
            .node
            .raft
            .client_write(command)
            .await
            .map_err(|e| Status::unavailable(format!("the write did not commit: {e}")))?;
        encode(&(written.data, written.log_id.index))
    }

    async fn read_index(
        &self,
        _request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        if self.node.raft.current_leader().await != Some(self.node.id) {
            return Err(Status::unavailable("this replica is not the leader; retry"));
        }
        let deadline = tokio::time::Instant::now() + super::node::LEADER_WAIT;
        let index = self.node.confirmed_read_index(deadline).await?;
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }

    async fn forward_set_members(
        &self,
        request: Request<pb::SetMembersRequest>,
    ) -> Result<Response<pb::SetMembersResponse>, Status> {
        let members = self.node.set_members(request.into_inner(), true).await?;
        Ok(Response::new(super::user::members_to_pb(&members)))
    }

    async fn forward_set_manifest(
        &self,
        request: Request<pb::SetManifestRequest>,
    ) -> Result<Response<pb::SetManifestResponse>, Status> {
        let raw = request.into_inner();
        let req = super::user::decode_set(raw.clone())?;
        let out = self.node.set_manifest(raw, req, true).await?;
        info!(rpc = "ForwardSetManifest", index = out.transition.index, transition = %out.hash, "ok");
        Ok(Response::new(outcome_to_pb(&out)))
    }
}
