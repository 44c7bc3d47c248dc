//! `amd_crl`: an AMD CRL, as a host or a man in the middle could put it into SNP evidence, through
//! the CRL check (`snp::crl`: DER parsing with its size bound, the issuer and RSASSA-PSS signature
//! checks against the pinned ARK, the revoked-serial scan, freshness with and without a grace).

use crate::times;

pub fn run(data: &[u8]) {
    concord_attestation::fuzzing::amd_crl(data, times::snp());
}
