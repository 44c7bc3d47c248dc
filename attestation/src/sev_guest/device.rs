//! The guest's door to the AMD Secure Processor: a [`GuestDevice`] returns reports for given report
//! data; [`SevGuestDevice`] is `/dev/sev-guest` through the `sev` crate, with extended reports
//! through the kernel's configfs-tsm interface (`super::tsm`).
//!
//! Owns opening the device, with errors that say what is missing and what to do, and the two
//! requests: the extended report (with the host's certificate table, as raw bytes) and the plain
//! one, both at VMPL 0. It must never choose the report data, never interpret the report (the
//! issuer does) and never parse the host's table (`crate::vcek::parse_cert_table` does, in safe
//! code). Of the `sev` crate it uses `Firmware::open` and `Firmware::get_report` only, whose
//! response has a fixed size: no length the host chose reaches `unsafe` code
//! (docs/THREAT_MODEL.md, "The host's certificate table").

use std::path::Path;

use crate::error::AttestationError;

/// Where Linux puts the SEV-SNP guest device.
pub const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";

/// What to do when this process cannot use the device.
const WHAT_TO_DO: &str = "run it in an AMD SEV-SNP confidential VM whose runtime passes /dev/sev-guest \
     into the container (docs/OPERATIONS.md), or, for tests and demos only, use \
     --platform simulated --insecure-simulated-attestation";

/// Asks the AMD Secure Processor for attestation reports at VMPL 0.
pub trait GuestDevice: Send + std::fmt::Debug {
    /// A report carrying `report_data`, and the host's certificate table, raw, as the host wrote
    /// it, when the host provides one (`None` when it does not). The error says what the device or
    /// the firmware answered.
    fn extended_report(
        &mut self,
        report_data: &[u8; 64],
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), String>;

    /// A report carrying `report_data`, without certificates.
    fn report(&mut self, report_data: &[u8; 64]) -> Result<Vec<u8>, String>;
}

/// Checks that `path` is a character device this process can open, and names what is wrong.
pub fn check_device_path(path: &Path) -> Result<(), AttestationError> {
    use std::io::ErrorKind;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => AttestationError::Issuer(format!(
            "no SEV-SNP guest device at {shown}: this process does not run in an AMD SEV-SNP \
             guest, or the device is not passed into its container; {WHAT_TO_DO}"
        )),
        _ => AttestationError::Issuer(format!("cannot use {shown}: {e}; {WHAT_TO_DO}")),
    })?;
    if !is_char_device(&meta) {
        return Err(AttestationError::Issuer(format!(
            "{shown} is not a character device, so it is not the SEV-SNP guest device; {WHAT_TO_DO}"
        )));
    }
    std::fs::File::open(path).map_err(|e| match e.kind() {
        ErrorKind::PermissionDenied => AttestationError::Issuer(format!(
            "cannot open {shown}: permission denied; run this process as a user that may read the \
             device (it is often root's only), or {WHAT_TO_DO}"
        )),
        _ => AttestationError::Issuer(format!("cannot open {shown}: {e}; {WHAT_TO_DO}")),
    })?;
    Ok(())
}

#[cfg(unix)]
fn is_char_device(meta: &std::fs::Metadata) -> bool {
    std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type())
}

#[cfg(not(unix))]
fn is_char_device(_: &std::fs::Metadata) -> bool {
    false
}

/// `/dev/sev-guest`, through the `sev` crate, for plain reports; extended reports through
/// configfs-tsm when the kernel offers it.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct SevGuestDevice {
    firmware: sev::firmware::guest::Firmware,
    tsm: Option<super::tsm::TsmReports>,
}

#[cfg(target_os = "linux")]
impl SevGuestDevice {
    /// Opens the device at `path`. The `sev` crate opens it by its fixed name, so any other path
    /// can only be checked (tests use that to see the errors) and is then refused.
    pub fn open(path: &Path) -> Result<Self, AttestationError> {
        check_device_path(path)?;
        if path != Path::new(SEV_GUEST_DEVICE) {
            return Err(AttestationError::Config(format!(
                "the SEV-SNP guest device is opened as {SEV_GUEST_DEVICE}; {} cannot be used",
                path.display()
            )));
        }
        let firmware = sev::firmware::guest::Firmware::open().map_err(|e| {
            AttestationError::Issuer(format!("cannot open {SEV_GUEST_DEVICE}: {e}; {WHAT_TO_DO}"))
        })?;
        let tsm = super::tsm::TsmReports::find(Path::new(super::tsm::TSM_REPORT_DIR));
        if tsm.is_none() {
            tracing::info!(
                "no configfs-tsm report interface at {}: reports come without the host's \
                 certificate table, and the VCEK is looked up in the cache, at AMD's KDS or in \
                 --vcek-dir",
                super::tsm::TSM_REPORT_DIR
            );
        }
        Ok(Self { firmware, tsm })
    }
}

/// Reports for VMPL 0, message version 1 (the `sev` crate's default).
#[cfg(target_os = "linux")]
const VMPL: u32 = 0;

#[cfg(target_os = "linux")]
impl GuestDevice for SevGuestDevice {
    fn extended_report(
        &mut self,
        report_data: &[u8; 64],
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
        // Never the `sev` crate's get_ext_report: it parses the host's table in unsafe code
        // without bounds. configfs-tsm hands the table over as bytes.
        match &self.tsm {
            Some(tsm) => tsm.request(report_data, VMPL),
            None => Err(format!(
                "no configfs-tsm report interface at {} (Linux 6.7 or later, with configfs \
                 mounted), so no extended report",
                super::tsm::TSM_REPORT_DIR
            )),
        }
    }

    fn report(&mut self, report_data: &[u8; 64]) -> Result<Vec<u8>, String> {
        self.firmware
            .get_report(None, Some(*report_data), Some(VMPL))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer_message(result: Result<(), AttestationError>) -> String {
        match result {
            Err(AttestationError::Issuer(message)) => message,
            other => panic!("expected an issuer error, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_device_says_so_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sev-guest");
        let message = issuer_message(check_device_path(&path));
        assert!(message.contains("no SEV-SNP guest device at"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("SEV-SNP confidential VM"), "{message}");
        assert!(
            message.contains("--platform simulated --insecure-simulated-attestation"),
            "{message}"
        );
    }

    #[test]
    fn a_regular_file_is_not_the_device() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let message = issuer_message(check_device_path(file.path()));
        assert!(message.contains("not a character device"), "{message}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn another_device_is_checked_then_refused() {
        // /dev/null is a character device anyone may open, but not the SEV-SNP device.
        match SevGuestDevice::open(Path::new("/dev/null")) {
            Err(AttestationError::Config(message)) => {
                assert!(message.contains(SEV_GUEST_DEVICE), "{message}")
            }
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }
}
