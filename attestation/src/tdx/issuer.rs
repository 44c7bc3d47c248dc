//! The TDX guest issuer: quotes through the kernel's configfs-tsm interface, sent with Intel's
//! collateral.
//!
//! Owns [`TdxGuestIssuer`]: each `issue` asks configfs-tsm (`tdx_guest` provider; the kernel gets
//! the quote from the host's quoting service) for a quote over the caller's report data, checks it
//! reads as a TDX quote, and sends it with the collateral the issuer was given, as `certificates[0]`
//! (PROTOCOL.md, TDX evidence), so relying parties need no network. Finding fresh collateral (PCS,
//! PCCS, cache, operator directory) is the caller's. It cannot run on this machine: it is small,
//! typed and tested against a stand-in directory for configfs. It must never choose the report data.

use std::path::Path;
use std::sync::RwLock;

use crate::error::AttestationError;
use crate::evidence::{Evidence, Platform};
use crate::issuer::EvidenceIssuer;
use crate::sev_guest::{TSM_REPORT_DIR, TsmReports};

use super::collateral::Collateral;
use super::quote::Quote;

/// What to do when neither configfs-tsm nor a TDX guest is there.
pub const WHAT_TO_DO: &str = "TDX evidence comes from the kernel's configfs-tsm report interface: run \
in an Intel TDX guest on Linux 6.7 or later with the tdx_guest driver (CONFIG_TDX_GUEST_DRIVER) and \
CONFIG_TSM_REPORTS, mount configfs (mount -t configfs none /sys/kernel/config) and make \
/sys/kernel/config/tsm/report visible in the container; the host must run a quote generation service \
(QGS) for the guest";

/// Issues TDX evidence from configfs-tsm, with Intel's collateral.
#[derive(Debug)]
pub struct TdxGuestIssuer {
    tsm: TsmReports,
    collateral: RwLock<Vec<u8>>,
}

impl TdxGuestIssuer {
    /// The issuer on the configfs-tsm interface at `root` (normally [`TSM_REPORT_DIR`]), sending
    /// `collateral` with its quotes. An error names the fix when the interface is not there.
    pub fn open(root: &Path, collateral: &Collateral) -> Result<Self, AttestationError> {
        let tsm = TsmReports::find(root).ok_or_else(|| {
            AttestationError::Issuer(format!(
                "no configfs-tsm report interface at {}; {WHAT_TO_DO}",
                root.display()
            ))
        })?;
        Ok(Self {
            tsm,
            collateral: RwLock::new(collateral.to_json()),
        })
    }

    /// The issuer at the kernel's place, [`TSM_REPORT_DIR`].
    pub fn open_default(collateral: &Collateral) -> Result<Self, AttestationError> {
        Self::open(Path::new(TSM_REPORT_DIR), collateral)
    }

    /// Sends `collateral` with the quotes from now on (fresh collateral, fetched by the caller).
    pub fn set_collateral(&self, collateral: &Collateral) {
        let json = collateral.to_json();
        match self.collateral.write() {
            Ok(mut c) => *c = json,
            Err(poisoned) => *poisoned.into_inner() = json,
        }
    }
}

impl EvidenceIssuer for TdxGuestIssuer {
    fn platform(&self) -> Platform {
        Platform::Tdx
    }

    fn issue(&self, report_data: &[u8; 64]) -> Result<Evidence, AttestationError> {
        let quote = self.tsm.request_tdx_quote(report_data).map_err(|e| {
            AttestationError::Issuer(format!("configfs-tsm TDX quote: {e}; {WHAT_TO_DO}"))
        })?;
        // A quote this process could not verify itself would fail at every peer: say so here.
        let parsed = Quote::parse(&quote).map_err(|e| {
            AttestationError::Issuer(format!("configfs-tsm returned no usable TDX quote: {e}"))
        })?;
        if &parsed.report.report_data != report_data {
            return Err(AttestationError::Issuer(
                "configfs-tsm returned a TDX quote over other report data".into(),
            ));
        }
        let collateral = match self.collateral.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        Ok(Evidence {
            platform: Platform::Tdx,
            report: quote,
            certificates: vec![collateral],
            crls: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTE: &[u8] = include_bytes!("vectors/tdx_quote");
    const COLLATERAL: &[u8] = include_bytes!("vectors/tdx_quote_collateral.json");

    #[test]
    fn no_configfs_tsm_is_an_error_that_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let c = Collateral::from_json(COLLATERAL).unwrap();
        let err = TdxGuestIssuer::open(&dir.path().join("tsm/report"), &c).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("configfs-tsm")
                && text.contains("mount -t configfs")
                && text.contains("tdx_guest"),
            "{text}"
        );
    }

    #[test]
    fn an_entry_without_a_provider_is_an_issuer_error() {
        // A plain directory stands in for configfs: it has no provider attribute, so no quote.
        let dir = tempfile::tempdir().unwrap();
        let c = Collateral::from_json(COLLATERAL).unwrap();
        let issuer = TdxGuestIssuer::open(dir.path(), &c).unwrap();
        assert_eq!(issuer.platform(), Platform::Tdx);
        let err = issuer.issue(&[0; 64]).unwrap_err();
        assert!(
            matches!(&err, AttestationError::Issuer(m) if m.contains("cannot read provider")),
            "{err}"
        );
    }

    #[test]
    fn the_quote_is_sent_with_the_collateral_and_a_quote_over_other_report_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = Collateral::from_json(COLLATERAL).unwrap();
        let issuer = TdxGuestIssuer {
            tsm: TsmReports::stand_in(dir.path(), |entry| {
                std::fs::write(entry.join("provider"), "tdx_guest\n").unwrap();
                std::fs::write(entry.join("generation"), "1\n").unwrap();
                std::fs::write(entry.join("outblob"), QUOTE).unwrap();
            }),
            collateral: RwLock::new(c.to_json()),
        };
        let report_data = Quote::parse(QUOTE).unwrap().report.report_data;
        let evidence = issuer.issue(&report_data).unwrap();
        assert_eq!(evidence.platform, Platform::Tdx);
        assert_eq!(evidence.report, QUOTE);
        assert_eq!(Collateral::from_json(&evidence.certificates[0]).unwrap(), c);
        let err = issuer.issue(&[0; 64]).unwrap_err();
        assert!(
            matches!(&err, AttestationError::Issuer(m) if m.contains("other report data")),
            "{err}"
        );
    }
}
