//! `Beacon`: what the replica tells the health thread: its phase (starting, serving, stopping) and its
//! latest [`Sample`] with the instant it was taken.
//!
//! Owns that hand-over and nothing else. Must never hold its lock across anything slower than a copy:
//! the health thread reads it for every probe.

use std::sync::Mutex;
use std::time::Instant;

use super::sample::Sample;

/// Where the replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening and verifying the store, starting Raft, binding the API ports.
    Starting,
    /// The store verified and every API port listening.
    Serving,
    /// Shutdown requested: draining.
    Stopping,
}

/// The phase and the latest sample, as one value the probes decide on.
#[derive(Debug, Clone)]
pub struct View {
    pub phase: Phase,
    /// The latest sample and when it was taken.
    pub latest: Option<(Sample, Instant)>,
}

/// Shared between the replica's runtime (writer) and the health thread (reader).
#[derive(Debug)]
pub struct Beacon {
    inner: Mutex<View>,
}

impl Default for Beacon {
    fn default() -> Beacon {
        Beacon {
            inner: Mutex::new(View {
                phase: Phase::Starting,
                latest: None,
            }),
        }
    }
}

impl Beacon {
    pub fn publish(&self, sample: Sample) {
        self.with(|v| v.latest = Some((sample, Instant::now())));
    }

    /// Moves to `phase`; never back from stopping.
    pub fn set_phase(&self, phase: Phase) {
        self.with(|v| {
            if v.phase != Phase::Stopping {
                v.phase = phase;
            }
        });
    }

    pub fn view(&self) -> View {
        self.with(|v| v.clone())
    }

    fn with<T>(&self, f: impl FnOnce(&mut View) -> T) -> T {
        // The view is replaced whole under the lock, so a panic elsewhere cannot leave it half-written:
        // a poisoned lock still holds a consistent value.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}
