//! aTLS: TLS 1.3 whose certificates carry attestation evidence bound to the peer's nonce.
//!
//! Owns the wire conventions (DESIGN.md, "Cryptographic formats"): evidence in a non-critical
//! X.509 extension ([`EVIDENCE_OID`]) of a short-lived self-signed certificate, beside the deployment
//! id the party serves ([`DEPLOYMENT_OID`]), with
//! `report_data = SHA-512(SPKI DER || nonce || "concord/v1/deployment" || deployment id)` ([`binding`],
//! binding v2); the client's nonce travels in an ALPN
//! value `concord-atls-v1:<hex>` beside `h2`, the server's in the CertificateRequest's
//! acceptable-CA names. It also owns the rustls verifiers and resolvers that implement them, the
//! [`AtlsClient`] and the [`AtlsAcceptor`].
//!
//! It must never trust a certificate for its name, its issuer or its validity: only for the
//! evidence it carries, bound to a nonce this side chose for this connection, and for the TLS 1.3
//! handshake signature made with its key. It must never resume sessions (a resumed session would
//! skip the evidence check) and never negotiate TLS 1.2. It does not decide what evidence is
//! acceptable: an [`AcceptPolicy`] does.

pub mod batch;
pub(crate) mod cert;
mod client;
mod deployment;
mod kx;
mod nonce;
pub(crate) mod peer;
mod policy;
mod server;

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha512};

pub use batch::{BATCH_OID, BatchProof};
pub use cert::{AtlsCertificate, extract_evidence};
pub use client::{AtlsClient, ClientIdentity};
pub use deployment::{
    DEPLOYMENT_LABEL, DEPLOYMENT_OID, DeploymentId, DeploymentPin, DeploymentSource,
};
pub use policy::{AcceptPolicy, StaticPolicy};
pub use server::{AtlsAcceptor, ClientAuth};

use crate::error::AttestationError;
use crate::evidence::Evidence;
use crate::verify::VerifiedReport;

/// OID of the certificate extension that carries `Evidence::to_bytes()`.
///
/// PROVISIONAL: an arc under a private enterprise number chosen for Concord during development;
/// it must be confirmed (or replaced by a registered one) before the wire format is frozen.
pub const EVIDENCE_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 58270, 1, 1];

/// The application protocol aTLS servers select: gRPC over HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// Length of the nonces each side chooses.
pub const NONCE_LEN: usize = 32;

/// How long [`AtlsAcceptor::accept`] and [`AtlsClient::connect`] wait for a handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The report data that binds a certificate key to the relying side's nonce and to the deployment
/// the certificate names (binding v2):
/// `SHA-512(SPKI DER of the certificate key || nonce || "concord/v1/deployment" || deployment id)`.
pub fn binding(spki_der: &[u8], nonce: &[u8; NONCE_LEN], deployment: &DeploymentId) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(spki_der);
    h.update(nonce);
    h.update(DEPLOYMENT_LABEL);
    h.update(deployment.as_bytes());
    h.finalize().into()
}

/// A peer whose evidence passed the policy and whose handshake signature was made with the
/// attested certificate's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    report: VerifiedReport,
    spki_der: Vec<u8>,
    /// The evidence and the binding it was checked against, to check it again under a later policy.
    evidence: Evidence,
    binding: [u8; 64],
    /// The deployment the certificate named and the evidence binds.
    deployment: DeploymentId,
    /// The policy's fingerprint, taken before the handshake's verification.
    fingerprint: Option<[u8; 32]>,
}

impl VerifiedPeer {
    /// Checks the handshake's evidence again, under `policy` as it is now. A connection outlives the
    /// policy it was accepted under (a new manifest can drop a measurement or a policy), so a relying
    /// side that keeps connections open calls this before it trusts the peer with anything new.
    ///
    /// When the policy's [`AcceptPolicy::fingerprint`] is the one the handshake was verified under
    /// and the evidence's certificates are still valid, the verdict is the handshake's (a fresh
    /// verification would repeat it: issue 11, one signature check per NewMeshCert).
    pub fn reverify(&self, policy: &dyn AcceptPolicy) -> Result<VerifiedReport, AttestationError> {
        if let Some(verdict) = self.reverify_unchanged(policy) {
            return verdict;
        }
        let report = policy.verify(&self.evidence, &self.binding)?;
        policy.deployment_pin().check(&self.deployment)?;
        Ok(report)
    }

