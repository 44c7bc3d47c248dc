//! The SEV-SNP issuer: evidence from the guest device, with the certificate of the key that
//! signed it.
//!
//! Owns asking the device for an extended report (falling back to a plain one), checking that the
//! firmware answered what was asked (the report data, VMPL 0), finding the signer's certificate
//! through `crate::vcek` once per chip and TCB, and packing [`Evidence`]. It must never choose the
//! report data and never send a report it did not check; it does not verify its own evidence (the
//! relying side does, and the coordinator checks its own once at launch).

use std::sync::Mutex;
use std::time::SystemTime;

use sev::firmware::host::CertTableEntry;

use super::device::GuestDevice;
use crate::error::AttestationError;
use crate::evidence::{Evidence, Platform};
use crate::issuer::EvidenceIssuer;
use crate::report::Report;
use crate::vcek::{HostCertificates, VcekResolver};

/// Issues SEV-SNP evidence from a guest device.
pub struct SevGuestIssuer {
    device: Mutex<Box<dyn GuestDevice>>,
    resolver: VcekResolver,
    signer: Mutex<Option<KnownSigner>>,
    pinned_now: Option<SystemTime>,
}

/// The certificates found for one signing key: they serve every report of the same chip, TCB and
/// key kind, until the host changes the reported TCB.
#[derive(Debug, Clone)]
struct KnownSigner {
    key: SignerKey,
    certificates: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SignerKey {
    signing_key: u8,
    chip_id: [u8; 64],
    reported_tcb: u64,
}

impl SignerKey {
    fn of(report: &Report) -> Self {
        Self {
            signing_key: report.signing_key(),
            chip_id: *report.chip_id(),
            reported_tcb: report.reported_tcb(),
        }
    }
}

impl std::fmt::Debug for SevGuestIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SevGuestIssuer")
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}

impl SevGuestIssuer {
    /// An issuer on `/dev/sev-guest` (or the path given, which must be it: see `SevGuestDevice`).
    #[cfg(target_os = "linux")]
    pub fn open(path: &std::path::Path, resolver: VcekResolver) -> Result<Self, AttestationError> {
        let device = super::device::SevGuestDevice::open(path)?;
        Ok(Self::with_device(Box::new(device), resolver))
    }

    /// An issuer on the SEV-SNP guest device, which Concord only supports on Linux.
    #[cfg(not(target_os = "linux"))]
    pub fn open(path: &std::path::Path, _: VcekResolver) -> Result<Self, AttestationError> {
        super::device::check_device_path(path)?;
        Err(AttestationError::Issuer(
            "SEV-SNP guests are supported on Linux only".into(),
        ))
    }

    /// An issuer on `device`, finding certificates with `resolver`.
    pub fn with_device(device: Box<dyn GuestDevice>, resolver: VcekResolver) -> Self {
        Self {
            device: Mutex::new(device),
            resolver,
            signer: Mutex::new(None),
            pinned_now: None,
        }
    }

    /// Checks certificate validity at `now` instead of the clock's time (for tests with real,
    /// eventually expiring vectors).
    #[cfg(any(test, feature = "testing"))]
    pub fn at(mut self, now: SystemTime) -> Self {
        self.pinned_now = Some(now);
        self
    }

    fn now(&self) -> SystemTime {
        self.pinned_now.unwrap_or_else(SystemTime::now)
    }

    /// The firmware's report for `report_data` and the host's table, if any: the extended report,
    /// else the plain one.
    fn raw_report(
        &self,
        report_data: &[u8; 64],
    ) -> Result<(Vec<u8>, Option<HostCertificates>), AttestationError> {
        let mut device = self.device.lock().map_err(|_| {
            AttestationError::Issuer(
                "the guest device lock is poisoned (a request panicked); restart the process"
                    .into(),
            )
        })?;
        match device.extended_report(report_data) {
            Ok((raw, entries)) => Ok((raw, entries.as_deref().and_then(host_certificates))),
            Err(extended) => {
                tracing::debug!(error = %extended, "no extended report; asking for a plain one");
                let raw = device.report(report_data).map_err(|plain| {
                    AttestationError::Issuer(format!(
                        "the SEV-SNP firmware returned no report: {plain} (the extended report \
                         failed too: {extended}); is this an SEV-SNP guest at VMPL 0?"
                    ))
                })?;
                Ok((raw, None))
            }
        }
    }

