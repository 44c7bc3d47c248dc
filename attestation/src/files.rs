//! Reading a small file from a place the host controls: its disk, or the kernel's configfs.
//!
//! Owns [`read_regular_file`]: open without following a symbolic link and without blocking (a FIFO
//! planted where a file is expected opens at once instead of waiting for a writer), refuse anything
//! but a regular file, and read at most a bound. It must never read without the bound, and never
//! decide whether the bytes are trustworthy: the caller checks them.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read as _};
use std::path::Path;

/// Why a file could not be read.
#[derive(Debug)]
pub(crate) enum FileError {
    /// There is no file at the path.
    NotFound,
    /// Something else, said in words (the path is not included: callers name it).
    Other(String),
}

/// The bytes of the regular file at `path`, at most `max` of them. A symbolic link (even to a
/// regular file), a FIFO, a device or a directory is refused, and so is a file longer than `max`.
pub(crate) fn read_regular_file(path: &Path, max: usize) -> Result<Vec<u8>, FileError> {
    let file = open_no_follow(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => FileError::NotFound,
        // O_NOFOLLOW on a symbolic link fails with ELOOP.
        _ if e.raw_os_error() == Some(libc::ELOOP) => {
            FileError::Other("it is a symbolic link, which is not followed".into())
        }
        _ => FileError::Other(e.to_string()),
    })?;
    // The type of what was opened, not of what the path named a moment before.
    let meta = file
        .metadata()
        .map_err(|e| FileError::Other(e.to_string()))?;
    if !meta.is_file() {
        return Err(FileError::Other(format!(
            "it is not a regular file ({})",
            kind(&meta.file_type())
        )));
    }
    let mut bytes = Vec::new();
    // One byte more than the bound tells a file of exactly `max` bytes from a longer one.
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| FileError::Other(e.to_string()))?;
    if bytes.len() > max {
        return Err(FileError::Other(format!("it is longer than {max} bytes")));
    }
    Ok(bytes)
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound => f.write_str("no such file"),
            Self::Other(what) => f.write_str(what),
        }
    }
}

#[cfg(unix)]
fn open_no_follow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_no_follow(path: &Path) -> std::io::Result<File> {
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(std::io::Error::other(
            "it is a symbolic link, which is not followed",
        ));
    }
    OpenOptions::new().read(true).open(path)
}

fn kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn other(result: Result<Vec<u8>, FileError>) -> String {
        match result {
            Err(FileError::Other(what)) => what,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn reads_a_small_regular_file_and_refuses_a_longer_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 10]).unwrap();
        assert_eq!(read_regular_file(&path, 10).unwrap(), vec![7u8; 10]);
        assert!(other(read_regular_file(&path, 9)).contains("longer than 9 bytes"));
        assert!(matches!(
            read_regular_file(&dir.path().join("none"), 10),
            Err(FileError::NotFound)
        ));
    }

    #[cfg(unix)]
    #[test]
    fn refuses_links_fifos_devices_and_directories_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(other(read_regular_file(&link, 10)).contains("symbolic link"));

        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(other(read_regular_file(&zero, 10)).contains("symbolic link"));
        assert!(other(read_regular_file(Path::new("/dev/zero"), 10)).contains("a device"));

        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        // Without O_NONBLOCK, opening a FIFO with no writer waits forever.
        assert!(other(read_regular_file(&fifo, 10)).contains("a FIFO"));

        assert!(other(read_regular_file(dir.path(), 10)).contains("a directory"));
    }
}
