//! `FollowerApply`: the state machine as the Raft core drives it, applying the entries other replicas
//! led on the background threads (`crate::background`), at a lower CPU priority (issue 11.3).
//!
//! No commit waits for a follower's apply: the leader answers once a majority holds the entry, and a
//! follower applies it when it learns that the entry committed, which is when the leader answers and
//! the next request comes in. A follower's apply verifies the transition and writes the history
//! (0.4 ms of CPU in the cluster benchmark); at normal priority two followers' applies took both cores
//! of the benchmark's machine just when the leader's answer and the next request wanted them, and on a
//! follower of its own they take the core its next acknowledgement wants. On the background threads
//! they run when a core is free.
//!
//! What the Raft core is waiting for is never left to those threads alone: an apply that no
//! background thread has taken within [`TAKE_BACK_AFTER`] (the cores stayed busy, or the queue was
//! full) is run here at normal priority, as it was before (`background::run_or_take_back`). The
//! entries this replica appended as the leader, which its client is waiting for, are applied here
//! at once. What is applied, and how, is the state machine's alone: this only picks the thread.

use std::io::Cursor;
use std::time::Duration;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, LogId, OptionalSend, SnapshotMeta, StorageError, StoredMembership,
};

use super::snapshot::SnapshotBuilder;
use super::state_machine::StateMachine;
use super::types::{CommandResponse, NodeId, TypeConfig};

/// How long an apply of entries that others led may wait for a background thread to take it before
/// the Raft core's own thread runs it: a bound on how far a follower's readiness can lag behind a
/// commit when its cores stay busy (the catch-up's wait, `api::node::IDLE_OPEN_WAIT`, comes after it).
pub const TAKE_BACK_AFTER: Duration = Duration::from_millis(10);

/// The state machine of replica `own`, its followers' applies on the background threads.
#[derive(Debug)]
pub struct FollowerApply {
    /// Always here but while a background thread applies (`apply` holds `&mut self` until it is
    /// back): an apply that panicked does not bring it back, and neither does the Raft core go on.
    sm: Option<Box<StateMachine>>,
    own: NodeId,
    /// Applies run on the background threads or taken back after `TAKE_BACK_AFTER`.
    handed_over: u64,
}

impl FollowerApply {
    pub fn new(sm: StateMachine, own: NodeId) -> FollowerApply {
        FollowerApply {
            sm: Some(Box::new(sm)),
            own,
            handed_over: 0,
        }
    }

    fn sm(&mut self) -> &mut StateMachine {
        self.sm
            .as_mut()
            .expect("the state machine is back after every apply that did not panic")
    }

    /// How many applies were handed to the background threads (for tests).
    pub fn handed_over(&self) -> u64 {
        self.handed_over
    }
}

impl RaftStateMachine<TypeConfig> for FollowerApply {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        self.sm().applied_state().await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let others_led = !entries.is_empty()
            && entries
                .iter()
                .all(|e| e.log_id.leader_id.node_id != self.own);
        if !others_led {
            return self.sm().apply_entries(entries);
        }
        let mut sm = self
            .sm
            .take()
            .expect("the state machine is back after every apply that did not panic");
        self.handed_over += 1;
        let queued = std::time::Instant::now();
        let (sm, applied) = crate::in_place::off_the_workers(|| {
            crate::background::run_or_take_back(
                move || {
                    crate::observe::global().commit_phase("apply_queue", queued.elapsed());
                    let applied = sm.apply_entries(entries);
                    (sm, applied)
                },
                TAKE_BACK_AFTER,
            )
        });
        self.sm = Some(sm);
        applied
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.sm().get_snapshot_builder().await
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        self.sm().begin_receiving_snapshot().await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.sm().install_snapshot(meta, snapshot).await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.sm().get_current_snapshot().await
    }
}
