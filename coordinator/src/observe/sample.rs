//! `Sample`: the public state of one replica at one instant (replica state, Raft role, term, leader,
//! commit and applied indexes, manifest generation), and the task that takes one every
//! [`SAMPLE_EVERY`] on the replica's runtime and publishes it to the [`Beacon`].
//!
//! Owns reading that state. Must never read or copy a secret (it asks the core for its state and the
//! length of its verified history, nothing else), and never wait on the Raft core or a quorum: it reads
//! openraft's metrics channel and the store, so a replica without quorum is sampled like any other.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;

use super::beacon::Beacon;
use crate::api::Node;
use crate::raft::LogStore;
use crate::state::ReplicaState;
use crate::store::Store;

/// How often the replica publishes its state. The samples double as the heartbeat of its runtime.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// A leader whose last acknowledgment by a majority is older than this has lost its quorum (an
/// election takes 150 to 300 ms of silence; heartbeats go every 50 ms).
pub const QUORUM_ACK_WITHIN_MS: u64 = 1_000;

/// What the core could not tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// A request handler panicked while holding the state lock: only a restart recovers.
    Poisoned,
    /// The store could not be read or reloaded: the message says why.
    Store(String),
}

/// One replica's public state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub node_id: u64,
    pub state: ReplicaState,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: &'static str,
    pub term: u64,
    pub leader_id: Option<u64>,
    /// Whether this replica sees a leader that a majority acknowledges (see [`sees_quorum`]).
    pub quorum: bool,
    /// The last log index this replica knows to be committed (as openraft saved it).
    pub commit_index: u64,
    pub last_applied: u64,
    /// Transitions in the verified history: the latest transition's index + 1; 0 while fresh.
    pub manifest_generation: u64,
    /// The latest transition's hash, hex.
    pub latest_transition: Option<String>,
    pub fault: Option<Fault>,
    /// How long the Raft core has not answered a request (0 while it answers each sample's ping).
    /// Metrics alone cannot tell: a wedged core leaves its last metrics in place.
    pub raft_core_silent_ms: u64,
}

/// Takes a sample of `node`. `log` is a handle on the same Raft log the node's Raft instance writes.
pub fn take<S: Store>(node: &Node<S>, log: &LogStore) -> Sample {
    let m = node.raft.metrics().borrow().clone();
    let mut fault = None;
    if let Err(e) = node.refresh_now() {
        fault = Some(Fault::Store(e.to_string()));
    }
    let (state, generation, latest) = if node.replica.is_poisoned() {
        fault = Some(Fault::Poisoned);
        (ReplicaState::Recovering, 0, None)
    } else {
        match node.replica.read() {
            Ok(core) => (
                core.state(),
                core.chain().map_or(0, |c| c.len() as u64),
                core.chain().map(|c| c.latest_hash().to_string()),
            ),
            Err(_) => {
                fault = Some(Fault::Poisoned);
                (ReplicaState::Recovering, 0, None)
            }
        }
    };
    let last_applied = m.last_applied.map_or(0, |l| l.index);
    let commit_index = match log.committed_index() {
        Ok(c) => c.unwrap_or(0).max(last_applied),
        Err(e) => {
            fault.get_or_insert(Fault::Store(e.to_string()));
            last_applied
        }
    };
    Sample {
        node_id: node.id,
        state,
        role: role_name(m.state),
        term: m.current_term,
        leader_id: m.current_leader,
        quorum: sees_quorum(m.state, m.current_leader, m.millis_since_quorum_ack),
        commit_index,
        last_applied,
        manifest_generation: generation,
        latest_transition: latest,
        fault,
        raft_core_silent_ms: 0,
    }
}

/// How long a sample waits for the Raft core to answer its ping: a core that does not answer within it
/// is counted as silent until it answers one.
pub const CORE_PING_WAIT: Duration = Duration::from_secs(2);

