//! `CliError`: an error with the exit code that tells a script what kind of failure it was.

use std::fmt;
use std::process::ExitCode;

/// What went wrong, for the exit code: scripts must tell a lie (3) from an outage (1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 1: the command could not do its job (unreachable coordinator, unreadable file, refused request).
    Error,
    /// 2: the command line was wrong.
    Usage,
    /// 3: something did not verify: history mismatch, bad evidence, rollback.
    Verification,
}

#[derive(Debug)]
pub struct CliError {
    pub failure: Failure,
    pub message: String,
}

impl CliError {
    pub fn error(message: impl Into<String>) -> CliError {
        CliError {
            failure: Failure::Error,
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            failure: Failure::Usage,
            message: message.into(),
        }
    }
    pub fn verification(message: impl Into<String>) -> CliError {
        CliError {
            failure: Failure::Verification,
            message: message.into(),
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self.failure {
            Failure::Error => 1,
            Failure::Usage => 2,
            Failure::Verification => 3,
        })
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

pub type CliResult<T = ()> = Result<T, CliError>;

/// The most a command reads of one input file, by kind (README.md, "Input limits"). Every file
/// `concord` and `concord-initializer` read goes through [`read_file`] with one of these, so a huge
/// file, `/dev/zero` or a FIFO cannot exhaust memory or hang a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub u64);

impl Limit {
    /// A manifest (the coordinator's own limit for a whole SetManifest request is 4 MiB).
    pub const MANIFEST: Limit = Limit(4 << 20);
    /// A policy document.
    pub const POLICY: Limit = Limit(4 << 20);
    /// An audit bundle (`history.json`): about 2 KB per transition, so room for 100,000 of them.
    pub const BUNDLE: Limit = Limit(256 << 20);
    /// A seed share file (about 500 bytes).
    pub const SHARE: Limit = Limit(64 << 10);
    /// A key file (an owner's PKCS#8 PEM, a share owner's hex key).
    pub const KEY: Limit = Limit(64 << 10);
    /// A signature or a message to sign (tens of bytes).
    pub const SIGNATURE: Limit = Limit(64 << 10);
    /// An SEV-SNP report (1184 bytes), a certificate file (a VCEK with its chain), a reference entry.
    pub const ATTESTATION: Limit = Limit(256 << 10);
}

/// Reads a regular file of at most `limit` bytes, with an error that names it. Refuses anything
/// else before reading: a FIFO, a device such as `/dev/zero` (also through a symlink), a directory
/// (`concord_coordinator::input_file`, which the launch flags' files go through too).
pub fn read_file(path: &std::path::Path, limit: Limit) -> CliResult<Vec<u8>> {
    concord_coordinator::input_file::read_input_file(path, limit.0).map_err(CliError::error)
}

/// Writes a file, creating its directory, with an error that names it. `secret` files get mode 0600.
pub fn write_file(path: &std::path::Path, bytes: &[u8], secret: bool) -> CliResult {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::error(format!("cannot create {}: {e}", dir.display())))?;
    }
    let fail = |e: std::io::Error| CliError::error(format!("cannot write {}: {e}", path.display()));
    if secret {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(fail)?;
        f.write_all(bytes).map_err(fail)?;
        f.sync_all().map_err(fail)
    } else {
        std::fs::write(path, bytes).map_err(fail)
    }
}
