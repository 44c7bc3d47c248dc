//! End to end against the real binaries: set, verify, owner-authorized updates, compare-and-swap,
//! idempotent re-set, external signing, the initializer, restart.

use concord_tests::{Env, describe, have, read, stdout_line};

#[test]
fn set_verify_update_and_initializer() {
    let env = Env::new();
    let c = env.start_coordinator("c1");

    // The first manifest, authorized by an owner key it lists; the seed shares come back, one file
    // per owner.
    let out = env.set(&c, "manifest-v1.json", &["--owner-key", "owner.pem"]);
    assert!(out.status.success(), "{}", describe(&out));
    let first = stdout_line(&out);
    assert_eq!(first.len(), 64, "{}", describe(&out));
    for i in 0..3 {
        assert!(env.path(&format!("shares/seed-share-{i}.json")).exists());
    }

    // Re-setting the same manifest is a no-op that returns the latest transition.
    let again = env.set(&c, "manifest-v1.json", &["--owner-key", "owner.pem"]);
    assert!(again.status.success(), "{}", describe(&again));
    assert_eq!(stdout_line(&again), first);
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing changed"));

    // The initializer attests and gets its files, in Contrast's layout, secrets 0400.
    let init = env.initializer(&c, "web.policy", "web", "manifest-v1.json", 30);
    assert!(init.status.success(), "{}", describe(&init));
    for f in [
        "tls-config/key.pem",
        "tls-config/certChain.pem",
        "tls-config/mesh-ca.pem",
        "tls-config/coordinator-root-ca.pem",
        "secrets/workload-secret-seed",
    ] {
        assert!(env.path("web").join(f).exists(), "{f} missing");
    }
    use std::os::unix::fs::PermissionsExt;
    for f in ["tls-config/key.pem", "secrets/workload-secret-seed"] {
        let mode = std::fs::metadata(env.path("web").join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o400, "{f}");
    }
    for f in [
        "tls-config/certChain.pem",
        "tls-config/mesh-ca.pem",
        "tls-config/coordinator-root-ca.pem",
    ] {
        let mode = std::fs::metadata(env.path("web").join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o444, "{f}");
    }
    // Running the initializer again (a restarted pod) overwrites its files.
    let again = env.initializer(&c, "web.policy", "web", "manifest-v1.json", 30);
    assert!(again.status.success(), "{}", describe(&again));
    let secret = String::from_utf8(read(&env.path("web/secrets/workload-secret-seed"))).unwrap();
    assert_eq!(hex::decode(secret.trim()).unwrap().len(), 32);

    // Verify: writes the bundle, which audits clean offline.
    let v = env.verify(&c, "manifest-v1.json", "verify1", &[]);
    assert!(v.status.success(), "{}", describe(&v));
    assert_eq!(stdout_line(&v), first);
    let root = hex::encode(env.d.root.hash());
    let audit = env.concord(&[
        "history",
        "audit",
        "verify1/history.json",
        "--insecure-simulated-root",
        &root,
    ]);
    assert!(audit.status.success(), "{}", describe(&audit));

    // An update without an owner key is a usage error; with a stranger's key it is refused.
    let unsigned = env.set(&c, "manifest-v2.json", &[]);
    assert_eq!(unsigned.status.code(), Some(2), "{}", describe(&unsigned));
    let out = env.concord(&["keygen", "owner", "-o", "stranger.pem"]);
    assert!(out.status.success());
    let stranger = env.set(&c, "manifest-v2.json", &["--owner-key", "stranger.pem"]);
    assert_eq!(stranger.status.code(), Some(1), "{}", describe(&stranger));
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("PermissionDenied"),
        "{}",
        describe(&stranger)
    );

    // With the owner key: accepted.
    let second = env.set(
        &c,
        "manifest-v2.json",
        &["--owner-key", "owner.pem", "--expect-latest", &first],
    );
    assert!(second.status.success(), "{}", describe(&second));
    let second_hash = stdout_line(&second);
    assert_ne!(second_hash, first);

    // A stale expected previous: FailedPrecondition, nothing changed.
    let stale = env.set(
        &c,
        "manifest-v3.json",
        &["--owner-key", "owner.pem", "--expect-latest", &first],
    );
    assert_eq!(stale.status.code(), Some(1), "{}", describe(&stale));
    let err = String::from_utf8_lossy(&stale.stderr);
    assert!(
        err.contains("FailedPrecondition") && err.contains("previous transition mismatch"),
        "{err}"
    );

    // verify --since the first: an ancestor, fine; since an unknown hash: exit 3.
    let v2 = env.verify(&c, "manifest-v2.json", "verify2", &["--since", &first]);
    assert!(v2.status.success(), "{}", describe(&v2));
    assert_eq!(stdout_line(&v2), second_hash);
    let fork = env.verify(
        &c,
        "manifest-v2.json",
        "verify3",
        &["--since", &"ab".repeat(32)],
    );
    assert_eq!(fork.status.code(), Some(3), "{}", describe(&fork));

    // The workload that is not in the manifest gets nothing.
    let refused = env.initializer(&c, "stranger.policy", "stranger", "manifest-v1.json", 2);
    assert!(!refused.status.success());
    assert!(!env.path("stranger/tls-config/certChain.pem").exists());

    // External signing: prepare, sign with openssl, set with the signature.
    if have("openssl") {
        let prep = env.concord(&[
            "sign",
            "--prepare",
            "-m",
            "manifest-v3.json",
            "--expect-latest",
            &second_hash,
            "--out",
            "to-sign.bin",
        ]);
        assert!(prep.status.success(), "{}", describe(&prep));
        let sig = std::process::Command::new("openssl")
            .args([
                "pkeyutl",
                "-sign",
                "-rawin",
                "-inkey",
                "owner.pem",
                "-in",
                "to-sign.bin",
                "-out",
                "sig.bin",
            ])
            .current_dir(env.dir.path())
            .output()
            .unwrap();
        assert!(sig.status.success(), "{}", describe(&sig));
        let public = hex::encode(env.d.owner.verifying_key().as_bytes());
        let third = env.set(
            &c,
            "manifest-v3.json",
            &[
                "--signature",
                "sig.bin",
                "--owner-public-key",
                &public,
                "--expect-latest",
                &second_hash,
            ],
        );
        assert!(third.status.success(), "{}", describe(&third));
        assert_eq!(
            stdout_line(&third),
            stdout_line(&prep),
            "the transition is the one prepared"
        );
    }
}

