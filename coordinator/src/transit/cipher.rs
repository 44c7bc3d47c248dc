//! Vault's `aes256-gcm96` ciphertexts: `vault:v<N>:<base64(nonce (12 bytes) || ciphertext || tag (16 bytes))>`,
//! AES-256-GCM with a random 96-bit nonce per encryption and the caller's `associated_data` as AAD.
//!
//! Owns the format and the AEAD calls; pure but for the random nonce. Keys come in as wiped-on-drop
//! bytes and the cipher (its key schedule) is wiped when dropped (`aes` with `zeroize`).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;
use zeroize::Zeroizing;

/// Vault's prefix of every ciphertext.
pub const PREFIX: &str = "vault:v";
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;

/// Why a ciphertext was refused. The messages are Vault's, so clients that match on them still work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    #[error("invalid ciphertext: no prefix")]
    NoPrefix,
    #[error("invalid ciphertext: wrong number of fields")]
    Fields,
    #[error("invalid ciphertext: version number could not be decoded")]
    Version,
    #[error("invalid ciphertext: could not decode base64")]
    Base64,
    #[error("invalid ciphertext: too short")]
    TooShort,
    #[error("cipher: message authentication failed")]
    Authentication,
    #[error("failed to encrypt the plaintext")]
    Encrypt,
}

/// A ciphertext's version and its raw bytes (nonce, ciphertext and tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub version: u32,
    pub blob: Vec<u8>,
}

/// Splits `vault:v<N>:<base64>`.
pub fn parse(ciphertext: &str) -> Result<Parsed, CipherError> {
    let rest = ciphertext
        .strip_prefix(PREFIX)
        .ok_or(CipherError::NoPrefix)?;
    let (version, b64) = rest.split_once(':').ok_or(CipherError::Fields)?;
    if b64.contains(':') {
        return Err(CipherError::Fields);
    }
    let version: u32 = version.parse().map_err(|_| CipherError::Version)?;
    if version == 0 || !version.to_string().eq(version_text(rest)) {
        return Err(CipherError::Version);
    }
    let blob = STANDARD.decode(b64).map_err(|_| CipherError::Base64)?;
    if blob.len() < NONCE_BYTES + TAG_BYTES {
        return Err(CipherError::TooShort);
    }
    Ok(Parsed { version, blob })
}

fn version_text(rest: &str) -> &str {
    rest.split(':').next().unwrap_or_default()
}

/// Encrypts `plaintext` under `key` (version `version`), binding `aad`.
pub fn seal(
    key: &Zeroizing<[u8; 32]>,
    version: u32,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<String, CipherError> {
    let mut nonce = [0u8; NONCE_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|_| CipherError::Encrypt)?;
    let cipher = Aes256Gcm::new(key.as_ref().into());
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CipherError::Encrypt)?;
    let mut blob = Vec::with_capacity(NONCE_BYTES + sealed.len());
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&sealed);
    Ok(format!("{PREFIX}{version}:{}", STANDARD.encode(blob)))
}

/// Decrypts a parsed ciphertext with the key of its version. The plaintext is wiped when dropped.
pub fn open(
    key: &Zeroizing<[u8; 32]>,
    parsed: &Parsed,
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CipherError> {
    let (nonce, sealed) = parsed.blob.split_at(NONCE_BYTES);
    let cipher = Aes256Gcm::new(key.as_ref().into());
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
        .map(Zeroizing::new)
        .map_err(|_| CipherError::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Zeroizing<[u8; 32]> {
        Zeroizing::new([b; 32])
    }

    #[test]
    fn seal_then_open_round_trips_and_names_the_version() {
        let ct = seal(&key(1), 7, b"hello", b"ad").unwrap();
        assert!(ct.starts_with("vault:v7:"), "{ct}");
        let p = parse(&ct).unwrap();
        assert_eq!(p.version, 7);
        assert_eq!(p.blob.len(), 12 + 5 + 16);
        assert_eq!(open(&key(1), &p, b"ad").unwrap().as_slice(), b"hello");
        // Fresh nonce every time.
        assert_ne!(ct, seal(&key(1), 7, b"hello", b"ad").unwrap());
    }

    #[test]
    fn a_wrong_key_aad_or_flipped_bit_fails_authentication() {
        let ct = seal(&key(1), 1, b"hello", b"ad").unwrap();
        let p = parse(&ct).unwrap();
        assert_eq!(open(&key(2), &p, b"ad"), Err(CipherError::Authentication));
        assert_eq!(
            open(&key(1), &p, b"other"),
            Err(CipherError::Authentication)
        );
        for i in 0..p.blob.len() {
            let mut q = p.clone();
            q.blob[i] ^= 1;
            assert_eq!(open(&key(1), &q, b"ad"), Err(CipherError::Authentication));
        }
    }

    #[test]
    fn malformed_ciphertexts_are_refused_with_vaults_messages() {
        assert_eq!(parse("nope"), Err(CipherError::NoPrefix));
        assert_eq!(parse("vault:v1"), Err(CipherError::Fields));
        assert_eq!(parse("vault:v1:a:b"), Err(CipherError::Fields));
        assert_eq!(parse("vault:vx:AAAA"), Err(CipherError::Version));
        assert_eq!(parse("vault:v0:AAAA"), Err(CipherError::Version));
        assert_eq!(parse("vault:v01:AAAA"), Err(CipherError::Version));
        assert_eq!(parse("vault:v+1:AAAA"), Err(CipherError::Version));
        assert_eq!(parse("vault:v1:%%%"), Err(CipherError::Base64));
        assert_eq!(parse("vault:v1:AAAA"), Err(CipherError::TooShort));
    }

    #[test]
    fn matches_an_independent_aes_gcm() {
        // The same nonce, key and AAD through ring (the TLS stack's AES-GCM) give the same bytes.
        let k = key(9);
        let ct = seal(&k, 1, b"interop", b"x").unwrap();
        let p = parse(&ct).unwrap();
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, k.as_ref()).unwrap();
        let less_safe = ring::aead::LessSafeKey::new(unbound);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(&p.blob[..12]).unwrap();
        let mut buf = p.blob[12..].to_vec();
        let plain = less_safe
            .open_in_place(nonce, ring::aead::Aad::from(b"x"), &mut buf)
            .unwrap();
        assert_eq!(plain, b"interop");
    }
}
