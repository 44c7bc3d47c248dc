//! `raft_log`: a Raft log file (`<data-dir>/raft/log`) as a host could leave it on a replica's disk,
//! replayed record by record (checksums, torn tails, zeros after the end, purges and truncations) and
//! every live entry decoded as the log store reads it.

pub fn run(data: &[u8]) {
    concord_coordinator::fuzzing::raft_log(data);
}
