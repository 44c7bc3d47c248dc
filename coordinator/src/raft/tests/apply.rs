//! Applying commands: real transitions are written; anything that does not verify is rejected and
//! leaves the history as it was (Invariant 2 for what comes from Raft).

use openraft::storage::RaftStateMachine;

use super::{Disk, History, apply_one, command_entry, log_id, membership_entry};
use crate::hash::Hash;
use crate::history::{Ledger, Transition};
use crate::raft::{AppendTransition, CommandResponse, Genesis, StateMachine};
use crate::state::{Coordinator, ReplicaState};
use crate::store::Key;

#[tokio::test]
async fn a_first_and_a_second_transition_are_verified_and_written() {
    let history = History::new(2);
    let disk = Disk::new();
    let (_log, mut sm) = disk.open();

    let first = apply_one(&mut sm, command_entry(1, history.command(0))).await;
    assert_eq!(
        first,
        CommandResponse::Applied {
            hash: history.hashes[0]
        }
    );
    let second = apply_one(&mut sm, command_entry(2, history.command(1))).await;
    assert_eq!(
        second,
        CommandResponse::Applied {
            hash: history.hashes[1]
        }
    );

    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(2)));
    assert_eq!(sm.history().unwrap().chain.latest_hash(), history.hashes[1]);
    // What is on disk is the same history the coordinator wrote, and a replica opening it verifies it.
    drop(sm);
    let replica = Coordinator::open(disk.store.clone()).unwrap();
    assert_eq!(replica.state(), ReplicaState::Recovering);
    let chain = replica.chain().unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain.latest_hash(), history.hashes[1]);
    assert_eq!(
        chain.signing_key(),
        history.coordinator.chain().unwrap().signing_key()
    );
}

