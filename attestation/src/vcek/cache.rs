//! The on-disk cache of VCEKs fetched from the KDS, so that a restart asks AMD again only after a
//! TCB change.
//!
//! Owns the directory's layout: one DER file per product, chip and TCB, named by
//! [`VcekQuery::cache_file_name`], written whole (a temporary file, then a rename). The disk belongs
//! to the host, so it must never be trusted: `VcekResolver` checks what it reads like any other
//! source, and a file that does not fit is ignored and replaced by the next fetch.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::query::VcekQuery;

/// A cache of VCEKs in a directory (created on the first write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcekCache {
    dir: PathBuf,
}

impl VcekCache {
    /// A cache in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, query: &VcekQuery) -> PathBuf {
        self.dir.join(query.cache_file_name())
    }

    /// The cached VCEK for `query`: `Ok(None)` when there is none, an error when it cannot be read.
    pub fn get(&self, query: &VcekQuery) -> Result<Option<Vec<u8>>, String> {
        let path = self.path(query);
        match std::fs::read(&path) {
            Ok(der) => Ok(Some(der)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Stores `der` as the VCEK for `query`, replacing what was there.
    pub fn put(&self, query: &VcekQuery, der: &[u8]) -> Result<(), String> {
        let path = self.path(query);
        let fail = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
        std::fs::create_dir_all(&self.dir).map_err(|e| fail("create the directory of", e))?;
        let partial = path.with_extension(format!("der.partial-{}", std::process::id()));
        std::fs::write(&partial, der).map_err(|e| fail("write", e))?;
        std::fs::rename(&partial, &path).map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            fail("rename into", e)
        })
    }
}
