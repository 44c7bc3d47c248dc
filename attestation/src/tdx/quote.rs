//! The Intel TDX quote layout (versions 4 and 5): header and TD report body, read by Concord.
//!
//! Owns [`Quote`], this crate's own reading of the signed part of a quote: the header fields the
//! verifier insists on and the TD report body whose fields Concord's policy judges. The quote's
//! signature data (QE report, PCK chain) is left to the Intel-format verifier (`intel`), which
//! checks it over the same bytes. It must never judge a quote: parsing only checks the layout.
//!
//! Layout (Intel TDX DCAP Quoting Library API): a 48-byte header (version u16, attestation key type
//! u16, TEE type u32, 4 reserved/SVN bytes, QE vendor ID 16, user data 20), then for version 4 the
//! 584-byte TD 1.0 report body, for version 5 a body descriptor (type u16, size u32) and a TD 1.0
//! (type 2, 584 bytes) or TD 1.5 (type 3, 648 bytes) body; then the signature data length (u32)
//! and the signature data. Integers are little-endian.

use crate::error::{AttestationError, RejectReason};

/// Length of the quote header.
pub const HEADER_LEN: usize = 48;
/// Length of a TD 1.0 report body.
pub const TD10_BODY_LEN: usize = 584;
/// Length of a TD 1.5 report body (TD 1.0, then TEE_TCB_SVN2 and MRSERVICETD).
pub const TD15_BODY_LEN: usize = 648;
/// The header's TEE type for TDX.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// The header's attestation key type for ECDSA-256 with P-256.
pub const ATTESTATION_KEY_ECDSA_P256: u16 = 2;
/// Intel's QE vendor ID.
pub const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];

/// The fields of a TD report body that Concord reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdReport {
    /// TEE_TCB_SVN: the TDX module's TCB SVNs.
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM: the TDX module's measurement.
    pub mrseam: [u8; 48],
    /// MRSIGNERSEAM: the TDX module signer's measurement.
    pub mrsignerseam: [u8; 48],
    /// SEAM attributes.
    pub seam_attributes: u64,
    /// TD attributes (bit 0: debug).
    pub td_attributes: u64,
    /// XFAM.
    pub xfam: u64,
    /// MRTD: the TD's build-time measurement.
    pub mrtd: [u8; 48],
    /// MRCONFIGID: for Concord, the policy hash then 16 zero bytes.
    pub mrconfigid: [u8; 48],
    /// MROWNER.
    pub mrowner: [u8; 48],
    /// MROWNERCONFIG.
    pub mrownerconfig: [u8; 48],
    /// RTMR0 to RTMR3.
    pub rtmr: [[u8; 48]; 4],
    /// REPORTDATA.
    pub report_data: [u8; 64],
}

/// A quote's header and body, as read by Concord (not verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The quote version: 4 or 5.
    pub version: u16,
    /// The TD report body.
    pub report: TdReport,
    /// Length of the signed part (header and body, with the v5 body descriptor).
    pub signed_len: usize,
}

fn take<const N: usize>(bytes: &[u8], at: &mut usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[*at..*at + N]);
    *at += N;
    out
}

impl TdReport {
    /// Reads a TD report body of at least [`TD10_BODY_LEN`] bytes (the caller checks the length).
    fn read(body: &[u8]) -> Self {
        let mut at = 0;
        let tee_tcb_svn = take::<16>(body, &mut at);
        let mrseam = take::<48>(body, &mut at);
        let mrsignerseam = take::<48>(body, &mut at);
        let seam_attributes = u64::from_le_bytes(take::<8>(body, &mut at));
        let td_attributes = u64::from_le_bytes(take::<8>(body, &mut at));
        let xfam = u64::from_le_bytes(take::<8>(body, &mut at));
        let mrtd = take::<48>(body, &mut at);
        let mrconfigid = take::<48>(body, &mut at);
        let mrowner = take::<48>(body, &mut at);
        let mrownerconfig = take::<48>(body, &mut at);
        let rtmr = [
            take::<48>(body, &mut at),
            take::<48>(body, &mut at),
            take::<48>(body, &mut at),
            take::<48>(body, &mut at),
        ];
        let report_data = take::<64>(body, &mut at);
        Self {
            tee_tcb_svn,
            mrseam,
            mrsignerseam,
            seam_attributes,
            td_attributes,
            xfam,
            mrtd,
            mrconfigid,
            mrowner,
            mrownerconfig,
            rtmr,
            report_data,
        }
    }