    /// The certificates for `report`: those found earlier for the same signing key, else found now.
    fn certificates(
        &self,
        report: &Report,
        table: Option<&HostCertificates>,
    ) -> Result<Vec<Vec<u8>>, AttestationError> {
        let key = SignerKey::of(report);
        if let Some(known) = self.known_signer()
            && known.key == key
        {
            return Ok(known.certificates);
        }
        let resolved = self
            .resolver
            .resolve(report, table, self.now())
            .map_err(|e| AttestationError::Issuer(e.to_string()))?;
        if let Ok(mut known) = self.signer.lock() {
            *known = Some(KnownSigner {
                key,
                certificates: resolved.certificates.clone(),
            });
        }
        Ok(resolved.certificates)
    }

    fn known_signer(&self) -> Option<KnownSigner> {
        self.signer.lock().ok().and_then(|known| known.clone())
    }
}

/// The host's table, or none when it is ambiguous.
fn host_certificates(entries: &[CertTableEntry]) -> Option<HostCertificates> {
    match HostCertificates::from_entries(entries) {
        Ok(table) => Some(table),
        Err(why) => {
            tracing::warn!(%why, "ignoring the host's certificate table");
            None
        }
    }
}

/// The firmware's answer is a report for exactly `report_data`, at VMPL 0.
fn check_report(raw: &[u8], report_data: &[u8; 64]) -> Result<Report, AttestationError> {
    let report = Report::parse(raw).map_err(|e| {
        AttestationError::Issuer(format!(
            "the SEV-SNP firmware returned an unreadable report: {e}"
        ))
    })?;
    if report.report_data() != report_data {
        return Err(AttestationError::Issuer(
            "the SEV-SNP firmware returned a report for other report data; it is not sent".into(),
        ));
    }
    if report.vmpl() != 0 {
        return Err(AttestationError::Issuer(format!(
            "the SEV-SNP report is for VMPL {}, and Concord requires VMPL 0: run the process in the \
             guest's most privileged level (not under a paravisor that keeps VMPL 0)",
            report.vmpl()
        )));
    }
    Ok(report)
}

/// SNP evidence: the report as the firmware returned it, and the certificates, signer first.
fn pack(raw: Vec<u8>, certificates: Vec<Vec<u8>>) -> Evidence {
    Evidence {
        platform: Platform::Snp,
        report: raw,
        certificates,
    }
}

impl EvidenceIssuer for SevGuestIssuer {
    fn platform(&self) -> Platform {
        Platform::Snp
    }

