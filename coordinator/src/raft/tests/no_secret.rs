//! Invariant 1 for the Raft log and snapshots: what a replica replicates and writes to the untrusted
//! disk carries no secret, in any encoding the log uses.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use concord_mesh_ca::{combine, decrypt_share};
use openraft::storage::{RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine};

use super::{Disk, History, apply_one, command_entry};

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn no_log_entry_or_snapshot_carries_a_secret() {
    let history = History::new(2);
    let shares: Vec<_> = history
        .seed_shares
        .iter()
        .zip(&history.deployment.share_owners)
        .map(|(enc, owner)| decrypt_share(owner, enc).unwrap())
        .collect();
    let engine = combine(&shares).unwrap();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("the seed", engine.seed().as_bytes().to_vec()),
        ("the salt", engine.salt().as_bytes().to_vec()),
        (
            "the signing key",
            engine.transition_signing_key().to_bytes().to_vec(),
        ),
        (
            "the root CA key",
            engine.root_ca_key().unwrap().to_bytes().to_vec(),
        ),
        (
            "a workload secret",
            engine.workload_secret("default/web").to_vec(),
        ),
        ("a seed share", shares[0].value.to_vec()),
    ];

    let disk = Disk::new();
    let (mut log, mut sm) = disk.open();
    let entries = vec![
        command_entry(1, history.command(0)),
        command_entry(2, history.command(1)),
    ];
    log.blocking_append(entries.clone()).await.unwrap();
    for entry in entries {
        apply_one(&mut sm, entry).await;
    }
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    // The log as stored (JSON) and the snapshot as sent, and every byte field of the commands and of
    // the snapshot decoded from its base64, so that no encoding can hide a secret from the search.
    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    haystacks.push((
        "the Raft log's file".into(),
        std::fs::read(disk.log_dir().join(crate::raft::wal::FILE)).unwrap(),
    ));
    let snapshot = snapshot.snapshot.into_inner();
    let content: serde_json::Value = serde_json::from_slice(&snapshot).unwrap();
    for item in content["history"].as_array().unwrap() {
        for field in ["key", "value"] {
            let bytes = STANDARD.decode(item[field].as_str().unwrap()).unwrap();
            haystacks.push(("a snapshot item".into(), bytes));
        }
    }
    haystacks.push(("the snapshot".into(), snapshot));
    for i in 0..2 {
        let cmd = history.command(i);
        let mut fields = vec![cmd.transition, cmd.manifest, cmd.mesh.mesh_ca_der];
        fields.push(cmd.mesh.intermediate_der);
        fields.extend(cmd.policies);
        if let Some(g) = cmd.genesis {
            fields.push(g.signing_key.to_vec());
            fields.push(g.root_ca_der);
        }
        haystacks.extend(fields.into_iter().map(|f| (format!("command {i}"), f)));
    }
    assert!(haystacks.len() > 10);
    for (where_, hay) in &haystacks {
        for (what, secret) in &secrets {
            assert!(!contains(hay, secret), "{what} is in {where_}");
            assert!(
                !contains(hay, hex::encode(secret).as_bytes()),
                "{what} is in {where_}, hex-encoded"
            );
        }
    }
}
