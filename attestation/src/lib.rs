//! Attestation for Concord: evidence, its verification, and aTLS.
//!
//! This crate owns everything between raw platform evidence and a [`VerifiedReport`]: the SNP
//! report layout ([`report`](mod@report)), the manifest's reference values
//! ([`reference`](mod@reference)), the evidence wire form ([`evidence`]), evidence issuers
//! ([`issuer`], [`simulated`], and [`sev_guest`], which finds its VCEK with [`vcek`]),
//! verification under a launch configuration ([`verify`], with the AMD SEV-SNP chain and checks in
//! [`snp`]), and TLS connections whose certificates carry evidence bound to the peer's nonce
//! ([`atls`]).
//!
//! It must never accept evidence without every check passing (Invariant 5: fail closed), never
//! trust the simulated platform unless the launch configuration and the reference values both
//! name its root, and never hold or decide on manifest contents beyond the reference values and
//! the host-data predicate its callers pass in.
#![forbid(unsafe_code)]

pub mod atls;
mod chain;
mod claims;
pub mod error;
pub mod evidence;
mod files;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod intel_pcs;
pub mod issuer;
pub mod reference;
pub mod report;
pub mod sev_guest;
pub mod simulated;
pub mod snp;
pub mod tdx;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod vcek;
pub mod verify;

pub use atls::{
    AcceptPolicy, AtlsAcceptor, AtlsClient, ClientAuth, ClientIdentity, DeploymentId,
    DeploymentPin, DeploymentSource, StaticPolicy, VerifiedPeer,
};
pub use error::{AttestationError, CertRole, RejectReason, TcbComponent};
pub use evidence::{Evidence, Platform};
pub use issuer::EvidenceIssuer;
pub use reference::{
    ChipId, Measurement, MinimumTcb, Product, ReferenceValues, Sha256Hex, SimulatedReference,
    SnpReference, TdxReference, TdxTcbStatus,
};
pub use report::{GuestPolicy, REPORT_LEN, Report, ReportBuilder, SIGNED_LEN, Tcb};
pub use sev_guest::SevGuestIssuer;
pub use simulated::{SimulatedIssuer, SimulatedRoot, ThrottledIssuer};
pub use snp::SignerKind;
pub use verify::{PlatformTrust, VerifiedReport, Verifier};
