//! A directory of VCEKs the operator provides, for guests that cannot reach AMD's KDS.
//!
//! Owns reading it: every `*.der` file (one DER certificate) and every `*.pem` file (any number of
//! `CERTIFICATE` blocks) directly in the directory, in file name order; names are free, so files
//! downloaded from the KDS can be dropped in as they are. It must never decide which certificate
//! fits a report: `VcekResolver` checks each against the report and the pinned AMD roots, and
//! uses the first that fits.

use std::path::{Path, PathBuf};

use super::error::VcekError;

/// Larger files are not certificates and are skipped.
const MAX_FILE: u64 = 256 * 1024;

/// An operator's directory of VCEKs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineDir {
    dir: PathBuf,
}

/// One certificate found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineCertificate {
    /// The file it came from.
    pub file: PathBuf,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

impl OfflineDir {
    /// The directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every certificate of the directory's `*.der` and `*.pem` files, by file name. An unreadable
    /// directory is an error (it was configured, so it should exist); an unreadable or unparsable
    /// file is skipped with a warning.
    pub fn certificates(&self) -> Result<Vec<OfflineCertificate>, VcekError> {
        let unreadable = |what: String| VcekError::OfflineDir {
            dir: self.dir.display().to_string(),
            what,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(|e| unreadable(e.to_string()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| matches!(extension(path), Some("der" | "pem")))
            .collect();
        files.sort();
        let mut found = Vec::new();
        for file in files {
            match read_certificates(&file) {
                Ok(ders) => found.extend(ders.into_iter().map(|der| OfflineCertificate {
                    file: file.clone(),
                    der,
                })),
                Err(why) => {
                    tracing::warn!(file = %file.display(), %why, "skipping a file of the VCEK directory");
                }
            }
        }
        Ok(found)
    }
}

impl OfflineDir {
    /// Every `*.crl` file directly in the directory (one DER CRL each, as AMD's KDS serves them),
    /// by file name; unreadable files and files over [`MAX_CRL_LEN`](crate::snp::MAX_CRL_LEN)
    /// bytes are skipped with a warning. Which CRL counts is `CrlSource`'s decision.
    pub fn crls(&self) -> Result<Vec<OfflineCertificate>, VcekError> {
        let unreadable = |what: String| VcekError::OfflineDir {
            dir: self.dir.display().to_string(),
            what,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(|e| unreadable(e.to_string()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| extension(path) == Some("crl"))
            .collect();
        files.sort();
        let mut found = Vec::new();
        for file in files {
            match crate::files::read_regular_file(&file, crate::snp::MAX_CRL_LEN) {
                Ok(der) => found.push(OfflineCertificate { file, der }),
                Err(why) => {
                    tracing::warn!(file = %file.display(), %why, "skipping a CRL file of the VCEK directory");
                }
            }
        }
        Ok(found)
    }
}

fn extension(path: &Path) -> Option<&str> {
    path.extension().and_then(|e| e.to_str())
}

/// The certificates of one file: a `.der` holds one, a `.pem` any number.
fn read_certificates(file: &Path) -> Result<Vec<Vec<u8>>, String> {
    let meta = std::fs::metadata(file).map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        return Err(format!("not a file of at most {MAX_FILE} bytes"));
    }
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    if extension(file) == Some("der") {
        return Ok(vec![bytes]);
    }
    let mut ders = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
        let pem = pem.map_err(|e| format!("not PEM: {e}"))?;
        if pem.label == "CERTIFICATE" {
            ders.push(pem.contents);
        }
    }
    if ders.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    Ok(ders)
}