/// Samples `node` every [`SAMPLE_EVERY`] until the beacon stops, on the runtime that serves the APIs:
/// if that runtime is wedged, the samples stop and the liveness probe notices.
pub async fn keep_sampling<S: Store>(node: Arc<Node<S>>, log: LogStore, beacon: Arc<Beacon>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut core_answered = tokio::time::Instant::now();
    let mut pending: Option<tokio::task::JoinHandle<Sample>> = None;
    let mut last: Option<Sample> = None;
    loop {
        tick.tick().await;
        // A request through the Raft core's own loop: answered whatever the quorum, the role or the
        // replica state, unless the core is stuck.
        let ping = node.raft.with_raft_state(|_| ());
        if let Ok(Ok(())) = tokio::time::timeout(CORE_PING_WAIT, ping).await {
            core_answered = tokio::time::Instant::now();
        }
        // Off the runtime: a reload after many applied transitions parses each of them. A sample
        // reads the store and the core's lock, which a wedged Raft core can hold (a write waiting
        // on a flush that never returns): the runtime then still publishes, the last state with the
        // core's silence growing, so liveness names the Raft core instead of a wedged runtime. At
        // most one sample is in flight: a stuck one is not joined by another thread each tick.
        if pending.is_none() {
            let (n, l) = (node.clone(), log.clone());
            pending = Some(tokio::task::spawn_blocking(move || take(&n, &l)));
        }
        let fresh = match pending.as_mut() {
            Some(task) => match tokio::time::timeout(SAMPLE_WAIT, task).await {
                Ok(joined) => {
                    pending = None;
                    joined.ok()
                }
                Err(_) => None,
            },
            None => None,
        };
        let stuck = fresh.is_none();
        if let Some(sample) = fresh {
            last = Some(sample);
        }
        let Some(mut sample) = last.clone() else {
            continue;
        };
        if stuck {
            // Not ready while the store or the core's lock does not answer.
            sample.fault.get_or_insert(Fault::Store(format!(
                "reading the replica's state has not finished within {} s (the store or the \
                 Raft core is stuck)",
                SAMPLE_WAIT.as_secs()
            )));
        }
        sample.raft_core_silent_ms = core_answered.elapsed().as_millis() as u64;
        beacon.publish(sample);
    }
}

/// How long the sampler waits for one sample of the store and the core before it publishes the
/// last one again (with the Raft core's silence brought up to date).
pub const SAMPLE_WAIT: Duration = Duration::from_secs(2);

/// The Raft role as `concord status` names it.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// Whether a replica sees a working majority: a leader acknowledged by a majority within
/// `QUORUM_ACK_WITHIN_MS`, or a follower or learner that knows its leader (a follower forgets the
/// leader and becomes a candidate when heartbeats stop).
pub fn sees_quorum(state: ServerState, leader: Option<u64>, millis_since_ack: Option<u64>) -> bool {
    match state {
        ServerState::Leader => millis_since_ack.is_some_and(|ms| ms <= QUORUM_ACK_WITHIN_MS),
        ServerState::Follower | ServerState::Learner => leader.is_some(),
        ServerState::Candidate | ServerState::Shutdown => false,
    }
}

/// The `/health` document.
pub fn health_json(s: &Sample) -> serde_json::Value {
    serde_json::json!({
        "node_id": s.node_id,
        "state": s.state.as_str(),
        "role": s.role,
        "term": s.term,
        "leader_id": s.leader_id,
        "quorum": s.quorum,
        "commit_index": s.commit_index,
        "last_applied": s.last_applied,
        "manifest_generation": s.manifest_generation,
        "latest_transition": s.latest_transition,
        "raft_core_silent_ms": s.raft_core_silent_ms,
        "fault": s.fault.as_ref().map(|f| match f {
            Fault::Poisoned => "the state lock is poisoned".to_string(),
            Fault::Store(m) => m.clone(),
        }),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A sample of a healthy replica in `state`, for the probe and exposition tests.
    pub(crate) fn sample(state: ReplicaState) -> Sample {
        Sample {
            node_id: 2,
            state,
            role: "follower",
            term: 3,
            leader_id: Some(1),
            quorum: true,
            commit_index: 7,
            last_applied: 7,
            manifest_generation: if state == ReplicaState::Fresh { 0 } else { 2 },
            latest_transition: None,
            fault: None,
            raft_core_silent_ms: 0,
        }
    }

    #[test]
    fn quorum_is_a_fresh_ack_for_a_leader_and_a_known_leader_for_a_follower() {
        assert!(sees_quorum(ServerState::Leader, Some(1), Some(40)));
        assert!(!sees_quorum(ServerState::Leader, Some(1), Some(5_000)));
        assert!(!sees_quorum(ServerState::Leader, Some(1), None));
        assert!(sees_quorum(ServerState::Follower, Some(1), None));
        assert!(!sees_quorum(ServerState::Follower, None, None));
        assert!(!sees_quorum(ServerState::Candidate, None, None));
    }

    #[test]
    fn health_names_every_field() {
        let j = health_json(&sample(ReplicaState::Ready));
        for key in [
            "node_id",
            "state",
            "role",
            "term",
            "leader_id",
            "quorum",
            "commit_index",
            "last_applied",
            "manifest_generation",
        ] {
            assert!(j.get(key).is_some(), "{key} missing from {j}");
        }
        assert_eq!(j["state"], "ready");
        assert_eq!(j["leader_id"], 1);
    }
}
