//! Snapshots: one replica's state moves whole to another, and a snapshot that does not verify, or that
//! would fork or roll back the history, is refused and changes nothing.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};

use super::{Disk, History, apply_one, command_entry, log_id, membership_entry};
use crate::hash::Hash;
use crate::raft::{StateMachine, TypeConfig};
use crate::state::Coordinator;
use crate::store::Key;

/// A replica that applied `transitions` transitions of `history`, after a membership entry.
async fn replica_with(history: &History, transitions: usize) -> (Disk, StateMachine) {
    let disk = Disk::new();
    let (_log, mut sm) = disk.open();
    apply_one(&mut sm, membership_entry(1, &[1, 2, 3])).await;
    for i in 0..transitions {
        apply_one(&mut sm, command_entry(2 + i as u64, history.command(i))).await;
    }
    (disk, sm)
}

async fn snapshot_of(sm: &mut StateMachine) -> Snapshot<TypeConfig> {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
}

/// Installs `snapshot` on `sm` the way openraft does: into a buffer from `begin_receiving_snapshot`.
async fn install(
    sm: &mut StateMachine,
    snapshot: &Snapshot<TypeConfig>,
) -> Result<(), openraft::StorageError<u64>> {
    let mut buffer = sm.begin_receiving_snapshot().await?;
    buffer.get_mut().clone_from(snapshot.snapshot.get_ref());
    sm.install_snapshot(&snapshot.meta, buffer).await
}

#[tokio::test]
async fn a_snapshot_moves_the_whole_state_to_another_replica() {
    let history = History::new(4);
    let (leader_disk, mut leader) = replica_with(&history, 3).await;
    let snapshot = snapshot_of(&mut leader).await;
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(4)));

    let follower_disk = Disk::new();
    let (log, mut follower) = follower_disk.open();
    install(&mut follower, &snapshot).await.unwrap();

    assert_eq!(follower_disk.history_dump(), leader_disk.history_dump());
    assert_eq!(
        follower.applied_state().await.unwrap(),
        leader.applied_state().await.unwrap()
    );
    assert_eq!(
        follower.history().unwrap().chain.latest_hash(),
        history.hashes[2]
    );
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);

    // The installed state survives a restart, verifies as a replica's history, and the follower
    // goes on applying the log after it.
    drop((log, follower));
    let follower_disk = follower_disk.reopen();
    let (_log, mut follower) = follower_disk.open();
    assert_eq!(follower.applied_state().await.unwrap().0, Some(log_id(4)));
    let replica = Coordinator::open(follower_disk.store.clone()).unwrap();
    assert_eq!(replica.chain().unwrap().len(), 3);
    drop(replica);
    let next = apply_one(&mut follower, command_entry(5, history.command(3))).await;
    assert_eq!(
        next,
        crate::raft::CommandResponse::Applied {
            hash: history.hashes[3]
        }
    );
}

#[tokio::test]
async fn a_snapshot_extends_a_replica_that_is_behind() {
    let history = History::new(3);
    let (_leader_disk, mut leader) = replica_with(&history, 3).await;
    let snapshot = snapshot_of(&mut leader).await;
    let (behind_disk, mut behind) = replica_with(&history, 1).await;
    install(&mut behind, &snapshot).await.unwrap();
    assert_eq!(behind_disk.latest(), Some(history.hashes[2]));
}

/// Edits the history inside a snapshot's data and returns the snapshot with the new data.
fn edited(
    snapshot: &Snapshot<TypeConfig>,
    edit: impl FnOnce(&mut Vec<serde_json::Value>),
) -> Snapshot<TypeConfig> {
    let mut content: serde_json::Value =
        serde_json::from_slice(snapshot.snapshot.get_ref()).unwrap();
    edit(content["history"].as_array_mut().unwrap());
    Snapshot {
        meta: snapshot.meta.clone(),
        snapshot: Box::new(std::io::Cursor::new(serde_json::to_vec(&content).unwrap())),
    }
}

fn key_b64(key: &Key) -> String {
    STANDARD.encode(key.encode())
}

fn item_mut<'a>(items: &'a mut [serde_json::Value], key: &Key) -> &'a mut serde_json::Value {
    let key = key_b64(key);
    items.iter_mut().find(|i| i["key"] == key.as_str()).unwrap()
}

