//! `audit_bundle`: `history.json` (`concord-history-v1`) through the offline audit, as `concord history
//! audit` runs it: every hash link, signature, owner authorization, manifest and policy, the PEM CAs and
//! the coordinator's evidence.
//!
//! The evidence check needs a trust anchor. A real auditor trusts AMD's roots (SNP evidence) or, when
//! asked, one simulated root; here the simulated root the bundle's own evidence names is trusted, so the
//! fuzzer reaches the evidence binding and the simulated verifier and not only its first refusal.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use concord_attestation::PlatformTrust;
use concord_coordinator::history::audit::{AuditBundle, AuditOptions, audit};
use sha2::{Digest as _, Sha256};

use crate::times;

pub fn run(data: &[u8]) {
    for options in options(data) {
        let _ = audit(data, &options);
    }
}

/// The relying parties the bundle is audited for: one that trusts the simulated root the bundle
/// names, at a time inside the seed corpus's validity, and one that trusts AMD's roots alone.
pub fn options(data: &[u8]) -> [AuditOptions; 2] {
    let named_root = serde_json::from_slice::<AuditBundle>(data)
        .ok()
        .and_then(|b| b.evidence.certificates?.get(1).cloned())
        .and_then(|root| STANDARD.decode(root).ok())
        .map(|der| Sha256::digest(der).into());
    [(named_root, times::simulated()), (None, times::snp())].map(
        |(insecure_simulated_root, now)| AuditOptions {
            trust: PlatformTrust {
                insecure_simulated_root,
            },
            expected_nonce: None,
            since: None,
            now,
        },
    )
}
