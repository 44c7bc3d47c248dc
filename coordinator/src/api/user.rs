//! The user API (port 1313): SetManifest, GetManifests, GetHistory.

use std::sync::Arc;

use concord_mesh_ca::{RecoveryKey, ShareSubmission};
use concord_proto::v1 as pb;
use ed25519_dalek::{Signature, VerifyingKey};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};
use zeroize::Zeroize as _;

use super::node::Node;
use super::refusals::RefusalLimiter;
use super::replica::Replica;
use super::status::to_status;
use crate::error::CoordinatorError;
use crate::hash::Hash;
use crate::history::Transition;
use crate::state::{FinishedBundle, ManifestsView, SetRequest};
use crate::store::Store;
use concord_proto::limits;

/// The user API service.
#[derive(Debug)]
pub struct UserService<S> {
    node: Arc<Node<S>>,
    replica: Arc<Replica<S>>,
    /// This process's key for seed share submissions: random, in memory only, new at every start.
    recovery_key: RecoveryKey,
    /// Refused `Recover` calls per source address.
    refusals: RefusalLimiter,
    /// Audit bundles being built at once. Anyone may ask for one, and one holds the whole history
    /// (tens of MB for a long one) plus a fresh report: without this bound, the connection limits
    /// alone would let callers hold thousands of copies.
    bundles: Arc<tokio::sync::Semaphore>,
    /// Witness cosignatures of the latest checkpoint (PROTOCOL.md §15.5), collected after each write
    /// this replica handles and on GetCheckpoint.
    cosignatures: Arc<crate::witness::client::Cosignatures>,
}

/// How many audit bundles a replica builds at the same time; more callers wait their turn.
const CONCURRENT_BUNDLES: usize = 2;

impl<S: Store> UserService<S> {
    /// Fails only if the OS CSPRNG fails (the recovery key is drawn here).
    pub fn new(node: Arc<Node<S>>) -> Result<UserService<S>, concord_mesh_ca::MeshCaError> {
        let replica = node.replica.clone();
        Ok(UserService {
            node,
            replica,
            recovery_key: RecoveryKey::generate()?,
            refusals: RefusalLimiter::new(),
            bundles: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_BUNDLES)),
            cosignatures: Arc::default(),
        })
    }
}

/// The sealed share of a `Recover` request. A request with a plaintext share (an older `concord`)
/// is refused, and the share is wiped at once.
pub(crate) fn decode_submission(req: &mut pb::RecoverRequest) -> Result<ShareSubmission, Status> {
    if !req.legacy_plaintext_share.is_empty() {
        req.legacy_plaintext_share.zeroize();
        return Err(invalid(
            "the share was sent in plaintext, which does not prove which owner sent it: this concord \
             is older than the coordinator. Update concord and run `concord recover` again (share \
             files and keys stay valid)",
        ));
    }
    let sealed = req.sealed.as_ref().ok_or_else(|| {
        invalid("sealed: missing; run `concord recover` with your share file and key")
    })?;
    let owner_public_key = <[u8; 32]>::try_from(sealed.owner_public_key.as_slice())
        .map_err(|_| invalid("sealed.owner_public_key: an X25519 public key is 32 bytes"))?;
    Ok(ShareSubmission {
        owner_public_key,
        encapsulated_key: sealed.encapsulated_key.clone(),
        ciphertext: sealed.ciphertext.clone(),
    })
}

fn invalid(msg: impl Into<String>) -> Status {
    to_status(&CoordinatorError::InvalidInput(msg.into()))
}

pub(crate) fn decode_set(req: pb::SetManifestRequest) -> Result<SetRequest, Status> {
    let expected_previous = if req.expected_previous.is_empty() {
        Hash::ZERO
    } else {
        Hash::from_slice(&req.expected_previous)
            .map_err(|e| invalid(format!("expected_previous: {e}")))?
    };
    let owner = match (req.owner_key.is_empty(), req.owner_signature.is_empty()) {
        (true, true) => None,
        (false, false) => {
            let key = <[u8; 32]>::try_from(req.owner_key.as_slice())
                .ok()
                .and_then(|k| VerifyingKey::from_bytes(&k).ok())
                .ok_or_else(|| invalid("owner_key: not a 32-byte Ed25519 public key"))?;
            let sig = <[u8; 64]>::try_from(req.owner_signature.as_slice())
                .map_err(|_| invalid("owner_signature: an Ed25519 signature is 64 bytes"))?;
            Some((key, Signature::from_bytes(&sig)))
        }
        _ => {
            return Err(invalid(
                "owner_key and owner_signature come together or not at all",
            ));
        }
    };
    Ok(SetRequest {
        manifest: req.manifest,
        policies: req.policies,
        expected_previous,
        owner,
    })
}