#[tokio::test]
async fn a_snapshot_that_does_not_verify_is_refused_and_changes_nothing() {
    let history = History::new(3);
    let (_leader_disk, mut leader) = replica_with(&history, 3).await;
    let good = snapshot_of(&mut leader).await;
    let manifest = history.new_transition(2).transition.manifest_hash;
    let other = History::new(3);
    let (_other_disk, mut other_leader) = replica_with(&other, 3).await;
    let forked = snapshot_of(&mut other_leader).await;
    let (_short_disk, mut short_leader) = replica_with(&history, 1).await;
    let rolled_back = snapshot_of(&mut short_leader).await;

    let cases: Vec<(&str, Snapshot<TypeConfig>, &str)> = vec![
        (
            "a manifest byte flipped",
            edited(&good, |items| {
                let item = item_mut(items, &Key::Object(manifest));
                let mut bytes = STANDARD.decode(item["value"].as_str().unwrap()).unwrap();
                bytes[10] ^= 1;
                item["value"] = STANDARD.encode(bytes).into();
            }),
            "does not verify",
        ),
        (
            // The transition's name (its hash) does not cover its signatures, so a forged one keeps
            // its key: only the signature check, batched over the walked line, refuses it.
            "a coordinator signature forged in a transition record",
            edited(&good, |items| {
                let item = item_mut(items, &Key::Transition(history.hashes[2]));
                let bytes = STANDARD.decode(item["value"].as_str().unwrap()).unwrap();
                let mut record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                let signature = record["signature"].as_str().unwrap();
                let flipped = if signature.starts_with('0') { "1" } else { "0" };
                record["signature"] = format!("{flipped}{}", &signature[1..]).into();
                item["value"] = STANDARD.encode(serde_json::to_vec(&record).unwrap()).into();
            }),
            "coordinator signature does not verify",
        ),
        (
            "the latest pointer moved back (a rollback inside the snapshot)",
            edited(&good, |items| {
                item_mut(items, &Key::Latest)["value"] =
                    STANDARD.encode(history.hashes[1].as_bytes()).into();
            }),
            "does not name",
        ),
        (
            "a stray key beside the history",
            edited(&good, |items| {
                items.push(serde_json::json!({
                    "key": STANDARD.encode(b"meta/something-else"),
                    "value": STANDARD.encode(b"unverified"),
                }));
            }),
            "does not name",
        ),
        (
            "an object that does not hash to its name",
            edited(&good, |items| {
                let name = Hash::of(b"x");
                items.push(serde_json::json!({
                    "key": key_b64(&Key::Object(name)),
                    "value": STANDARD.encode(b"y"),
                }));
            }),
            "does not name",
        ),
        (
            "the signing key removed",
            edited(&good, |items| {
                let key = key_b64(&Key::SigningKey);
                items.retain(|i| i["key"] != key.as_str());
            }),
            "the signing key is missing",
        ),
        (
            "no history at all",
            edited(&good, |items| items.clear()),
            "roll the history back",
        ),
        (
            "another deployment's history",
            forked,
            "another signing key",
        ),
        ("a shorter history", rolled_back, "fork or a rollback"),
        (
            "content that disagrees with its metadata",
            Snapshot {
                meta: openraft::SnapshotMeta {
                    last_log_id: Some(log_id(99)),
                    ..good.meta.clone()
                },
                snapshot: good.snapshot.clone(),
            },
            "disagree",
        ),
        (
            "a snapshot cut short in transit",
            Snapshot {
                meta: good.meta.clone(),
                snapshot: Box::new(std::io::Cursor::new({
                    let bytes = good.snapshot.get_ref();
                    bytes[..bytes.len() / 2].to_vec()
                })),
            },
            "does not decode",
        ),
        (
            "bytes that are not a snapshot",
            Snapshot {
                meta: good.meta.clone(),
                snapshot: Box::new(std::io::Cursor::new(b"garbage".to_vec())),
            },
            "does not decode",
        ),
    ];

    // The replica the snapshots are offered to already applied the first two transitions.
    let (disk, mut sm) = replica_with(&history, 2).await;
    let before = disk.history_dump();
    let applied = sm.applied_state().await.unwrap();
    for (what, snapshot, reason) in cases {
        let err = install(&mut sm, &snapshot)
            .await
            .err()
            .unwrap_or_else(|| panic!("a snapshot with {what} was installed"));
        let message = err.to_string();
        assert!(
            message.contains("refused") && message.contains(reason),
            "{what}: {message}"
        );
        assert_eq!(disk.history_dump(), before, "{what} changed the history");
        assert_eq!(sm.applied_state().await.unwrap(), applied, "{what}");
        assert!(
            sm.get_current_snapshot().await.unwrap().is_none(),
            "{what} was kept as the current snapshot"
        );
    }
    assert_eq!(sm.history().unwrap().chain.latest_hash(), history.hashes[1]);
    // The genuine snapshot still installs.
    install(&mut sm, &good).await.unwrap();
    assert_eq!(disk.latest(), Some(history.hashes[2]));
}

#[tokio::test]
async fn an_empty_replica_takes_an_empty_snapshot() {
    let (_disk, mut empty_leader) = replica_with(&History::new(1), 0).await;
    let snapshot = snapshot_of(&mut empty_leader).await;
    let disk = Disk::new();
    let (_log, mut sm) = disk.open();
    install(&mut sm, &snapshot).await.unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1)));
    assert!(sm.history().is_none());
}
