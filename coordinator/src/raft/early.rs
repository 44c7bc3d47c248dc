//! `EarlyChecks`: a transition's signatures and certificates are verified while its log entry is
//! flushed and replicated, so that applying it only checks its place in the history (issue 11.3).
//!
//! The log store hands every appended [`AppendTransition`] to [`EarlyChecks::start`], which checks it
//! on the background threads (`crate::background`, at a lower CPU priority), off the Raft core and the
//! state machine, while the entry is being written, sent and acknowledged: time the replica otherwise
//! spends waiting for the disk and the network.
//! The state machine then takes the verdict with [`EarlyChecks::take`] when it applies the entry.
//!
//! What is checked early is a pure function of the command's bytes and of the two things a history
//! fixes at its first transition (the [`Anchors`]: the transition signing key and the root CA
//! certificate): decoding, the manifest's parse, the coordinator's and the owner's signatures, and the
//! mesh CA certificates under the root CA. What depends on where the transition goes (index, previous,
//! whether the owner key may authorize it, the policy documents) is checked at apply, as before.
//!
//! A verdict is only ever used for the very command it was reached for (equal bytes, sealed copies
//! and all) under the very anchors of the history that applies it; anything else is ignored and
//! verified in full, as is a command with no verdict (the first transition, a full queue, a check that
//! failed). So a verdict can never make the state machine accept what a fresh check would refuse; at
//! worst a missing one costs the time it would have saved.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;

use super::types::AppendTransition;
use crate::history::{NewTransition, VerifiedSignatures};
use crate::manifest::Manifest;

/// The most commands checked or waiting at once. A SetManifest has one in flight on each replica;
/// a follower that catches up gets many at a time, and those past the bound are verified at apply.
pub const MAX_PENDING: usize = 8;

/// The most bytes of commands (transition, manifest, policies) held at once by pending checks.
pub const MAX_PENDING_BYTES: usize = 8 << 20;

/// What a history fixes at its first transition, under which an early verdict is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchors {
    pub signing_key: VerifyingKey,
    pub root_ca_der: Arc<[u8]>,
}

/// A command that passed every early check, decoded.
#[derive(Debug)]
pub struct Checked {
    pub new: NewTransition,
    pub manifest: Manifest,
    pub signatures: VerifiedSignatures,
}

/// The early verdict on one command, with what it was reached for.
#[derive(Debug)]
struct Verdict {
    cmd: AppendTransition,
    anchors: Anchors,
    /// `None` if any check failed: the state machine then verifies in full, for its own reason.
    checked: Option<Checked>,
    took: Duration,
}

/// A verdict that [`EarlyChecks::take`] found for the command it was asked about.
#[derive(Debug)]
pub struct Taken {
    pub checked: Checked,
    /// The CPU time the early checks took (the replica's verification cost for this command).
    pub took: Duration,
}

#[derive(Debug)]
enum State {
    Queued(Box<(AppendTransition, Anchors)>),
    Running,
    Done(Box<Verdict>),
    Gone,
}

#[derive(Debug)]
struct Slot {
    state: Mutex<State>,
    done: Condvar,
    bytes: usize,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs the checks if nobody has started them yet.
    fn run(&self) {
        let (cmd, anchors) = {
            let mut state = self.lock();
            match std::mem::replace(&mut *state, State::Running) {
                State::Queued(job) => *job,
                other => {
                    *state = other;
                    return;
                }
            }
        };
        // A panic must not leave `take` waiting for ever (the state machine, and with it the Raft
        // core, would stop): then there is no verdict, and `apply` verifies in full.
        let verdict =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(cmd, anchors)));
        *self.lock() = match verdict {
            Ok(verdict) => State::Done(Box::new(verdict)),
            Err(_) => State::Gone,
        };
        self.done.notify_all();
    }

    /// Drops the checks if they have not started: nobody will ask for the verdict.
    fn cancel(&self) {
        let mut state = self.lock();
        if matches!(*state, State::Queued(..)) {
            *state = State::Gone;
        }
    }

    /// The verdict: run here if not started, waited for if running.
    fn verdict(&self) -> Option<Verdict> {
        self.run();
        let mut state = self.lock();
        loop {
            match std::mem::replace(&mut *state, State::Gone) {
                State::Done(verdict) => return Some(*verdict),
                State::Running => {
                    *state = State::Running;
                    state = self
                        .done
                        .wait(state)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                State::Queued(..) | State::Gone => return None,
            }
        }
    }
}

