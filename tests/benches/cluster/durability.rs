//! The raw cost of durability on this disk, beside what the Raft log store pays for one entry, in a
//! temporary directory on the same file system as the clusters' data:
//! - raw: an entry-sized write into a preallocated file, then `fdatasync` (what etcd's WAL does per
//!   batch: its segments are preallocated, so the sync carries no size change);
//! - raw, growing: the same as an append that grows the file (the sync also commits the new size);
//! - sled's `Db::flush` after one insert: `sync_file_range`, which is not durable (it neither commits
//!   the file's size nor flushes the disk's write cache): what the log store paid before;
//! - `DurableFlush`: sled's flush, then `fdatasync` of its file (and of new blob files): what the log
//!   store paid for each append until issue 11.3, and what the state machine's background flush pays;
//! - the Raft log's own file (`raft::wal::Wal`): a checksummed record written at the end, then
//!   `fdatasync`: what the log store pays now for each append.
//!
//! Also the bytes each one hands the disk per entry (`/proc/self/io`'s `write_bytes`).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use concord_coordinator::raft::wal::Wal;
use concord_coordinator::store::DurableFlush;

use crate::table::{Row, Samples, Verdict, ms};

pub struct Durability {
    pub entry_len: usize,
    pub overwrite: (Samples, Option<u64>),
    pub append: (Samples, Option<u64>),
    pub sled_flush: (Samples, Option<u64>),
    pub durable_flush: (Samples, Option<u64>),
    pub wal: (Samples, Option<u64>),
    /// The purge after a snapshot that rewrites the log file: its time, and the file's size before
    /// and after.
    pub rewrite: (Duration, u64, u64),
}

fn write_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/self/io")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
}

/// Times `n` calls of `op(i)`, with the bytes written to storage per call.
fn timed(
    n: usize,
    mut op: impl FnMut(u64) -> Result<(), String>,
) -> Result<(Samples, Option<u64>), String> {
    let before = write_bytes();
    let mut samples: Vec<Duration> = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let start = Instant::now();
        op(i)?;
        samples.push(start.elapsed());
    }
    let bytes = before.zip(write_bytes()).map(|(b, a)| (a - b) / n as u64);
    Ok((Samples::new(samples), bytes))
}

/// `n` entries of `entry_len` bytes each way.
pub fn measure(n: usize, entry_len: usize) -> Result<Durability, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let entry = vec![b'e'; entry_len];
    let io = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");

    let pre = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(dir.path().join("preallocated"))
        .map_err(io("open the preallocated file"))?;
    let len = (n * entry_len) as u64;
    pre.write_all_at(&vec![0; n * entry_len], 0)
        .and_then(|()| pre.sync_all())
        .map_err(io("preallocate"))?;
    let overwrite = timed(n, |i| {
        pre.write_all_at(&entry, (i * entry_len as u64) % len)
            .and_then(|()| pre.sync_data())
            .map_err(io("write and fdatasync"))
    })?;

    let mut grow = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("growing"))
        .map_err(io("open the growing file"))?;
    let append = timed(n, |_| {
        grow.write_all(&entry)
            .and_then(|()| grow.sync_data())
            .map_err(io("append and fdatasync"))
    })?;

    let path = dir.path().join("sled");
    let db = sled::open(&path).map_err(|e| format!("open sled: {e}"))?;
    let durable = DurableFlush::new(db.clone(), &path).map_err(io("open sled's files"))?;
    let tree = db
        .open_tree("raft-log")
        .map_err(|e| format!("open a tree: {e}"))?;
    // Warm up: sled's first flushes write its config and first segment.
    for i in 0..10u64 {
        tree.insert(i.to_be_bytes(), entry.as_slice())
            .and_then(|_| db.flush())
            .map_err(|e| format!("sled: {e}"))?;
    }
    let base = 10;
    let sled_flush = timed(n, |i| {
        tree.insert((base + i).to_be_bytes(), entry.as_slice())
            .and_then(|_| db.flush())
            .map(|_| ())
            .map_err(|e| format!("sled insert and flush: {e}"))
    })?;
    let base = base + n as u64;
    let durable_flush = timed(n, |i| {
        tree.insert((base + i).to_be_bytes(), entry.as_slice())
            .map_err(|e| format!("sled insert: {e}"))?;
        durable.flush().map_err(io("durable flush"))
    })?;
    let mut wal = Wal::open(&dir.path().join("raft")).map_err(|e| format!("the log file: {e}"))?;
    let wal = timed(n, |i| {
        wal.append([(i + 1, entry.clone())])
            .map_err(|e| format!("the log file: {e}"))
    })?;
    let rewrite = rewrite(&dir.path().join("rewrite"), &entry)?;
    Ok(Durability {
        entry_len,
        overwrite,
        append,
        sled_flush,
        durable_flush,
        wal,
        rewrite,
    })
}

/// What a replica's log goes through at its default snapshot policy (`--snapshot-after-entries`
/// 5,000, a fifth kept): 5,000 entries, then a purge of the first 4,000, which rewrites the file on
/// the Raft core's thread.
fn rewrite(dir: &std::path::Path, entry: &[u8]) -> Result<(Duration, u64, u64), String> {
    let err = |e: concord_coordinator::raft::RaftStoreError| format!("the log file: {e}");
    let mut wal = Wal::open(dir).map_err(err)?;
    for start in (1..=5_000u64).step_by(64) {
        wal.append((start..(start + 64).min(5_001)).map(|i| (i, entry.to_vec())))
            .map_err(err)?;
    }
    let before = wal.file_len();
    let start = Instant::now();
    wal.purge(4_000, b"mark".to_vec()).map_err(err)?;
    Ok((start.elapsed(), before, wal.file_len()))
}

pub fn rows(d: &Durability) -> Vec<Row> {
    let line = |(s, b): &(Samples, Option<u64>)| {
        format!(
            "{} (p99 {}), {}",
            ms(s.median()),
            ms(s.percentile(99.0)),
            b.map_or("bytes unknown".to_string(), |b| format!("{b} B to disk"))
        )
    };
    let reference = format!("write + fdatasync, preallocated: {}", line(&d.overwrite));
    let len = d.entry_len;
    vec![
        Row::new(
            format!("durability, {len} B entry: append + fdatasync, file grows"),
            line(&d.append),
            reference.clone(),
            "-",
            Verdict::Info,
        ),
        Row::new(
            format!("durability, {len} B entry: sled insert + flush (not durable)"),
            line(&d.sled_flush),
            reference.clone(),
            "-",
            Verdict::Info,
        ),
        Row::new(
            format!(
                "durability, {len} B entry: sled insert + durable flush (the log store's until 11.3)"
            ),
            line(&d.durable_flush),
            reference.clone(),
            "-",
            Verdict::Info,
        ),
        Row::new(
            format!(
                "durability, {len} B entry: Raft log file append + fdatasync (the log store's)"
            ),
            line(&d.wal),
            reference,
            "-",
            Verdict::Info,
        ),
        Row::new(
            format!("Raft log file rewrite at a purge: 1,000 of 5,000 {len} B entries kept"),
            ms(d.rewrite.0),
            format!(
                "{:.1} MB before, {:.1} MB after; once per snapshot, on the Raft core's thread",
                d.rewrite.1 as f64 / 1e6,
                d.rewrite.2 as f64 / 1e6
            ),
            "-",
            Verdict::Info,
        ),
    ]
}