/// Issue 9.1: the first manifest needs an owner authorization by a key it lists; `concord set` says so
/// before sending anything, and the external signing flow works for it (`--expect-latest none`).
#[test]
fn the_first_manifest_is_authorized_by_its_own_owner_key_also_signed_externally() {
    let env = Env::new();
    let c = env.start_coordinator("c1");
    let unsigned = env.set(&c, "manifest-v1.json", &[]);
    assert_eq!(unsigned.status.code(), Some(2), "{}", describe(&unsigned));
    assert!(
        String::from_utf8_lossy(&unsigned.stderr).contains("--owner-key"),
        "{}",
        describe(&unsigned)
    );

    let prep = env.concord(&[
        "sign",
        "--prepare",
        "-m",
        "manifest-v1.json",
        "--expect-latest",
        "none",
        "--out",
        "first.bin",
    ]);
    assert!(prep.status.success(), "{}", describe(&prep));
    let sig = env.concord(&["sign", "--message", "first.bin", "--owner-key", "owner.pem"]);
    assert!(sig.status.success(), "{}", describe(&sig));
    let public = hex::encode(env.d.owner.verifying_key().as_bytes());
    let first = env.set(
        &c,
        "manifest-v1.json",
        &[
            "--signature",
            &stdout_line(&sig),
            "--owner-public-key",
            &public,
            "--expect-latest",
            "none",
        ],
    );
    assert!(first.status.success(), "{}", describe(&first));
    assert_eq!(
        stdout_line(&first),
        stdout_line(&prep),
        "the first transition is the one prepared"
    );
    // The audit bundle's index 0 carries that authorization.
    let v = env.verify(&c, "manifest-v1.json", "verify", &[]);
    assert!(v.status.success(), "{}", describe(&v));
    let bundle: serde_json::Value =
        serde_json::from_slice(&read(&env.path("verify/history.json"))).unwrap();
    assert_eq!(bundle["transitions"][0]["owner_key"], public.as_str());
}

/// Starts `c1`, sets the first manifest (owner-signed) and stops it: a store holding one transition.
fn store_one_transition(env: &Env) {
    let mut c = env.start_coordinator("c1");
    assert!(
        env.set(&c, "manifest-v1.json", &["--owner-key", "owner.pem"])
            .status
            .success()
    );
    c.stop();
}

/// Starts a coordinator on `c1`'s store, which must refuse to start; returns what it said.
fn refused_start(env: &Env, log: &str) -> String {
    concord_cli::process::CoordinatorProcess::start(
        &env.path("c1"),
        &env.path(log),
        &env.flags("coordinator.policy"),
    )
    .expect_err("a tampered store must not be served")
    .message
}

#[test]
fn restart_verifies_the_store_and_refuses_a_tampered_one() {
    let env = Env::new();
    store_one_transition(&env);

    // Restarted on the same store: verifies it, then is recovering (the secrets were only in memory).
    let c = env.start_coordinator("c1");
    let set = env.set(&c, "manifest-v1.json", &["--owner-key", "owner.pem"]);
    assert_eq!(set.status.code(), Some(1), "{}", describe(&set));
    assert!(
        String::from_utf8_lossy(&set.stderr).contains("recovering"),
        "{}",
        describe(&set)
    );
    drop(c);

    // The host flips a byte of the stored manifest: the replica refuses to start and says why.
    {
        use concord_coordinator::store::{Key, SledStore, Store};
        let store = SledStore::open(&env.path("c1/store")).unwrap();
        let h = concord_tests::Hash::of(&env.d.manifest(1));
        let mut m = store.get(&Key::Object(h)).unwrap().unwrap();
        m[5] ^= 0x20;
        store.tamper_put(&Key::Object(h), &m).unwrap();
    }
    let err = refused_start(&env, "c1-tampered.log");
    assert!(err.contains("does not verify"), "{err}");
}

/// The host edits the history's objects file itself, below the store's API (a byte of the stored
/// manifest flipped, so its record's checksum fails): the replica refuses to start and says the
/// file was damaged, and it never serves the manifest.
#[test]
fn a_replica_refuses_to_start_on_an_objects_file_edited_on_disk() {
    let env = Env::new();
    store_one_transition(&env);

    let path = env.path("c1/store/objects");
    let mut file = std::fs::read(&path).unwrap();
    let manifest = env.d.manifest(1);
    let at = file
        .windows(manifest.len())
        .position(|w| w == manifest.as_slice())
        .expect("the manifest is in the objects file");
    file[at + manifest.len() / 2] ^= 0x20;
    std::fs::write(&path, &file).unwrap();

    let err = refused_start(&env, "c1-edited.log");
    // The manifest's record comes first, and the transition's follows it: not the torn end a
    // crash leaves, so the file is refused whole.
    assert!(
        err.contains("fails its checksum") && err.contains("damaged on disk"),
        "{err}"
    );
}