/// A replica catching up applies several transitions at once: their records reach the objects
/// file in one synced write, not one per transition, and the history is the same.
#[tokio::test]
async fn transitions_applied_together_sync_the_objects_file_once() {
    let history = History::new(4);
    let disk = Disk::new();
    let (_log, mut sm) = disk.open();
    apply_one(&mut sm, command_entry(1, history.command(0))).await;
    let before = disk.store.objects().syncs();
    let responses = sm
        .apply((1..4).map(|i| command_entry(i as u64 + 1, history.command(i))))
        .await
        .unwrap();
    assert_eq!(
        responses,
        (1..4)
            .map(|i| CommandResponse::Applied {
                hash: history.hashes[i]
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(disk.store.objects().syncs() - before, 1);
    assert_eq!(sm.history().unwrap().chain.latest_hash(), history.hashes[3]);
    drop(sm);
    let replica = Coordinator::open(disk.store.clone()).unwrap();
    assert_eq!(replica.chain().unwrap().latest_hash(), history.hashes[3]);
}

/// A tampered command, and what its rejection must say.
pub(super) struct Tamper {
    pub what: &'static str,
    pub reason: &'static str,
    pub cmd: AppendTransition,
}

fn resigned(cmd: &AppendTransition, f: impl FnOnce(&mut Transition)) -> AppendTransition {
    let mut t = Transition::decode(&cmd.transition).unwrap();
    f(&mut t);
    AppendTransition {
        transition: t.encode(),
        ..cmd.clone()
    }
}

pub(super) fn tampered_second_commands(history: &History) -> Vec<Tamper> {
    let good = history.command(1);
    let first = history.command(0);
    let other = History::new(2);
    vec![
        Tamper {
            what: "a flipped coordinator signature",
            reason: "the coordinator signature does not verify",
            cmd: resigned(&good, |t| {
                let mut sig = t.signature.to_bytes();
                sig[5] ^= 1;
                t.signature = ed25519_dalek::Signature::from_bytes(&sig);
            }),
        },
        Tamper {
            what: "a previous that is not the latest",
            reason: "previous is",
            cmd: resigned(&good, |t| t.previous = Hash([7; 32])),
        },
        Tamper {
            what: "an index that is not the next one",
            reason: "says it is index 5",
            cmd: resigned(&good, |t| t.index = 5),
        },
        Tamper {
            what: "manifest bytes that do not hash to the transition's manifest hash",
            reason: "the manifest hashes to",
            cmd: AppendTransition {
                manifest: history.deployment.manifest(9),
                ..good.clone()
            },
        },
        Tamper {
            what: "manifest bytes that do not parse",
            reason: "the manifest does not parse",
            cmd: AppendTransition {
                manifest: b"{not json".to_vec(),
                ..good.clone()
            },
        },
        Tamper {
            what: "the owner authorization dropped",
            reason: "no workload owner authorized",
            cmd: resigned(&good, |t| t.owner = None),
        },
        Tamper {
            what: "a transition signed by a key that is not the signing key",
            reason: "the coordinator signature does not verify",
            cmd: resigned(&good, |t| {
                let stranger = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
                t.signature = crate::history::format::sign_transition(&stranger, &t.hash());
            }),
        },
        Tamper {
            what: "a new signing key carried by a later transition",
            reason: "only the first transition may",
            cmd: AppendTransition {
                genesis: first.genesis.clone(),
                ..good.clone()
            },
        },
        Tamper {
            what: "a policy document the manifest does not list",
            reason: "which the manifest does not list",
            cmd: AppendTransition {
                policies: vec![b"a policy nobody listed".to_vec()],
                ..good.clone()
            },
        },
        Tamper {
            what: "a mesh CA intermediate that is not a certificate",
            reason: "the mesh CA intermediate certificate does not parse",
            cmd: {
                let mut cmd = good.clone();
                cmd.mesh.intermediate_der = b"not DER".to_vec();
                cmd
            },
        },
        Tamper {
            what: "a mesh CA issued by another deployment's root CA",
            reason: "not signed by the root CA",
            cmd: AppendTransition {
                mesh: other.command(1).mesh,
                ..good.clone()
            },
        },
    ]
}

/// `response` refuses `tamper`'s command for the reason it must give.
pub(super) fn assert_refused(response: CommandResponse, tamper: &Tamper) {
    match response {
        CommandResponse::Rejected { reason } => assert!(
            reason.contains(tamper.reason),
            "{}: the reason {reason:?} does not say {:?}",
            tamper.what,
            tamper.reason
        ),
        other => panic!("{} was not rejected: {other:?}", tamper.what),
    }
}

#[tokio::test]
async fn a_tampered_command_is_rejected_and_not_written() {
    let history = History::new(2);
    let disk = Disk::new();
    let (_log, mut sm) = disk.open();
    apply_one(&mut sm, command_entry(1, history.command(0))).await;
    let before = disk.history_dump();

    let mut index = 2;
    for tamper in tampered_second_commands(&history) {
        let response = apply_one(&mut sm, command_entry(index, tamper.cmd.clone())).await;
        assert_refused(response, &tamper);
        assert_eq!(
            disk.history_dump(),
            before,
            "{} changed the history on disk",
            tamper.what
        );
        // Rejected, yet applied in Raft's sense: the log moves on.
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(index)));
        index += 1;
    }
    assert_eq!(disk.latest(), Some(history.hashes[0]));

    // The untampered command still applies after all the rejections.
    let response = apply_one(&mut sm, command_entry(index, history.command(1))).await;
    assert_eq!(
        response,
        CommandResponse::Applied {
            hash: history.hashes[1]
        }
    );
    assert_eq!(disk.latest(), Some(history.hashes[1]));
}

#[tokio::test]
async fn a_first_transition_that_does_not_verify_is_rejected() {
    let history = History::new(1);
    let stranger = History::new(1);
    let disk = Disk::new();
    let (_log, mut sm) = disk.open();

    let without = AppendTransition {
        genesis: None,
        ..history.command(0)
    };
    let with_another_key = AppendTransition {
        genesis: Some(Genesis {
            signing_key: stranger.command(0).genesis.unwrap().signing_key,
            ..history.command(0).genesis.unwrap()
        }),
        ..history.command(0)
    };
    let mut broken_root = history.command(0);
    if let Some(genesis) = broken_root.genesis.as_mut() {
        // The last byte is in the certificate's signature.
        let last = genesis.root_ca_der.len() - 1;
        genesis.root_ca_der[last] ^= 1;
    }
    let without_policies = AppendTransition {
        policies: vec![],
        ..history.command(0)
    };
    let second_first = history_second_as_first();
    // Issue 9.1: the first transition is authorized by a key its own manifest lists.
    let unauthorized = resigned(&history.command(0), |t| t.owner = None);
    let stranger_key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let by_a_stranger = resigned(&history.command(0), |t| {
        t.owner = Some(crate::history::OwnerAuthorization {
            key: stranger_key.verifying_key(),
            signature: crate::history::format::sign_owner(&stranger_key, &t.hash()),
        })
    });
    for (what, cmd, reason) in [
        (
            "no owner authorization",
            unauthorized,
            "the first transition carries no owner authorization",
        ),
        (
            "an owner authorization by a key the manifest does not list",
            by_a_stranger,
            "is not listed in the first transition's own manifest",
        ),
        (
            "a root CA whose signature is broken",
            broken_root,
            "the root CA certificate is not self-signed",
        ),
        (
            "no signing key",
            without,
            "only a first transition can start a history",
        ),
        (
            "another deployment's signing key",
            with_another_key,
            "the coordinator signature does not verify",
        ),
        (
            "the policy documents left out",
            without_policies,
            "is neither carried nor stored",
        ),
        ("a second transition", second_first, "says it is index 1"),
    ] {
        match apply_one(&mut sm, command_entry(1, cmd)).await {
            CommandResponse::Rejected { reason: r } => {
                assert!(r.contains(reason), "{what}: {r:?}")
            }
            other => panic!("a first transition with {what} was not rejected: {other:?}"),
        }
        assert_eq!(disk.history_dump(), vec![], "{what} wrote something");
    }
    assert!(sm.history().is_none());
}

/// The second transition of a history, carrying the first's signing key and root CA as if it
/// started the history.
fn history_second_as_first() -> AppendTransition {
    let history = History::new(2);
    AppendTransition {
        genesis: history.command(0).genesis,
        ..history.command(1)
    }
}

/// A crash between writing the history and writing the applied log id makes openraft apply the
/// entry again after the restart: it must be answered as applied, and nothing written twice.
#[tokio::test]
async fn an_entry_applied_again_after_a_crash_is_answered_as_applied() {
    let history = History::new(1);
    let disk = Disk::new();
    {
        let (_log, mut sm) = disk.open();
        apply_one(&mut sm, command_entry(1, history.command(0))).await;
    }
    // The crash: the history was written, the applied log id was not.
    let (_log, sm) = disk.open();
    drop(sm);
    disk.store
        .db()
        .open_tree(crate::raft::SM_TREE)
        .unwrap()
        .clear()
        .unwrap();
    let before = disk.history_dump();

    let (_log, mut sm) = disk.open();
    assert_eq!(sm.applied_state().await.unwrap().0, None);
    let again = apply_one(&mut sm, command_entry(1, history.command(0))).await;
    assert_eq!(
        again,
        CommandResponse::Applied {
            hash: history.hashes[0]
        }
    );
    assert_eq!(disk.history_dump(), before);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1)));
}

