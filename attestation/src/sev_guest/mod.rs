//! The SEV-SNP guest side: evidence from `/dev/sev-guest`.
//!
//! Owns the device ([`GuestDevice`], [`SevGuestDevice`] through the `sev` crate for plain reports
//! and configfs-tsm ([`TsmReports`]) for extended ones) and the issuer
//! ([`SevGuestIssuer`]) that packs a report with the certificate of the key that signed it, found
//! by `crate::vcek`. It must never choose the report data (its caller fixes what evidence binds) and
//! never verify anything on a relying party's behalf.

mod device;
mod issuer;
mod signers;
mod tsm;

#[cfg(target_os = "linux")]
pub use device::SevGuestDevice;
pub use device::{GuestDevice, SEV_GUEST_DEVICE, check_device_path};
pub use issuer::SevGuestIssuer;
pub use signers::RetryBackoff;
pub use tsm::{TSM_REPORT_DIR, TsmProvider, TsmReports};
