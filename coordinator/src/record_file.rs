//! The record format of Concord's own append-only files: the Raft log's (`raft::wal`) and the
//! history objects' (`store::objects`).
//!
//! A file starts with a 16-byte header naming its kind; records follow one after another:
//! `len: u32`, `crc32: u32` of the `len` bytes that follow, `kind: u8` and `len - 1` bytes of body
//! (little-endian). Files are grown ahead of their records with zeros, so a zero record header ends
//! the records. A record cut short or garbled at the end, with nothing but zeros after it, is what
//! a crash in the middle of a write leaves ([`Ending::Torn`]); any other damage is an error.

use std::io::{BufRead, Read};

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
    decode_parts(head, &record[RECORD_HEADER as usize..])
}

/// [`decode`] of a record whose header and the rest are apart.
fn decode_parts<'a>(head: &[u8], rest: &'a [u8]) -> Option<(u8, &'a [u8])> {
    let len = u32::from_le_bytes(head.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head.get(4..8)?.try_into().ok()?);
    if len == 0 || rest.len() != len || crc32fast::hash(rest) != crc {
        return None;
    }
    Some((rest[0], &rest[1..]))
}

/// Reads the records of a file of `file_len` bytes from `reader`, which must start with `header`,
/// handing each whole record to `each` (its kind, body and place); `each` refuses a record by
/// saying what is wrong with it. Pure, so that the fuzzers run it on any bytes.
pub fn scan(
    mut reader: impl BufRead,
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
        // A record wholly in the reader's buffer is checked there; only one that is not is copied
        // out (a replica scans every record at start: issue 11.4).
        let rest_len = len as usize;
        let buffered = reader.fill_buf().map_err(ScanError::Io)?.len() >= rest_len;
        if !buffered {
            record.clear();
            record.resize(rest_len, 0);
            reader.read_exact(&mut record).map_err(ScanError::Io)?;
        }
        let rest = if buffered {
            &reader.fill_buf().map_err(ScanError::Io)?[..rest_len]
        } else {
            &record[..]
        };
        let Some((kind, body)) = decode_parts(&head, rest) else {
            if buffered {
                reader.consume(rest_len);
            }
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
        if buffered {
            reader.consume(rest_len);
        }
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
        if let Some(i) = first_nonzero(&buf[..n]) {
            return Err(ScanError::Corrupt(format!(
                "it has bytes at {} after the end of its records (zeros up to there)",
                at + i as u64
            )));
        }
        at += n as u64;
    }
}

/// Where the first byte that is not zero is. Blocks are or-ed together first (the compiler
/// vectorizes that; a search byte by byte does not): a file is grown by megabytes of zeros, and every
/// open reads them all (issue 11.4: start-up time).
fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    for block in bytes.chunks(4096) {
        if block.iter().fold(0u8, |acc, b| acc | b) != 0 {
            return block.iter().position(|b| *b != 0).map(|i| at + i);
        }
        at += block.len();
    }
    None
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

#[cfg(test)]
mod tests {
    use super::first_nonzero;

    #[test]
    fn the_first_byte_that_is_not_zero_is_found_in_any_block() {
        assert_eq!(first_nonzero(&[]), None);
        assert_eq!(first_nonzero(&[0; 10_000]), None);
        for at in [0, 1, 4095, 4096, 4097, 9_999] {
            let mut bytes = vec![0u8; 10_000];
            bytes[at] = 0x80;
            if at + 1 < bytes.len() {
                bytes[at + 1] = 1;
            }
            assert_eq!(first_nonzero(&bytes), Some(at), "a byte at {at}");
        }
    }
}
