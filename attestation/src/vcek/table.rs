//! The host's certificate table, as the guest device returns it with an extended report.
//!
//! Owns picking the VCEK, VLEK, ASK and ARK out of the table by their GUIDs
//! ([`Guid`](super::cert_table::Guid)), after `super::cert_table` read the host's buffer with every
//! offset and length checked. It must never trust what it picks: the host wrote the table, and
//! `crate::vcek::VcekResolver` checks every certificate against the report and the pinned AMD roots
//! before using it.

use super::cert_table::{CertTableError, Guid, parse_cert_table};
use crate::snp::SignerKind;

/// The certificates of a host's table that Concord uses; CRLs and unknown GUIDs are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCertificates {
    vcek: Option<Vec<u8>>,
    vlek: Option<Vec<u8>>,
    ask: Option<Vec<u8>>,
    ark: Option<Vec<u8>>,
}

impl HostCertificates {
    /// Reads the host's raw table (its layout: `super::cert_table`) and picks the certificates out.
    /// An entry with no bytes counts as absent; a table that does not parse, or names a GUID
    /// twice, is refused as a whole.
    pub fn parse(raw: &[u8]) -> Result<Self, CertTableError> {
        let mut table = Self::default();
        for entry in parse_cert_table(raw)? {
            let slot = match entry.guid {
                Guid::VCEK => &mut table.vcek,
                Guid::VLEK => &mut table.vlek,
                Guid::ASK => &mut table.ask,
                Guid::ARK => &mut table.ark,
                _ => continue,
            };
            if !entry.data.is_empty() {
                *slot = Some(entry.data.to_vec());
            }
        }
        Ok(table)
    }

    /// The certificate of the key of `kind`, if the table has one.
    pub fn signer(&self, kind: SignerKind) -> Option<&[u8]> {
        match kind {
            SignerKind::Vcek => self.vcek.as_deref(),
            SignerKind::Vlek => self.vlek.as_deref(),
        }
    }

    /// The table's ASK entry (the host puts the ASVK there when the key is a VLEK).
    pub fn ask(&self) -> Option<&[u8]> {
        self.ask.as_deref()
    }

    /// The table's ARK entry.
    pub fn ark(&self) -> Option<&[u8]> {
        self.ark.as_deref()
    }

    /// Whether the table holds nothing Concord uses.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcek::encode_cert_table;

    #[test]
    fn picks_each_certificate_by_its_guid_and_ignores_the_rest() {
        let crl = Guid([0x92; 16]);
        let table = HostCertificates::parse(&encode_cert_table(&[
            (Guid::ARK, b"ark"),
            (crl, b"crl"),
            (Guid::VCEK, b"vcek"),
            (Guid::ASK, b"ask"),
            (Guid::VLEK, b""),
        ]))
        .unwrap();
        assert_eq!(table.signer(SignerKind::Vcek), Some(&b"vcek"[..]));
        assert_eq!(
            table.signer(SignerKind::Vlek),
            None,
            "an empty entry is absent"
        );
        assert_eq!(table.ask(), Some(&b"ask"[..]));
        assert_eq!(table.ark(), Some(&b"ark"[..]));
        assert!(
            HostCertificates::parse(&encode_cert_table(&[]))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_guid_present_twice_refuses_the_table() {
        let err = HostCertificates::parse(&encode_cert_table(&[
            (Guid::VCEK, b"one"),
            (Guid::VCEK, b"two"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("two VCEK entries"), "{err}");
    }
}