/// Every check of [`AppendTransition`] that needs nothing but the command and the anchors.
fn check(cmd: AppendTransition, anchors: Anchors) -> Verdict {
    // CPU time, not wall time: the background threads wait for the cores whenever other work wants
    // them, and that wait is not the checks' cost (`observe::thread_cpu_time`).
    let started = crate::observe::thread_cpu_time();
    let checked = (|| {
        let new = cmd.decode().ok()?;
        let manifest = Manifest::parse(&new.manifest_bytes).ok()?;
        let signatures = VerifiedSignatures::verify(&anchors.signing_key, &new.transition)?;
        super::state_machine::check_certificates(&new.mesh, &anchors.root_ca_der, false).ok()?;
        Some(Checked {
            new,
            manifest,
            signatures,
        })
    })();
    Verdict {
        cmd,
        anchors,
        checked,
        took: crate::observe::thread_cpu_time().saturating_sub(started),
    }
}

#[derive(Debug, Default)]
struct Pending {
    /// The anchors of the state machine's history; `None` before its first transition.
    anchors: Option<Anchors>,
    /// By log index, oldest first.
    slots: Vec<(u64, Arc<Slot>)>,
    bytes: usize,
    /// Verdicts used by `take`, for tests and the metrics.
    used: u64,
}

/// The early checks of one replica, shared by its log store and its state machine.
#[derive(Debug, Clone, Default)]
pub struct EarlyChecks {
    pending: Arc<Mutex<Pending>>,
}

impl EarlyChecks {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The anchors later commands are checked under: the state machine's, whenever its history
    /// starts or is replaced.
    pub fn set_anchors(&self, anchors: Option<Anchors>) {
        self.lock().anchors = anchors;
    }

    /// Starts checking `cmd`, appended at `index`, on the background threads (`crate::background`)
    /// when called in a runtime (outside one, `take` runs the checks). Does nothing for a first
    /// transition (it brings its own anchors), before the history has anchors, or when `MAX_PENDING`
    /// commands or `MAX_PENDING_BYTES` are pending.
    pub fn start(&self, index: u64, cmd: &AppendTransition) {
        if cmd.genesis.is_some() {
            return;
        }
        let bytes = cmd.transition.len()
            + cmd.manifest.len()
            + cmd.policies.iter().map(Vec::len).sum::<usize>();
        let slot = {
            let mut pending = self.lock();
            let Some(anchors) = pending.anchors.clone() else {
                return;
            };
            // An entry appended again at an index replaces the one before (a truncated log).
            pending.remove_from(index);
            if pending.slots.len() >= MAX_PENDING || pending.bytes + bytes > MAX_PENDING_BYTES {
                return;
            }
            let slot = Arc::new(Slot {
                state: Mutex::new(State::Queued(Box::new((cmd.clone(), anchors)))),
                done: Condvar::new(),
                bytes,
            });
            pending.bytes += bytes;
            pending.slots.push((index, slot.clone()));
            slot
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // At a lower priority than the work the commit waits for (`background`). Not queued
            // when the pool is full: `take` runs it.
            crate::background::spawn(move || slot.run());
        }
    }

    /// The early verdict for `cmd` at `index`, if one was started for exactly this command under
    /// exactly `anchors` and it passed; waits for checks under way, runs them here if they have not
    /// started. Forgets every verdict up to `index`, used or not.
    pub fn take(&self, index: u64, cmd: &AppendTransition, anchors: &Anchors) -> Option<Taken> {
        let slot = {
            let mut pending = self.lock();
            let mut found = None;
            while pending.slots.first().is_some_and(|(i, _)| *i <= index) {
                let (i, slot) = pending.slots.remove(0);
                pending.bytes -= slot.bytes;
                if i == index {
                    found = Some(slot);
                } else {
                    slot.cancel();
                }
            }
            found?
        };
        let verdict = slot.verdict()?;
        if verdict.cmd != *cmd || verdict.anchors != *anchors {
            return None;
        }
        let checked = verdict.checked?;
        self.lock().used += 1;
        Some(Taken {
            checked,
            took: verdict.took,
        })
    }

    /// How many checks are started and not taken yet.
    pub fn pending(&self) -> usize {
        self.lock().slots.len()
    }

    /// How many verdicts `take` has handed out.
    pub fn used(&self) -> u64 {
        self.lock().used
    }
}

impl Pending {
    /// Forgets the slots at `index` and after.
    fn remove_from(&mut self, index: u64) {
        let keep = self.slots.partition_point(|(i, _)| *i < index);
        for (_, slot) in self.slots.drain(keep..) {
            self.bytes -= slot.bytes;
            slot.cancel();
        }
    }
}

#[cfg(test)]
mod tests;