    /// Writes the body in the TD 1.0 layout (for the simulated issuer and tests).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(TD10_BODY_LEN);
        out.extend_from_slice(&self.tee_tcb_svn);
        out.extend_from_slice(&self.mrseam);
        out.extend_from_slice(&self.mrsignerseam);
        out.extend_from_slice(&self.seam_attributes.to_le_bytes());
        out.extend_from_slice(&self.td_attributes.to_le_bytes());
        out.extend_from_slice(&self.xfam.to_le_bytes());
        out.extend_from_slice(&self.mrtd);
        out.extend_from_slice(&self.mrconfigid);
        out.extend_from_slice(&self.mrowner);
        out.extend_from_slice(&self.mrownerconfig);
        for r in &self.rtmr {
            out.extend_from_slice(r);
        }
        out.extend_from_slice(&self.report_data);
        out
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl Quote {
    /// Reads the header and body; rejects what is not a TDX quote of version 4 or 5 with an
    /// ECDSA-256 attestation key from Intel's QE, and a quote too short for its own lengths.
    pub fn parse(bytes: &[u8]) -> Result<Self, AttestationError> {
        if bytes.len() < HEADER_LEN {
            return Err(RejectReason::TdxQuoteTruncated.into());
        }
        let version = u16_at(bytes, 0);
        if version != 4 && version != 5 {
            return Err(RejectReason::TdxQuoteVersion(version).into());
        }
        let key_type = u16_at(bytes, 2);
        if key_type != ATTESTATION_KEY_ECDSA_P256 {
            return Err(RejectReason::TdxAttestationKeyType(key_type).into());
        }
        let tee_type = u32_at(bytes, 4);
        if tee_type != TEE_TYPE_TDX {
            return Err(RejectReason::TdxTeeType(tee_type).into());
        }
        if bytes[12..28] != INTEL_QE_VENDOR_ID {
            return Err(RejectReason::TdxQeVendor.into());
        }
        let (body_at, body_len) = if version == 4 {
            (HEADER_LEN, TD10_BODY_LEN)
        } else {
            if bytes.len() < HEADER_LEN + 6 {
                return Err(RejectReason::TdxQuoteTruncated.into());
            }
            let body_type = u16_at(bytes, HEADER_LEN);
            let body_size = u32_at(bytes, HEADER_LEN + 2);
            let expected = match body_type {
                2 => TD10_BODY_LEN,
                3 => TD15_BODY_LEN,
                other => return Err(RejectReason::TdxBodyType(other).into()),
            };
            if usize::try_from(body_size).ok() != Some(expected) {
                return Err(AttestationError::malformed(format!(
                    "TDX quote v5: body type {body_type} has size {body_size}, not {expected}"
                )));
            }
            (HEADER_LEN + 6, expected)
        };
        let signed_len = body_at + body_len;
        // The signature data length and the signature data must follow.
        if bytes.len() < signed_len + 4 {
            return Err(RejectReason::TdxQuoteTruncated.into());
        }
        let sig_len = u32_at(bytes, signed_len) as usize;
        // Bytes after the signature data are covered by no signature and read by nothing (real
        // quotes carry padding there); too few bytes is a truncated quote.
        if bytes.len() - signed_len - 4 < sig_len {
            return Err(RejectReason::TdxQuoteTruncated.into());
        }
        Ok(Self {
            version,
            report: TdReport::read(&bytes[body_at..signed_len]),
            signed_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTE: &[u8] = include_bytes!("vectors/tdx_quote");

    #[test]
    fn the_real_quote_reads() {
        let q = Quote::parse(QUOTE).unwrap();
        assert_eq!(q.version, 4);
        assert_eq!(q.signed_len, HEADER_LEN + TD10_BODY_LEN);
        // Bytes 00 00 00 10 00 00 00 00: SEPT_VE_DISABLE (bit 28) set, debug (bit 0) clear.
        assert_eq!(q.report.td_attributes, 0x1000_0000);
        // Written back, the body is the same bytes.
        assert_eq!(q.report.to_bytes(), &QUOTE[HEADER_LEN..q.signed_len]);
    }

    #[test]
    fn layout_errors_have_their_own_reason() {
        for n in [0, 10, 47, 48, 600, 632, 635, QUOTE.len() - 71] {
            assert_eq!(
                Quote::parse(&QUOTE[..n]).unwrap_err(),
                RejectReason::TdxQuoteTruncated.into(),
                "{n}"
            );
        }
        let mut q = QUOTE.to_vec();
        q[0] = 3;
        assert_eq!(
            Quote::parse(&q).unwrap_err(),
            RejectReason::TdxQuoteVersion(3).into()
        );
        let mut q = QUOTE.to_vec();
        q[4] = 0;
        assert_eq!(
            Quote::parse(&q).unwrap_err(),
            RejectReason::TdxTeeType(0).into()
        );
        let mut q = QUOTE.to_vec();
        q[2] = 3;
        assert_eq!(
            Quote::parse(&q).unwrap_err(),
            RejectReason::TdxAttestationKeyType(3).into()
        );
    }
}
