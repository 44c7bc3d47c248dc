//! `read_input_file`: the one way Concord's binaries read a file a person named on the command line
//! (manifests, policies, bundles, shares, keys, reports, launch flags' files).
//!
//! It reads only regular files, up to a limit the caller gives, and refuses anything else before
//! reading: a FIFO (opening one for reading waits for a writer), a device such as `/dev/zero` (it
//! never ends), a directory, also behind a symlink. It must never block on a file or read more than
//! the limit plus one byte.

use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

/// Reads the regular file `path` of at most `max` bytes. The error names the file and says what to
/// do; a file that is too large gives "FILE is N bytes, more than the M this command accepts".
pub fn read_input_file(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let fail = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let not_regular = |kind: std::fs::FileType| {
        format!(
            "{} is not a regular file ({}); give the path of a file",
            path.display(),
            describe_kind(kind)
        )
    };
    let too_big = |n: u64| {
        format!(
            "{} is {n} bytes, more than the {max} this command accepts",
            path.display()
        )
    };
    // stat first: opening a FIFO for reading would wait for a writer.
    let meta = std::fs::metadata(path).map_err(fail)?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    if meta.len() > max {
        return Err(too_big(meta.len()));
    }
    // Non-blocking, and checked again on the open file: the path may have changed since the stat.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(fail)?;
    if bytes.len() as u64 > max {
        // It grew while being read.
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

fn describe_kind(kind: std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_within_the_limit_only() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        std::fs::write(&ok, b"12345").unwrap();
        assert_eq!(read_input_file(&ok, 5).unwrap(), b"12345");
        let err = read_input_file(&ok, 4).unwrap_err();
        assert!(
            err.ends_with("ok is 5 bytes, more than the 4 this command accepts"),
            "{err}"
        );
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = read_input_file(&zero, 1 << 20).unwrap_err();
        assert!(err.contains("is not a regular file (a device)"), "{err}");
        let err = read_input_file(dir.path(), 1 << 20).unwrap_err();
        assert!(err.contains("(a directory)"), "{err}");
        let err = read_input_file(&dir.path().join("missing"), 1).unwrap_err();
        assert!(err.starts_with("cannot read"), "{err}");
    }
}