/// The nonce of a GetHistory request: exactly 32 bytes.
pub(crate) fn history_nonce(req: &pb::GetHistoryRequest) -> Result<[u8; 32], Status> {
    <[u8; 32]>::try_from(req.nonce.as_slice())
        .map_err(|_| invalid("nonce: 32 random bytes are required"))
}

pub(crate) fn transition_to_pb(t: &Transition) -> pb::Transition {
    pb::Transition {
        index: t.index,
        manifest_hash: t.manifest_hash.as_bytes().to_vec(),
        previous: t.previous.as_bytes().to_vec(),
        hash: t.hash().as_bytes().to_vec(),
        signature: t.signature.to_bytes().to_vec(),
        owner_key: t
            .owner
            .as_ref()
            .map(|o| o.key.as_bytes().to_vec())
            .unwrap_or_default(),
        owner_signature: t
            .owner
            .as_ref()
            .map(|o| o.signature.to_bytes().to_vec())
            .unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl<S: Store> pb::user_api_server::UserApi for UserService<S> {
    async fn set_manifest(
        &self,
        request: Request<pb::SetManifestRequest>,
    ) -> Result<Response<pb::SetManifestResponse>, Status> {
        let raw = request.into_inner();
        let req = decode_set(raw.clone()).inspect_err(|s| {
            warn!(rpc = "SetManifest", code = ?s.code(), error = s.message(), "rejected");
        })?;
        match self.node.set_manifest(raw, req, false).await {
            Ok(out) => {
                info!(
                    rpc = "SetManifest",
                    index = out.transition.index,
                    transition = %out.hash,
                    manifest = %out.transition.manifest_hash,
                    unchanged = out.unchanged,
                    "ok"
                );
                // Every transition gets its cosignatures asked for at once, without making the
                // writer wait for witnesses (bounded per witness; GetCheckpoint asks again). Without
                // witnesses there is nobody to ask, and no checkpoint is signed.
                if self.replica.may_name_witnesses() {
                    let (replica, cosignatures) = (self.replica.clone(), self.cosignatures.clone());
                    tokio::spawn(async move {
                        let _ = cosigned_checkpoint(replica, cosignatures).await;
                    });
                }
                Ok(Response::new(super::node::outcome_to_pb(&out)))
            }
            Err(status) => {
                warn!(rpc = "SetManifest", code = ?status.code(), error = status.message(), "rejected");
                Err(status)
            }
        }
    }

    async fn get_manifests(
        &self,
        request: Request<pb::GetManifestsRequest>,
    ) -> Result<Response<pb::GetManifestsResponse>, Status> {
        let view = self.manifests_view(request.get_ref()).await?;
        let bytes: usize = (view.manifests.iter().chain(&view.policies))
            .map(Vec::len)
            .sum();
        one_message(
            "GetManifests",
            "the manifests and policy documents",
            bytes,
            "StreamManifests",
        )?;
        info!(rpc = "GetManifests", manifests = view.manifests.len(), "ok");
        Ok(Response::new(view_to_pb(view)))
    }

    async fn get_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        let (bundle, turn) = self.history_bundle(request.get_ref(), "GetHistory").await?;
        let transitions = bundle.transitions();
        // Written into a buffer that refuses to grow past one message: a long history is refused
        // after one message's worth of work and memory, not after the whole bundle.
        let limit = limits::USER_API_MESSAGE_BYTES - ONE_MESSAGE_HEADROOM;
        let written = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let mut out = BoundedBuffer {
                bytes: Vec::new(),
                limit,
                over: false,
            };
            match bundle.write_json(&mut out) {
                Ok(()) => Ok(Some(out.bytes)),
                Err(_) if out.over => Ok(None),
                Err(e) => Err(CoordinatorError::Ledger(
                    crate::history::LedgerError::Corrupt(e),
                )),
            }
        })
        .await
        .map_err(|e| Status::internal(format!("the bundle task failed: {e}")))?
        .map_err(|e| {
            let s = to_status(&e);
            warn!(rpc = "GetHistory", code = ?s.code(), error = %e, "rejected");
            s
        })?;
        let Some(bundle) = written else {
            let s = Status::resource_exhausted(format!(
                "the audit bundle and its evidence take more than the {} bytes one GetHistory message \
                 may carry; use StreamHistory (`concord verify` uses it)",
                limits::USER_API_MESSAGE_BYTES
            ));
            warn!(rpc = "GetHistory", code = ?s.code(), error = s.message(), "rejected");
            return Err(s);
        };
        info!(rpc = "GetHistory", transitions, bytes = bundle.len(), "ok");
        Ok(Response::new(pb::GetHistoryResponse { bundle }))
    }

    type StreamHistoryStream = Pieces<pb::GetHistoryResponse>;

    async fn stream_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<Self::StreamHistoryStream>, Status> {
        let (bundle, turn) = self
            .history_bundle(request.get_ref(), "StreamHistory")
            .await?;
        let transitions = bundle.transitions();
        // Written as it is sent: one piece at a time leaves this replica, and the bundle is read
        // from the store as it goes, so a long history costs a piece and a manifest of memory.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let mut out = PieceWriter {
                tx,
                runtime,
                piece: Vec::with_capacity(limits::STREAM_PIECE_BYTES),
                sent: 0,
                gone: false,
            };
            let result = bundle.write_json(&mut out).and_then(|()| out.send_piece());
            match result {
                Ok(()) => info!(rpc = "StreamHistory", transitions, bytes = out.sent, "ok"),
                Err(_) if out.gone => {
                    debug!(
                        rpc = "StreamHistory",
                        sent = out.sent,
                        "the caller stopped reading"
                    )
                }
                Err(e) => {
                    warn!(rpc = "StreamHistory", error = %e, "failed");
                    let status = Status::internal(format!(
                        "the history could not be read from this replica's store: {e}; ask another replica"
                    ));
                    let _ = out.runtime.block_on(out.tx.send(Err(status)));
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type StreamManifestsStream = Pieces<pb::GetManifestsResponse>;

    async fn stream_manifests(
        &self,
        request: Request<pb::GetManifestsRequest>,
    ) -> Result<Response<Self::StreamManifestsStream>, Status> {
        let req = request.get_ref();
        if req.only_latest {
            let view = self.manifests_view(req).await?;
            let pieces = manifest_pieces(view, limits::STREAM_PIECE_BYTES);
            return Ok(Response::new(Box::pin(tokio_stream::iter(
                pieces.into_iter().map(Ok),
            ))));
        }
        self.read_after(req).await?;
        let replica = self.replica.clone();
        let (view, count, mut reader) = tokio::task::spawn_blocking(move || {
            replica.read().and_then(|core| core.manifests_on_demand())
        })
        .await
        .map_err(|e| Status::internal(format!("the read task failed: {e}")))?
        .map_err(|e| {
            let s = to_status(&e);
            warn!(rpc = "StreamManifests", code = ?s.code(), error = %e, "rejected");
            s
        })?;
        // Read from the store and sent one piece at a time: a long history costs a piece of memory.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let send = |piece: pb::GetManifestsResponse| {
                let send = tokio::time::timeout(PIECE_SEND_TIMEOUT, tx.send(Ok(piece)));
                match runtime.block_on(send) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) | Err(_) => Err(None),
                }
            };
            let items = (0..count)
                .map(|i| reader(i).map(|m| (true, m)).map_err(Some))
                .chain(view.policies.clone().into_iter().map(|p| Ok((false, p))));
            let head = pb::GetManifestsResponse {
                manifests: Vec::new(),
                policies: Vec::new(),
                root_ca: view.root_ca_pem.clone(),
                mesh_ca: view.mesh_ca_pem.clone(),
                latest: view.latest.as_ref().map(|(t, _)| transition_to_pb(t)),
            };
            match write_pieces(head, items, limits::STREAM_PIECE_BYTES, send) {
                Ok(()) => info!(rpc = "StreamManifests", manifests = count, "ok"),
                Err(None) => debug!(rpc = "StreamManifests", "the caller stopped reading"),
                Err(Some(e)) => {
                    warn!(rpc = "StreamManifests", error = %e, "failed");
                    let status = Status::internal(format!(
                        "the history could not be read from this replica's store: {e}; ask another replica"
                    ));
                    let _ = runtime.block_on(tx.send(Err(status)));
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn recover(
        &self,
        request: Request<pb::RecoverRequest>,
    ) -> Result<Response<pb::RecoverResponse>, Status> {
        let source = request
            .extensions()
            .get::<crate::transport::PeerInfo>()
            .map(|p| p.remote.ip());
        if let Some(ip) = source
            && let Err(wait) = self.refusals.admits(ip, std::time::Instant::now())
        {
            debug!(rpc = "Recover", %ip, "throttled");
            return Err(Status::resource_exhausted(format!(
                "too many refused seed share submissions from {ip}; wait {} s and try again",
                wait.as_secs().max(1)
            )));
        }
        let mut req = request.into_inner();
        let optional_hash = |name: &str, bytes: &[u8]| {
            if bytes.is_empty() {
                Ok(None)
            } else {
                Hash::from_slice(bytes)
                    .map(Some)
                    .map_err(|e| invalid(format!("{name}: {e}")))
            }
        };
        // The share inside is sealed to this process's recovery key; the plaintext lives only in
        // the core's zeroizing types.
        let result = match (
            decode_submission(&mut req),
            optional_hash("expected_latest", &req.expected_latest),
            optional_hash("since", &req.since),
        ) {
            (Ok(sub), Ok(exactly), Ok(since)) => {
                let known = crate::state::KnownLatest { exactly, since };
                self.node
                    .recover_with_submission(&self.recovery_key, &sub, req.force, known)
                    .await
            }
            (Err(status), _, _) | (_, Err(status), _) | (_, _, Err(status)) => Err(status),
        };
        match result {
            Ok((index, p)) => {
                info!(
                    rpc = "Recover",
                    share_index = index,
                    received = p.shares_received,
                    threshold = p.threshold,
                    ready = p.ready,
                    "ok"
                );
                let latest = self
                    .node
                    .replica
                    .read()
                    .ok()
                    .and_then(|c| c.chain().map(|ch| transition_to_pb(ch.latest_transition())));
                Ok(Response::new(pb::RecoverResponse {
                    shares_received: p.shares_received,
                    threshold: p.threshold,
                    ready: p.ready,
                    latest,
                }))
            }
            Err(status) => {
                // Bad input and failed authentication count against the source; "nothing to
                // recover" or "a peer is ready" (what owners meet in normal operation) do not.
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
                ) && let Some(ip) = source
                {
                    self.refusals.charge(ip, std::time::Instant::now());
                }
                warn!(rpc = "Recover", code = ?status.code(), error = status.message(), "rejected");
                Err(status)
            }
        }
    }

    async fn get_recovery_key(
        &self,
        _request: Request<pb::GetRecoveryKeyRequest>,
    ) -> Result<Response<pb::GetRecoveryKeyResponse>, Status> {
        Ok(Response::new(pb::GetRecoveryKeyResponse {
            recovery_key: self.recovery_key.public_key().to_vec(),
        }))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        self.node.refresh().await.map_err(|e| to_status(&e))?;
        let metrics = self.node.raft.metrics().borrow().clone();
        let core = self.replica.read().map_err(|e| to_status(&e))?;
        let role = match metrics.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Shutdown => "shutdown",
        };
        Ok(Response::new(pb::GetStatusResponse {
            node_id: self.node.id,
            state: core.state().as_str().to_string(),
            role: role.to_string(),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            last_applied: metrics.last_applied.map_or(0, |l| l.index),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            transitions: core.chain().map_or(0, |c| c.len() as u64),
            latest: core
                .chain()
                .map(|c| c.latest_hash().as_bytes().to_vec())
                .unwrap_or_default(),
            membership_index: crate::raft::membership_index(&metrics.membership_config),
        }))
    }

    async fn get_checkpoint(
        &self,
        request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::GetCheckpointResponse>, Status> {
        self.node.linearize(request.get_ref().allow_stale).await?;
        let (note, key) = cosigned_checkpoint(self.replica.clone(), self.cosignatures.clone())
            .await
            .map_err(|e| {
                let s = to_status(&e);
                warn!(rpc = "GetCheckpoint", code = ?s.code(), error = %e, "rejected");
                s
            })?;
        Ok(Response::new(pb::GetCheckpointResponse {
            checkpoint: note.encode(),
            checkpoint_key: key.as_bytes().to_vec(),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::ProofResponse>, Status> {
        let r = request.into_inner();
        let (leaf, proof) = self
            .read_core("GetInclusionProof", r.allow_stale, move |c| {
                c.inclusion_proof(r.index, r.size)
            })
            .await?;
        Ok(Response::new(pb::ProofResponse {
            hashes: proof.iter().map(|h| h.as_bytes().to_vec()).collect(),
            leaf: leaf.as_bytes().to_vec(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ProofResponse>, Status> {
        let r = request.into_inner();
        let proof = self
            .read_core("GetConsistencyProof", r.allow_stale, move |c| {
                c.consistency_proof(r.old_size, r.new_size)
            })
            .await?;
        Ok(Response::new(pb::ProofResponse {
            hashes: proof.iter().map(|h| h.as_bytes().to_vec()).collect(),
            leaf: Vec::new(),
        }))
    }

    async fn set_members(
        &self,
        request: Request<pb::SetMembersRequest>,
    ) -> Result<Response<pb::SetMembersResponse>, Status> {
        match self.node.set_members(request.into_inner(), false).await {
            Ok(members) => {
                info!(rpc = "SetMembers", members = members.len(), "ok");
                Ok(Response::new(members_to_pb(&members)))
            }
            Err(status) => {
                warn!(rpc = "SetMembers", code = ?status.code(), error = status.message(), "rejected");
                Err(status)
            }
        }
    }
}

/// Refuses, with a message that names the streaming RPC, an answer that one user API message cannot
/// carry (tonic would refuse it too, with less to go on).
fn one_message(rpc: &str, what: &str, bytes: usize, instead: &str) -> Result<(), Status> {
    // Room for the CA certificates, the latest transition and the framing.
    const HEADROOM: usize = 64 * 1024;
    if bytes + HEADROOM <= limits::USER_API_MESSAGE_BYTES {
        return Ok(());
    }
    let s = Status::resource_exhausted(format!(
        "{what} take {bytes} bytes, more than the {} one {rpc} message may carry; use {instead}",
        limits::USER_API_MESSAGE_BYTES
    ));
    warn!(rpc, code = ?s.code(), error = s.message(), "rejected");
    Err(s)
}

/// Room in one message for what is not the bundle (framing).
const ONE_MESSAGE_HEADROOM: usize = 64 * 1024;

/// A buffer that refuses to grow past `limit` bytes (and says so in `over`).
struct BoundedBuffer {
    bytes: Vec<u8>,
    limit: usize,
    over: bool,
}

impl std::io::Write for BoundedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.over = true;
            return Err(std::io::Error::other("past one message"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How long a streamed answer waits for its caller to take the next piece before giving up: a
/// caller that stops reading must not hold a bundle's turn (and a blocking thread) for ever.
const PIECE_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends what is written to it as pieces of up to `STREAM_PIECE_BYTES` over `tx`, from a blocking
/// thread; fails (and sets `gone`) once the caller hung up or stopped reading.
struct PieceWriter<T> {
    tx: tokio::sync::mpsc::Sender<Result<T, Status>>,
    runtime: tokio::runtime::Handle,
    piece: Vec<u8>,
    sent: usize,
    gone: bool,
}

impl PieceWriter<pb::GetHistoryResponse> {
    fn send_piece(&mut self) -> Result<(), String> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let bundle = std::mem::replace(
            &mut self.piece,
            Vec::with_capacity(limits::STREAM_PIECE_BYTES),
        );
        let len = bundle.len();
        let send = tokio::time::timeout(
            PIECE_SEND_TIMEOUT,
            self.tx.send(Ok(pb::GetHistoryResponse { bundle })),
        );
        match self.runtime.block_on(send) {
            Ok(Ok(())) => {
                self.sent += len;
                Ok(())
            }
            Ok(Err(_)) | Err(_) => {
                self.gone = true;
                Err("the caller stopped reading".into())
            }
        }
    }
}

impl std::io::Write for PieceWriter<pb::GetHistoryResponse> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = limits::STREAM_PIECE_BYTES - self.piece.len();
        let n = buf.len().min(room);
        self.piece.extend_from_slice(&buf[..n]);
        if self.piece.len() == limits::STREAM_PIECE_BYTES {
            self.send_piece().map_err(std::io::Error::other)?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A server stream of pieces made ahead.
pub type Pieces<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

impl<S: Store> UserService<S> {
    /// The manifests (or only the latest transition and CAs), linearizable unless `allow_stale`;
    /// copied off the runtime's threads.
    async fn manifests_view(&self, req: &pb::GetManifestsRequest) -> Result<ManifestsView, Status> {
        self.read_after(req).await?;
        let replica = self.replica.clone();
        let only_latest = req.only_latest;
        // Only the latest, the core free: microseconds of work, answered right here rather than
        // after a hop to the blocking pool and back (a writer re-reading after a conflict waits on it).
        if only_latest && let Some(view) = replica.try_latest_view() {
            return view.map_err(|e| {
                let s = to_status(&e);
                warn!(rpc = "GetManifests", code = ?s.code(), error = %e, "rejected");
                s
            });
        }
        // Past one message's worth the rest is not read: GetManifests refuses it anyway.
        let budget = limits::USER_API_MESSAGE_BYTES - ONE_MESSAGE_HEADROOM;
        let view = tokio::task::spawn_blocking(move || {
            if only_latest {
                return replica.read()?.latest_view();
            }
            let (mut view, count, mut reader) = replica.read()?.manifests_on_demand()?;
            let mut bytes: usize = view.policies.iter().map(Vec::len).sum();
            for i in 0..count {
                if bytes > budget {
                    break;
                }
                let m = reader(i).map_err(|e| {
                    CoordinatorError::Ledger(crate::history::LedgerError::Corrupt(e))
                })?;
                bytes += m.len();
                view.manifests.push(m);
            }
            Ok(view)
        })
        .await
        .map_err(|e| Status::internal(format!("the read task failed: {e}")))?
        .map_err(|e| {
            let s = to_status(&e);
            warn!(rpc = "GetManifests", code = ?s.code(), error = %e, "rejected");
            s
        })?;
        Ok(view)
    }

    /// What a GetManifests or StreamManifests waits for before it reads the core: a read round
    /// (linearizable) unless `allow_stale`, or with `changed_from`, the latest transition's change.
    async fn read_after(&self, req: &pb::GetManifestsRequest) -> Result<(), Status> {
        if req.changed_from.is_empty() {
            return self.node.linearize(req.allow_stale).await;
        }
        let from = Hash::from_slice(&req.changed_from).map_err(|e| {
            Status::invalid_argument(format!(
                "changed_from must be a transition hash or empty: {e}"
            ))
        })?;
        self.wait_for_change(from).await
    }

    /// Until this replica's latest transition is another than `from`, or for at most
    /// `LATEST_CHANGE_WAIT`; the core refreshed as for a stale-allowed read. Woken by each transition
    /// this replica's state machine applies, not by polling, and by nothing else (a heartbeat wakes
    /// no waiter): a writer that lost a race waits here for the winner's transition without a read
    /// round, and without refusals meanwhile (issue 11.3). A latest moved otherwise (a snapshot
    /// installed) is seen at the bound.
    async fn wait_for_change(&self, from: Hash) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + limits::LATEST_CHANGE_WAIT;
        let mut applied = self.replica.transitions_applied();
        loop {
            // Marked before the latest is read, so that a transition applied in between ends the
            // wait below at once.
            if let Some(applied) = applied.as_mut() {
                applied.borrow_and_update();
            }
            self.node.linearize(true).await?;
            if self.latest_hash().await? != Some(from) {
                return Ok(());
            }
            // A core that follows no state machine (tests, tools) has nothing to wait on.
            let Some(applied) = applied.as_mut() else {
                return Ok(());
            };
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                // Answered with the unchanged latest: the caller asks again or reads as it likes.
                Err(_) => return Ok(()),
                Ok(Err(_)) => return Err(Status::unavailable("the replica is shutting down")),
                Ok(Ok(())) => {}
            }
        }
    }

    /// The latest transition's hash in the core (None before the first manifest): right here when
    /// the core is free, else off the runtime's threads.
    async fn latest_hash(&self) -> Result<Option<Hash>, Status> {
        if let Some(latest) = self.replica.try_latest_hash() {
            return Ok(latest);
        }
        let replica = self.replica.clone();
        tokio::task::spawn_blocking(move || replica.read().map(|c| c.latest_hash()))
            .await
            .map_err(|e| Status::internal(format!("the read task failed: {e}")))?
            .map_err(|e| to_status(&e))
    }

    /// `f` over the core, linearizable unless `allow_stale`, off the runtime's threads (the first
    /// proof after a start builds the Merkle tree: O(n) hashes).
    async fn read_core<T: Send + 'static>(
        &self,
        rpc: &'static str,
        allow_stale: bool,
        f: impl FnOnce(&crate::state::Coordinator<S>) -> Result<T, CoordinatorError> + Send + 'static,
    ) -> Result<T, Status> {
        self.node.linearize(allow_stale).await?;
        let replica = self.replica.clone();
        tokio::task::spawn_blocking(move || replica.read().and_then(|c| f(&c)))
            .await
            .map_err(|e| Status::internal(format!("the read task failed: {e}")))?
            .map_err(|e| {
                let s = to_status(&e);
                warn!(rpc, code = ?s.code(), error = %e, "rejected");
                s
            })
    }

    /// The audit bundle with evidence bound to the caller's nonce, ready to be written (off the
    /// runtime's threads: writing it grows with the history), and the turn that must be held until
    /// it is written.
    async fn history_bundle(
        &self,
        req: &pb::GetHistoryRequest,
        rpc: &'static str,
    ) -> Result<(FinishedBundle, tokio::sync::OwnedSemaphorePermit), Status> {
        let nonce = history_nonce(req)?;
        // Held until the bundle is written; the semaphore is never closed.
        let turn = self
            .bundles
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the replica is shutting down"))?;
        self.node.linearize(req.allow_stale).await?;
        let rejected = |e: CoordinatorError| {
            let s = to_status(&e);
            warn!(rpc, code = ?s.code(), error = %e, "rejected");
            s
        };
        // The core's lock is held for the draft only, and off the runtime's workers (the draft grows
        // with the history); the evidence is a device call, made with no lock held.
        let replica = self.replica.clone();
        let draft =
            tokio::task::spawn_blocking(move || replica.read().and_then(|c| c.audit_draft(&nonce)))
                .await
                .map_err(|e| Status::internal(format!("the read task failed: {e}")))?
                .map_err(rejected)?;
        let mut draft = draft;
        add_held_cosignatures(&mut draft, &self.cosignatures);
        let issuer = self.replica.issuer.clone();
        tokio::task::spawn_blocking(move || {
            let report_data = draft.report_data();
            let evidence = issuer
                .issue(&report_data)
                .map_err(|e| CoordinatorError::Evidence(e.to_string()))?;
            Ok::<_, CoordinatorError>(draft.finish(&evidence))
        })
        .await
        .map_err(|e| Status::internal(format!("the evidence task failed: {e}")))?
        .map_err(rejected)
        .map(|bundle| (bundle, turn))
    }
}

/// Adds to the bundle's checkpoint the witness cosignatures this replica holds for it (no waiting:
/// GetCheckpoint is where they are collected).
fn add_held_cosignatures(
    draft: &mut crate::state::AuditDraft,
    cosignatures: &crate::witness::client::Cosignatures,
) {
    use crate::history::note::{Checkpoint, SignedNote};
    let Some(text) = draft.checkpoint_note_mut() else {
        return;
    };
    let Ok(mut note) = SignedNote::parse(text) else {
        return;
    };
    let Ok(cp) = Checkpoint::parse_body(&note.body) else {
        return;
    };
    for sig in cosignatures.held(&cp) {
        note.add(sig);
    }
    *text = note.encode();
}

/// The latest checkpoint with every witness cosignature this replica holds or could collect now
/// (each witness bounded by `witness::client::REQUEST_TIMEOUT`, all at once).
async fn cosigned_checkpoint<S: Store>(
    replica: Arc<Replica<S>>,
    cosignatures: Arc<crate::witness::client::Cosignatures>,
) -> Result<
    (
        crate::history::note::SignedNote,
        ed25519_dalek::VerifyingKey,
    ),
    CoordinatorError,
> {
    let reader = replica.clone();
    let view = tokio::task::spawn_blocking(move || reader.read().and_then(|c| c.checkpoint()))
        .await
        .map_err(|e| CoordinatorError::Crypto(format!("the read task failed: {e}")))??;
    let note = match &view.witnesses {
        Some(w) if !w.list.is_empty() => {
            let size = view.checkpoint.size;
            let proof = move |old: u64| {
                replica
                    .read()
                    .ok()
                    .and_then(|c| c.consistency_proof(old, size).ok())
            };
            cosignatures
                .collect(&view.note, &view.checkpoint, w, proof)
                .await
        }
        _ => view.note,
    };
    Ok((note, view.key))
}

fn view_to_pb(view: ManifestsView) -> pb::GetManifestsResponse {
    pb::GetManifestsResponse {
        manifests: view.manifests,
        policies: view.policies,
        root_ca: view.root_ca_pem,
        mesh_ca: view.mesh_ca_pem,
        latest: view.latest.map(|(t, _)| transition_to_pb(&t)),
    }
}

/// GetManifests' answer in pieces of about `budget` bytes (a single larger manifest or document travels
/// alone): the first carries the CAs and the latest transition; merged in order they are the whole.
pub fn manifest_pieces(view: ManifestsView, budget: usize) -> Vec<pb::GetManifestsResponse> {
    let head = pb::GetManifestsResponse {
        manifests: Vec::new(),
        policies: Vec::new(),
        root_ca: view.root_ca_pem,
        mesh_ca: view.mesh_ca_pem,
        latest: view.latest.map(|(t, _)| transition_to_pb(&t)),
    };
    let items = (view.manifests.into_iter().map(|m| Ok((true, m))))
        .chain(view.policies.into_iter().map(|p| Ok((false, p))));
    let mut pieces = Vec::new();
    let pushed: Result<(), ()> = write_pieces(head, items, budget, |p| {
        pieces.push(p);
        Ok(())
    });
    debug_assert!(pushed.is_ok());
    pieces
}

/// Gives `emit` the pieces of [`manifest_pieces`] one at a time, as `items` (manifests, then policy
/// documents) come: `head` (the CAs and the latest transition) starts the first piece. Stops at the
/// first error of `items` or `emit`.
fn write_pieces<E>(
    head: pb::GetManifestsResponse,
    items: impl Iterator<Item = Result<(bool, Vec<u8>), E>>,
    budget: usize,
    mut emit: impl FnMut(pb::GetManifestsResponse) -> Result<(), E>,
) -> Result<(), E> {
    let mut current = head;
    let mut size = 0;
    for item in items {
        let (is_manifest, bytes) = item?;
        if size > 0 && size + bytes.len() > budget {
            emit(std::mem::take(&mut current))?;
            size = 0;
        }
        size += bytes.len();
        match is_manifest {
            true => current.manifests.push(bytes),
            false => current.policies.push(bytes),
        }
    }
    emit(current)
}

pub(crate) fn members_to_pb(
    members: &std::collections::BTreeMap<u64, String>,
) -> pb::SetMembersResponse {
    pb::SetMembersResponse {
        voters: members
            .iter()
            .map(|(id, addr)| pb::Member {
                id: *id,
                peer_address: addr.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_pieces_merge_back_into_the_whole() {
        let view = ManifestsView {
            manifests: (0..10u8).map(|i| vec![i; 300]).collect(),
            policies: vec![vec![7; 1500], vec![8; 10]],
            root_ca_pem: "root".into(),
            mesh_ca_pem: "mesh".into(),
            latest: None,
        };
        let pieces = manifest_pieces(view.clone(), 1000);
        // 3 manifests per piece (900 bytes), the large document alone, the small one after it.
        assert_eq!(pieces.len(), 6, "{pieces:?}");
        assert_eq!(pieces[0].root_ca, "root");
        assert!(pieces[1..].iter().all(|p| p.root_ca.is_empty()));
        let manifests: Vec<_> = pieces.iter().flat_map(|p| p.manifests.clone()).collect();
        let policies: Vec<_> = pieces.iter().flat_map(|p| p.policies.clone()).collect();
        assert_eq!(manifests, view.manifests);
        assert_eq!(policies, view.policies);
        // An empty history is one piece with the head.
        let empty = ManifestsView {
            manifests: Vec::new(),
            policies: Vec::new(),
            ..view
        };
        assert_eq!(manifest_pieces(empty, 1000).len(), 1);
    }
}
