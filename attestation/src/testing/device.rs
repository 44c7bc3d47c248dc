//! A stand-in for `/dev/sev-guest`: answers with a real report (whatever it is asked), or with an
//! unsigned report built for the report data it is asked for, and the host's certificate table as
//! raw bytes when given one; it fails on demand and counts its calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::report::ReportBuilder;
use crate::sev_guest::GuestDevice;

/// What report the stand-in answers with.
#[derive(Debug, Clone)]
pub enum StandInReport {
    /// These bytes, whatever the report data asked for (a real, signed report).
    Fixed(Vec<u8>),
    /// This builder's report with the report data asked for, unsigned: enough for an issuer that
    /// fails before anything verifies the signature (a VCEK lookup miss).
    Built(ReportBuilder),
}

/// The stand-in device.
#[derive(Debug, Clone)]
pub struct StandInDevice {
    /// The report it answers with.
    pub report: StandInReport,
    /// The host's certificate table, raw, sent with extended reports.
    pub table: Option<Vec<u8>>,
    /// Extended reports fail (as on a host without them).
    pub extended_fails: bool,
    /// Plain reports fail.
    pub plain_fails: bool,
    /// Every call, extended or plain.
    pub calls: Arc<AtomicUsize>,
}

impl StandInDevice {
    /// A device answering `report` (fixed bytes) to every request.
    pub fn fixed(report: Vec<u8>) -> Self {
        Self::new(StandInReport::Fixed(report))
    }

    /// A device answering `builder`'s report with the report data asked for.
    pub fn built(builder: ReportBuilder) -> Self {
        Self::new(StandInReport::Built(builder))
    }

    fn new(report: StandInReport) -> Self {
        Self {
            report,
            table: None,
            extended_fails: false,
            plain_fails: false,
            calls: Arc::default(),
        }
    }

    fn answer(&self, report_data: &[u8; 64]) -> Vec<u8> {
        match &self.report {
            StandInReport::Fixed(raw) => raw.clone(),
            StandInReport::Built(builder) => builder
                .clone()
                .report_data(report_data)
                .build_unsigned()
                .to_vec(),
        }
    }
}

impl GuestDevice for StandInDevice {
    fn extended_report(
        &mut self,
        report_data: &[u8; 64],
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.extended_fails {
            return Err("VMM Error Encountered: the host does not support extended reports".into());
        }
        Ok((self.answer(report_data), self.table.clone()))
    }

    fn report(&mut self, report_data: &[u8; 64]) -> Result<Vec<u8>, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.plain_fails {
            return Err("Firmware Error Encountered: invalid parameters".into());
        }
        Ok(self.answer(report_data))
    }
}

/// Host certificate tables a hostile host could write, each named: `crate::vcek::parse_cert_table`
/// must refuse every one without reading outside it. The fuzz target's seeds and the replay tests
/// share them.
pub fn hostile_cert_tables() -> Vec<(&'static str, Vec<u8>)> {
    use crate::vcek::{Guid, MAX_ENTRIES, MAX_TABLE_LEN};
    fn entry(guid: Guid, offset: u32, length: u32) -> Vec<u8> {
        let mut e = guid.0.to_vec();
        e.extend_from_slice(&offset.to_le_bytes());
        e.extend_from_slice(&length.to_le_bytes());
        e
    }
    let end = [0u8; 24];
    let with_end = |mut v: Vec<u8>, tail: &[u8]| {
        v.extend_from_slice(&end);
        v.extend_from_slice(tail);
        v
    };
    let mut huge = Vec::new();
    for i in 0..(MAX_ENTRIES as u32 * 4) {
        let mut g = [0x5A; 16];
        g[..4].copy_from_slice(&i.to_le_bytes());
        huge.extend(entry(Guid(g), 0, 0));
    }
    let mut no_end = entry(Guid::ARK, 48, 4);
    no_end.extend(entry(Guid::VCEK, 0x10_0000, 0x10_0000));
    vec![
        (
            "VCEK offset 2 GiB past the end",
            with_end(entry(Guid::VCEK, 0x8000_0000, 1400), &[]),
        ),
        (
            "VCEK length 4 GiB",
            with_end(entry(Guid::VCEK, 48, u32::MAX), &[0; 16]),
        ),
        ("no terminator", no_end),
        ("a huge count of entries", with_end(huge, &[])),
        (
            "overlapping VCEK and ASK",
            with_end(
                [entry(Guid::VCEK, 72, 100), entry(Guid::ASK, 100, 100)].concat(),
                &[0; 200],
            ),
        ),
        (
            "VCEK over the entries",
            with_end(entry(Guid::VCEK, 0, 48), &[]),
        ),
        (
            "two VCEKs",
            with_end(
                [entry(Guid::VCEK, 72, 4), entry(Guid::VCEK, 76, 4)].concat(),
                &[0; 8],
            ),
        ),
        ("larger than any table", vec![0xFF; MAX_TABLE_LEN + 1]),
    ]
}
