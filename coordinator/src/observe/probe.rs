//! The three probe decisions, as pure functions of the replica's [`View`] and the current instant.
//!
//! - startup: the store opened and verified, and every API port listens;
//! - liveness: the process is healthy: the replica's runtime keeps publishing samples and its state lock
//!   is not poisoned. It never fails for lack of quorum, while fresh or while recovering: restarting a
//!   replica for those reasons cannot help, and a restarted replica loses its secrets;
//! - readiness: the replica is `ready` (it holds the secrets of the latest transition it knows and
//!   serves the mesh API). Quorum does not enter into it: see [`readiness`].
//!
//! Owns these decisions and their one-line reasons. Must never do I/O or look at anything but the view.

use std::time::{Duration, Instant};

use super::beacon::{Phase, View};
use super::sample::{Fault, Sample};
use crate::state::ReplicaState;

/// Liveness fails when the replica's runtime has published no sample for this long: twenty missed
/// samples, far beyond any pause a busy two-core machine causes.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// Liveness fails when the Raft core has not answered a ping for this long (it answers without quorum,
/// while fresh and while recovering; it is busy at most for one log flush or one batch).
pub const RAFT_CORE_STALLED_AFTER: Duration = Duration::from_secs(30);

/// A probe's answer: HTTP 200 when `ok`, else 503; the reason is the body, one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub reason: String,
}

impl Verdict {
    fn ok(reason: impl Into<String>) -> Verdict {
        Verdict {
            ok: true,
            reason: reason.into(),
        }
    }

    fn fail(reason: impl Into<String>) -> Verdict {
        Verdict {
            ok: false,
            reason: reason.into(),
        }
    }
}

pub fn startup(view: &View) -> Verdict {
    match view.phase {
        Phase::Starting => {
            Verdict::fail("starting: opening and verifying the store, binding the API ports")
        }
        Phase::Serving | Phase::Stopping => {
            Verdict::ok("started: the store verified and the API ports listen")
        }
    }
}

pub fn liveness(view: &View, now: Instant) -> Verdict {
    if view.phase == Phase::Starting {
        // Kubernetes does not ask before the startup probe passed; a starting replica is alive.
        return Verdict::ok("alive: starting");
    }
    let Some((sample, at)) = &view.latest else {
        return Verdict::fail("the replica has not published its state yet");
    };
    if let Some(stale) = stale_for(*at, now) {
        return Verdict::fail(format!(
            "the replica's runtime has published no state for {} s: it is wedged; restart it",
            stale.as_secs()
        ));
    }
    if sample.fault == Some(Fault::Poisoned) {
        return Verdict::fail(
            "the state lock is poisoned (a request handler panicked): restart the replica",
        );
    }
    if sample.raft_core_silent_ms >= RAFT_CORE_STALLED_AFTER.as_millis() as u64 {
        return Verdict::fail(format!(
            "the Raft core has not answered for {} s: it is stalled; restart the replica",
            sample.raft_core_silent_ms / 1000
        ));
    }
    Verdict::ok(format!("alive: {}", sample.state.as_str()))
}

/// Ready means: this replica holds the secrets of the latest transition it knows, so it can issue mesh
/// certificates and serve verified reads. It stays ready without a quorum: the mesh API issues
/// certificates from those secrets without consensus, and the manifest cannot change without a
/// quorum, so workloads keep starting through a majority outage. Writes and linearizable reads
/// (`concord set`, `concord verify`) answer Unavailable meanwhile, which the reason line says. Readiness
/// is routing, not a security boundary: the peer Service publishes not-ready pods too.
pub fn readiness(view: &View, now: Instant) -> Verdict {
    match view.phase {
        Phase::Starting => return Verdict::fail("starting: the store is not open yet"),
        Phase::Stopping => return Verdict::fail("shutting down"),
        Phase::Serving => {}
    }
    let Some((sample, at)) = &view.latest else {
        return Verdict::fail("the replica has not published its state yet");
    };
    if let Some(stale) = stale_for(*at, now) {
        return Verdict::fail(format!(
            "the replica's state is {} s old: its runtime is wedged",
            stale.as_secs()
        ));
    }
    match &sample.fault {
        Some(Fault::Poisoned) => return Verdict::fail("the state lock is poisoned"),
        Some(Fault::Store(e)) => return Verdict::fail(format!("the store cannot be read: {e}")),
        None => {}
    }
    match sample.state {
        ReplicaState::Fresh => {
            Verdict::fail("fresh: no manifest yet; set the first one with `concord set`")
        }
        ReplicaState::Recovering => Verdict::fail(format!(
            "recovering: this replica lacks the secrets of transition {}; it fetches them from a ready \
             peer, or after a full outage needs seed shares (`concord recover`)",
            sample.manifest_generation.saturating_sub(1)
        )),
        ReplicaState::Ready => Verdict::ok(ready_reason(sample)),
    }
}

