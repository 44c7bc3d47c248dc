//! An early verdict is handed out only for the command and anchors it was reached for, only if every
//! check passed, and the pending checks stay bounded.

use super::{Anchors, EarlyChecks, MAX_PENDING};
use crate::history::Transition;
use crate::raft::AppendTransition;
use crate::raft::tests::History;

fn anchors_of(history: &History) -> Anchors {
    let (signing_key, root_ca_der) = history.new_transition(0).genesis.unwrap();
    Anchors {
        signing_key,
        root_ca_der: root_ca_der.into(),
    }
}

fn with_anchors(anchors: &Anchors) -> EarlyChecks {
    let early = EarlyChecks::default();
    early.set_anchors(Some(anchors.clone()));
    early
}

/// `cmd` with one bit of its coordinator signature flipped.
/// A history's anchors, its second transition's command, and early checks under those anchors.
fn second_transition_and_its_checks() -> (Anchors, AppendTransition, EarlyChecks) {
    let history = History::new(2);
    let anchors = anchors_of(&history);
    let early = with_anchors(&anchors);
    (anchors, history.command(1), early)
}

fn flipped(cmd: &AppendTransition) -> AppendTransition {
    let mut t = Transition::decode(&cmd.transition).unwrap();
    let mut signature = t.signature.to_bytes();
    signature[5] ^= 1;
    t.signature = ed25519_dalek::Signature::from_bytes(&signature);
    AppendTransition {
        transition: t.encode(),
        ..cmd.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_is_used_only_for_its_own_command_under_its_own_anchors() {
    let history = History::new(3);
    let anchors = anchors_of(&history);
    let good = history.command(1);

    let early = with_anchors(&anchors);
    early.start(2, &good);
    early.settle();
    let taken = early
        .take(2, &good, &anchors)
        .expect("a verdict for the genuine command");
    assert_eq!(taken.checked.new.transition.hash(), history.hashes[1]);
    assert_eq!(early.used(), 1);

    // The same index, another command (a tampered copy, or another transition): no verdict.
    for other in [flipped(&good), history.command(2)] {
        early.start(2, &good);
        early.settle();
        assert!(early.take(2, &other, &anchors).is_none());
    }
    // Another history's anchors: no verdict.
    let stranger = anchors_of(&History::new(1));
    early.start(2, &good);
    early.settle();
    assert!(early.take(2, &good, &stranger).is_none());
    // Another index: no verdict, and nothing started there.
    early.start(2, &good);
    early.settle();
    assert!(early.take(3, &good, &anchors).is_none());
    assert_eq!(early.used(), 1);
    assert_eq!(early.running(), 0, "every check was over when taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_fails_a_check_gets_no_verdict() {
    let history = History::new(2);
    let anchors = anchors_of(&history);
    let good = history.command(1);
    let mut foreign_mesh = good.clone();
    foreign_mesh.mesh = History::new(2).command(1).mesh;
    let mut unparsable = good.clone();
    unparsable.manifest = b"{not json".to_vec();

    let early = with_anchors(&anchors);
    for (what, bad) in [
        ("a flipped coordinator signature", flipped(&good)),
        ("a mesh CA under another root CA", foreign_mesh),
        ("a manifest that does not parse", unparsable),
    ] {
        early.start(2, &bad);
        early.settle();
        assert!(early.take(2, &bad, &anchors).is_none(), "{what}");
    }
    // Before the history has anchors, and for a first transition, nothing starts.
    let unanchored = EarlyChecks::default();
    unanchored.start(2, &good);
    assert!(unanchored.take(2, &good, &anchors).is_none());
    early.start(1, &history.command(0));
    early.settle();
    assert!(early.take(1, &history.command(0), &anchors).is_none());
    assert_eq!(early.used() + unanchored.used(), 0);
    assert_eq!(early.running(), 0, "every check was over when taken");
}

#[test]
fn checks_not_started_run_when_taken_and_the_pending_ones_are_bounded() {
    // Outside a runtime nothing runs the checks in the background: `take` runs them.
    let (anchors, good, early) = second_transition_and_its_checks();
    for index in 2..2 + MAX_PENDING as u64 + 3 {
        early.start(index, &good);
    }
    let last = 2 + MAX_PENDING as u64 - 1;
    let held: Vec<u64> = early.lock().slots.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        held,
        (2..=last).collect::<Vec<_>>(),
        "none started past the bound"
    );
    // Taking one forgets those before it; the one taken ran here.
    assert!(early.take(last, &good, &anchors).is_some());
    assert!(early.lock().slots.is_empty());
    assert_eq!(early.lock().bytes, 0);
    // An entry appended again at an index replaces the one before.
    early.start(5, &flipped(&good));
    early.start(5, &good);
    assert_eq!(early.lock().slots.len(), 1);
    assert!(early.take(5, &good, &anchors).is_some());
    assert_eq!(early.used(), 2);
}

/// A check still under way on a background thread is not waited for: `take` answers at once, without
/// a verdict, and the state machine verifies in full. The background threads run only when no other
/// thread wants a core, so a wait could last as long as the cores stay busy.
#[test]
fn a_check_under_way_is_not_waited_for() {
    let (anchors, good, early) = second_transition_and_its_checks();
    // Outside a runtime nothing takes the check; it is marked as taken by a background thread that
    // never finishes it.
    early.start(2, &good);
    let slot = early.lock().slots[0].1.clone();
    *slot.lock() = super::State::Running;

    let (tx, rx) = std::sync::mpsc::channel();
    let taking = early.clone();
    std::thread::spawn(move || {
        let _ = tx.send(taking.take(2, &good, &anchors).is_none());
    });
    let answered = rx.recv_timeout(std::time::Duration::from_secs(10));
    assert_eq!(
        answered,
        Ok(true),
        "take waited for a check under way, or found a verdict where none was reached"
    );
    assert_eq!((early.used(), early.running()), (0, 1));
    assert_eq!(early.pending(), 0, "the slot is forgotten");
}

/// `take_within` waits for a check under way, but only up to its bound: then it answers without a
/// verdict, and the state machine verifies in full at its own priority.
#[test]
fn a_check_under_way_is_waited_for_only_up_to_the_bound() {
    let (anchors, good, early) = second_transition_and_its_checks();
    early.start(2, &good);
    let slot = early.lock().slots[0].1.clone();
    *slot.lock() = super::State::Running;

    let wait = std::time::Duration::from_millis(50);
    let (tx, rx) = std::sync::mpsc::channel();
    let taking = early.clone();
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let taken = taking.take_within(2, &good, &anchors, wait).is_some();
        let _ = tx.send((taken, started.elapsed()));
    });
    let (taken, took) = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("take_within waited past its bound for a check that never ends");
    assert!(!taken, "a verdict where none was reached");
    assert!(took >= wait, "answered after {took:?}, before the bound");
    assert_eq!((early.used(), early.running()), (0, 1));
}

