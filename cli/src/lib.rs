//! The `concord` CLI and the `concord-initializer`, as a library so both binaries and the tests share it.
//!
//! `exit` holds the exit-code contract (0 ok, 1 error, 2 usage, 3 verification failed); `keys` the key file
//! formats; `remote` how the CLI dials and verifies a coordinator; `cmd` one module per subcommand;
//! `initializer` the workload side of the mesh API.
#![forbid(unsafe_code)]

pub mod cmd;
pub mod exit;
pub mod initializer;
pub mod keys;
pub mod log_proof;
pub mod process;
pub mod remote;
pub mod tlog_state;
