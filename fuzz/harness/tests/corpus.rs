//! The fuzz corpus as a regression suite on stable: every file of `fuzz/corpus/TARGET/` through the
//! target's body (the same function `cargo fuzz run TARGET` calls), and the seeds that must get
//! through every check still do, so the targets keep reaching the deep code.

use std::path::{Path, PathBuf};

use concord_fuzz_harness::TARGETS;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target)
}

fn files(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_runs_through_its_target_without_a_panic() {
    for (target, run) in TARGETS {
        let files = files(target);
        assert!(
            files.len() >= 3,
            "fuzz/corpus/{target} holds {} files; commit its seed corpus",
            files.len()
        );
        for file in files {
            let data = std::fs::read(&file).unwrap();
            // A panic names the file: replay it with `cargo fuzz run TARGET FILE` or this test.
            eprintln!("{target}: {}", file.display());
            run(&data);
        }
    }
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = corpus_dir(target).join(format!("seed-{name}"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The valid seeds pass every check under the targets' fixed trust and times of check: otherwise the
/// fuzzer would start from inputs that are refused early and rarely reach the code behind the checks.
#[test]
fn valid_seeds_get_through_every_check() {
    use concord_fuzz_harness::{atls_evidence, audit_bundle, seed_share, snp_report};

    let bundle = seed("audit_bundle", "two-transitions");
    let [simulated, snp_only] = audit_bundle::options(&bundle);
    let report = concord_coordinator::history::audit::audit(&bundle, &simulated)
        .unwrap_or_else(|e| panic!("the seed bundle audits: {e}"));
    assert_eq!(report.chain.len(), 2);
    assert!(concord_coordinator::history::audit::audit(&bundle, &snp_only).is_err());

    for name in [
        "virtee-milan",
        "trustee-milan",
        "trustee-genoa",
        "azure-genoa",
        "azure-milan",
        "go-sev-guest-debug",
    ] {
        snp_report::verify(&seed("snp_report", name))
            .unwrap_or_else(|e| panic!("SNP seed {name} verifies: {e}"));
    }
    // The VLEK expired on 2025-12-10 (attestation/testdata/README.md); `snp_unchained` runs what follows.
    assert!(snp_report::verify(&seed("snp_report", "trustee-vlek")).is_err());
    assert!(snp_report::verify(&seed("snp_report", "report-only")).is_err());
    assert!(snp_report::verify(&seed("snp_report", "milan-report-turin-vcek")).is_err());

    assert!(concord_fuzz_harness::witness_request::accepted(&seed(
        "witness_request",
        "first-checkpoint"
    )));
    assert!(atls_evidence::accepted(&seed("atls_evidence", "simulated")));
    assert!(!atls_evidence::accepted(&seed(
        "atls_evidence",
        "simulated-other-nonce"
    )));
    assert!(!atls_evidence::accepted(&seed("atls_evidence", "snp")));
    assert!(!atls_evidence::accepted(&seed(
        "atls_evidence",
        "no-extension"
    )));

    let snapshot = seed("requests", "snapshot-data");
    assert!(concord_coordinator::fuzzing::snapshot_verifies(
        &snapshot[1..]
    ));

    // A share file is also EncryptedShare JSON (which ignores its `format`): two readings.
    assert_eq!(
        seed_share::decrypted(&seed("seed_share", "share-file")).len(),
        2
    );
    assert_eq!(
        seed_share::decrypted(&seed("seed_share", "encrypted-share")).len(),
        1
    );
}

/// The `objects_file` seed is a whole file the store wrote (a manifest, a transition record, a
/// policy document put and deleted) that reads back to its two live records, each under its name;
/// cut in its last record it still opens, without that record (the torn tail is what a crash
/// leaves); a changed byte is refused.
#[test]
fn the_objects_file_seed_replays_to_its_live_records() {
    use concord_coordinator::store::objects::{ObjectKey, replay_bytes};
    let records = replay_bytes(&seed("objects_file", "file")).unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    for (key, value) in &records {
        match key {
            ObjectKey::Object(h) => assert_eq!(concord_coordinator::Hash::of(value), *h),
            ObjectKey::Transition(h) => assert_eq!(
                concord_coordinator::history::Transition::decode(value)
                    .unwrap()
                    .hash(),
                *h
            ),
        }
    }
    // The tail cut is the delete's record: as if it had never been written, the policy is live.
    let torn = replay_bytes(&seed("objects_file", "torn-tail")).unwrap();
    assert_eq!(torn.len(), 3);
    let err = replay_bytes(&seed("objects_file", "damaged"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("checksum"), "{err}");
}

/// The `raft_log` seed is a whole log (vote, entries, a truncation, a purge, the zeros the file is
/// grown with) that replays to entries 2 and 3, so the fuzzer starts past the header and checksums.
#[test]
fn the_raft_log_seed_replays_to_its_live_entries() {
    let entries = concord_coordinator::raft::wal::replay_bytes(&seed("raft_log", "log")).unwrap();
    assert_eq!(entries.iter().map(|e| e.0).collect::<Vec<_>>(), vec![2, 3]);
    let err = concord_coordinator::raft::wal::replay_bytes(&seed("raft_log", "damaged"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("fails its checksum"), "{err}");
}
