//! openraft's storage conformance suite against the real stores on a real sled database.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use super::Disk;
use crate::raft::{LogStore, StateMachine, TypeConfig};

/// Builds a log store and state machine on a fresh sled database in a new temporary directory; the
/// directory is the guard, so it lives until the suite's test is done with the stores.
struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let disk = Disk::new();
        let (log, sm) = disk.open();
        Ok((disk.dir, log, sm))
    }
}

/// A plain test, not a tokio one: the suite starts its own runtime for each of its cases.
#[test]
fn openraft_storage_suite_passes_on_sled() {
    Suite::test_all(SledBuilder).unwrap();
}
