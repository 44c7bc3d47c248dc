//! The raw cost of durability on this disk, beside what the Raft log store pays for one entry: an
//! append of an entry-sized record followed by `fdatasync` (what etcd's WAL does per batch), against
//! one sled insert plus `Db::flush` (what `raft::log_store` does per appended entry), in a temporary
//! directory on the same file system as the clusters' data. Also the bytes each one hands the disk per
//! entry (`/proc/self/io`'s `write_bytes`), since sled rewrites pages rather than appending.

use std::io::Write;
use std::time::Instant;

use crate::table::{Row, Samples, Verdict, ms};

pub struct Durability {
    pub entry_len: usize,
    pub fdatasync: Samples,
    pub sled_flush: Samples,
    /// Bytes written to storage per entry: raw append, sled.
    pub bytes_per_entry: (Option<u64>, Option<u64>),
}

fn write_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/self/io")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
}

/// `n` appends of `entry_len` bytes each way.
pub fn measure(n: usize, entry_len: usize) -> Result<Durability, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let entry = vec![b'e'; entry_len];

    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("wal"))
        .map_err(|e| format!("open the raw log: {e}"))?;
    let mut raw = Vec::with_capacity(n);
    let before = write_bytes();
    for _ in 0..n {
        let start = Instant::now();
        file.write_all(&entry)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("append and fdatasync: {e}"))?;
        raw.push(start.elapsed());
    }
    let raw_bytes = before.zip(write_bytes()).map(|(b, a)| (a - b) / n as u64);

    let db = sled::open(dir.path().join("sled")).map_err(|e| format!("open sled: {e}"))?;
    let tree = db
        .open_tree("raft-log")
        .map_err(|e| format!("open a tree: {e}"))?;
    // Warm up: sled's first flushes write its config and first segment.
    for i in 0..10u64 {
        tree.insert(i.to_be_bytes(), entry.as_slice())
            .and_then(|_| db.flush())
            .map_err(|e| format!("sled: {e}"))?;
    }
    let mut sled_samples = Vec::with_capacity(n);
    let before = write_bytes();
    for i in 10..10 + n as u64 {
        let start = Instant::now();
        tree.insert(i.to_be_bytes(), entry.as_slice())
            .and_then(|_| db.flush())
            .map_err(|e| format!("sled insert and flush: {e}"))?;
        sled_samples.push(start.elapsed());
    }
    let sled_bytes = before.zip(write_bytes()).map(|(b, a)| (a - b) / n as u64);
    Ok(Durability {
        entry_len,
        fdatasync: Samples::new(raw),
        sled_flush: Samples::new(sled_samples),
        bytes_per_entry: (raw_bytes, sled_bytes),
    })
}

pub fn rows(d: &Durability) -> Vec<Row> {
    let bytes =
        |b: Option<u64>| b.map_or("bytes unknown".to_string(), |b| format!("{b} B to disk"));
    let ratio = d.sled_flush.median().as_secs_f64() / d.fdatasync.median().as_secs_f64().max(1e-9);
    vec![Row::new(
        format!(
            "durability: sled insert + flush, {} B entry, p50",
            d.entry_len
        ),
        format!(
            "{} (p99 {}), {}",
            ms(d.sled_flush.median()),
            ms(d.sled_flush.percentile(99.0)),
            bytes(d.bytes_per_entry.1)
        ),
        format!(
            "append + fdatasync: {} (p99 {}), {}",
            ms(d.fdatasync.median()),
            ms(d.fdatasync.percentile(99.0)),
            bytes(d.bytes_per_entry.0)
        ),
        format!("ratio {ratio:.2}"),
        Verdict::Info,
    )]
}
