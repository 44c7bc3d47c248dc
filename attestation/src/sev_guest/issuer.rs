//! The SEV-SNP issuer: evidence from the guest device, with the certificate of the key that
//! signed it.
//!
//! Owns asking the device for an extended report (falling back to a plain one), checking that the
//! firmware answered what was asked (the report data, VMPL 0), getting the signer's certificate
//! from `super::signers` (found once per chip and TCB, in the background), and packing
//! [`Evidence`]. It must never choose the report data, never send a report it did not check, and
//! never wait for a certificate lookup in [`EvidenceIssuer::issue`] (a handshake that cannot get
//! evidence now fails at once, saying why); it does not verify its own evidence (the relying side
//! does, and the coordinator checks its own once at launch).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::device::GuestDevice;
use super::signers::{NotYet, RetryBackoff, Signers};
use crate::error::AttestationError;
use crate::evidence::{Evidence, Platform};
use crate::issuer::EvidenceIssuer;
use crate::reference::Product;
use crate::report::Report;
use crate::snp::{SignerKind, roots};
use crate::vcek::{CrlSource, HostCertificates, VcekResolver};

/// How long launch waits for AMD's CRL: the KDS client's attempts (4 × 10 s and backoff) fit.
const LAUNCH_CRL_WAIT: Duration = Duration::from_secs(60);

/// Issues SEV-SNP evidence from a guest device.
pub struct SevGuestIssuer {
    device: Mutex<Box<dyn GuestDevice>>,
    signers: Arc<Signers>,
    crls: Option<CrlSource>,
    pinned_now: Option<SystemTime>,
}

impl std::fmt::Debug for SevGuestIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SevGuestIssuer")
            .field("resolver", self.signers.resolver())
            .finish_non_exhaustive()
    }
}

/// Why [`SevGuestIssuer::try_issue`] gave no evidence.
enum IssueError {
    /// The signer's certificate is being looked up: evidence is possible later.
    Pending(Report, String),
    /// Anything else.
    Failed(AttestationError),
}

