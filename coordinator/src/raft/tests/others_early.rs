//! A replica verifies the transitions other replicas led on the background threads when it applies
//! them (`StateMachine::check_others_early`), its own as before, with the same result either way;
//! openraft's storage suite passes with it.

use openraft::StorageError;
use openraft::storage::RaftStateMachine;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use super::apply::{assert_refused, tampered_second_commands};
use super::{Disk, History, apply_one, command_entry};
use crate::raft::{CommandResponse, LogStore, StateMachine, TypeConfig};

/// The fixtures' entries, and the suite's, are led by replica 0.
const LEADER: u64 = 0;
const FOLLOWER: u64 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_others_led_are_checked_early_at_apply_and_a_leaders_own_are_not() {
    let history = History::new(3);
    let applied: Vec<_> = history.hashes[1..]
        .iter()
        .map(|&hash| CommandResponse::Applied { hash })
        .collect();
    let mut disks = Vec::new();
    for (own, checked_early) in [(FOLLOWER, 2), (LEADER, 0)] {
        let disk = Disk::new();
        let (_log, mut sm) = disk.open();
        sm.check_others_early(own);
        let early = sm.early_checks();
        // The first transition brings the anchors that checks need.
        apply_one(&mut sm, command_entry(1, history.command(0))).await;
        let later = vec![
            command_entry(2, history.command(1)),
            command_entry(3, history.command(2)),
        ];
        assert_eq!(sm.apply(later).await.unwrap(), applied);
        // Each check started was taken: its verdict used, or still under way at the bound (then
        // verified in full). The leader's own entries are checked at append, by the log store.
        assert_eq!(
            early.used() + early.running(),
            checked_early,
            "transitions checked early as replica {own}"
        );
        assert_eq!(early.pending(), 0);
        drop(sm);
        disks.push(disk);
    }
    assert_eq!(disks[0].latest(), Some(history.hashes[2]));
    assert_eq!(disks[0].history_dump(), disks[1].history_dump());
}

/// Invariant 2 on a follower: every tampered command another replica led is checked early at apply
/// (the checks of its own bytes; some pass them, as an index or a previous that is not the next one)
/// and is refused all the same, for the reason a state machine without early checks gives, with the
/// history unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_every_tampered_command_it_checks_early() {
    let history = History::new(2);
    let disk = Disk::new();
    let (_log, mut sm) = disk.open();
    sm.check_others_early(FOLLOWER);
    let early = sm.early_checks();
    apply_one(&mut sm, command_entry(1, history.command(0))).await;
    let before = disk.history_dump();
    let tampers = tampered_second_commands(&history);
    for (i, tamper) in tampers.iter().enumerate() {
        let index = i as u64 + 2;
        let response = apply_one(&mut sm, command_entry(index, tamper.cmd.clone())).await;
        assert_refused(response, tamper);
        assert_eq!(disk.history_dump(), before, "{}", tamper.what);
    }
    // Each was checked early; some of those verdicts passed and were used, and still refused.
    assert!(
        early.used() + early.running() > 0,
        "no tampered command passed the checks of its own bytes"
    );
    assert_eq!(early.pending(), 0);
}

struct FollowerBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for FollowerBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let disk = Disk::new();
        let (log, mut sm) = disk.open();
        sm.check_others_early(FOLLOWER);
        Ok((disk.dir, log, sm))
    }
}

/// Every entry of the suite is one another replica led.
#[test]
fn openraft_storage_suite_passes_when_others_transitions_are_checked_at_apply() {
    Suite::test_all(FollowerBuilder).unwrap();
}
