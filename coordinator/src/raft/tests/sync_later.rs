//! The leader's own entries, synced after `append` returned (`LogStore::sync_own_appends_later`),
//! and the patched openraft that replicates them meanwhile (vendor/README.md): the leader's copy
//! counts toward a commit only once it is synced.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogStorageExt;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{BasicNode, RaftLogReader, StorageError};
use tempfile::TempDir;

use super::{Disk, History, command_entry};
use crate::raft::log_store::MAX_DEFERRED_SYNCS;
use crate::raft::{Command, CommandResponse, LogStore, NodeId, StateMachine, TypeConfig};

/// A gate the deferred syncs wait at while it is held.
#[derive(Debug, Default)]
pub(crate) struct Hold {
    held: Mutex<bool>,
    released: Condvar,
}

/// Holds the gate until dropped: a failing test releases it too, and its runtime (which waits for
/// the blocking task a held sync runs on) can stop.
struct Held(Arc<Hold>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl Hold {
    fn set(&self, held: bool) {
        *self.held.lock().unwrap() = held;
        self.released.notify_all();
    }

    fn hold(self: &Arc<Self>) -> Held {
        self.set(true);
        Held(self.clone())
    }

    pub(crate) fn wait(&self) {
        let mut held = self.held.lock().unwrap();
        while *held {
            held = self.released.wait(held).unwrap();
        }
    }
}

/// The stores on `disk`, the log deferring the syncs of `own`'s entries behind the returned gate.
fn open_syncing_later(disk: &Disk, own: NodeId) -> (LogStore, StateMachine, Arc<Hold>) {
    let (mut log, sm) = disk.open();
    log.sync_own_appends_later(own);
    let hold = Arc::new(Hold::default());
    log.held_syncs = Some(hold.clone());
    (log, sm, hold)
}

/// The node id of the entries openraft's storage suite appends.
const SUITE_NODE: NodeId = 0;

struct SyncLaterBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SyncLaterBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let disk = Disk::new();
        let (mut log, sm) = disk.open();
        log.sync_own_appends_later(SUITE_NODE);
        Ok((disk.dir, log, sm))
    }
}

/// Every append of the suite is one "this replica" made as the leader: synced after it returned.
#[test]
fn openraft_storage_suite_passes_with_the_leaders_entries_synced_later() {
    Suite::test_all(SyncLaterBuilder).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_synced_later_are_readable_at_once_and_survive_reopening() {
    let history = History::new(3);
    let disk = Disk::new();
    {
        // The fixtures' entries are leader 0's.
        let (mut log, _sm, hold) = open_syncing_later(&disk, 0);
        let held = hold.hold();
        // `append` returns, the callback waits for the held sync.
        let mut writer = log.clone();
        let append = tokio::spawn(async move {
            writer
                .blocking_append([command_entry(1, history.command(0))])
                .await
        });
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let got = log.try_get_log_entries(1..2).await.unwrap();
                if !got.is_empty() {
                    return got;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the entry is readable before its sync");
        assert_eq!(read[0].log_id.index, 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!append.is_finished(), "the callback came before the sync");
        drop(held);
        tokio::time::timeout(Duration::from_secs(10), append)
            .await
            .expect("the callback comes after the sync")
            .unwrap()
            .unwrap();
    }
    let disk = disk.reopen();
    let (mut log, _sm) = disk.open();
    assert_eq!(log.try_get_log_entries(1..2).await.unwrap().len(), 1);
}

/// A host whose disk stops answering syncs: the leader defers a few, then syncs on the Raft core
/// (which stalls there, as the liveness probe reports), instead of holding one more blocking thread
/// and file handle for every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_stops_syncing_holds_only_a_few_deferred_syncs() {
    let disk = Disk::new();
    let (log, _sm, hold) = open_syncing_later(&disk, 0);
    let held = hold.hold();
    let append = |index: u64| {
        let mut writer = log.clone();
        tokio::spawn(async move {
            writer
                .blocking_append([openraft::testing::blank_ent::<TypeConfig>(1, 0, index)])
                .await
        })
    };
    let mut waiting = Vec::new();
    for index in 1..=MAX_DEFERRED_SYNCS as u64 {
        waiting.push(append(index));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        waiting.iter().all(|a| !a.is_finished()),
        "the deferred syncs wait for the disk"
    );
    // One more: synced before `append` returns, not deferred behind the others.
    tokio::time::timeout(
        Duration::from_secs(10),
        append(MAX_DEFERRED_SYNCS as u64 + 1),
    )
    .await
    .expect("past the bound, the append syncs itself")
    .unwrap()
    .unwrap();
    drop(held);
    for a in waiting {
        tokio::time::timeout(Duration::from_secs(10), a)
            .await
            .expect("the deferred syncs finish once the disk answers")
            .unwrap()
            .unwrap();
    }
}

/// A network with no other replica in it.
#[derive(Clone)]
struct Alone;

impl RaftNetworkFactory<TypeConfig> for Alone {
    type Network = Alone;

    async fn new_client(&mut self, _target: NodeId, _node: &BasicNode) -> Alone {
        Alone
    }
}

fn unreachable<E: std::error::Error>() -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other("no other replica")))
}

impl RaftNetwork<TypeConfig> for Alone {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        AppendEntriesResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, openraft::error::Infallible>>,
    > {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<
        VoteResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, openraft::error::Infallible>>,
    > {
        Err(unreachable())
    }
}

/// The quorum of a single replica is its own copy: a write there commits only after the leader's
/// deferred sync. Fails if the patched openraft counted the leader's copy when it was submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_counts_its_own_copy_only_once_it_is_synced() {
    let history = History::new(2);
    let disk = Disk::new();
    let (log, sm, hold) = open_syncing_later(&disk, 1);
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    };
    let raft = openraft::Raft::new(1, Arc::new(config.validate().unwrap()), Alone, log, sm)
        .await
        .unwrap();
    raft.initialize(BTreeMap::from([(1, BasicNode::default())]))
        .await
        .unwrap();
    let mut metrics = raft.metrics();
    tokio::time::timeout(Duration::from_secs(10), async {
        // The leader's first entry (a blank one) is committed and applied.
        while metrics.borrow().current_leader != Some(1) || metrics.borrow().last_applied.is_none()
        {
            metrics.changed().await.unwrap();
        }
    })
    .await
    .expect("the single replica leads");

    let held = hold.hold();
    let writer = raft.clone();
    let command = Command::Append(history.command(0));
    let write = tokio::spawn(async move { writer.client_write(command).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !write.is_finished(),
        "the write committed before the leader's only copy was synced"
    );
    assert_eq!(
        raft.metrics().borrow().last_log_index,
        Some(raft.metrics().borrow().last_applied.unwrap().index + 1),
        "the entry is appended, not committed"
    );
    drop(held);
    let written = tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("the write commits once the sync is done")
        .unwrap()
        .unwrap();
    assert!(matches!(written.data, CommandResponse::Applied { .. }));
    raft.shutdown().await.unwrap();
}
