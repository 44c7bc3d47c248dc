//! The layout of the host's certificate table, read by Concord's own safe code.
//!
//! The table (GHCB specification v2.03, 4.1.8.1, `MSG_REPORT_REQ`) is a buffer the host fills: entries of
//! a 16-byte GUID, a 4-byte offset and a 4-byte length (both little-endian, the offset counted from the
//! start of the buffer), ended by an all-zero entry, then the certificates the entries point at.
//!
//! Owns [`parse_cert_table`] and its inverse [`encode_cert_table`]. Every number in the buffer is the
//! host's, so the parser trusts none of them: at most [`MAX_ENTRIES`] entries before the terminator,
//! which must be inside the buffer; every certificate inside the buffer, after the entries, and
//! overlapping no other; no GUID twice; a buffer of at most [`MAX_TABLE_LEN`] bytes. It replaces the
//! `sev` crate's `parse_table`, an `unsafe` function that follows the host's offsets and lengths
//! with no bound. It must never index the buffer without a checked range, and never judge a
//! certificate (`VcekResolver` does).

use std::fmt;

/// The most entries a table may have before its terminator. Real tables have four or five (VCEK or
/// VLEK, ASK, ARK, sometimes a CRL).
pub const MAX_ENTRIES: usize = 64;

/// The largest table accepted: Linux hands the guest at most 16 KiB (`SEV_FW_BLOB_MAX_SIZE`).
pub const MAX_TABLE_LEN: usize = 64 * 1024;

/// The size of one entry: GUID, offset, length.
const ENTRY_LEN: usize = 24;

/// A GUID as the table stores it: its 16 bytes in the order of its text form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The VCEK: 63da758d-e664-4564-adc5-f4b93be8accd.
    pub const VCEK: Guid = Guid(hex16("63da758de6644564adc5f4b93be8accd"));
    /// A VLEK: a8074bc2-a25a-483e-aae6-39c045a0b8a1.
    pub const VLEK: Guid = Guid(hex16("a8074bc2a25a483eaae639c045a0b8a1"));
    /// The ASK (or the ASVK, for a VLEK): 4ab7b379-bbac-4fe4-a02f-05aef327c782.
    pub const ASK: Guid = Guid(hex16("4ab7b379bbac4fe4a02f05aef327c782"));
    /// The ARK: c0b406a4-a803-4952-9743-3fb6014cd0ae.
    pub const ARK: Guid = Guid(hex16("c0b406a4a803495297433fb6014cd0ae"));
    /// The all-zero GUID of the terminating entry.
    pub const ZERO: Guid = Guid([0; 16]);
}

/// `8-4-4-4-12` lowercase hex, as AMD's documents write GUIDs.
impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// 32 hex digits as 16 bytes, at compile time; a bad constant fails the build.
const fn hex16(s: &str) -> [u8; 16] {
    let s = s.as_bytes();
    assert!(s.len() == 32, "a GUID has 32 hex digits");
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 32 {
        let v = match s[i] {
            b'0'..=b'9' => s[i] - b'0',
            b'a'..=b'f' => s[i] - b'a' + 10,
            _ => panic!("not a lowercase hex digit"),
        };
        out[i / 2] |= if i % 2 == 0 { v << 4 } else { v };
        i += 1;
    }
    out
}

/// One entry of the table with the bytes it points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableEntry<'a> {
    /// What the certificate is.
    pub guid: Guid,
    /// The certificate (empty when the entry's length is zero).
    pub data: &'a [u8],
}

