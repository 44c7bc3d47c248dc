//! The certificate table the host writes beside an extended SEV-SNP report (configfs-tsm's `auxblob`):
//! Concord's own bounded parser (`concord_attestation::vcek::parse_cert_table`) and the lookup of the
//! signer's certificates in it (`HostCertificates::parse`). Every byte of it is the host's.

use concord_attestation::vcek::{HostCertificates, parse_cert_table};

pub fn run(data: &[u8]) {
    let _ = parse_cert_table(data);
    let _ = HostCertificates::parse(data);
}