#[tokio::test]
async fn membership_entries_are_recorded_and_blank_ones_change_nothing() {
    let disk = Disk::new();
    let (_log, mut sm) = disk.open();
    let response = apply_one(&mut sm, membership_entry(1, &[1, 2, 3])).await;
    assert_eq!(response, CommandResponse::NoCommand);
    let blank = openraft::testing::blank_ent::<crate::raft::TypeConfig>(1, 0, 2);
    assert_eq!(apply_one(&mut sm, blank).await, CommandResponse::NoCommand);
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(2)));
    assert_eq!(membership.log_id(), &Some(log_id(1)));
    assert_eq!(membership.voter_ids().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(disk.history_dump(), vec![]);
}

/// A state machine refuses to open on a history the host edited, as `Coordinator::open` does.
#[tokio::test]
async fn a_state_machine_does_not_open_on_a_tampered_history() {
    let history = History::new(1);
    let disk = Disk::new();
    {
        let (_log, mut sm) = disk.open();
        apply_one(&mut sm, command_entry(1, history.command(0))).await;
    }
    let manifest = history.new_transition(0).transition.manifest_hash;
    let ledger = Ledger::new(disk.store.clone());
    let mut bytes = ledger.object(&manifest).unwrap().unwrap();
    bytes[3] ^= 1;
    disk.store
        .tamper_put(&Key::Object(manifest), &bytes)
        .unwrap();
    let err = StateMachine::open(&disk.store).unwrap_err().to_string();
    assert!(err.contains("does not verify"), "{err}");
}

