//! The on-disk cache of VCEKs fetched from the KDS, so that a restart asks AMD again only after a
//! TCB change.
//!
//! Owns the directory's layout: one DER file per product, chip and TCB, named by
//! [`VcekQuery::cache_file_name`], written whole (a temporary file with a random name, created
//! exclusively, then a rename). The disk belongs to the host, so it must never be trusted: a read
//! takes at most [`MAX_CACHE_FILE`] bytes from a regular file and follows no symbolic link (a FIFO,
//! a link to `/dev/zero` or to anything else is refused, not read); a write never opens an existing
//! name, so a link planted in the directory redirects nothing; and `VcekResolver` checks what it
//! reads like any other source, so a file that does not fit is ignored and replaced by the next fetch.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::query::VcekQuery;
use crate::files::{FileError, read_regular_file};

/// A VCEK is about 1.4 kB; a larger cache file is not one and is not read.
pub const MAX_CACHE_FILE: usize = 64 * 1024;

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

    /// The cached VCEK for `query`: `Ok(None)` when there is none, an error when it cannot be read
    /// or is not a regular file of at most [`MAX_CACHE_FILE`] bytes.
    pub fn get(&self, query: &VcekQuery) -> Result<Option<Vec<u8>>, String> {
        self.get_named(&query.cache_file_name())
    }

    /// The cached file `name` (a plain file name, e.g. a CRL's), read as [`get`](Self::get) reads.
    pub fn get_named(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.dir.join(name);
        match read_regular_file(&path, MAX_CACHE_FILE) {
            Ok(der) => Ok(Some(der)),
            Err(FileError::NotFound) => Ok(None),
            Err(e) => Err(format!(
                "cannot read {}: {e}; the host's disk is at fault, and the file is replaced after \
                 the next fetch",
                path.display()
            )),
        }
    }

    /// Stores `der` as the VCEK for `query`, replacing what was there (a file, or a link, which is
    /// replaced itself and not followed).
    pub fn put(&self, query: &VcekQuery, der: &[u8]) -> Result<(), String> {
        self.put_named(&query.cache_file_name(), der)
    }

    /// Stores `der` under the plain file name `name`, as [`put`](Self::put) stores.
    pub fn put_named(&self, name: &str, der: &[u8]) -> Result<(), String> {
        let path = self.dir.join(name);
        let fail = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
        std::fs::create_dir_all(&self.dir).map_err(|e| fail("create the directory of", e))?;
        // A new name chosen at random and created with O_EXCL: nothing planted can be opened.
        let mut partial = tempfile::Builder::new()
            .prefix(".vcek-")
            .suffix(".partial")
            .tempfile_in(&self.dir)
            .map_err(|e| fail("create a temporary file beside", e))?;
        partial
            .write_all(der)
            .and_then(|()| partial.as_file().sync_all())
            .map_err(|e| fail("write a temporary file beside", e))?;
        // rename(2) replaces whatever has the name, a link included, without following it; on
        // failure the temporary file is removed when dropped.
        partial
            .persist(&path)
            .map(|_| ())
            .map_err(|e| fail("rename into", e.error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Product;
    use crate::testing::snp as vectors;

    fn query() -> VcekQuery {
        VcekQuery::for_report(&vectors::virtee_milan().report(), Product::Milan)
    }

    #[test]
    fn a_put_is_read_back_and_replaces_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VcekCache::new(dir.path().join("cache"));
        assert_eq!(cache.get(&query()).unwrap(), None);
        cache.put(&query(), b"one").unwrap();
        cache.put(&query(), b"two").unwrap();
        assert_eq!(cache.get(&query()).unwrap(), Some(b"two".to_vec()));
        let names: Vec<_> = std::fs::read_dir(cache.dir()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn a_file_larger_than_a_certificate_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VcekCache::new(dir.path());
        std::fs::write(
            dir.path().join(query().cache_file_name()),
            vec![0u8; MAX_CACHE_FILE + 1],
        )
        .unwrap();
        let err = cache.get(&query()).unwrap_err();
        assert!(err.contains("longer than"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_does_not_hang_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VcekCache::new(dir.path());
        let status = std::process::Command::new("mkfifo")
            .arg(dir.path().join(query().cache_file_name()))
            .status()
            .unwrap();
        assert!(status.success());
        // Before: std::fs::read opened the FIFO and waited for a writer, for ever. A thread and a
        // deadline keep a regression from hanging the test run.
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(cache.get(&query()));
        });
        let err = result
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO planted in the cache hangs")
            .unwrap_err();
        assert!(err.contains("FIFO"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_link_to_dev_zero_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VcekCache::new(dir.path());
        std::os::unix::fs::symlink("/dev/zero", dir.path().join(query().cache_file_name()))
            .unwrap();
        // Before: std::fs::read followed it and read until memory ran out.
        let err = cache.get(&query()).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_link_to_a_valid_file_is_not_followed_either() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VcekCache::new(dir.path().join("cache"));
        std::fs::create_dir(cache.dir()).unwrap();
        let elsewhere = dir.path().join("elsewhere.der");
        std::fs::write(&elsewhere, b"some bytes").unwrap();
        std::os::unix::fs::symlink(&elsewhere, cache.dir().join(query().cache_file_name()))
            .unwrap();
        let err = cache.get(&query()).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn planted_links_redirect_no_write() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VcekCache::new(dir.path().join("cache"));
        std::fs::create_dir(cache.dir()).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"the host wants this overwritten").unwrap();
        let final_name = cache.dir().join(query().cache_file_name());
        // The old temporary name, `<name>.der.partial-<pid>`, and the final name, both links to
        // the victim.
        let old_partial = final_name.with_extension(format!("der.partial-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &old_partial).unwrap();
        std::os::unix::fs::symlink(&victim, &final_name).unwrap();

        cache.put(&query(), b"the VCEK").unwrap();

        assert_eq!(
            std::fs::read(&victim).unwrap(),
            b"the host wants this overwritten",
            "a write followed a planted link"
        );
        assert!(
            !std::fs::symlink_metadata(&final_name)
                .unwrap()
                .file_type()
                .is_symlink(),
            "the final name is now a file of its own"
        );
        assert_eq!(cache.get(&query()).unwrap(), Some(b"the VCEK".to_vec()));
    }
}
