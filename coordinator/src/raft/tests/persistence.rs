//! What the log store and the state machine acknowledged is there after the database is closed and
//! opened again, and a damaged log is reported rather than used.

use openraft::storage::{RaftLogReaderExt, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, Vote};

use super::{Disk, History, apply_one, command_entry, log_id, membership_entry};
use crate::raft::LOG_TREE;

#[tokio::test]
async fn the_log_vote_and_committed_id_survive_reopening() {
    let history = History::new(2);
    let disk = Disk::new();
    {
        let (mut log, _sm) = disk.open();
        log.blocking_append([
            membership_entry(1, &[1, 2, 3]),
            command_entry(2, history.command(0)),
            command_entry(3, history.command(1)),
            openraft::testing::blank_ent(2, 1, 4),
        ])
        .await
        .unwrap();
        log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        log.save_committed(Some(log_id(3))).await.unwrap();
        log.purge(log_id(1)).await.unwrap();
        log.truncate(openraft::testing::log_id(2, 1, 4))
            .await
            .unwrap();
    }
    let disk = disk.reopen();
    let (mut log, _sm) = disk.open();
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(2, 1))
    );
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(3)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1)));
    assert_eq!(state.last_log_id, Some(log_id(3)));
    let entries = log.try_get_log_entries(0..10).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![2, 3]
    );
    // The command comes back byte for byte, so it verifies the same way on every replica.
    assert_eq!(
        log.get_log_entries(2..3).await.unwrap()[0].payload,
        command_entry(2, history.command(0)).payload
    );
}

#[tokio::test]
async fn with_every_entry_purged_the_last_log_id_is_the_purged_one() {
    let disk = Disk::new();
    let (mut log, _sm) = disk.open();
    log.blocking_append([membership_entry(1, &[1]), membership_entry(2, &[1, 2])])
        .await
        .unwrap();
    log.purge(log_id(2)).await.unwrap();
    let disk = {
        drop(log);
        drop(_sm);
        disk.reopen()
    };
    let (mut log, _sm) = disk.open();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(2)));
    assert_eq!(state.last_log_id, Some(log_id(2)));
    assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_applied_state_and_history_survive_reopening() {
    let history = History::new(2);
    let disk = Disk::new();
    let applied = {
        let (_log, mut sm) = disk.open();
        apply_one(&mut sm, membership_entry(1, &[1, 2])).await;
        apply_one(&mut sm, command_entry(2, history.command(0))).await;
        apply_one(&mut sm, command_entry(3, history.command(1))).await;
        sm.applied_state().await.unwrap()
    };
    let disk = disk.reopen();
    let (_log, mut sm) = disk.open();
    assert_eq!(sm.applied_state().await.unwrap(), applied);
    assert_eq!(sm.history().unwrap().chain.latest_hash(), history.hashes[1]);
}

/// A host that copies an entry to another index cannot make openraft read it as that index.
#[tokio::test]
async fn a_log_entry_moved_to_another_index_is_reported() {
    let disk = Disk::new();
    let (mut log, _sm) = disk.open();
    log.blocking_append([membership_entry(1, &[1])])
        .await
        .unwrap();
    let tree = disk.store.db().open_tree(LOG_TREE).unwrap();
    let entry = tree.get(1u64.to_be_bytes()).unwrap().unwrap();
    tree.insert(2u64.to_be_bytes(), entry).unwrap();
    let err = log.try_get_log_entries(0..5).await.unwrap_err().to_string();
    assert!(err.contains("it says it is entry 1"), "{err}");
}

/// `apply` does not flush the history it writes (the committed log holds it); should a disk ever keep
/// the applied log id but lose the history write it counts, the replica refuses to start rather than
/// serve a history without a committed transition that openraft would not apply again.
#[tokio::test]
async fn a_history_behind_its_applied_log_id_is_refused() {
    let history = History::new(2);
    let disk = Disk::new();
    {
        let (_log, mut sm) = disk.open();
        apply_one(&mut sm, command_entry(1, history.command(0))).await;
        apply_one(&mut sm, command_entry(2, history.command(1))).await;
    }
    // The disk lost the second transition's write, but not the applied log id after it.
    let db = disk.store.db();
    db.remove(crate::store::Key::Transition(history.hashes[1]).encode())
        .unwrap();
    db.insert(
        crate::store::Key::Latest.encode(),
        history.hashes[0].as_bytes().to_vec(),
    )
    .unwrap();
    let err = crate::raft::StateMachine::open(&disk.store)
        .unwrap_err()
        .to_string();
    assert!(err.contains("the disk lost writes"), "{err}");
    // Intact, it opens.
    let disk2 = Disk::new();
    {
        let (_log, mut sm) = disk2.open();
        apply_one(&mut sm, command_entry(1, history.command(0))).await;
        apply_one(&mut sm, command_entry(2, history.command(1))).await;
    }
    let disk2 = disk2.reopen();
    let (_log, sm) = disk2.open();
    assert_eq!(sm.history().unwrap().chain.latest_hash(), history.hashes[1]);
}