impl From<AttestationError> for IssueError {
    fn from(e: AttestationError) -> Self {
        Self::Failed(e)
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

    /// An issuer on `device`, finding certificates with `resolver`; a failed lookup is repeated
    /// after [`RetryBackoff::default`].
    pub fn with_device(device: Box<dyn GuestDevice>, resolver: VcekResolver) -> Self {
        Self::with_backoff(device, resolver, RetryBackoff::default())
    }

    /// [`with_device`](Self::with_device) with another backoff after failed lookups.
    pub fn with_backoff(
        device: Box<dyn GuestDevice>,
        resolver: VcekResolver,
        backoff: RetryBackoff,
    ) -> Self {
        Self {
            device: Mutex::new(device),
            signers: Arc::new(Signers::new(resolver, backoff)),
            crls: None,
            pinned_now: None,
        }
    }

    /// This issuer, sending AMD's CRL for the signer's product and key kind from `crls` with
    /// each piece of evidence (none while it is being looked up: verifiers that require one then
    /// refuse the evidence, and [`issue_waiting`](Self::issue_waiting) waits for it at launch).
    pub fn with_crls(mut self, crls: CrlSource) -> Self {
        self.crls = Some(crls);
        self
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

    /// Like [`issue`](EvidenceIssuer::issue), but waits up to `wait` for the signer's certificate
    /// to be found (at launch, where nothing else waits on this thread). Never call it on an
    /// async runtime's worker thread or in a handshake.
    pub fn issue_waiting(
        &self,
        report_data: &[u8; 64],
        wait: Duration,
    ) -> Result<Evidence, AttestationError> {
        let deadline = Instant::now() + wait;
        loop {
            match self.try_issue(report_data) {
                Ok(evidence) => return Ok(self.with_crl_at_launch(evidence)),
                Err(IssueError::Failed(e)) => return Err(e),
                Err(IssueError::Pending(report, why)) => {
                    if !self.signers.wait(&report, deadline) {
                        return Err(AttestationError::Issuer(format!(
                            "{why}; gave up after waiting {} s",
                            wait.as_secs()
                        )));
                    }
                }
            }
        }
    }

    /// At launch, where waiting is fine: when no CRL is held yet, looks it up now (bounded by the
    /// KDS client's timeouts and attempts) and adds it.
    fn with_crl_at_launch(&self, mut evidence: Evidence) -> Evidence {
        if let (Some(crls), true) = (&self.crls, evidence.crls.is_empty())
            && let Some((product, kind)) = signer_of(&evidence)
            && let Ok(crl) = crls.wait_for(product, kind, self.now(), LAUNCH_CRL_WAIT)
        {
            evidence.crls.push(crl);
        }
        evidence
    }

    /// The CRL to send with evidence signed by `certificates[0]`, from memory.
    fn crls_for(&self, report: &Report, certificates: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let Some(crls) = &self.crls else {
            return vec![];
        };
        let Ok(kind) = SignerKind::of_report(report) else {
            return vec![];
        };
        let Some(product) = certificates
            .first()
            .and_then(|signer| roots::product_issuing(kind, signer))
        else {
            return vec![];
        };
        crls.current(product, kind, self.now())
            .into_iter()
            .collect()
    }

    fn try_issue(&self, report_data: &[u8; 64]) -> Result<Evidence, IssueError> {
        let (raw, table) = self.raw_report(report_data)?;
        let report = check_report(&raw, report_data)?;
        match self.signers.certificates(&report, table, self.now()) {
            Ok(certificates) => {
                let crls = self.crls_for(&report, &certificates);
                Ok(pack(raw, certificates, crls))
            }
            Err(NotYet::Pending(why)) => Err(IssueError::Pending(report, why)),
            Err(NotYet::Failed(why)) => Err(IssueError::Failed(AttestationError::Issuer(why))),
        }
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
            Ok((raw, table)) => Ok((raw, table.as_deref().and_then(host_certificates))),
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
}

/// The host's table, or none when it does not parse or is ambiguous (the host is at fault; the
/// VCEK is then looked up elsewhere).
fn host_certificates(raw: &[u8]) -> Option<HostCertificates> {
    match HostCertificates::parse(raw) {
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
fn pack(raw: Vec<u8>, certificates: Vec<Vec<u8>>, crls: Vec<Vec<u8>>) -> Evidence {
    Evidence {
        platform: Platform::Snp,
        report: raw,
        certificates,
        crls,
    }
}

/// The product and key kind of SNP evidence's signer, by its certificate's issuer name (the
/// resolver already checked it chains to that product's ARK).
fn signer_of(evidence: &Evidence) -> Option<(Product, SignerKind)> {
    let report = Report::parse(&evidence.report).ok()?;
    let kind = SignerKind::of_report(&report).ok()?;
    let product = roots::product_issuing(kind, evidence.certificates.first()?)?;
    Some((product, kind))
}

impl EvidenceIssuer for SevGuestIssuer {
    fn platform(&self) -> Platform {
        Platform::Snp
    }

    /// Fresh evidence, or an error at once: when the signer's certificate is not known yet, its
    /// lookup runs in the background and this call fails saying so.
    fn issue(&self, report_data: &[u8; 64]) -> Result<Evidence, AttestationError> {
        self.try_issue(report_data).map_err(|e| match e {
            IssueError::Pending(_, why) => AttestationError::Issuer(why),
            IssueError::Failed(e) => e,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::testing::device::StandInDevice;
    use crate::testing::snp::{self as vectors, Vector};
    use crate::vcek::{Guid, OfflineDir, encode_cert_table};
    use crate::verify::{PlatformTrust, Verifier};

    /// Long enough for any lookup of these tests (a directory read, no network).
    const WAIT: Duration = Duration::from_secs(30);

    fn device(v: &Vector) -> StandInDevice {
        StandInDevice::fixed(v.report.clone())
    }

    fn issuer(device: StandInDevice, resolver: VcekResolver, v: &Vector) -> SevGuestIssuer {
        SevGuestIssuer::with_device(Box::new(device), resolver).at(v.at)
    }

    /// The evidence verifies as a relying party would check it: the report's own report data as
    /// the binding, its host data as the only accepted policy, at the vector's time.
    fn assert_verifies(evidence: &Evidence, v: &Vector) {
        let host_data = *v.report().host_data();
        // No real AMD CRL is among the vectors: what is under test here is the VCEK's source.
        Verifier::new(PlatformTrust::default())
            .with_snp_revocation(crate::snp::SnpRevocation::NotChecked)
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
    fn evidence_carries_amds_crl_for_the_signers_product_and_kind() {
        use crate::testing::amd;
        use crate::testing::kds::{KdsStub, StubMode};
        let v = vectors::virtee_milan();
        let crl = amd::milan().crl(&[]);
        let stub = KdsStub::start(
            vec![("/vcek/v1/Milan/crl".into(), crl.clone())],
            StubMode::Serve,
        );
        let mut config = crate::vcek::KdsConfig::new(stub.base_url());
        config.attempts = 1;
        let kds = crate::vcek::KdsClient::new(config).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let crls = CrlSource::with_ark(
            Some(kds),
            Some(crate::vcek::VcekCache::new(cache.path())),
            None,
            |_| amd::milan().ark,
        );
        let dir = offline_dir_with(&[("vcek.der", &v.cert)]);
        let resolver = VcekResolver::new(None, None, Some(OfflineDir::new(dir.path())));
        let issuer = SevGuestIssuer::with_device(Box::new(device(&v)), resolver)
            .with_crls(crls)
            .at(amd::now());
        let evidence = issuer.issue_waiting(&v.report_data(), WAIT).unwrap();
        assert_eq!(evidence.crls, vec![crl]);
        assert_eq!(stub.paths(), vec!["/vcek/v1/Milan/crl".to_string()]);
        // A relying party checks it against the pinned Milan ARK, which did not sign this one.
        let verdict = Verifier::new(PlatformTrust::default()).verify(
            &evidence,
            &v.reference_values(),
            &v.report_data(),
            &|_| true,
            amd::now(),
        );
        assert_eq!(
            verdict,
            Err(crate::RejectReason::CrlMissing { sent: 1 }.into()),
            "a test CRL under a test name counts for no real product"
        );
    }

    #[test]
    fn the_host_table_gives_the_vcek_and_amds_pinned_chain() {
        let v = vectors::virtee_milan();
        let [ask, ark] = <[Vec<u8>; 2]>::try_from(vectors::azure_milan().chain).unwrap();
        let mut device = device(&v);
        device.table = Some(encode_cert_table(&[
            (Guid::ARK, &ark),
            (Guid::VCEK, &v.cert),
            (Guid::ASK, &ask),
        ]));
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
        let mut device = device(&v);
        device.extended_fails = true;
        let calls = device.calls.clone();
        let resolver = VcekResolver::new(None, None, Some(OfflineDir::new(dir.path())));
        let issuer = issuer(device, resolver, &v);
        // The directory is read in the background: the first call is refused at once, saying so.
        let err = issuer.issue(&v.report_data()).unwrap_err();
        assert!(
            err.to_string()
                .contains("being looked up in the background"),
            "{err}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2, "extended, then plain");
        let evidence = issuer.issue_waiting(&v.report_data(), WAIT).unwrap();
        assert_eq!(evidence.certificates, vec![v.cert.clone()]);
        assert_verifies(&evidence, &v);

        // The certificate is remembered for this chip and TCB: the directory is not read again.
        drop(dir);
        assert_eq!(issuer.issue(&v.report_data()).unwrap(), evidence);
    }

    #[test]
    fn a_report_for_other_report_data_is_not_sent() {
        let v = vectors::virtee_milan();
        let issuer = issuer(device(&v), VcekResolver::default(), &v);
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
        let issuer = issuer(device(&v), VcekResolver::default(), &v);
        let err = issuer.issue(&v.report_data()).unwrap_err();
        assert!(
            matches!(&err, AttestationError::Issuer(m) if m.contains("VMPL 1")),
            "{err}"
        );
    }

    #[test]
    fn a_device_that_gives_no_report_says_both_answers() {
        let v = vectors::virtee_milan();
        let mut device = device(&v);
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
        let err = issuer(device(&v), VcekResolver::default(), &v)
            .issue_waiting(&v.report_data(), WAIT)
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

    #[test]
    fn a_hostile_host_table_is_ignored_and_the_vcek_is_found_elsewhere() {
        let v = vectors::trustee_genoa_e2e();
        let dir = offline_dir_with(&[("operator-copy.der", &v.cert)]);
        for (name, table) in crate::testing::device::hostile_cert_tables() {
            let mut device = device(&v);
            device.table = Some(table);
            let resolver = VcekResolver::new(None, None, Some(OfflineDir::new(dir.path())));
            let evidence = issuer(device, resolver, &v)
                .issue_waiting(&v.report_data(), WAIT)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(evidence.certificates, vec![v.cert.clone()], "{name}");
        }
    }

    #[test]
    fn a_failed_lookup_is_not_repeated_before_its_backoff_ends() {
        use crate::testing::kds::{KdsStub, StubMode};
        use crate::vcek::{KdsClient, KdsConfig};
        // A Genoa report (version 3): one KDS request per lookup, answered 404.
        let v = vectors::trustee_genoa_e2e();
        let stub = KdsStub::start(vec![], StubMode::Serve);
        let kds = KdsClient::new(KdsConfig::new(stub.base_url())).unwrap();
        let backoff = RetryBackoff {
            first: Duration::from_millis(500),
            max: Duration::from_secs(1),
        };
        let issuer = SevGuestIssuer::with_backoff(
            Box::new(device(&v)),
            VcekResolver::new(Some(kds), None, None),
            backoff,
        )
        .at(v.at);
        let err = issuer.issue_waiting(&v.report_data(), WAIT).unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
        assert_eq!(stub.requests(), 1);
        for _ in 0..20 {
            let err = issuer.issue(&v.report_data()).unwrap_err();
            assert!(err.to_string().contains("next lookup"), "{err}");
        }
        assert_eq!(stub.requests(), 1, "no new lookup during the backoff");
        std::thread::sleep(Duration::from_millis(600));
        let err = issuer.issue_waiting(&v.report_data(), WAIT).unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
        assert_eq!(stub.requests(), 2, "one new lookup after it");
    }
}
