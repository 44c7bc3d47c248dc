//! The log file keeps what it acknowledged across reopening, drops only a write cut short at its end,
//! and reports any other damage.

use super::*;

fn entries(range: std::ops::Range<u64>, size: usize) -> Vec<(u64, Vec<u8>)> {
    range.map(|i| (i, vec![i as u8; size])).collect()
}

/// Writes `bytes` at `at` in the log file, as the host can.
fn poke(dir: &Path, at: u64, bytes: &[u8]) {
    file(dir).write_all_at(bytes, at).unwrap();
}

fn file(dir: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(FILE))
        .unwrap()
}

#[test]
fn what_was_written_is_there_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut wal = Wal::open(dir.path()).unwrap();
        wal.append(entries(1..6, 100)).unwrap();
        wal.set_vote(b"vote-1".to_vec()).unwrap();
        wal.set_vote(b"vote-2".to_vec()).unwrap();
        wal.set_committed(b"committed-3".to_vec()).unwrap();
        wal.truncate(5).unwrap();
        wal.purge(1, b"purged-1".to_vec()).unwrap();
        wal.append(entries(5..7, 10)).unwrap();
    }
    let wal = Wal::open(dir.path()).unwrap();
    assert_eq!(wal.vote(), Some(&b"vote-2"[..]));
    assert_eq!(wal.committed(), Some(&b"committed-3"[..]));
    assert_eq!(wal.purged(), Some((1, &b"purged-1"[..])));
    assert_eq!(wal.last_index(), Some(6));
    let read = wal.read(..).unwrap();
    let mut expected = entries(2..5, 100);
    expected.extend(entries(5..7, 10));
    assert_eq!(read, expected);
    assert_eq!(wal.read(3..5).unwrap(), entries(3..5, 100));
}

/// As in a map (the storage suite writes entries anywhere): the later write of an index counts.
#[test]
fn an_entry_written_again_replaces_the_first_also_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path()).unwrap();
    wal.append(entries(1..4, 10)).unwrap();
    wal.append(entries(2..3, 20)).unwrap();
    wal.append(entries(9..10, 5)).unwrap();
    let mut expected = entries(1..2, 10);
    expected.extend(entries(2..3, 20));
    expected.extend(entries(3..4, 10));
    expected.extend(entries(9..10, 5));
    assert_eq!(wal.read(..).unwrap(), expected);
    drop(wal);
    assert_eq!(Wal::open(dir.path()).unwrap().read(..).unwrap(), expected);
}

/// A crash during an append that was never acknowledged leaves part of a record at the end.
#[test]
fn a_record_cut_short_at_the_end_is_dropped_and_the_log_goes_on() {
    for cut in [1, 5, 8, 12, 60] {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let mut wal = Wal::open(dir.path()).unwrap();
            wal.append(entries(1..3, 50)).unwrap();
            let before = wal.file_len();
            wal.append(entries(3..4, 50)).unwrap();
            before
        };
        file(dir.path()).set_len(before + cut).unwrap();
        let mut wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.last_index(), Some(2), "cut after {cut} bytes");
        assert_eq!(wal.file_len(), before);
        wal.append(entries(3..4, 7)).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.read(3..).unwrap(), entries(3..4, 7));
    }
}

/// Whole in length but not in content, at the end: the same unfinished write.
#[test]
fn a_last_record_that_fails_its_checksum_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let len = {
        let mut wal = Wal::open(dir.path()).unwrap();
        wal.append(entries(1..3, 50)).unwrap();
        wal.file_len()
    };
    poke(dir.path(), len - 3, b"xyz");
    let wal = Wal::open(dir.path()).unwrap();
    assert_eq!(wal.last_index(), Some(1));
}

/// Damage before the end is not a crash's doing: Raft must not silently lose acknowledged entries.
#[test]
fn a_damaged_record_before_the_end_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut wal = Wal::open(dir.path()).unwrap();
        wal.append(entries(1..4, 50)).unwrap();
    }
    poke(dir.path(), HEADER.len() as u64 + 30, b"!");
    let err = Wal::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("fails its checksum, and records follow it"),
        "{err}"
    );
}

/// The log ends at the zeros the file was grown with; anything after them is damage.
#[test]
fn bytes_after_the_end_of_the_log_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let end = {
        let mut wal = Wal::open(dir.path()).unwrap();
        wal.append(entries(1..3, 50)).unwrap();
        wal.file_len()
    };
    poke(dir.path(), end + 1000, b"?");
    let err = Wal::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("after the end of its records"), "{err}");
}

#[test]
fn a_file_without_the_header_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE), b"not a raft log at all").unwrap();
    let err = Wal::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("does not start with its header"), "{err}");
}

/// An entry changed on disk after the replay is caught when it is read.
#[test]
fn an_entry_changed_after_opening_is_reported_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path()).unwrap();
    wal.append(entries(1..3, 50)).unwrap();
    poke(dir.path(), HEADER.len() as u64 + 30, b"!");
    let err = wal.read(..).unwrap_err().to_string();
    assert!(err.contains("Raft log entry 1"), "{err}");
    assert_eq!(wal.read(2..).unwrap(), entries(2..3, 50));
}

#[test]
fn a_purge_of_most_of_a_large_log_rewrites_it_and_it_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path()).unwrap();
    wal.set_vote(b"vote".to_vec()).unwrap();
    wal.append(entries(1..101, 100 << 10)).unwrap();
    let big = wal.file_len();
    wal.purge(90, b"mark-90".to_vec()).unwrap();
    assert!(
        wal.file_len() < big / 5,
        "{} of {big} bytes",
        wal.file_len()
    );
    wal.append(entries(101..102, 10)).unwrap();
    let mut expected = entries(91..101, 100 << 10);
    expected.extend(entries(101..102, 10));
    assert_eq!(wal.read(..).unwrap(), expected);
    drop(wal);
    let wal = Wal::open(dir.path()).unwrap();
    assert_eq!(wal.read(..).unwrap(), expected);
    assert_eq!(wal.vote(), Some(&b"vote"[..]));
    assert_eq!(wal.purged(), Some((90, &b"mark-90"[..])));
}

/// A small purge leaves the file as it is.
#[test]
fn a_small_log_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path()).unwrap();
    wal.append(entries(1..11, 1000)).unwrap();
    let len = wal.file_len();
    wal.purge(9, b"m".to_vec()).unwrap();
    assert!(wal.file_len() > len);
}

/// A crash in the middle of a rewrite leaves the old file whole and an unfinished new one beside it.
#[test]
fn an_unfinished_rewrite_is_discarded_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut wal = Wal::open(dir.path()).unwrap();
        wal.append(entries(1..3, 10)).unwrap();
    }
    std::fs::write(dir.path().join(REWRITE), b"concord/raftlog1 half").unwrap();
    let wal = Wal::open(dir.path()).unwrap();
    assert_eq!(wal.read(..).unwrap(), entries(1..3, 10));
    assert!(!dir.path().join(REWRITE).exists());
}

#[test]
fn an_imported_log_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::create(
        &dir.path().join("a"),
        Some(b"v".to_vec()),
        Some(b"c".to_vec()),
        Some((2, b"p".to_vec())),
        entries(3..6, 20),
    )
    .unwrap();
    assert_eq!(wal.read(..).unwrap(), entries(3..6, 20));
    assert_eq!(wal.purged(), Some((2, &b"p"[..])));
    assert_eq!(wal.vote(), Some(&b"v"[..]));
}
