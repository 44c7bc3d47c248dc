//! Extended reports through the kernel's configfs-tsm interface (Linux 6.7 and later), in safe code.
//!
//! Owns one request: make a report entry under `/sys/kernel/config/tsm/report/` with a random name,
//! check its provider is the expected one ([`TsmProvider`]: `sev_guest` for SEV-SNP, `tdx_guest` for
//! Intel TDX, the kernel's one report ABI for both), write the VMPL (`privlevel`, SNP only) and the
//! report data (`inblob`),
//! read the report (`outblob`) and the host's certificate table as raw bytes (`auxblob`), check that
//! no other writer changed the entry meanwhile (`generation`), and remove the entry. Every read is
//! bounded ([`crate::files::read_regular_file`]). It must never interpret the table: the raw bytes go
//! to `crate::vcek::parse_cert_table`, which checks every offset and length.
//!
//! This is why Concord never calls the `sev` crate's `get_ext_report`: that function hands the
//! host's table to an `unsafe` parser that follows the host's offsets and lengths without bounds.

use std::path::{Path, PathBuf};

use rand::RngCore as _;

use crate::files::{FileError, read_regular_file};

/// Where Linux puts the configfs-tsm report entries.
pub const TSM_REPORT_DIR: &str = "/sys/kernel/config/tsm/report";

/// The SNP report: 1184 bytes; a TDX quote with its PEM chain about 5 KiB. 64 KiB is more than
/// any provider writes.
const MAX_OUTBLOB: usize = 64 * 1024;
/// Linux hands at most 16 KiB of certificate table to the guest; the parser refuses above 64 KiB.
const MAX_AUXBLOB: usize = crate::vcek::MAX_TABLE_LEN;
/// `provider` and `generation` are one short line each.
const MAX_ATTRIBUTE: usize = 4096;

/// The kernel driver behind a configfs-tsm report entry (its `provider` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsmProvider {
    /// AMD SEV-SNP (`sev_guest`): `outblob` is the 1184-byte report, `auxblob` the host's table.
    SevGuest,
    /// Intel TDX (`tdx_guest`): `outblob` is the quote (from the host's quoting service).
    TdxGuest,
}

impl TsmProvider {
    /// The `provider` attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SevGuest => "sev_guest",
            Self::TdxGuest => "tdx_guest",
        }
    }
}

/// The configfs-tsm report interface, in `root` (normally [`TSM_REPORT_DIR`]).
#[derive(Debug, Clone)]
pub struct TsmReports {
    root: PathBuf,
    /// Tests only: fills a new entry with the attributes configfs would create in it.
    #[cfg(test)]
    populate: Option<fn(&Path)>,
}

/// Removes the report entry when the request ends, however it ends.
struct Entry(PathBuf);

impl Drop for Entry {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.0) {
            tracing::warn!(entry = %self.0.display(), error = %e, "cannot remove a configfs-tsm report entry");
        }
    }
}

impl TsmReports {
    /// The interface at `root`, if that directory exists (the kernel has configfs-tsm and configfs
    /// is mounted where the process can see it).
    pub fn find(root: &Path) -> Option<Self> {
        root.is_dir().then(|| Self {
            root: root.to_path_buf(),
            #[cfg(test)]
            populate: None,
        })
    }

    /// Tests only: the interface at `root`, with `populate` playing the kernel's part in each entry.
    #[cfg(test)]
    pub(crate) fn stand_in(root: &Path, populate: fn(&Path)) -> Self {
        Self {
            root: root.to_path_buf(),
            populate: Some(populate),
        }
    }

    /// The SEV-SNP report for `report_data` at VMPL `vmpl`, and the host's certificate table (raw;
    /// `None` when the host gave none). The error says which step failed.
    pub fn request(
        &self,
        report_data: &[u8; 64],
        vmpl: u32,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
        self.request_from(TsmProvider::SevGuest, report_data, Some(vmpl))
    }

    /// The TDX quote for `report_data` (REPORTDATA). The error says which step failed.
    pub fn request_tdx_quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, String> {
        self.request_from(TsmProvider::TdxGuest, report_data, None)
            .map(|(quote, _)| quote)
    }

