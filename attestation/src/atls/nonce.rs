//! The nonces of aTLS and how they travel: in an ALPN value (client to server) and in an
//! acceptable-CA distinguished name (server to client). Strict parsing: exactly one value,
//! `concord-atls-v1:` followed by 64 lowercase hex digits; anything else is no nonce.

use rand::RngCore as _;

use super::NONCE_LEN;
use crate::error::{AttestationError, RejectReason};

/// The prefix of every nonce value.
const PREFIX: &str = "concord-atls-v1:";
/// Hex digits of a nonce.
const HEX_LEN: usize = 2 * NONCE_LEN;
/// DER of the commonName attribute type, 2.5.4.3.
const OID_COMMON_NAME: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];

/// A fresh nonce from the OS CSPRNG; refuses if it fails.
pub(crate) fn fresh() -> Result<[u8; NONCE_LEN], AttestationError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|e| AttestationError::Issuer(format!("the OS random generator failed: {e}")))?;
    Ok(nonce)
}

fn text(nonce: &[u8; NONCE_LEN]) -> String {
    format!("{PREFIX}{}", hex::encode(nonce))
}

fn parse_hex(digits: &[u8]) -> Option<[u8; NONCE_LEN]> {
    if digits.len() != HEX_LEN
        || !digits
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut nonce = [0u8; NONCE_LEN];
    hex::decode_to_slice(digits, &mut nonce).ok()?;
    Some(nonce)
}

/// The ALPN value carrying the client's nonce.
pub(crate) fn alpn_value(nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    text(nonce).into_bytes()
}

/// The client's nonce from its ALPN list: exactly one well-formed nonce value.
pub(crate) fn from_alpn<'a>(
    protocols: impl IntoIterator<Item = &'a [u8]>,
) -> Result<[u8; NONCE_LEN], AttestationError> {
    let mut values = protocols
        .into_iter()
        .filter(|p| p.starts_with(PREFIX.as_bytes()));
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(RejectReason::MissingNonce.into());
    };
    parse_hex(&value[PREFIX.len()..]).ok_or_else(|| RejectReason::MissingNonce.into())
}

/// DER of a Name with one RDN holding one commonName (UTF8String) attribute.
fn name_der(common_name: &str) -> Vec<u8> {
    let value = tlv(0x0C, common_name.as_bytes());
    let attribute = tlv(0x30, &[&OID_COMMON_NAME[..], &value].concat());
    let rdn = tlv(0x31, &attribute);
    tlv(0x30, &rdn)
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// The acceptable-CA name carrying the server's nonce.
pub(crate) fn hint(nonce: &[u8; NONCE_LEN]) -> rustls::DistinguishedName {
    rustls::DistinguishedName::from(name_der(&text(nonce)))
}

/// The server's nonce from the acceptable-CA names: exactly one name of our exact encoding.
pub(crate) fn from_hints(hints: &[&[u8]]) -> Option<[u8; NONCE_LEN]> {
    let template = name_der(&text(&[0; NONCE_LEN]));
    let header = &template[..template.len() - HEX_LEN];
    let mut nonces = hints
        .iter()
        .filter_map(|h| h.strip_prefix(header))
        .map(parse_hex);
    match (nonces.next(), nonces.next()) {
        (Some(nonce), None) => nonce,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer as _;

    #[test]
    fn alpn_round_trip_and_strictness() {
        let nonce = [0xAB; NONCE_LEN];
        let value = alpn_value(&nonce);
        assert_eq!(value.len(), PREFIX.len() + 64);
        assert!(value.starts_with(b"concord-atls-v1:abab"));
        assert_eq!(from_alpn([&b"h2"[..], &value]).unwrap(), nonce);

        let missing = from_alpn([&b"h2"[..]]).unwrap_err();
        assert_eq!(missing, RejectReason::MissingNonce.into());
        assert!(
            missing
                .to_string()
                .contains("the client sent no aTLS nonce")
        );
        let upper = String::from_utf8(value.clone()).unwrap().to_uppercase();
        let upper = format!("{PREFIX}{}", &upper[PREFIX.len()..]);
        assert!(from_alpn([upper.as_bytes()]).is_err());
        assert!(from_alpn([&value[..value.len() - 1]]).is_err());
        let other = alpn_value(&[1; NONCE_LEN]);
        assert!(from_alpn([&value[..], &other[..]]).is_err(), "two nonces");
    }

    #[test]
    fn hint_is_a_der_name_with_one_common_name() {
        let nonce = [0x5A; NONCE_LEN];
        let dn = hint(&nonce);
        let (rest, name) = x509_parser::x509::X509Name::from_der(dn.as_ref()).unwrap();
        assert!(rest.is_empty());
        let cns: Vec<_> = name.iter_common_name().collect();
        assert_eq!(cns.len(), 1);
        assert_eq!(cns[0].as_str().unwrap(), text(&nonce));
        assert_eq!(from_hints(&[dn.as_ref()]), Some(nonce));
        assert_eq!(from_hints(&[b"\x30\x00", dn.as_ref()]), Some(nonce));
        assert_eq!(from_hints(&[]), None);
        let other = hint(&[1; NONCE_LEN]);
        assert_eq!(
            from_hints(&[dn.as_ref(), other.as_ref()]),
            None,
            "two nonces"
        );
    }

    #[test]
    fn long_der_lengths() {
        assert_eq!(&tlv(0x04, &[0; 200])[..3], &[0x04, 0x81, 200]);
        assert_eq!(&tlv(0x04, &[0; 300])[..4], &[0x04, 0x82, 0x01, 0x2C]);
    }
}
