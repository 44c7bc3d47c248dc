//! The simulated platform: SNP-shaped evidence for machines without SEV-SNP (CI, laptops, demo).
//!
//! Owns the simulated root ([`SimulatedRoot`], a P-384 CA generated per deployment) and the
//! simulated issuer ([`SimulatedIssuer`], a "VCEK" key certified by that root that signs reports in
//! the real 1184-byte layout), and the simulated TDX issuer ([`SimulatedTdxIssuer`], quotes in Intel's
//! layout from a hierarchy the root endorses). It is INSECURE by design: whoever holds the root key can forge any
//! measurement. It must never be trusted implicitly: the verifier accepts its evidence only when
//! both the launch configuration and the reference values name the root's hash.

mod issuer;
mod root;
mod tdx;
mod throttled;

#[cfg(any(test, feature = "testing"))]
pub(crate) use issuer::sign_report;
pub use issuer::{SIMULATED_TCB, SimulatedIssuer};
pub use root::{ROOT_CERT_FILE, ROOT_KEY_FILE, SimulatedRoot};
pub use tdx::SimulatedTdxIssuer;
pub use throttled::ThrottledIssuer;
