//! A membership authorization in the log: checked by the state machine against the membership
//! configuration that precedes it there, so it holds once, at one place, and never after the
//! membership moved (issue 9, item 4).

use std::collections::BTreeMap;

use ed25519_dalek::Signer;
use openraft::{Entry, EntryPayload};

use super::{Disk, History, apply_one, command_entry, log_id, membership_entry};
use crate::history::format::members_message;
use crate::raft::{AuthorizeMembers, Command, CommandResponse, TypeConfig};

fn authorize(history: &History, at: u64, n: u64) -> AuthorizeMembers {
    let members: BTreeMap<u64, String> = (0..n).map(|i| (i, format!("r{i}:7778"))).collect();
    let latest = *history.hashes.last().unwrap();
    let owner = &history.deployment.owner;
    AuthorizeMembers {
        membership_index: at,
        owner_signature: owner
            .sign(&members_message(&latest, at, &members))
            .to_bytes()
            .to_vec(),
        members,
        owner_key: owner.verifying_key().to_bytes(),
    }
}

fn entry(index: u64, cmd: AuthorizeMembers) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Command::AuthorizeMembers(cmd)),
    }
}

#[tokio::test]
async fn an_authorization_holds_at_its_membership_and_never_after_it_moved() {
    let history = History::new(1);
    let disk = Disk::new();
    let (log, mut sm) = disk.open();
    apply_one(&mut sm, membership_entry(1, &[0, 1, 2])).await;
    apply_one(&mut sm, command_entry(2, history.command(0))).await;

    let grow = authorize(&history, 1, 5);
    assert_eq!(
        apply_one(&mut sm, entry(3, grow.clone())).await,
        CommandResponse::Authorized {
            membership_index: 1
        }
    );
    // The change itself moves the membership; the same authorization is refused from then on.
    apply_one(&mut sm, membership_entry(4, &[0, 1, 2, 3, 4])).await;
    match apply_one(&mut sm, entry(5, grow.clone())).await {
        CommandResponse::Rejected { reason } => {
            assert!(reason.contains("used already"), "{reason}")
        }
        other => panic!("a replayed authorization was {other:?}"),
    }
    // Rewritten to name the membership of now, it no longer carries the owner's signature.
    let rewritten = AuthorizeMembers {
        membership_index: 4,
        ..grow
    };
    match apply_one(&mut sm, entry(6, rewritten)).await {
        CommandResponse::Rejected { reason } => {
            assert!(reason.contains("does not verify"), "{reason}")
        }
        other => panic!("a rewritten authorization was {other:?}"),
    }
    // A fresh one at index 4 holds, and survives a restart of the state machine (the membership it
    // is checked against is persisted with the applied log id).
    drop(sm);
    drop(log);
    let disk = disk.reopen();
    let (_log, mut sm) = disk.open();
    assert_eq!(
        apply_one(&mut sm, entry(7, authorize(&history, 4, 3))).await,
        CommandResponse::Authorized {
            membership_index: 4
        }
    );
}

#[tokio::test]
async fn no_authorization_before_a_manifest_or_by_a_stranger() {
    let history = History::new(1);
    let disk = Disk::new();
    let (_log, mut sm) = disk.open();
    apply_one(&mut sm, membership_entry(1, &[0, 1, 2])).await;
    assert!(matches!(
        apply_one(&mut sm, entry(2, authorize(&history, 1, 5))).await,
        CommandResponse::Rejected { .. }
    ));
    apply_one(&mut sm, command_entry(3, history.command(0))).await;
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let mut cmd = authorize(&history, 1, 5);
    cmd.owner_key = stranger.verifying_key().to_bytes();
    match apply_one(&mut sm, entry(4, cmd)).await {
        CommandResponse::Rejected { reason } => {
            assert!(reason.contains("not listed"), "{reason}")
        }
        other => panic!("a stranger's authorization was {other:?}"),
    }
}
