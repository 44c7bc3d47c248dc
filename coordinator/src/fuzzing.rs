//! Entry points for the fuzz targets (`fuzz/`, feature `fuzzing`): the decode-and-validate path of
//! every request the user, mesh and peer APIs take, without a socket, a Raft or a clock.
//!
//! Each function calls the same `pub(crate)` functions the gRPC handlers call, in the same order, and
//! drops what they return: a fuzz target only looks for panics, hangs and runaway allocations. It must
//! never hold a copy of a handler's logic (a fix in the handler would then not reach the fuzzer) and
//! never do I/O.

use concord_proto::v1 as pb;
use prost::Message;
use time::OffsetDateTime;

use crate::api::{node, peer, user};
use crate::raft::snapshot::{self, SnapshotContent, SnapshotItem};
use crate::raft::{Command, NodeId, TypeConfig};
use crate::state::Coordinator;
use crate::store::MemoryStore;

/// The request kinds [`request`] decodes, selected by the first input byte (modulo their number).
pub const REQUEST_KINDS: [&str; 18] = [
    "user.SetManifest",
    "user.GetManifests",
    "user.GetHistory",
    "user.Recover",
    "user.GetStatus",
    "user.SetMembers",
    "mesh.NewMeshCert",
    "peer.AppendEntries",
    "peer.Vote",
    "peer.InstallSnapshot",
    "peer.Recover",
    "peer.ForwardCommand",
    "peer.ReadIndex",
    "peer.PeerState",
    "peer.Join",
    "peer.Recover answer",
    "peer.ForwardSetManifest answer",
    "peer.InstallSnapshot data",
];

/// The replica id the peer handlers run as.
const OWN_ID: NodeId = 1;

/// A fixed time of check (2026-01-01T00:00:00Z): targets must not read the clock.
fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A Raft log file as the host could leave it on the replica's disk: replayed and every live entry
/// decoded as the log store reads it (`raft::wal`, `raft::log_store`).
pub fn raft_log(data: &[u8]) {
    if let Ok(entries) = crate::raft::wal::replay_bytes(data) {
        for (index, bytes) in entries {
            let _ = crate::raft::LogStore::decode_entry(index, &bytes);
        }
    }
}

/// The history's objects file as the host could leave it on the replica's disk (`store::objects`):
/// scanned, every live record read back, and each checked as the ledger reads it (a transition
/// decoded and hashed to its name, a manifest or policy document hashed to its name).
pub fn objects_file(data: &[u8]) {
    use crate::store::objects::ObjectKey;
    if let Ok(records) = crate::store::objects::replay_bytes(data) {
        for (key, value) in records {
            let named = match key {
                ObjectKey::Transition(h) => {
                    crate::history::Transition::decode(&value).is_ok_and(|t| t.hash() == h)
                }
                ObjectKey::Object(h) => crate::hash::Hash::of(&value) == h,
            };
            std::hint::black_box(named);
        }
    }
}