/// Why the host's certificate table was refused. The host wrote it, so the host is at fault; the
/// table is ignored and the VCEK looked up elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertTableError {
    /// The buffer is larger than any table.
    #[error("the host's certificate table is {len} bytes, more than the {MAX_TABLE_LEN} accepted")]
    TooLarge {
        /// The buffer's length.
        len: usize,
    },
    /// No terminating entry within the buffer.
    #[error(
        "the host's certificate table has no all-zero terminating entry within its {len} bytes"
    )]
    MissingTerminator {
        /// The buffer's length.
        len: usize,
    },
    /// More entries than any table has.
    #[error("the host's certificate table has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    /// A zero GUID with a non-zero offset or length: neither an entry nor the terminator.
    #[error(
        "the host's certificate table has an entry with a zero GUID but offset {offset} and length {length}"
    )]
    BadTerminator {
        /// The entry's offset.
        offset: u32,
        /// The entry's length.
        length: u32,
    },
    /// A certificate reaches past the buffer's end.
    #[error(
        "the host's certificate table puts {guid} at offset {offset}, length {length}, past the end of its {len} bytes"
    )]
    OutOfBounds {
        /// The entry's GUID.
        guid: Guid,
        /// The entry's offset.
        offset: u32,
        /// The entry's length.
        length: u32,
        /// The buffer's length.
        len: usize,
    },
    /// A certificate starts inside the entries.
    #[error(
        "the host's certificate table puts {guid} at offset {offset}, inside its entries (which end at {entries_end})"
    )]
    InsideEntries {
        /// The entry's GUID.
        guid: Guid,
        /// The entry's offset.
        offset: u32,
        /// Where the entries (with the terminator) end.
        entries_end: usize,
    },
    /// Two certificates share bytes.
    #[error("the host's certificate table has overlapping certificates: {first} and {second}")]
    Overlap {
        /// The one that starts first.
        first: Guid,
        /// The one that starts inside it.
        second: Guid,
    },
    /// A GUID appears twice, so which certificate is meant is ambiguous.
    #[error("the host's certificate table has two {name} entries ({guid})")]
    Duplicate {
        /// The GUID.
        guid: Guid,
        /// Its name, when Concord knows it.
        name: &'static str,
    },
}

/// The name of a GUID Concord knows, for messages.
pub fn guid_name(guid: Guid) -> &'static str {
    match guid {
        Guid::VCEK => "VCEK",
        Guid::VLEK => "VLEK",
        Guid::ASK => "ASK",
        Guid::ARK => "ARK",
        _ => "unknown",
    }
}

/// Reads the host's certificate table: every entry before the terminator with the bytes it points
/// at, in table order. Entries of length zero are kept, with no data, and their offset is not
/// looked at. Any number that does not fit the buffer refuses the whole table.
pub fn parse_cert_table(raw: &[u8]) -> Result<Vec<TableEntry<'_>>, CertTableError> {
    if raw.len() > MAX_TABLE_LEN {
        return Err(CertTableError::TooLarge { len: raw.len() });
    }
    let mut headers = Vec::new();
    let mut chunks = raw.chunks_exact(ENTRY_LEN);
    let entries_end = loop {
        let Some(chunk) = chunks.next() else {
            return Err(CertTableError::MissingTerminator { len: raw.len() });
        };
        let (guid, offset, length) = entry_header(chunk);
        if guid == Guid::ZERO {
            if offset != 0 || length != 0 {
                return Err(CertTableError::BadTerminator { offset, length });
            }
            break (headers.len() + 1) * ENTRY_LEN;
        }
        if headers.len() == MAX_ENTRIES {
            return Err(CertTableError::TooManyEntries);
        }
        headers.push((guid, offset, length));
    };

    let mut entries = Vec::with_capacity(headers.len());
    let mut ranges = Vec::with_capacity(headers.len());
    for (i, &(guid, offset, length)) in headers.iter().enumerate() {
        if headers[..i].iter().any(|(g, _, _)| *g == guid) {
            return Err(CertTableError::Duplicate {
                guid,
                name: guid_name(guid),
            });
        }
        if length == 0 {
            entries.push(TableEntry { guid, data: &[] });
            continue;
        }
        let out_of_bounds = CertTableError::OutOfBounds {
            guid,
            offset,
            length,
            len: raw.len(),
        };
        // u32 fits usize on every target Concord builds for (64-bit Linux); refuse otherwise.
        let start = usize::try_from(offset).map_err(|_| out_of_bounds.clone())?;
        let len = usize::try_from(length).map_err(|_| out_of_bounds.clone())?;
        let end = start
            .checked_add(len)
            .ok_or_else(|| out_of_bounds.clone())?;
        if start < entries_end {
            return Err(CertTableError::InsideEntries {
                guid,
                offset,
                entries_end,
            });
        }
        let data = raw.get(start..end).ok_or(out_of_bounds)?;
        entries.push(TableEntry { guid, data });
        ranges.push((start, end, guid));
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        if let [(_, first_end, first), (second_start, _, second)] = pair
            && second_start < first_end
        {
            return Err(CertTableError::Overlap {
                first: *first,
                second: *second,
            });
        }
    }
    Ok(entries)
}