    /// [`Self::reverify`]'s verdict when it needs no signature check (the policy's fingerprint is
    /// the handshake's and the evidence's certificates are still valid): cheap enough for an async
    /// task. `None` when the evidence must be verified afresh, which belongs off the runtime's
    /// worker threads.
    pub fn reverify_unchanged(
        &self,
        policy: &dyn AcceptPolicy,
    ) -> Option<Result<VerifiedReport, AttestationError>> {
        let (Some(then), Some(now)) = (self.fingerprint, policy.fingerprint()) else {
            return None;
        };
        if then != now || !self.report.chain_valid_at(std::time::SystemTime::now()) {
            return None;
        }
        Some(
            policy
                .deployment_pin()
                .check(&self.deployment)
                .map(|()| self.report.clone()),
        )
    }

    /// The deployment the peer serves: named in its certificate and bound by its evidence.
    pub fn deployment(&self) -> DeploymentId {
        self.deployment
    }

    /// The peer's verified report.
    pub fn report(&self) -> &VerifiedReport {
        &self.report
    }

    /// SubjectPublicKeyInfo (DER) of the peer's TLS key, which the evidence binds.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
}

/// The one crypto provider of the tree: ring's, with TLS_AES_128_GCM_SHA256 preferred and X25519
/// computed by AWS-LC ([`kx`]: about 1.7 times as fast here, the same group on the wire).
///
/// A connection's security is 128-bit whatever the suite: its key exchange is X25519 and its
/// certificates' keys are P-256. AES-256 and SHA-384 (ring's default first choice) do not raise
/// that, and SHA-384 has no instructions of its own on x86, where SHA-256 has (SHA-NI): the key
/// schedule's HMACs and the transcript hash over two certificates carrying evidence were about 4 %
/// of a replica's CPU per NewMeshCert (issue 11.1). The other suites stay, in ring's order; the
/// aTLS server picks by this order, not the client's.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let preferred = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != preferred.suite());
    for group in &mut provider.kx_groups {
        if group.name() == rustls::NamedGroup::X25519 {
            *group = kx::X25519_AWS_LC;
        }
    }
    Arc::new(provider)
}

/// The rustls signing key for an rcgen key pair.
fn load_signing_key(
    provider: &rustls::crypto::CryptoProvider,
    key: &rcgen::KeyPair,
) -> Result<Arc<dyn rustls::sign::SigningKey>, crate::AttestationError> {
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| crate::AttestationError::Config(format!("unusable aTLS key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_is_sha512_of_spki_nonce_label_and_deployment() {
        let spki = b"spki";
        let nonce = [7u8; NONCE_LEN];
        let id = DeploymentId([9; 32]);
        let mut concatenated = spki.to_vec();
        concatenated.extend_from_slice(&nonce);
        concatenated.extend_from_slice(b"concord/v1/deployment");
        concatenated.extend_from_slice(&[9; 32]);
        let expected: [u8; 64] = Sha512::digest(&concatenated).into();
        assert_eq!(binding(spki, &nonce, &id), expected);
        assert_ne!(binding(spki, &[8u8; NONCE_LEN], &id), expected);
        assert_ne!(binding(spki, &nonce, &DeploymentId([8; 32])), expected);
        assert_ne!(binding(spki, &nonce, &DeploymentId::UNPINNED), expected);
        // Golden value, for third-party implementations (docs/PROTOCOL.md §8).
        assert_eq!(
            hex::encode(binding(b"", &[0; NONCE_LEN], &DeploymentId([0x11; 32]))),
            GOLDEN
        );
    }

    const GOLDEN: &str = "67f8ebb9b989cfb2c7e4535967264a013f6a95f1bbaf8a01edcb7b2a5a633ebf3d02dc1c494bf649e441607c27d120aa913be96b52a22bdcd079f7ee762040ca";
}
