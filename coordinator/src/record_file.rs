//! The record format of Concord's own append-only files: the Raft log's (`raft::wal`) and the
//! history objects' (`store::objects`).
//!
//! A file starts with a 16-byte header naming its kind; records follow one after another:
//! `len: u32`, `crc32: u32` of the `len` bytes that follow, `kind: u8` and `len - 1` bytes of body
//! (little-endian). Files are grown ahead of their records with zeros, so a zero record header ends
//! the records. A record cut short or garbled at the end, with nothing but zeros after it, is what
//! a crash in the middle of a write leaves ([`Ending::Torn`]); any other damage is an error.

use std::io::Read;

/// A record's header: length and checksum.
pub const RECORD_HEADER: u64 = 8;

/// Where a record is in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The offset of the record (its header).
    pub at: u64,
    /// The record's `len` (kind and body).
    pub len: u32,
}

impl Slot {
    pub fn bytes_on_disk(&self) -> u64 {
        RECORD_HEADER + u64::from(self.len)
    }
}

/// How the records of a file end.
#[derive(Debug, PartialEq)]
pub enum Ending {
    /// At this offset, where the zeros the file was grown with (or the file) begin.
    Clean(u64),
    /// In a record cut short or garbled at `at`, with only zeros after it up to `until`: what a
    /// write that never completed leaves.
    Torn { at: u64, until: u64 },
}

/// Why a file's records could not be read.
#[derive(Debug)]
pub enum ScanError {
    Io(std::io::Error),
    /// The file is damaged in a way no interrupted write explains.
    Corrupt(String),
}

/// Appends one record to `buf`; returns its `len`, or `None` for a record of 4 GiB or more.
pub fn encode(buf: &mut Vec<u8>, kind: u8, prefix: &[u8], body: &[u8]) -> Option<u32> {
    let len = u32::try_from(1 + prefix.len() + body.len()).ok()?;
    let start = buf.len();
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(kind);
    buf.extend_from_slice(prefix);
    buf.extend_from_slice(body);
    let crc = crc32fast::hash(&buf[start + RECORD_HEADER as usize..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Some(len)
}

/// A whole record's kind and body, if its length and checksum hold.
pub fn decode(record: &[u8]) -> Option<(u8, &[u8])> {
    let head = record.get(..RECORD_HEADER as usize)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..8].try_into().ok()?);
    let rest = &record[RECORD_HEADER as usize..];
    if len == 0 || rest.len() != len || crc32fast::hash(rest) != crc {
        return None;
    }
    Some((rest[0], &rest[1..]))
}

/// Reads the records of a file of `file_len` bytes from `reader`, which must start with `header`,
/// handing each whole record to `each` (its kind, body and place); `each` refuses a record by
/// saying what is wrong with it. Pure, so that the fuzzers run it on any bytes.
pub fn scan(
    mut reader: impl Read,
    file_len: u64,
    header: &[u8; 16],
    mut each: impl FnMut(u8, &[u8], Slot) -> Result<(), String>,
) -> Result<Ending, ScanError> {
    let mut head = [0u8; 16];
    reader
        .read_exact(&mut head)
        .ok()
        .filter(|()| &head == header)
        .ok_or_else(|| ScanError::Corrupt("it does not start with its header".into()))?;
    let mut at = header.len() as u64;
    let mut record = Vec::new();
    while at < file_len {
        let left = file_len - at;
        if left < RECORD_HEADER {
            return Ok(Ending::Torn {
                at,
                until: file_len,
            });
        }
        let mut head = [0u8; RECORD_HEADER as usize];
        reader.read_exact(&mut head).map_err(ScanError::Io)?;
        if head == [0; RECORD_HEADER as usize] {
            // The zeros the file was grown with: the records end here, if nothing follows.
            zeros_follow(at + RECORD_HEADER, &mut reader)?;
            return Ok(Ending::Clean(at));
        }
        let len = u64::from(u32::from_le_bytes(head[..4].try_into().expect("4 bytes")));
        if len > left - RECORD_HEADER {
            // The length reaches past the file's end: the tail of a write that never completed.
            return Ok(Ending::Torn {
                at,
                until: file_len,
            });
        }
        record.clear();
        record.extend_from_slice(&head);
        record.resize((RECORD_HEADER + len) as usize, 0);
        reader
            .read_exact(&mut record[RECORD_HEADER as usize..])
            .map_err(ScanError::Io)?;
        let Some((kind, body)) = decode(&record) else {
            // Whole in length but not in content: the last write did not complete, if only
            // zeros follow it.
            zeros_follow(at + RECORD_HEADER + len, &mut reader).map_err(|_| {
                ScanError::Corrupt(format!(
                    "the record at byte {at} fails its checksum, and records follow it"
                ))
            })?;
            return Ok(Ending::Torn {
                at,
                until: at + RECORD_HEADER + len,
            });
        };
        let slot = Slot {
            at,
            len: len as u32,
        };
        each(kind, body, slot)
            .map_err(|reason| ScanError::Corrupt(format!("the record at byte {at} {reason}")))?;
        at += RECORD_HEADER + len;
    }
    Ok(Ending::Clean(at))
}

/// Fails unless everything `reader` has left (from byte `from` on) is zero.
fn zeros_follow(from: u64, reader: &mut impl Read) -> Result<(), ScanError> {
    let mut buf = vec![0u8; 64 << 10];
    let mut at = from;
    loop {
        let n = reader.read(&mut buf).map_err(ScanError::Io)?;
        if n == 0 {
            return Ok(());
        }
        if let Some(i) = buf[..n].iter().position(|b| *b != 0) {
            return Err(ScanError::Corrupt(format!(
                "it has bytes at {} after the end of its records (zeros up to there)",
                at + i as u64
            )));
        }
        at += n as u64;
    }
}

/// Writes `zeros` up to `size` from `from` on, then syncs: how a file is grown ahead of its records,
/// so that a later `fdatasync` of records written into it commits no size or extent change.
pub fn grow(file: &std::fs::File, from: u64, size: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < size {
        let n = (size - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_data()
}