/// The log store starts early checks of what it appends (`raft::early`); a verdict reached for the
/// genuine command at an index never lets a different command at that index through: each tampered
/// command is refused for the same reason as without early checks, and the genuine one then applies
/// with its verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_verdict_never_lets_another_command_through() {
    use openraft::storage::RaftLogStorageExt;

    let history = History::new(2);
    let disk = Disk::new();
    let (mut log, mut sm) = disk.open();
    let early = sm.early_checks();
    // As the leader of the entries' term (`log_id` names node 0).
    log.check_early(early.clone(), 0);
    apply_one(&mut sm, command_entry(1, history.command(0))).await;
    let before = disk.history_dump();

    let mut index = 2;
    for tamper in tampered_second_commands(&history) {
        // The genuine command was appended (and checked early) at this index; the tampered one is
        // what gets applied there, as if the log had been edited in between.
        early.start(index, &history.command(1));
        early.settle();
        let response = apply_one(&mut sm, command_entry(index, tamper.cmd.clone())).await;
        assert_refused(response, &tamper);
        assert_eq!(disk.history_dump(), before, "{}", tamper.what);
        index += 1;
    }
    assert_eq!(early.used(), 0);

    // Appended through the log store by the leader, the genuine command is checked early and
    // applied with it; appended by a follower (another leader's entry), it is verified at apply.
    let follower = openraft::LogId::new(openraft::CommittedLeaderId::new(1, 7), index);
    log.blocking_append([openraft::Entry {
        log_id: follower,
        payload: openraft::EntryPayload::Normal(crate::raft::Command::Append(history.command(1))),
    }])
    .await
    .unwrap();
    assert_eq!(early.pending(), 0, "a follower's append starts no checks");
    log.blocking_append([command_entry(index, history.command(1))])
        .await
        .unwrap();
    early.settle();
    let response = apply_one(&mut sm, command_entry(index, history.command(1))).await;
    assert_eq!(
        response,
        CommandResponse::Applied {
            hash: history.hashes[1]
        }
    );
    assert_eq!(early.used(), 1);
    assert_eq!(disk.latest(), Some(history.hashes[1]));
}

/// The feed-before-store rule (`VerifiedFeed::push`): every appended transition is in the feed
/// before the store shows it, so a catch-up that finds the store at a transition finds it in the
/// feed too and knows it was applied. The genesis transition starts the history and is not fed.
#[tokio::test]
async fn an_appended_transition_is_in_the_feed_before_the_store_shows_it() {
    let history = History::new(4);
    let disk = Disk::new();
    let (_log, mut sm) = disk.open();
    apply_one(&mut sm, command_entry(1, history.command(0))).await;
    apply_one(&mut sm, command_entry(2, history.command(1))).await;
    sm.apply((2..4).map(|i| command_entry(i as u64 + 1, history.command(i))))
        .await
        .unwrap();
    let expected: Vec<(Hash, bool)> = history.hashes[1..4].iter().map(|h| (*h, true)).collect();
    assert_eq!(sm.fed_before_written[1..], expected[..]);
    assert_eq!(sm.fed_before_written[0], (history.hashes[0], false));
}