/// A wait ends as soon as the background thread is done, not at the bound.
#[test]
fn a_wait_for_a_verdict_ends_when_the_check_does() {
    let (anchors, good, early) = second_transition_and_its_checks();
    early.start(2, &good);
    let slot = early.lock().slots[0].1.clone();
    *slot.lock() = super::State::Running;
    let finishing = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(30));
        // As when the check panicked: over, and no verdict.
        *slot.lock() = super::State::Gone;
        slot.over.notify_all();
    });
    let started = std::time::Instant::now();
    let taken = early.take_within(2, &good, &anchors, std::time::Duration::from_secs(20));
    let took = started.elapsed();
    finishing.join().unwrap();
    assert!(
        taken.is_none(),
        "a check that ended without a verdict gives none"
    );
    assert!(
        took < std::time::Duration::from_secs(10),
        "the wait lasted {took:?}: it did not end with the check"
    );
    assert_eq!((early.used(), early.running()), (0, 0));
}

/// A check nobody has started by the bound is run by the one who waited, and its verdict used.
#[test]
fn a_check_not_started_by_the_bound_is_run_by_the_caller() {
    // Outside a runtime nothing runs it in the background.
    let (anchors, good, early) = second_transition_and_its_checks();
    early.start(2, &good);
    let wait = std::time::Duration::from_millis(20);
    let started = std::time::Instant::now();
    assert!(early.take_within(2, &good, &anchors, wait).is_some());
    assert!(started.elapsed() >= wait);
    assert_eq!(early.used(), 1);
}

/// A replica that became the leader applies entries from before its term after it appended its own:
/// starting the checks of one it applies keeps those of its own later entries, in index order.
#[test]
fn checks_started_at_apply_keep_the_later_ones_and_their_order() {
    let history = History::new(4);
    let anchors = anchors_of(&history);
    let early = with_anchors(&anchors);
    early.start(4, &history.command(3));
    early.start_at_apply(2, &flipped(&history.command(1)));
    // Applied again at the same index: only that one is replaced.
    early.start_at_apply(2, &history.command(1));
    early.start_at_apply(3, &history.command(2));
    let held: Vec<u64> = early.lock().slots.iter().map(|(i, _)| *i).collect();
    assert_eq!(held, [2, 3, 4]);
    for i in 1..4 {
        assert!(
            early
                .take(i as u64 + 1, &history.command(i), &anchors)
                .is_some(),
            "transition {i}'s verdict"
        );
    }
    assert_eq!(early.used(), 3);
    // A start from the log store still replaces everything from its index on (a truncated log).
    early.start_at_apply(6, &history.command(3));
    early.start(5, &history.command(2));
    assert_eq!(early.pending(), 1);
}
