//! `witness_request`: what `concord witness` does with the body of an unauthenticated
//! `POST /add-checkpoint` (C2SP tlog-witness): the request parser, the signed-note and checkpoint
//! parsers, and the witness's decision against an empty state and against one that cosigned size 3.
//! The state is in memory: the server's fsync is not part of the target.

use concord_coordinator::Hash;
use concord_coordinator::history::note::{Checkpoint, SignedNote};
use concord_coordinator::witness::{AddCheckpoint, Cosigned, Witness, WitnessState};
use ed25519_dalek::SigningKey;

/// The log the target's witness follows: the seeds are signed by this key under this origin.
pub const ORIGIN: &str = "example.test/log";
pub const LOG_SECRET: [u8; 32] = [42; 32];

fn witness() -> Witness {
    Witness {
        name: "fuzz.test/witness".into(),
        key: SigningKey::from_bytes(&[4; 32]),
        logs: [(
            ORIGIN.to_string(),
            SigningKey::from_bytes(&LOG_SECRET).verifying_key(),
        )]
        .into(),
    }
}

/// Whether the witness cosigns `data` from an empty state (the valid seeds must be).
pub fn accepted(data: &[u8]) -> bool {
    let Ok(req) = AddCheckpoint::parse(data) else {
        return false;
    };
    witness()
        .add_checkpoint(&WitnessState::default(), &req, 1_700_000_000)
        .is_ok()
}

pub fn run(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Checkpoint::parse_body(text);
        if let Ok(note) = SignedNote::parse(text) {
            let key = SigningKey::from_bytes(&LOG_SECRET).verifying_key();
            let _ = note.verify_checkpoint(ORIGIN, &key);
            let _ = note.cosignature_time("fuzz.test/witness", &key);
            let _ = note.encode();
        }
    }
    let Ok(req) = AddCheckpoint::parse(data) else {
        return;
    };
    let w = witness();
    let _ = w.add_checkpoint(&WitnessState::default(), &req, 1_700_000_000);
    let mut state = WitnessState::default();
    state.logs.insert(
        ORIGIN.to_string(),
        Cosigned {
            size: 3,
            root: Hash::of(b"a tree of three"),
        },
    );
    let _ = w.add_checkpoint(&state, &req, 1_700_000_000);
}
