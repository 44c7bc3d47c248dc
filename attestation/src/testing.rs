//! Test fixtures shared by this crate's tests and other crates' tests (feature `testing`).
//!
//! Owns the simulated deployment every test starts from: a root, an issuer, reference values
//! naming them, and policies; in [`snp`], the real SEV-SNP vectors of `testdata/`; in [`kds`], a
//! stand-in for AMD's KDS on loopback. It must never be used outside tests: it panics on any error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

pub mod amd;
pub mod device;
pub mod kds;
pub mod pcs;
pub mod snp;

use crate::atls::{DeploymentId, DeploymentPin, StaticPolicy};
use crate::reference::{Measurement, ReferenceValues, Sha256Hex, SimulatedReference};
use crate::simulated::{SimulatedIssuer, SimulatedRoot};
use crate::verify::{PlatformTrust, Verifier};

/// The measurement the fixture's issuer reports and its reference values trust.
pub const MEASUREMENT: [u8; 48] = [0x11; 48];
/// The host data (policy hash) the fixture's issuer reports and its policy accepts.
pub const HOST_DATA: [u8; 32] = [0x22; 32];

/// The deployment the fixture's servers name (and their evidence binds).
pub const DEPLOYMENT: DeploymentId = DeploymentId([0x33; 32]);

/// A simulated deployment: one root, one issuer with [`MEASUREMENT`] and [`HOST_DATA`].
#[derive(Debug)]
pub struct SimFixture {
    /// The simulated root.
    pub root: SimulatedRoot,
    /// An issuer certified by the root.
    pub issuer: Arc<SimulatedIssuer>,
}

impl Default for SimFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl SimFixture {
    /// A fresh root and issuer.
    pub fn new() -> Self {
        let root = SimulatedRoot::generate().unwrap();
        let issuer = Arc::new(SimulatedIssuer::new(&root, MEASUREMENT, HOST_DATA).unwrap());
        Self { root, issuer }
    }

    /// Another issuer under the same root.
    pub fn issuer_for(&self, measurement: [u8; 48], host_data: [u8; 32]) -> Arc<SimulatedIssuer> {
        Arc::new(SimulatedIssuer::new(&self.root, measurement, host_data).unwrap())
    }

    /// A launch configuration trusting this root.
    pub fn trust(&self) -> PlatformTrust {
        PlatformTrust {
            insecure_simulated_root: Some(self.root.hash()),
        }
    }

    /// A verifier with [`trust`](Self::trust).
    pub fn verifier(&self) -> Verifier {
        Verifier::new(self.trust())
    }

    /// Reference values naming this root and trusting `measurements`.
    pub fn reference_with(&self, measurements: &[[u8; 48]]) -> ReferenceValues {
        ReferenceValues {
            snp: vec![],
            simulated: vec![SimulatedReference {
                root: Sha256Hex(self.root.hash()),
                trusted_measurements: measurements.iter().copied().map(Measurement).collect(),
            }],
            tdx: vec![],
        }
    }

    /// Reference values naming this root and trusting [`MEASUREMENT`].
    pub fn reference(&self) -> ReferenceValues {
        self.reference_with(&[MEASUREMENT])
    }

    /// A policy trusting `measurements` and accepting `host_data`.
    pub fn policy_with(&self, measurements: &[[u8; 48]], host_data: &[[u8; 32]]) -> StaticPolicy {
        StaticPolicy {
            verifier: self.verifier(),
            reference: self.reference_with(measurements),
            host_data: host_data.to_vec(),
            deployment: DeploymentPin::Any,
        }
    }

    /// A policy trusting [`MEASUREMENT`] and accepting [`HOST_DATA`].
    pub fn policy(&self) -> StaticPolicy {
        self.policy_with(&[MEASUREMENT], &[HOST_DATA])
    }
}

/// A fresh P-256 key for an aTLS endpoint.
pub fn tls_key() -> Arc<rcgen::KeyPair> {
    Arc::new(rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap())
}
