//! `seed_share`: everything a seed share goes through. The share file (`concord-seed-share-v1`, parsed
//! by `concord recover`) and the `EncryptedShare` JSON, decrypted with a fixed owner key; the decrypted
//! version 1 binary share (what the coordinator's Recover takes); and combining several of them.
//!
//! The input is read every way at once: as a share file, as a binary share, and as a run of
//! [`SHARE_LEN`]-byte binary shares to combine.

use concord_cli::cmd::recover::parse_share_file;
use concord_mesh_ca::{
    EncryptedShare, SHARE_LEN, SeedShare, ShareOwnerKeyPair, combine, decrypt_share,
};

/// The owner key the seed corpus's share files are encrypted to (the secret of the HPKE
/// interoperability vector in `mesh-ca/src/shares.rs`).
pub const OWNER_SECRET: [u8; 32] = [0x42; 32];

pub fn run(data: &[u8]) {
    for share in decrypted(data) {
        let _ = combine(&[share]);
    }

    let _ = SeedShare::from_bytes(data);
    let shares: Vec<SeedShare> = data
        .chunks(SHARE_LEN)
        .filter_map(|chunk| SeedShare::from_bytes(chunk).ok())
        .collect();
    if let Ok(engine) = combine(&shares) {
        // What the coordinator does next with a recovered seed: derive the history's signing key.
        let _ = engine.transition_signing_key();
    }
}

/// The shares `data` opens to with the owner key [`OWNER_SECRET`], read as a share file and as
/// `EncryptedShare` JSON.
pub fn decrypted(data: &[u8]) -> Vec<SeedShare> {
    let owner = ShareOwnerKeyPair::from_secret_bytes(OWNER_SECRET);
    [
        parse_share_file(data).ok(),
        serde_json::from_slice::<EncryptedShare>(data).ok(),
    ]
    .iter()
    .flatten()
    .filter_map(|enc| decrypt_share(&owner, enc).ok())
    .collect()
}
