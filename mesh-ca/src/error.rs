//! The crate's one error type.
//!
//! This module owns [`MeshCaError`]: every fallible function of the crate returns it, and each
//! message says what happened and what the reader can do about it. It must never carry secret
//! material (seeds, keys, share values, plaintexts) in a variant, since errors get logged and
//! sent to clients.

use thiserror::Error;

/// Everything that can go wrong in the seed engine, the CAs and the seed shares.
///
/// The variants are grouped by who is at fault: the platform (entropy), the caller's input
/// (names, keys, shares), stored data that does not check out, and bugs.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MeshCaError {
    /// The OS CSPRNG failed. Concord refuses rather than using weaker randomness.
    #[error(
        "the operating system's random number generator failed while {purpose}; refusing to \
         continue without secure randomness: check that getrandom(2) works in this VM, then retry"
    )]
    EntropyUnavailable {
        /// What was being done when randomness was needed.
        purpose: &'static str,
    },

    /// Every counter gave an invalid P-256 scalar (probability about 2^-(32 * 2^32)).
    #[error(
        "no valid P-256 root CA key could be derived from this seed after trying every counter; \
         this cannot happen with a working HKDF: report it as a bug"
    )]
    RootCaKeyDerivationExhausted,

    /// A subject alternative name is neither an IP address, a URI nor a valid DNS name.
    #[error(
        "invalid subject alternative name {value:?}: {reason}; fix it in the manifest's `sans` \
         (an IP address, a URI such as spiffe://example.org/web, or a DNS name)"
    )]
    InvalidSubjectAltName {
        /// The rejected value, as given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The common name asked for a leaf certificate cannot be encoded.
    #[error("invalid certificate common name {value:?}: {reason}")]
    InvalidCommonName {
        /// The rejected value, as given.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The public key to certify is malformed or of an unsupported type.
    #[error(
        "cannot certify this public key: {reason}; the workload must present a P-256, P-384 or \
         Ed25519 key as a DER SubjectPublicKeyInfo"
    )]
    UnsupportedPublicKey {
        /// What is wrong with the key.
        reason: String,
    },

    /// Validity dates would fall outside what X.509 and `time` can represent.
    #[error("certificate validity is out of range: {reason}; check the system clock")]
    InvalidValidity {
        /// What overflowed.
        reason: &'static str,
    },

    /// A stored root CA certificate does not belong to the seed's root CA key, or is not a
    /// certificate Concord made.
    #[error(
        "the stored root CA certificate was rejected: {reason}; the store is corrupt or belongs \
         to another deployment (or seed): restore it from a healthy replica"
    )]
    RootCertificateRejected {
        /// What did not check out.
        reason: String,
    },

    /// The mesh CA key received from a peer is not a usable P-256 private key.
    #[error(
        "the mesh CA key received from the peer is not a valid P-256 private key: {reason}; the \
         peer is faulty or the transfer was corrupted: nothing was adopted, recover from another \
         ready coordinator replica"
    )]
    InvalidMeshCaKey {
        /// What is wrong with the key (never the key itself).
        reason: &'static str,
    },

    /// A mesh CA certificate received from a peer (or read from the history) does not belong to
    /// the key sent with it, or to this deployment's root CA, or is not a certificate Concord made.
    #[error(
        "the {certificate} was rejected: {reason}; the peer sent a mesh CA that is not this \
         deployment's current one (or the certificates were swapped or corrupted): nothing was \
         adopted, recover from another ready coordinator replica"
    )]
    MeshCaCertificateRejected {
        /// Which of the two certificates: the self-signed one or the intermediate.
        certificate: &'static str,
        /// What did not check out.
        reason: String,
    },

    /// The certificate library refused parameters this crate built. A bug, not bad input.
    #[error("certificate generation failed: {0}; this is a bug in concord-mesh-ca, report it")]
    CertificateGeneration(String),

    /// `split` was asked for an impossible threshold or share count.
    #[error(
        "cannot split the seed into {shares} shares with threshold {threshold}: {reason}; \
         choose 1 <= threshold <= number of share owners <= 255"
    )]
    InvalidShareParameters {
        /// The threshold asked for.
        threshold: u8,
        /// The number of shares asked for.
        shares: u8,
        /// Which bound was broken.
        reason: &'static str,
    },

    /// Bytes that should be a seed share are not one.
    #[error("malformed seed share: {reason}; ask its owner for the original share file")]
    MalformedShare {
        /// What is wrong.
        reason: String,
    },

    /// `combine` was called with nothing.
    #[error("no seed shares were given; submit at least `threshold` shares")]
    NoShares,

    /// Fewer distinct shares than the threshold.
    #[error(
        "only {have} seed share(s) were given but this deployment needs {need}; collect shares \
         from more owners and retry"
    )]
    NotEnoughShares {
        /// Distinct shares given.
        have: usize,
        /// The threshold the shares carry.
        need: u8,
    },

    /// The same share index was given twice.
    #[error(
        "seed share number {index} was given more than once; each owner submits only their own \
         share: drop the duplicate and add another owner's share"
    )]
    DuplicateShareIndex {
        /// The repeated index.
        index: u8,
    },

    /// Shares from different deployments were mixed.
    #[error(
        "the seed shares belong to different deployments ({first} and {other}); submit only \
         shares of the deployment being recovered"
    )]
    ShareDeploymentMismatch {
        /// Hex deployment id of the first share.
        first: String,
        /// Hex deployment id of the first share that differs.
        other: String,
    },

    /// Shares disagree on the threshold.
    #[error(
        "the seed shares disagree on the threshold ({first} and {other}); they come from \
         different splits: submit shares from one split only"
    )]
    ShareThresholdMismatch {
        /// Threshold of the first share.
        first: u8,
        /// Threshold of the first share that differs.
        other: u8,
    },

    /// Shares disagree on the salt, so they are of different seeds.
    #[error(
        "the seed shares disagree on the salt, so they are shares of different seeds (for \
         example of an earlier deployment): submit shares from one split only"
    )]
    ShareSaltMismatch,

    /// The encrypted share names another owner key than the one given.
    #[error(
        "this share was not encrypted to this key: it is for owner key {share_owner}, the key \
         given has public key {this_key}; use the key pair the share was made for"
    )]
    ShareNotForThisKey {
        /// Hex public key the encrypted share names.
        share_owner: String,
        /// Hex public key of the key pair given.
        this_key: String,
    },

    /// HPKE decryption failed for a share that names this key.
    #[error(
        "the encrypted seed share could not be decrypted: it was corrupted or tampered with, or \
         its header names the wrong owner key; ask for the original share file"
    )]
    ShareDecryptionFailed,

    /// The encrypted share's fields have impossible sizes.
    #[error("malformed encrypted seed share: {reason}; ask for the original share file")]
    MalformedEncryptedShare {
        /// What is wrong.
        reason: String,
    },

    /// HPKE rejected the owner's public key (for example a low-order X25519 point).
    #[error(
        "cannot encrypt a seed share to owner key {owner_key}: {reason}; the manifest's \
         `seed_share_owners.keys` must hold X25519 public keys made by `concord keygen`"
    )]
    InvalidOwnerPublicKey {
        /// Hex of the rejected key.
        owner_key: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A share submission names a key that is not one of the deployment's seed share owners.
    #[error(
        "the share was sent by key {owner_key}, which is not one of this deployment's seed share \
         owner keys (the first manifest's `seed_share_owners.keys`; a share of another \
         deployment?): only a listed owner can submit a share; nothing changed"
    )]
    UnknownShareOwner {
        /// Hex public key the submission names.
        owner_key: String,
    },

    /// A share submission does not open: it was not sealed by the owner key it names, or not to
    /// this coordinator process's recovery key.
    #[error(
        "the share submission does not open: {reason}; it was not sealed by the owner key it \
         names, or not to this coordinator's current recovery key (it restarted meanwhile: run \
         `concord recover` again); nothing changed"
    )]
    SubmissionNotAuthentic {
        /// What failed (never key or share bytes).
        reason: String,
    },

    /// An owner sent a share whose index is not its own.
    #[error(
        "owner key {owner_key} is seed share owner {position} of the manifest, but sent the share \
         with index {index}: an owner submits only their own share; nothing changed"
    )]
    SubmissionIndexMismatch {
        /// Hex public key of the sender.
        owner_key: String,
        /// Its 1-based position in the manifest, which is its share index.
        position: usize,
        /// The index inside the share.
        index: u8,
    },

    /// A sealed copy of a mesh CA key did not open for this replica: not sealed to its current seal
    /// key (it restarted since), for another recipient, transition or mesh CA, or changed on the way.
    #[error(
        "the sealed mesh CA key does not open: {reason}; this replica recovers the key from a peer \
         instead; nothing changed"
    )]
    SealedKeyRejected {
        /// What failed (never key bytes).
        reason: String,
    },

    /// HPKE sealing of a mesh CA key failed: the recipient's seal key is not a usable X25519
    /// public key, or the library failed.
    #[error("sealing the mesh CA key to a replica failed: {reason}")]
    SealFailed {
        /// What failed (never key bytes).
        reason: String,
    },

    /// HPKE sealing failed for another reason. A bug, not bad input.
    #[error("seed share encryption failed: {reason}; this is a bug in concord-mesh-ca, report it")]
    ShareEncryptionFailed {
        /// The HPKE error.
        reason: String,
    },
}

impl From<rcgen::Error> for MeshCaError {
    fn from(err: rcgen::Error) -> Self {
        MeshCaError::CertificateGeneration(err.to_string())
    }
}
