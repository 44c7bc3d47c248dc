//! `FollowerApply`: the entries other replicas led are applied on the background threads, the
//! replica's own on the caller's thread at once, with the same result either way; openraft's storage
//! suite passes through it.

use openraft::StorageError;
use openraft::storage::RaftStateMachine;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use super::{Disk, History, command_entry, log_id};
use crate::raft::{CommandResponse, FollowerApply, LogStore, TypeConfig};

/// The fixtures' entries, and the suite's, are led by replica 0.
const LEADER: u64 = 0;
const FOLLOWER: u64 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_others_led_are_applied_in_the_background_and_a_leaders_own_at_once_alike() {
    let history = History::new(3);
    let entries = || {
        (0..3)
            .map(|i| command_entry(i as u64 + 1, history.command(i)))
            .collect::<Vec<_>>()
    };
    let applied: Vec<_> = history
        .hashes
        .iter()
        .map(|&hash| CommandResponse::Applied { hash })
        .collect();

    let follower_disk = Disk::new();
    let mut follower = FollowerApply::new(follower_disk.open().1, FOLLOWER);
    let leader_disk = Disk::new();
    let mut leader = FollowerApply::new(leader_disk.open().1, LEADER);
    for (sm, handed_over) in [(&mut follower, 1), (&mut leader, 0)] {
        assert_eq!(sm.apply(entries()).await.unwrap(), applied);
        assert_eq!(
            sm.handed_over(),
            handed_over,
            "who applies: the background or here"
        );
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(3)));
    }
    // The follower's state machine is back after its apply, and goes on: an entry applied again is
    // the latest already.
    assert_eq!(
        follower
            .apply([command_entry(3, history.command(2))])
            .await
            .unwrap(),
        [CommandResponse::Applied {
            hash: history.hashes[2]
        }]
    );
    assert_eq!(follower.handed_over(), 2);
    drop((follower, leader));
    assert_eq!(follower_disk.latest(), Some(history.hashes[2]));
    assert_eq!(follower_disk.history_dump(), leader_disk.history_dump());
}

struct FollowerBuilder;

impl StoreBuilder<TypeConfig, LogStore, FollowerApply, TempDir> for FollowerBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, FollowerApply), StorageError<u64>> {
        let disk = Disk::new();
        let (log, sm) = disk.open();
        Ok((disk.dir, log, FollowerApply::new(sm, FOLLOWER)))
    }
}

/// Every apply of the suite is of entries another replica led: all on the background threads.
#[test]
fn openraft_storage_suite_passes_with_a_followers_applies_in_the_background() {
    Suite::test_all(FollowerBuilder).unwrap();
}
