//! Start-up over a stored history the host changed, against the real binary (issue 11.4): the
//! signatures of a history are checked in batches on every core now, and a batch that fails is
//! checked again one signature at a time. A bad signature in the middle of the line (which the hash
//! links do not cover: a transition's hash is over its manifest and predecessor only) must still stop
//! the replica before it serves, and the refusal must name that transition, as before batching.

use concord_coordinator::history::Transition;
use concord_coordinator::store::{Key, SledStore, Store};
use concord_tests::{Env, Hash, describe};

/// The transition at `index` of the stored line, with its hash.
fn stored_transition(store: &SledStore, index: u64) -> (Hash, Transition) {
    let latest = store
        .get(&Key::Latest)
        .unwrap()
        .expect("a latest transition");
    let mut cursor = Hash::from_slice(&latest).unwrap();
    loop {
        let bytes = store.get(&Key::Transition(cursor)).unwrap().unwrap();
        let t = Transition::decode(&bytes).unwrap();
        if t.index == index {
            return (cursor, t);
        }
        cursor = t.previous;
    }
}

/// Flips the first hex digit (in a signature: of its `R`) of the field `field` of the stored record
/// of transition `hash`.
fn flip_hex_field(store: &SledStore, hash: Hash, field: &str) {
    let bytes = store.get(&Key::Transition(hash)).unwrap().unwrap();
    let mut record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let value = record[field].as_str().expect("a hex field").to_string();
    let flipped = if value.starts_with('0') { "1" } else { "0" };
    record[field] = format!("{flipped}{}", &value[1..]).into();
    store
        .tamper_put(
            &Key::Transition(hash),
            &serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
}

#[test]
fn a_bad_signature_in_the_middle_of_the_history_is_refused_before_serving() {
    let env = Env::new();
    let mut c = env.start_coordinator("c1");
    for manifest in ["manifest-v1.json", "manifest-v2.json", "manifest-v3.json"] {
        let out = env.set(&c, manifest, &["--owner-key", "owner.pem"]);
        assert!(out.status.success(), "{}", describe(&out));
    }
    c.stop();
    let data = c.data_dir.clone();
    let clean = env.path("c1-clean");
    copy_dir(&data, &clean);

    for field in ["signature", "owner_signature"] {
        std::fs::remove_dir_all(&data).unwrap();
        copy_dir(&clean, &data);
        {
            let store = SledStore::open(&data.join("store")).unwrap();
            let (hash, _) = stored_transition(&store, 1);
            flip_hex_field(&store, hash, field);
            // The line still links: the hash does not cover signatures.
            assert_eq!(stored_transition(&store, 2).1.previous, hash);
        }
        let err = c
            .restart(&env.flags("coordinator.policy"))
            .expect_err(&format!(
                "a replica whose history has a bad {field} in the middle must not serve"
            ));
        let expected = match field {
            "signature" => "transition 1: the coordinator signature does not verify",
            _ => "transition 1: the owner authorization does not verify",
        };
        for needed in ["refusing to serve the store", expected] {
            assert!(
                err.message.contains(needed),
                "with a bad {field} at transition 1, the refusal does not say {needed:?}: {}",
                err.message
            );
        }
    }

    // The untouched copy serves again (the test's own tampering is all that was refused).
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&clean, &data);
    c.restart(&env.flags("coordinator.policy"))
        .expect("the untouched history serves");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
