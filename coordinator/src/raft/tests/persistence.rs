//! What the log store and the state machine acknowledged is there after the database is closed and
//! opened again, and a damaged log is reported rather than used.

use openraft::storage::{RaftLogReaderExt, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, Vote};

use super::{Disk, History, apply_one, command_entry, log_id, membership_entry};
use crate::raft::wal::Wal;
use crate::raft::{LOG_TREE, LogStore, META_TREE};

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
    {
        let (mut log, _sm) = disk.open();
        log.blocking_append([membership_entry(1, &[1])])
            .await
            .unwrap();
    }
    // The host writes entry 1's bytes again, as entry 2, with a checksum that holds.
    {
        let mut wal = Wal::open(&disk.log_dir()).unwrap();
        let (_, entry) = wal.read(1..=1).unwrap().pop().unwrap();
        wal.append([(2, entry)]).unwrap();
    }
    let (mut log, _sm) = disk.open();
    let err = log.try_get_log_entries(0..5).await.unwrap_err().to_string();
    assert!(err.contains("it says it is entry 1"), "{err}");
}

/// A replica that kept its log in sled's trees (before issue 11.3) finds it in its log file after
/// the upgrade: entries, vote, committed id and purge mark; the trees are gone.
#[tokio::test]
async fn a_log_kept_in_sled_trees_moves_into_the_log_file() {
    let history = History::new(1);
    let disk = Disk::new();
    let db = disk.store.db();
    let (log_tree, meta) = (
        db.open_tree(LOG_TREE).unwrap(),
        db.open_tree(META_TREE).unwrap(),
    );
    let entries = [
        membership_entry(2, &[1, 2, 3]),
        command_entry(3, history.command(0)),
    ];
    for entry in &entries {
        log_tree
            .insert(
                entry.log_id.index.to_be_bytes(),
                serde_json::to_vec(entry).unwrap(),
            )
            .unwrap();
    }
    let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    meta.insert(
        "vote",
        json(serde_json::json!(Vote::<u64>::new_committed(4, 2))),
    )
    .unwrap();
    meta.insert("committed", json(serde_json::json!(Some(log_id(2)))))
        .unwrap();
    meta.insert("last-purged", json(serde_json::json!(log_id(1))))
        .unwrap();
    disk.store.durable().flush().unwrap();

    let mut log = LogStore::open(&disk.log_dir(), db, disk.store.durable()).unwrap();
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(4, 2))
    );
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1)));
    assert_eq!(state.last_log_id, Some(log_id(3)));
    assert_eq!(
        log.get_log_entries(2..4).await.unwrap()[1].payload,
        entries[1].payload
    );
    let names = db.tree_names();
    assert!(
        !names
            .iter()
            .any(|n| n.as_ref() == LOG_TREE.as_bytes() || n.as_ref() == META_TREE.as_bytes()),
        "the old trees are dropped"
    );
    // Opened again, the file is what counts.
    drop(log);
    let mut log = LogStore::open(&disk.log_dir(), db, disk.store.durable()).unwrap();
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        Some(log_id(3))
    );
}

/// The state machine's history writes are single sled inserts in order (`Store::apply_unflushed`), so
/// a crash keeps a prefix of them: every prefix must leave a history that loads and verifies, the
/// old one until the last write (`Latest`) and the new one with it.
#[tokio::test]
async fn any_prefix_of_a_state_machine_write_leaves_a_history_that_loads() {
    use crate::history::Ledger;
    use crate::store::{Key, Store, Write};

    let history = History::new(2);
    let writes = Ledger::<crate::store::SledStore>::append_batch(&history.new_transition(1));
    assert!(
        matches!(writes.last(), Some(Write::Put(Key::Latest, _))),
        "the write that makes the others count comes last"
    );
    for kept in 0..=writes.len() {
        let disk = Disk::new();
        let (_log, mut sm) = disk.open();
        apply_one(&mut sm, command_entry(1, history.command(0))).await;
        drop(sm);
        disk.store.apply_unflushed(writes[..kept].to_vec()).unwrap();
        let loaded = Ledger::new(disk.store.clone())
            .load()
            .unwrap_or_else(|e| panic!("{kept} of {} writes: {e}", writes.len()))
            .unwrap();
        let expected = if kept == writes.len() { 1 } else { 0 };
        assert_eq!(
            loaded.chain.latest_hash(),
            history.hashes[expected],
            "{kept} of {} writes",
            writes.len()
        );
    }
}

/// A pinned replica checks the history its log would apply again (`LogStore::first_manifest`): the
/// first transition's manifest while the log holds it, nothing once it is purged.
#[tokio::test]
async fn the_log_names_its_first_transitions_manifest_until_it_is_purged() {
    let history = History::new(2);
    let disk = Disk::new();
    let (mut log, _sm) = disk.open();
    assert_eq!(log.first_manifest().unwrap(), None);
    log.blocking_append([
        membership_entry(1, &[1, 2, 3]),
        openraft::testing::blank_ent(1, 0, 2),
        command_entry(3, history.command(0)),
        command_entry(4, history.command(1)),
    ])
    .await
    .unwrap();
    assert_eq!(
        log.first_manifest().unwrap(),
        Some(history.command(0).manifest)
    );
    log.purge(log_id(3)).await.unwrap();
    assert_eq!(log.first_manifest().unwrap(), None, "a later transition");
}

/// The log answers a read right after an append from the entries it kept decoded (`raft::recent`):
/// after appends, a truncation, a purge and an index written again, every read gives what its file
/// holds, entry for entry.
#[tokio::test]
async fn entries_read_back_from_memory_are_the_ones_the_file_holds() {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let history = History::new(3);
    let disk = Disk::new();
    let (mut log, _sm) = disk.open();
    let check = |log: &LogStore, what: &str| {
        let json = |v: Vec<openraft::Entry<crate::raft::types::TypeConfig>>| {
            serde_json::to_string(&v).unwrap()
        };
        for (start, end) in [
            (Unbounded, Unbounded),
            (Included(2), Included(4)),
            (Included(3), Excluded(5)),
            (Excluded(1), Unbounded),
            (Included(4), Included(4)),
            (Included(0), Included(100)),
        ] {
            assert_eq!(
                json(log.entries(start, end).unwrap()),
                json(log.entries_from_file(start, end).unwrap()),
                "{what}: {start:?}..{end:?}"
            );
        }
    };
    log.blocking_append([
        membership_entry(1, &[1, 2, 3]),
        command_entry(2, history.command(0)),
        command_entry(3, history.command(1)),
    ])
    .await
    .unwrap();
    check(&log, "after the first append");
    log.blocking_append([
        command_entry(4, history.command(2)),
        openraft::testing::blank_ent(1, 0, 5),
    ])
    .await
    .unwrap();
    check(&log, "after a second append");
    log.truncate(log_id(4)).await.unwrap();
    check(&log, "after a truncation");
    log.blocking_append([openraft::testing::blank_ent(2, 1, 4)])
        .await
        .unwrap();
    check(&log, "after an index written again");
    log.purge(log_id(2)).await.unwrap();
    check(&log, "after a purge");
    assert_eq!(log.entries(Included(3), Included(4)).unwrap().len(), 2);
}