fn ready_reason(s: &Sample) -> String {
    let tail = s.manifest_generation.saturating_sub(1);
    if s.quorum {
        format!("ready: serving transition {tail}")
    } else {
        format!(
            "ready: serving transition {tail}; no quorum: certificates are issued, but manifest \
             updates and linearizable reads wait for a majority of replicas"
        )
    }
}

fn stale_for(at: Instant, now: Instant) -> Option<Duration> {
    let age = now.saturating_duration_since(at);
    (age > STALE_AFTER).then_some(age)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::sample::tests::sample;

    fn serving(s: Sample, age: Duration) -> (View, Instant) {
        let at = Instant::now();
        (
            View {
                phase: Phase::Serving,
                latest: Some((s, at)),
            },
            at + age,
        )
    }

    fn fresh_sample(state: ReplicaState) -> (View, Instant) {
        serving(sample(state), Duration::from_millis(300))
    }

    #[test]
    fn starting_fails_startup_and_readiness_but_not_liveness() {
        let v = View {
            phase: Phase::Starting,
            latest: None,
        };
        let now = Instant::now();
        assert!(!startup(&v).ok);
        assert!(liveness(&v, now).ok);
        assert!(!readiness(&v, now).ok);
    }

    #[test]
    fn each_replica_state_is_alive_and_only_ready_is_ready() {
        for (state, ready, reason) in [
            (ReplicaState::Fresh, false, "fresh"),
            (ReplicaState::Recovering, false, "recovering"),
            (ReplicaState::Ready, true, "ready"),
        ] {
            let (v, now) = fresh_sample(state);
            assert!(startup(&v).ok, "{state:?}");
            assert!(liveness(&v, now).ok, "{state:?}");
            let r = readiness(&v, now);
            assert_eq!(r.ok, ready, "{state:?}: {r:?}");
            assert!(r.reason.starts_with(reason), "{r:?}");
            assert!(!r.reason.contains('\n'), "one line: {r:?}");
        }
    }

    #[test]
    fn without_quorum_a_ready_replica_stays_alive_and_ready_and_says_so() {
        for state in [
            ReplicaState::Fresh,
            ReplicaState::Recovering,
            ReplicaState::Ready,
        ] {
            let mut s = sample(state);
            s.quorum = false;
            s.leader_id = None;
            s.role = "candidate";
            let (v, now) = serving(s, Duration::ZERO);
            assert!(liveness(&v, now).ok, "{state:?}");
            let r = readiness(&v, now);
            assert_eq!(r.ok, state == ReplicaState::Ready, "{r:?}");
            if r.ok {
                assert!(r.reason.contains("no quorum"), "{r:?}");
            }
        }
    }

    #[test]
    fn a_wedged_runtime_fails_liveness_and_readiness() {
        let (v, now) = serving(sample(ReplicaState::Ready), STALE_AFTER * 2);
        let l = liveness(&v, now);
        assert!(!l.ok && l.reason.contains("wedged"), "{l:?}");
        assert!(!readiness(&v, now).ok);
    }

    #[test]
    fn a_poisoned_lock_fails_liveness_and_a_store_error_only_readiness() {
        let mut s = sample(ReplicaState::Ready);
        s.fault = Some(Fault::Poisoned);
        let (v, now) = serving(s, Duration::ZERO);
        assert!(!liveness(&v, now).ok);
        assert!(!readiness(&v, now).ok);

        let mut s = sample(ReplicaState::Ready);
        s.fault = Some(Fault::Store("sled: io error".into()));
        let (v, now) = serving(s, Duration::ZERO);
        assert!(liveness(&v, now).ok);
        let r = readiness(&v, now);
        assert!(!r.ok && r.reason.contains("sled: io error"), "{r:?}");
    }

    #[test]
    fn stopping_is_not_ready_but_started_and_alive() {
        let (mut v, now) = fresh_sample(ReplicaState::Ready);
        v.phase = Phase::Stopping;
        assert!(startup(&v).ok);
        assert!(liveness(&v, now).ok);
        assert_eq!(readiness(&v, now).reason, "shutting down");
    }

    #[test]
    fn a_stalled_raft_core_fails_liveness_but_a_slow_one_or_a_lost_quorum_does_not() {
        for state in [
            ReplicaState::Fresh,
            ReplicaState::Recovering,
            ReplicaState::Ready,
        ] {
            let mut s = sample(state);
            s.quorum = false;
            s.raft_core_silent_ms = 5_000;
            let (v, now) = serving(s.clone(), Duration::ZERO);
            assert!(liveness(&v, now).ok, "{state:?}: a busy core is alive");
            s.raft_core_silent_ms = RAFT_CORE_STALLED_AFTER.as_millis() as u64;
            let (v, now) = serving(s, Duration::ZERO);
            let l = liveness(&v, now);
            assert!(!l.ok, "{state:?}");
            assert!(
                l.reason.contains("Raft core has not answered for 30 s"),
                "{l:?}"
            );
        }
    }
}
