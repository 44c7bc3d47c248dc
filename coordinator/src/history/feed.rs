//! `VerifiedFeed`: the transitions the Raft state machine just verified and applied, handed to the
//! replica's core in memory.
//!
//! Every replica verifies each appended transition when its state machine applies it. The core keeps
//! its own verified history and catches up after each apply; reading the new transition back from
//! the store, it would have to verify it again (the store is the host's disk: Invariant 2). The feed
//! lets it take the state machine's verdict instead: each entry carries the [`CheckedNext`] the state
//! machine's check produced, and [`VerifiedChain::push_checked`] accepts that verdict only for the
//! exact transition on a chain that ends where the checked one ended, else verifies in full. Bounded:
//! a core that fell further behind reads the store as before.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use super::chain::CheckedNext;
use super::transition::Transition;
use crate::hash::Hash;
use crate::manifest::Manifest;

/// How many applied transitions the feed keeps for the core to catch up with, and their bytes (the
/// manifests and policy documents as submitted) at most: a core more than that behind reads the store.
/// The core takes what it catches up with, so the feed usually holds one transition or none.
const CAPACITY: usize = 16;
const CAPACITY_BYTES: usize = 8 << 20;

/// One applied transition, as the state machine verified it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub transition: Transition,
    pub manifest: Manifest,
    /// What the state machine's check verified (`VerifiedChain::check_next`).
    pub checked: CheckedNext,
    /// The policy documents uploaded with it, by hash.
    pub policies: Vec<(Hash, Vec<u8>)>,
    /// The manifest's size as submitted, plus the documents': what this entry costs in memory.
    pub bytes: usize,
}

/// Shared between the state machine (which publishes) and the core (which takes).
#[derive(Debug, Clone)]
pub struct VerifiedFeed {
    queue: Arc<Mutex<VecDeque<Verified>>>,
    /// How many transitions were published: a reader waiting for the latest transition to change
    /// (GetManifests' `changed_from`) wakes on each, rather than polling.
    published: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for VerifiedFeed {
    fn default() -> Self {
        VerifiedFeed {
            queue: Arc::default(),
            published: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
}

impl VerifiedFeed {
    /// Adds an applied transition ([`VerifiedFeed::push`]) and wakes the subscribers
    /// ([`VerifiedFeed::announce`]).
    pub fn publish(&self, verified: Verified) {
        self.push(verified);
        self.announce();
    }

    /// Adds a transition the state machine is applying, dropping the oldest beyond [`CAPACITY`] or
    /// [`CAPACITY_BYTES`]. The state machine pushes it before it writes the transition to the store,
    /// so that any catch-up that finds the store at that transition finds it here too: a core that
    /// took it from the store instead could not tell it was applied (the leader then did not adopt
    /// the mesh CA its own write prepared, `Coordinator::adopt_prepared`). A core only takes the
    /// line up to the store's latest, so one pushed and not yet written is not taken.
    pub fn push(&self, verified: Verified) {
        let mut q = self.lock();
        q.push_back(verified);
        while q.len() > CAPACITY
            || (q.len() > 1 && q.iter().map(|v| v.bytes).sum::<usize>() > CAPACITY_BYTES)
        {
            q.pop_front();
        }
    }

    /// Wakes the subscribers: after the state machine wrote what it pushed to the store, so a core
    /// refreshed after the change sees it.
    pub fn announce(&self) {
        self.published.send_modify(|n| *n += 1);
    }

    /// Changes each time a transition is published: after the state machine wrote it to the store,
    /// so a core refreshed after the change sees it.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Takes the applied transitions that lead from the chain end `from` to the transition `to`,
    /// oldest first, if the feed holds that whole line (and drops what came before them); else None
    /// (also when `from` is `to`), and the feed is unchanged.
    pub fn take_between(&self, from: Hash, to: Hash) -> Option<Vec<Verified>> {
        let mut q = self.lock();
        let start = q.iter().position(|v| v.transition.previous == from)?;
        let mut end = from;
        let mut last = None;
        for (i, v) in q.iter().enumerate().skip(start) {
            if v.transition.previous != end {
                break;
            }
            end = v.transition.hash();
            if end == to {
                last = Some(i);
                break;
            }
        }
        let last = last?;
        let line = q.drain(..=last).skip(start).collect();
        Some(line)
    }

    /// Whether the feed holds the transition `hash`, without taking it.
    #[cfg(test)]
    pub(crate) fn holds(&self, hash: Hash) -> bool {
        self.lock().iter().any(|v| v.transition.hash() == hash)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Verified>> {
        // Pushes and pops only: a panic while holding it cannot leave it inconsistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