    fn issue(&self, report_data: &[u8; 64]) -> Result<Evidence, AttestationError> {
        let (raw, table) = self.raw_report(report_data)?;
        let report = check_report(&raw, report_data)?;
        let certificates = self.certificates(&report, table.as_ref())?;
        Ok(pack(raw, certificates))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use sev::firmware::host::CertType;

    use super::*;
    use crate::testing::snp::{self as vectors, Vector};
    use crate::vcek::OfflineDir;
    use crate::verify::{PlatformTrust, Verifier};

    /// A device that answers with a real report, whatever it is asked (the tests ask for the
    /// report's own report data, or see the issuer refuse).
    #[derive(Debug, Clone)]
    struct FakeDevice {
        report: Vec<u8>,
        table: Option<Vec<CertTableEntry>>,
        extended_fails: bool,
        plain_fails: bool,
        calls: Arc<AtomicUsize>,
    }

    impl FakeDevice {
        fn new(v: &Vector) -> Self {
            Self {
                report: v.report.clone(),
                table: None,
                extended_fails: false,
                plain_fails: false,
                calls: Arc::default(),
            }
        }
    }

    impl GuestDevice for FakeDevice {
        fn extended_report(
            &mut self,
            _: &[u8; 64],
        ) -> Result<(Vec<u8>, Option<Vec<CertTableEntry>>), String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.extended_fails {
                return Err(
                    "VMM Error Encountered: the host does not support extended reports".into(),
                );
            }
            Ok((self.report.clone(), self.table.clone()))
        }

        fn report(&mut self, _: &[u8; 64]) -> Result<Vec<u8>, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.plain_fails {
                return Err("Firmware Error Encountered: invalid parameters".into());
            }
            Ok(self.report.clone())
        }
    }

    fn issuer(device: FakeDevice, resolver: VcekResolver, v: &Vector) -> SevGuestIssuer {
        SevGuestIssuer::with_device(Box::new(device), resolver).at(v.at)
    }

    /// The evidence verifies as a relying party would check it: the report's own report data as
    /// the binding, its host data as the only accepted policy, at the vector's time.
    fn assert_verifies(evidence: &Evidence, v: &Vector) {
        let host_data = *v.report().host_data();
        Verifier::new(PlatformTrust::default())
            .verify(
                evidence,
                &v.reference_values(),
                &v.report_data(),
                &|h| *h == host_data,
                v.at,
            )
            .unwrap();
    }

    fn offline_dir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        dir
    }

    #[test]
    fn the_host_table_gives_the_vcek_and_amds_pinned_chain() {
        let v = vectors::virtee_milan();
        let [ask, ark] = <[Vec<u8>; 2]>::try_from(vectors::azure_milan().chain).unwrap();
        let mut device = FakeDevice::new(&v);
        device.table = Some(vec![
            CertTableEntry::new(CertType::ARK, ark.clone()),
            CertTableEntry::new(CertType::VCEK, v.cert.clone()),
            CertTableEntry::new(CertType::ASK, ask.clone()),
        ]);
        let issuer = issuer(device, VcekResolver::default(), &v);
        assert_eq!(issuer.platform(), Platform::Snp);
        let evidence = issuer.issue(&v.report_data()).unwrap();
        assert_eq!(evidence.platform, Platform::Snp);
        assert_eq!(evidence.report, v.report);
        assert_eq!(evidence.certificates, vec![v.cert.clone(), ask, ark]);
        assert_verifies(&evidence, &v);
    }

    #[test]
    fn without_an_extended_report_the_plain_one_and_the_vcek_directory_serve() {
        let v = vectors::trustee_genoa_e2e();
        let dir = offline_dir_with(&[("operator-copy.der", &v.cert)]);
        let mut device = FakeDevice::new(&v);
        device.extended_fails = true;
        let calls = device.calls.clone();
        let resolver = VcekResolver::new(None, None, Some(OfflineDir::new(dir.path())));
        let issuer = issuer(device, resolver, &v);
        let evidence = issuer.issue(&v.report_data()).unwrap();
        assert_eq!(evidence.certificates, vec![v.cert.clone()]);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "extended, then plain");
        assert_verifies(&evidence, &v);

        // The certificate is remembered for this chip and TCB: the directory is not read again.
        drop(dir);
        assert_eq!(issuer.issue(&v.report_data()).unwrap(), evidence);
    }

    #[test]
    fn a_report_for_other_report_data_is_not_sent() {
        let v = vectors::virtee_milan();
        let issuer = issuer(FakeDevice::new(&v), VcekResolver::default(), &v);
        let mut other = v.report_data();
        other[0] ^= 1;
        let err = issuer.issue(&other).unwrap_err();
        assert!(
            matches!(&err, AttestationError::Issuer(m) if m.contains("other report data")),
            "{err}"
        );
    }

    #[test]
    fn a_report_above_vmpl_0_is_not_sent() {
        let v = vectors::trustee_vlek();
        let issuer = issuer(FakeDevice::new(&v), VcekResolver::default(), &v);
        let err = issuer.issue(&v.report_data()).unwrap_err();
        assert!(
            matches!(&err, AttestationError::Issuer(m) if m.contains("VMPL 1")),
            "{err}"
        );
    }

    #[test]
    fn a_device_that_gives_no_report_says_both_answers() {
        let v = vectors::virtee_milan();
        let mut device = FakeDevice::new(&v);
        device.extended_fails = true;
        device.plain_fails = true;
        let err = issuer(device, VcekResolver::default(), &v)
            .issue(&v.report_data())
            .unwrap_err();
        let AttestationError::Issuer(message) = &err else {
            panic!("{err:?}")
        };
        assert!(message.contains("invalid parameters"), "{message}");
        assert!(
            message.contains("does not support extended reports"),
            "{message}"
        );
    }

    #[test]
    fn no_certificate_anywhere_is_an_issuer_error_naming_every_source() {
        let v = vectors::virtee_milan();
        let err = issuer(FakeDevice::new(&v), VcekResolver::default(), &v)
            .issue(&v.report_data())
            .unwrap_err();
        let AttestationError::Issuer(message) = &err else {
            panic!("{err:?}")
        };
        for says in [
            "no VCEK found",
            "host certificate table: none",
            "AMD KDS: off",
            "--vcek-dir",
        ] {
            assert!(message.contains(says), "{says}: {message}");
        }
    }
}
