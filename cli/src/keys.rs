//! Key files. Workload owner keys: Ed25519 in PKCS#8 PEM, so `openssl pkeyutl` can sign with them too.
//! Seed share owner keys: the X25519 secret in hex. Both are written with mode 0600.

use std::path::Path;

use concord_mesh_ca::ShareOwnerKeyPair;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::exit::{CliError, CliResult, Limit, read_file, write_file};

/// Makes a new workload owner key, writes it to `path`, returns it.
pub fn new_owner_key(path: &Path) -> CliResult<SigningKey> {
    let key = SigningKey::generate(&mut OsRng);
    write_file(path, owner_key_pem(&key).as_bytes(), true)?;
    Ok(key)
}

/// PKCS#8 v1 (RFC 8410) PEM of an Ed25519 key: the form every tool reads (OpenSSL 3.0 refuses the v2
/// form with the public key that ed25519-dalek writes).
pub fn owner_key_pem(key: &SigningKey) -> Zeroizing<String> {
    use base64::Engine;
    // SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32 bytes) } }
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = Zeroizing::new(PREFIX.to_vec());
    der.extend_from_slice(key.as_bytes());
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der.as_slice()));
    Zeroizing::new(format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        b64.as_str()
    ))
}

pub fn load_owner_key(path: &Path) -> CliResult<SigningKey> {
    // The key's text is secret: wiped when dropped.
    let text = Zeroizing::new(
        String::from_utf8(read_file(path, Limit::KEY)?)
            .map_err(|_| CliError::error(format!("{} is not a PEM file", path.display())))?,
    );
    SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        CliError::error(format!(
            "{} is not an Ed25519 private key in PKCS#8 PEM ({e}); make one with `concord keygen owner`",
            path.display()
        ))
    })
}

pub fn new_share_owner_key(path: &Path) -> CliResult<ShareOwnerKeyPair> {
    let key = ShareOwnerKeyPair::generate()
        .map_err(|e| CliError::error(format!("cannot make a key: {e}")))?;
    let mut text = Zeroizing::new(hex::encode(key.secret_bytes().as_slice()));
    text.push('\n');
    write_file(path, text.as_bytes(), true)?;
    Ok(key)
}

pub fn load_share_owner_key(path: &Path) -> CliResult<ShareOwnerKeyPair> {
    let text = Zeroizing::new(String::from_utf8(read_file(path, Limit::KEY)?).unwrap_or_default());
    let decoded = Zeroizing::new(hex::decode(text.trim()).unwrap_or_default());
    if decoded.len() != 32 {
        return Err(CliError::error(format!(
            "{} is not a seed share owner key (64 hex characters); make one with `concord keygen share-owner`",
            path.display()
        )));
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    bytes.copy_from_slice(&decoded);
    Ok(ShareOwnerKeyPair::from_secret_bytes(*bytes))
}
