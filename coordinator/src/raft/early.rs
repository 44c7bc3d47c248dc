//! `EarlyChecks`: a transition's signatures and certificates are verified while its log entry is
//! flushed and replicated, so that applying it only checks its place in the history (issue 11.3).
//!
//! The log store hands every appended [`AppendTransition`] to [`EarlyChecks::start`], which checks it
//! on the background threads (`crate::background`, at a lower CPU priority), off the Raft core and the
//! state machine, while the entry is being written, sent and acknowledged: time the replica otherwise
//! spends waiting for the disk and the network.
//! The state machine then takes the verdict with [`EarlyChecks::take`] when it applies the entry. A
//! check that has not started by then is run by the state machine itself; one still running is not
//! waited for: the background threads run only when nothing else wants a core (`SCHED_IDLE`), so the
//! state machine, at normal priority, verifies the command in full instead, at the cost it would
//! have without early checks, and the background verdict is dropped when it comes.
//!
//! A follower's state machine starts the checks of the transitions another replica led when it applies
//! them (`StateMachine::check_others_early`), and takes each verdict with [`EarlyChecks::take_within`],
//! which waits for the background threads up to a bound first: no commit waits for a follower's apply,
//! so its verification can give way to the work that one does, but never for longer than the bound.
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

use std::sync::{Arc, Mutex, MutexGuard};
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
    /// Notified when the checks are over (`run`).
    over: std::sync::Condvar,
    bytes: usize,
}

/// Which checks a new start replaces.
#[derive(Debug, Clone, Copy)]
enum Replace {
    /// Those at its index and after: the log was truncated there.
    FromIndex,
    /// Only one at its index.
    AtIndex,
}

/// What became of a command's early checks when the state machine wanted their verdict.
#[derive(Debug)]
enum Outcome {
    Done(Box<Verdict>),
    /// Under way on a background thread: not waited for.
    Running,
    /// Never started, or it panicked.
    Gone,
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
        self.over.notify_all();
    }

    /// The verdict, waiting up to `wait` for a background thread to start and finish the checks;
    /// then as [`Slot::verdict`]: run here if still not started, not waited for if under way.
    fn verdict_within(&self, wait: Duration) -> Outcome {
        let deadline = std::time::Instant::now() + wait;
        let mut state = self.lock();
        while matches!(*state, State::Queued(..) | State::Running) {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .over
                .wait_timeout(state, deadline - now)
                .map_or_else(|p| p.into_inner().0, |(s, _)| s);
        }
        drop(state);
        self.verdict()
    }

    /// Drops the checks if they have not started: nobody will ask for the verdict.
    fn cancel(&self) {
        let mut state = self.lock();
        if matches!(*state, State::Queued(..)) {
            *state = State::Gone;
        }
    }

    /// The verdict, run here if not started. One under way is not waited for: a background thread
    /// runs only when no other thread wants its core, so waiting for it could take as long as the
    /// cores stay busy, while running the checks here costs what they cost.
    fn verdict(&self) -> Outcome {
        self.run();
        let mut state = self.lock();
        match std::mem::replace(&mut *state, State::Gone) {
            State::Done(verdict) => Outcome::Done(verdict),
            State::Running => {
                *state = State::Running;
                Outcome::Running
            }
            State::Queued(..) | State::Gone => Outcome::Gone,
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
    /// Checks `take` found still under way, and did not wait for.
    running: u64,
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
        self.start_at(index, cmd, Replace::FromIndex);
    }

    /// As [`EarlyChecks::start`], for an entry that another replica led, as it is applied
    /// (`StateMachine::check_others_early`): the checks started for later entries stay, since a
    /// replica that became the leader has appended its own after the ones it applies from before.
    pub fn start_at_apply(&self, index: u64, cmd: &AppendTransition) {
        self.start_at(index, cmd, Replace::AtIndex);
    }

    fn start_at(&self, index: u64, cmd: &AppendTransition, replace: Replace) {
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
            match replace {
                // An entry appended again at an index replaces the one before (a truncated log).
                Replace::FromIndex => pending.remove_from(index),
                Replace::AtIndex => pending.remove_at(index),
            }
            if pending.slots.len() >= MAX_PENDING || pending.bytes + bytes > MAX_PENDING_BYTES {
                return;
            }
            let slot = Arc::new(Slot {
                state: Mutex::new(State::Queued(Box::new((cmd.clone(), anchors)))),
                over: std::sync::Condvar::new(),
                bytes,
            });
            pending.bytes += bytes;
            // In index order, which `find` relies on.
            let at = pending.slots.partition_point(|(i, _)| *i < index);
            pending.slots.insert(at, (index, slot.clone()));
            slot
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // At a lower priority than the work the commit waits for (`background`). Not queued
            // when the pool is full: `take` runs it.
            crate::background::spawn(move || slot.run());
        }
    }

    /// The early verdict for `cmd` at `index`, if one was started for exactly this command under
    /// exactly `anchors`, it passed, and it is reached: checks not started yet run here, checks under
    /// way are not waited for (None; the caller verifies in full). Forgets every verdict up to
    /// `index`, used or not. Counts what it found in the metrics (`concord_early_checks_total`).
    pub fn take(&self, index: u64, cmd: &AppendTransition, anchors: &Anchors) -> Option<Taken> {
        self.take_within(index, cmd, anchors, Duration::ZERO)
    }

    /// As [`EarlyChecks::take`], waiting up to `wait` for the background threads to reach the verdict.
    pub fn take_within(
        &self,
        index: u64,
        cmd: &AppendTransition,
        anchors: &Anchors,
        wait: Duration,
    ) -> Option<Taken> {
        let taken = self.find(index, cmd, anchors, wait);
        let outcome = match &taken {
            Ok(_) => "used",
            Err(Outcome::Running) => "running",
            Err(_) => "none",
        };
        crate::observe::global().early_check(outcome);
        let mut pending = self.lock();
        match taken {
            Ok(taken) => {
                pending.used += 1;
                Some(taken)
            }
            Err(Outcome::Running) => {
                pending.running += 1;
                None
            }
            Err(_) => None,
        }
    }

    fn find(
        &self,
        index: u64,
        cmd: &AppendTransition,
        anchors: &Anchors,
        wait: Duration,
    ) -> Result<Taken, Outcome> {
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
            found.ok_or(Outcome::Gone)?
        };
        let verdict = match slot.verdict_within(wait) {
            Outcome::Done(verdict) => verdict,
            other => return Err(other),
        };
        if verdict.cmd != *cmd || verdict.anchors != *anchors {
            return Err(Outcome::Gone);
        }
        let checked = verdict.checked.ok_or(Outcome::Gone)?;
        Ok(Taken {
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

    /// How many checks `take` found under way and did not wait for.
    pub fn running(&self) -> u64 {
        self.lock().running
    }

    /// Waits until the background threads finished every pending check, so that a test's `take`
    /// finds each one done. Only for checks started in a runtime (outside one nothing runs them).
    #[cfg(test)]
    pub fn settle(&self) {
        let slots: Vec<_> = self.lock().slots.iter().map(|(_, s)| s.clone()).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for slot in slots {
            while matches!(*slot.lock(), State::Queued(..) | State::Running) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the background threads did not finish a check within 30 s"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
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

    /// Forgets the slot at `index`, if any.
    fn remove_at(&mut self, index: u64) {
        if let Ok(at) = self.slots.binary_search_by_key(&index, |(i, _)| *i) {
            let (_, slot) = self.slots.remove(at);
            self.bytes -= slot.bytes;
            slot.cancel();
        }
    }
}

#[cfg(test)]
mod tests;
