//! Which AMD key signed a report: the VCEK (per chip and TCB) or the VLEK (per cloud provider and
//! TCB), as the report's KEY_INFO says.
//!
//! Owns [`SignerKind`] and reading it from a report. It must never guess: KEY_INFO values other
//! than 0 (VCEK) and 1 (VLEK), such as 7 (no key), reject the report.

use crate::error::{AttestationError, RejectReason};
use crate::report::Report;

/// The kind of key that signed a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignerKind {
    /// Versioned Chip Endorsement Key: derived from the chip's secrets and its TCB, certified by
    /// the ASK, with the chip's hwID in its certificate.
    Vcek,
    /// Versioned Loaded Endorsement Key: loaded by a cloud provider, certified by the ASVK; its
    /// certificate names no chip.
    Vlek,
}

impl SignerKind {
    /// KEY_INFO bits 2-4: 0 VCEK, 1 VLEK; anything else rejects.
    pub(crate) fn of_report(report: &Report) -> Result<Self, AttestationError> {
        match report.signing_key() {
            0 => Ok(Self::Vcek),
            1 => Ok(Self::Vlek),
            other => Err(RejectReason::SigningKey(other).into()),
        }
    }

    /// `"VCEK"` or `"VLEK"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vcek => "VCEK",
            Self::Vlek => "VLEK",
        }
    }
}

impl std::fmt::Display for SignerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ReportBuilder;

    fn kind(key_info: u32) -> Result<SignerKind, AttestationError> {
        let raw = ReportBuilder::new().key_info(key_info).build_unsigned();
        SignerKind::of_report(&Report::parse(&raw).unwrap())
    }

    #[test]
    fn key_info_bits_2_to_4_name_the_key() {
        assert_eq!(kind(0), Ok(SignerKind::Vcek));
        assert_eq!(kind(0b100), Ok(SignerKind::Vlek));
        // The other KEY_INFO bits do not matter here.
        assert_eq!(kind(0b1_0000_0011), Ok(SignerKind::Vcek));
        for other in 2..=7u8 {
            assert_eq!(
                kind(u32::from(other) << 2),
                Err(RejectReason::SigningKey(other).into())
            );
        }
    }
}
