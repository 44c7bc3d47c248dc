//! The host's certificate table, as the guest device returns it with an extended report.
//!
//! Owns picking the VCEK, VLEK, ASK and ARK out of the table by their GUIDs. The `sev` crate reads
//! the table's layout (entries of a 16-byte GUID, a 4-byte offset and a 4-byte length, up to an
//! all-zero GUID; the certificates after them) and names the GUIDs it knows with `CertType`:
//! VCEK 63da758d-e664-4564-adc5-f4b93be8accd, VLEK a8074bc2-a25a-483e-aae6-39c045a0b8a1,
//! ASK 4ab7b379-bbac-4fe4-a02f-05aef327c782, ARK c0b406a4-a803-4952-9743-3fb6014cd0ae. It must never
//! trust what it picks: the host wrote the table, and `crate::vcek::VcekResolver` checks every
//! certificate against the report and the pinned AMD roots before using it.

use sev::firmware::host::{CertTableEntry, CertType};

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
    /// Picks the certificates out of the table's entries. An entry with no bytes counts as absent;
    /// a GUID present twice makes the table ambiguous, and it is refused as a whole.
    pub fn from_entries(entries: &[CertTableEntry]) -> Result<Self, String> {
        let mut table = Self::default();
        for entry in entries {
            let (slot, name) = match entry.cert_type {
                CertType::VCEK => (&mut table.vcek, "VCEK"),
                CertType::VLEK => (&mut table.vlek, "VLEK"),
                CertType::ASK => (&mut table.ask, "ASK"),
                CertType::ARK => (&mut table.ark, "ARK"),
                CertType::Empty | CertType::CRL | CertType::OTHER(_) => continue,
            };
            if entry.data.is_empty() {
                continue;
            }
            if slot.is_some() {
                return Err(format!(
                    "the host's certificate table has two {name} entries"
                ));
            }
            *slot = Some(entry.data.clone());
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

    fn entry(cert_type: CertType, data: &[u8]) -> CertTableEntry {
        CertTableEntry::new(cert_type, data.to_vec())
    }

    #[test]
    fn the_sev_crate_names_the_guids_amd_documents() {
        for (cert_type, guid) in [
            (CertType::VCEK, "63da758d-e664-4564-adc5-f4b93be8accd"),
            (CertType::VLEK, "a8074bc2-a25a-483e-aae6-39c045a0b8a1"),
            (CertType::ASK, "4ab7b379-bbac-4fe4-a02f-05aef327c782"),
            (CertType::ARK, "c0b406a4-a803-4952-9743-3fb6014cd0ae"),
        ] {
            assert_eq!(cert_type.to_string(), guid);
        }
    }

    #[test]
    fn picks_each_certificate_by_its_guid_and_ignores_the_rest() {
        let table = HostCertificates::from_entries(&[
            entry(CertType::ARK, b"ark"),
            entry(CertType::CRL, b"crl"),
            entry(CertType::VCEK, b"vcek"),
            entry(CertType::ASK, b"ask"),
            entry(CertType::VLEK, b""),
        ])
        .unwrap();
        assert_eq!(table.signer(SignerKind::Vcek), Some(&b"vcek"[..]));
        assert_eq!(
            table.signer(SignerKind::Vlek),
            None,
            "an empty entry is absent"
        );
        assert_eq!(table.ask(), Some(&b"ask"[..]));
        assert_eq!(table.ark(), Some(&b"ark"[..]));
        assert!(HostCertificates::from_entries(&[]).unwrap().is_empty());
    }

    #[test]
    fn a_guid_present_twice_refuses_the_table() {
        let err = HostCertificates::from_entries(&[
            entry(CertType::VCEK, b"one"),
            entry(CertType::VCEK, b"two"),
        ])
        .unwrap_err();
        assert!(err.contains("two VCEK entries"), "{err}");
    }
}
