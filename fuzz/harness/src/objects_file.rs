//! `objects_file`: the history's objects file (`<data-dir>/store/objects`) as a host could leave it
//! on a replica's disk, scanned record by record (checksums, torn tails, zeros after the end, deletes)
//! and every live record read back and checked as the ledger reads it.

pub fn run(data: &[u8]) {
    concord_coordinator::fuzzing::objects_file(data);
}