    /// One request to `provider`: `privlevel` written when `vmpl` is given (SNP), `inblob`, then
    /// `outblob` and `auxblob` read between two equal `generation`s.
    fn request_from(
        &self,
        provider: TsmProvider,
        report_data: &[u8; 64],
        vmpl: Option<u32>,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
        let mut name = [0u8; 16];
        rand::rngs::OsRng
            .try_fill_bytes(&mut name)
            .map_err(|e| format!("the OS random generator failed: {e}"))?;
        let dir = self.root.join(format!("concord-{}", hex::encode(name)));
        std::fs::create_dir(&dir)
            .map_err(|e| format!("cannot create the report entry {}: {e}", dir.display()))?;
        let entry = Entry(dir);
        #[cfg(test)]
        if let Some(populate) = self.populate {
            populate(&entry.0);
        }
        let found = read_attribute(&entry.0, "provider", MAX_ATTRIBUTE)?;
        if found.trim_ascii() != provider.as_str().as_bytes() {
            return Err(format!(
                "the configfs-tsm provider is {:?}, not {}",
                String::from_utf8_lossy(found.trim_ascii()),
                provider.as_str()
            ));
        }
        if let Some(vmpl) = vmpl {
            write_attribute(&entry.0, "privlevel", vmpl.to_string().as_bytes())?;
        }
        write_attribute(&entry.0, "inblob", report_data)?;
        let before = read_attribute(&entry.0, "generation", MAX_ATTRIBUTE)?;
        let report = read_attribute(&entry.0, "outblob", MAX_OUTBLOB)?;
        let table = match read_regular_file(&entry.0.join("auxblob"), MAX_AUXBLOB) {
            Ok(table) if table.is_empty() => None,
            Ok(table) => Some(table),
            Err(FileError::NotFound) => None,
            Err(e) => return Err(format!("cannot read auxblob: {e}")),
        };
        let after = read_attribute(&entry.0, "generation", MAX_ATTRIBUTE)?;
        if before != after {
            return Err(
                "another writer changed the configfs-tsm report entry while it was read".into(),
            );
        }
        Ok((report, table))
    }
}

fn read_attribute(dir: &Path, name: &str, max: usize) -> Result<Vec<u8>, String> {
    read_regular_file(&dir.join(name), max).map_err(|e| format!("cannot read {name}: {e}"))
}

