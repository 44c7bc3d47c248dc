//! PEM encoding and decoding of certificates.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// `-----BEGIN CERTIFICATE-----` with 64-character lines.
pub fn encode_certificate(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The DER of the first certificate in `pem`.
pub fn decode_certificate(pem: &str) -> Result<Vec<u8>, String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if p.label != "CERTIFICATE" {
        return Err(format!("a PEM {:?}, not a CERTIFICATE", p.label));
    }
    Ok(p.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let der = (0..200u8).collect::<Vec<_>>();
        assert_eq!(decode_certificate(&encode_certificate(&der)).unwrap(), der);
        assert!(decode_certificate("garbage").is_err());
    }
}