/// The GUID, offset and length of one 24-byte entry.
fn entry_header(chunk: &[u8]) -> (Guid, u32, u32) {
    let mut guid = [0u8; 16];
    let mut offset = [0u8; 4];
    let mut length = [0u8; 4];
    // `chunk` is ENTRY_LEN (24) bytes long: chunks_exact gives no other.
    guid.copy_from_slice(&chunk[..16]);
    offset.copy_from_slice(&chunk[16..20]);
    length.copy_from_slice(&chunk[20..24]);
    (
        Guid(guid),
        u32::from_le_bytes(offset),
        u32::from_le_bytes(length),
    )
}

/// A table in the host's layout: the entries, the terminator, then each certificate in order.
/// For stand-ins and tests; also shows the layout [`parse_cert_table`] reads.
pub fn encode_cert_table(entries: &[(Guid, &[u8])]) -> Vec<u8> {
    let mut header = Vec::new();
    let mut body = Vec::new();
    let entries_end = (entries.len() + 1) * ENTRY_LEN;
    for (guid, data) in entries {
        let offset = if data.is_empty() {
            0
        } else {
            entries_end + body.len()
        };
        header.extend_from_slice(&guid.0);
        header.extend_from_slice(&(offset as u32).to_le_bytes());
        header.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
    }
    header.extend_from_slice(&[0u8; ENTRY_LEN]);
    header.extend_from_slice(&body);
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One raw entry.
    fn entry(guid: Guid, offset: u32, length: u32) -> Vec<u8> {
        let mut e = guid.0.to_vec();
        e.extend_from_slice(&offset.to_le_bytes());
        e.extend_from_slice(&length.to_le_bytes());
        e
    }

    const TERMINATOR: [u8; ENTRY_LEN] = [0; ENTRY_LEN];

    #[test]
    fn the_guids_are_the_ones_amd_documents_and_the_sev_crate_names() {
        use sev::firmware::host::CertType;
        for (guid, cert_type, text) in [
            (
                Guid::VCEK,
                CertType::VCEK,
                "63da758d-e664-4564-adc5-f4b93be8accd",
            ),
            (
                Guid::VLEK,
                CertType::VLEK,
                "a8074bc2-a25a-483e-aae6-39c045a0b8a1",
            ),
            (
                Guid::ASK,
                CertType::ASK,
                "4ab7b379-bbac-4fe4-a02f-05aef327c782",
            ),
            (
                Guid::ARK,
                CertType::ARK,
                "c0b406a4-a803-4952-9743-3fb6014cd0ae",
            ),
        ] {
            assert_eq!(guid.to_string(), text);
            assert_eq!(cert_type.to_string(), text);
        }
    }

    #[test]
    fn the_sev_crates_own_test_table_reads_the_same() {
        // The table of the `sev` crate's test_parse_table_regular: ARK, ASK, VCEK and an unknown
        // GUID, their bytes after the terminator.
        let mut raw = Vec::new();
        raw.extend(entry(Guid::ARK, 120, 25));
        raw.extend(entry(Guid::ASK, 145, 25));
        raw.extend(entry(Guid::VCEK, 170, 15));
        let other = Guid(hex16("fbb6ed74e73e44ab88934252792d737a"));
        raw.extend(entry(other, 185, 6));
        raw.extend(TERMINATOR);
        raw.extend([1u8; 25]);
        raw.extend([2u8; 25]);
        raw.extend([5u8; 15]);
        raw.extend([7u8; 6]);
        let entries = parse_cert_table(&raw).unwrap();
        let expected: Vec<TableEntry> = vec![
            TableEntry {
                guid: Guid::ARK,
                data: &[1; 25],
            },
            TableEntry {
                guid: Guid::ASK,
                data: &[2; 25],
            },
            TableEntry {
                guid: Guid::VCEK,
                data: &[5; 15],
            },
            TableEntry {
                guid: other,
                data: &[7; 6],
            },
        ];
        assert_eq!(entries, expected);
    }

    #[test]
    fn encode_and_parse_agree() {
        let table = encode_cert_table(&[
            (Guid::VCEK, b"vcek"),
            (Guid::VLEK, b""),
            (Guid::ASK, b"ask"),
        ]);
        let entries = parse_cert_table(&table).unwrap();
        assert_eq!(
            entries,
            vec![
                TableEntry {
                    guid: Guid::VCEK,
                    data: b"vcek"
                },
                TableEntry {
                    guid: Guid::VLEK,
                    data: b""
                },
                TableEntry {
                    guid: Guid::ASK,
                    data: b"ask"
                },
            ]
        );
        assert_eq!(parse_cert_table(&TERMINATOR).unwrap(), vec![]);
    }

    /// Hostile tables, each refused with its own reason. They are also in
    /// `hostile_tables()`, which the fuzz target's seeds and the replay test share.
    #[test]
    fn hostile_tables_are_refused_with_a_reason() {
        for (name, raw, expected) in hostile_tables() {
            let err = parse_cert_table(&raw).unwrap_err();
            assert!(
                std::mem::discriminant(&err) == std::mem::discriminant(&expected),
                "{name}: {err:?}, expected {expected:?}"
            );
            assert!(
                err.to_string().contains("host's certificate table"),
                "{name}: {err}"
            );
        }
    }

    fn hostile_tables() -> Vec<(&'static str, Vec<u8>, CertTableError)> {
        let guid = Guid::VCEK;
        let mut out = Vec::new();

        // An offset far past the end (the sev crate would read the heap there).
        let mut raw = entry(guid, 0x7fff_0000, 16);
        raw.extend(TERMINATOR);
        out.push(("offset past the end", raw, oob()));

        // offset + length wraps around in 32 bits and overflows nothing in usize, but ends past
        // the buffer.
        let mut raw = entry(guid, 48, u32::MAX);
        raw.extend(TERMINATOR);
        raw.extend([0u8; 8]);
        out.push(("length past the end", raw, oob()));

        // Ends one byte past the buffer.
        let mut raw = entry(guid, 48, 9);
        raw.extend(TERMINATOR);
        raw.extend([0u8; 8]);
        out.push(("one byte past the end", raw, oob()));

        // No terminator: entries up to the end of the buffer (the sev crate reads on).
        let raw = entry(guid, 0, 0);
        out.push((
            "missing terminator",
            raw,
            CertTableError::MissingTerminator { len: 0 },
        ));
        // A buffer too short for even one entry.
        out.push((
            "empty buffer",
            Vec::new(),
            CertTableError::MissingTerminator { len: 0 },
        ));

        // A huge count of entries, none terminating.
        let mut raw = Vec::new();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            let mut g = [0xAB; 16];
            g[..4].copy_from_slice(&i.to_le_bytes());
            raw.extend(entry(Guid(g), 0, 0));
        }
        raw.extend(TERMINATOR);
        out.push(("huge count", raw, CertTableError::TooManyEntries));

        // Two certificates sharing bytes.
        let mut raw = entry(Guid::VCEK, 72, 10);
        raw.extend(entry(Guid::ASK, 80, 10));
        raw.extend(TERMINATOR);
        raw.extend([0u8; 20]);
        out.push((
            "overlap",
            raw,
            CertTableError::Overlap {
                first: Guid::VCEK,
                second: Guid::ASK,
            },
        ));

        // A certificate over the entries themselves.
        let mut raw = entry(guid, 0, 24);
        raw.extend(TERMINATOR);
        out.push((
            "inside the entries",
            raw,
            CertTableError::InsideEntries {
                guid,
                offset: 0,
                entries_end: 48,
            },
        ));

        // The same GUID twice.
        let mut raw = entry(Guid::VCEK, 72, 4);
        raw.extend(entry(Guid::VCEK, 76, 4));
        raw.extend(TERMINATOR);
        raw.extend([0u8; 8]);
        out.push((
            "duplicate",
            raw,
            CertTableError::Duplicate {
                guid: Guid::VCEK,
                name: "VCEK",
            },
        ));

        // A zero GUID that still points somewhere.
        let mut raw = entry(Guid::ZERO, 24, 4);
        raw.extend([0u8; 4]);
        out.push((
            "zero GUID with a range",
            raw,
            CertTableError::BadTerminator {
                offset: 24,
                length: 4,
            },
        ));

        // Larger than any table.
        out.push((
            "too large",
            vec![0u8; MAX_TABLE_LEN + 1],
            CertTableError::TooLarge { len: 0 },
        ));
        out
    }

    fn oob() -> CertTableError {
        CertTableError::OutOfBounds {
            guid: Guid::ZERO,
            offset: 0,
            length: 0,
            len: 0,
        }
    }
}