fn write_attribute(dir: &Path, name: &str, value: &[u8]) -> Result<(), String> {
    std::fs::write(dir.join(name), value).map_err(|e| format!("cannot write {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_interface_without_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(TsmReports::find(&dir.path().join("tsm/report")).is_none());
        assert!(TsmReports::find(dir.path()).is_some());
    }

    /// A plain directory standing in for configfs, with `populate` playing the kernel's part.
    fn stand_in(populate: fn(&Path)) -> (tempfile::TempDir, TsmReports) {
        let dir = tempfile::tempdir().unwrap();
        let mut tsm = TsmReports::find(dir.path()).unwrap();
        tsm.populate = Some(populate);
        (dir, tsm)
    }

    fn sev_guest(entry: &Path) {
        std::fs::write(entry.join("provider"), "sev_guest\n").unwrap();
        std::fs::write(entry.join("generation"), "1\n").unwrap();
        std::fs::write(entry.join("outblob"), [0x11; 1184]).unwrap();
    }

    #[test]
    fn the_report_and_the_raw_table_are_read_and_the_request_written() {
        let (dir, tsm) = stand_in(|entry| {
            sev_guest(entry);
            std::fs::write(entry.join("auxblob"), b"the host's table").unwrap();
        });
        let (report, table) = tsm.request(&[0xAB; 64], 0).unwrap();
        assert_eq!(report, vec![0x11; 1184]);
        assert_eq!(table.as_deref(), Some(&b"the host's table"[..]));
        let entry = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        assert!(
            entry
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("concord-")
        );
        assert_eq!(std::fs::read(entry.join("inblob")).unwrap(), vec![0xAB; 64]);
        assert_eq!(std::fs::read(entry.join("privlevel")).unwrap(), b"0");
    }

    #[test]
    fn no_auxblob_or_an_empty_one_is_no_table() {
        let (_dir, tsm) = stand_in(sev_guest);
        assert_eq!(tsm.request(&[0; 64], 0).unwrap().1, None);
        let (_dir, tsm) = stand_in(|entry| {
            sev_guest(entry);
            std::fs::write(entry.join("auxblob"), b"").unwrap();
        });
        assert_eq!(tsm.request(&[0; 64], 0).unwrap().1, None);
    }

    fn tdx_guest(entry: &Path) {
        std::fs::write(entry.join("provider"), "tdx_guest\n").unwrap();
        std::fs::write(entry.join("generation"), "1\n").unwrap();
        std::fs::write(entry.join("outblob"), [0x44; 5006]).unwrap();
    }

    #[test]
    fn a_tdx_quote_is_read_from_the_tdx_guest_provider() {
        let (dir, tsm) = stand_in(tdx_guest);
        assert_eq!(
            tsm.request_tdx_quote(&[0xCD; 64]).unwrap(),
            vec![0x44; 5006]
        );
        // A plain directory keeps the entry (configfs would remove it): REPORTDATA was written, and
        // no privlevel (TDX has no VMPL).
        let entry = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        assert_eq!(std::fs::read(entry.join("inblob")).unwrap(), vec![0xCD; 64]);
        assert!(!entry.join("privlevel").exists());
        // An SNP request to a TDX provider and a TDX request to an SNP provider are refused.
        let err = tsm.request(&[0; 64], 0).unwrap_err();
        assert!(err.contains("\"tdx_guest\", not sev_guest"), "{err}");
        let (_dir, snp) = stand_in(sev_guest);
        let err = snp.request_tdx_quote(&[0; 64]).unwrap_err();
        assert!(err.contains("\"sev_guest\", not tdx_guest"), "{err}");
    }

    #[test]
    fn another_provider_is_refused() {
        let (_dir, tsm) = stand_in(|entry| {
            sev_guest(entry);
            std::fs::write(entry.join("provider"), "tdx_guest\n").unwrap();
        });
        let err = tsm.request(&[0; 64], 0).unwrap_err();
        assert!(err.contains("\"tdx_guest\", not sev_guest"), "{err}");
    }

    #[test]
    fn outsized_or_odd_blobs_are_refused_without_reading_them_whole() {
        let (_dir, tsm) = stand_in(|entry| {
            sev_guest(entry);
            std::fs::write(entry.join("auxblob"), vec![0; MAX_AUXBLOB + 1]).unwrap();
        });
        let err = tsm.request(&[0; 64], 0).unwrap_err();
        assert!(
            err.contains("auxblob") && err.contains("longer than"),
            "{err}"
        );
        let (_dir, tsm) = stand_in(|entry| {
            sev_guest(entry);
            std::fs::write(entry.join("outblob"), vec![0; MAX_OUTBLOB + 1]).unwrap();
        });
        let err = tsm.request(&[0; 64], 0).unwrap_err();
        assert!(
            err.contains("outblob") && err.contains("longer than"),
            "{err}"
        );
        #[cfg(unix)]
        {
            let (_dir, tsm) = stand_in(|entry| {
                sev_guest(entry);
                std::os::unix::fs::symlink("/dev/zero", entry.join("auxblob")).unwrap();
            });
            let err = tsm.request(&[0; 64], 0).unwrap_err();
            assert!(err.contains("symbolic link"), "{err}");
        }
    }

    #[test]
    fn an_entry_without_the_sev_guest_provider_is_refused_and_removed() {
        // A plain directory stands in for configfs: the new entry has no provider attribute.
        let dir = tempfile::tempdir().unwrap();
        let tsm = TsmReports::find(dir.path()).unwrap();
        let err = tsm.request(&[0; 64], 0).unwrap_err();
        assert!(err.contains("cannot read provider"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
