//! `atls_evidence`: a peer's aTLS certificate as either side of a handshake checks it (X.509, the
//! evidence extension, the `concord.v1.Evidence` protobuf inside it, its binding to the certificate's
//! key and the nonce, and the verifier), and the extension's value decoded on its own.
//!
//! The policy accepts what a genuine signer attested for this certificate: SNP evidence under reference
//! values naming its own measurement, and simulated evidence from the simulated root it names (trusted
//! here, as a replica launched with that root would), so the fuzzer reaches every check.

use concord_attestation::atls::NONCE_LEN;
use concord_attestation::fuzzing::atls_peer_certificate;
use concord_attestation::{
    AcceptPolicy, AttestationError, DeploymentPin, Evidence, Measurement, Platform, PlatformTrust,
    Report, SimulatedReference, VerifiedReport, Verifier,
};
use sha2::{Digest as _, Sha256};

use crate::times;

/// The nonce the checking side chose; the seed corpus's certificates are bound to it.
pub const NONCE: [u8; NONCE_LEN] = [0x07; NONCE_LEN];

pub fn run(data: &[u8]) {
    let _ = Evidence::from_bytes(data);
    let _ = accepted(data);
}

/// Whether the certificate `data` passes the peer certificate check under this target's policy.
pub fn accepted(data: &[u8]) -> bool {
    atls_peer_certificate(&Accepting, &NONCE, data)
}

/// Accepts evidence a genuine signer made, whatever it measured (see the module documentation).
#[derive(Debug)]
struct Accepting;

impl AcceptPolicy for Accepting {
    fn verify(
        &self,
        evidence: &Evidence,
        expected_report_data: &[u8; 64],
    ) -> Result<VerifiedReport, AttestationError> {
        let mut reference = crate::snp_report::accepting(&evidence.report);
        let root: Option<[u8; 32]> = evidence
            .certificates
            .get(1)
            .map(|der| Sha256::digest(der).into());
        if let Some(root) = root {
            let measurement = Report::parse(&evidence.report).map_or([0; 48], |r| *r.measurement());
            reference.simulated = vec![SimulatedReference {
                root: root.into(),
                trusted_measurements: vec![Measurement(measurement)],
            }];
        }
        let now = match evidence.platform {
            Platform::Snp => times::snp(),
            // TDX evidence: no tdx entry here, so it is refused before its quote is read (a TDX
            // fuzz target is not written yet).
            Platform::Simulated | Platform::Tdx => times::simulated(),
        };
        Verifier::new(PlatformTrust {
            insecure_simulated_root: root,
        })
        .verify(evidence, &reference, expected_report_data, &|_| true, now)
    }

    fn deployment_pin(&self) -> DeploymentPin {
        DeploymentPin::Any
    }
}