/// `data[0]` selects a request kind of [`REQUEST_KINDS`]; the rest is its protobuf encoding.
pub fn request(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match usize::from(kind) % REQUEST_KINDS.len() {
        0 => set_manifest(body),
        1 => drop(pb::GetManifestsRequest::decode(body)),
        2 => {
            if let Ok(req) = pb::GetHistoryRequest::decode(body) {
                let _ = user::history_nonce(&req);
            }
        }
        3 => {
            if let Ok(mut req) = pb::RecoverRequest::decode(body) {
                let _ = user::decode_submission(&mut req);
            }
        }
        4 => drop(pb::GetStatusRequest::decode(body)),
        5 => {
            if let Ok(req) = pb::SetMembersRequest::decode(body)
                && let Ok(members) = node::members_of(&req)
                && let Ok((owner_key, owner_signature)) = node::members_authorization(&req)
            {
                let authorization = crate::history::MembersAuthorization {
                    membership_index: req.membership_index,
                    members,
                    owner_key,
                    owner_signature,
                };
                let _ = authorization.check(&crate::Hash::ZERO, &[owner_key], req.membership_index);
            }
        }
        6 => drop(pb::NewMeshCertRequest::decode(body)),
        7 => raft_message::<openraft::raft::AppendEntriesRequest<TypeConfig>>(body),
        8 => raft_message::<openraft::raft::VoteRequest<NodeId>>(body),
        9 => {
            raft_message::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(body);
            if let Ok(m) = pb::RaftMessage::decode(body)
                && let Ok(req) =
                    peer::decode::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(&m)
            {
                let _ = snapshot_verifies(&req.data);
            }
        }
        10 => {
            if let Ok(req) = pb::PeerRecoverRequest::decode(body) {
                let _ = peer::wanted_latest(&req);
            }
        }
        11 => {
            if let Ok(m) = pb::RaftMessage::decode(body)
                && let Ok(Command::Append(append)) = peer::decode::<Command>(&m)
            {
                let _ = append.decode();
            }
        }
        12 => drop(pb::ReadIndexRequest::decode(body)),
        13 => drop(pb::PeerStateRequest::decode(body)),
        14 => {
            if let Ok(req) = pb::JoinRequest::decode(body)
                && let Some(member) = &req.member
            {
                let _ = node::check_join_member(OWN_ID, member);
            }
        }
        15 => {
            if let Ok(answer) = pb::PeerRecoverResponse::decode(body) {
                let _ = peer::secrets_from_pb(answer);
            }
        }
        16 => {
            if let Ok(answer) = pb::SetManifestResponse::decode(body) {
                let _ = node::outcome_from_pb(answer);
            }
        }
        _ => drop(snapshot_verifies(body)),
    }
}

/// The bytes of a snapshot a leader sends (its chunks put together), as the state machine checks them
/// before installing: decoded, then its history loaded and verified in memory (`Ledger::load`, the
/// same walk that checks a replica's own store at start-up), every key accounted for. Whether it
/// would be installed on a replica without a history.
pub fn snapshot_verifies(data: &[u8]) -> bool {
    SnapshotContent::decode(data)
        .is_ok_and(|content| snapshot::verify_history(&content.history, None).is_ok())
}

/// SetManifest (and ForwardSetManifest): the handler's decoding, then the core's checks on a fresh
/// replica in memory, which for a valid first manifest also makes the seed, the CAs and the shares.
fn set_manifest(body: &[u8]) {
    let Ok(req) = pb::SetManifestRequest::decode(body) else {
        return;
    };
    let Ok(req) = user::decode_set(req) else {
        return;
    };
    if let Ok(core) = Coordinator::open(MemoryStore::new()) {
        let _ = core.prepare_set(req, now());
    }
}

/// A Raft RPC as the peer API decodes it, and the answer a peer sends back.
fn raft_message<T: serde::de::DeserializeOwned>(body: &[u8]) {
    if let Ok(m) = pb::RaftMessage::decode(body) {
        let _ = peer::decode::<T>(&m);
        let _ = peer::decode::<openraft::raft::AppendEntriesResponse<NodeId>>(&m);
        let _ = peer::decode::<openraft::raft::VoteResponse<NodeId>>(&m);
        let _ = peer::decode::<openraft::raft::InstallSnapshotResponse<NodeId>>(&m);
    }
}

/// The first input byte that selects `kind` of [`REQUEST_KINDS`], for seed inputs.
pub fn request_kind(kind: &str) -> Option<u8> {
    let index = REQUEST_KINDS.iter().position(|k| *k == kind)?;
    u8::try_from(index).ok()
}

/// A snapshot of the history in `store`, as a leader would send it: for seed inputs.
pub fn snapshot_of(store: &MemoryStore) -> Vec<u8> {
    let content = SnapshotContent {
        format: snapshot::SNAPSHOT_FORMAT.into(),
        last_applied: None,
        last_membership: openraft::StoredMembership::default(),
        history: store
            .entries()
            .into_iter()
            .map(|(key, value)| SnapshotItem { key, value })
            .collect(),
    };
    serde_json::to_vec(&content).unwrap_or_default()
}
