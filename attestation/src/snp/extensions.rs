//! The AMD extensions of a VCEK or VLEK certificate: the chip's hardware ID and the TCB the key
//! was derived for, compared with the report the key signed.
//!
//! Owns reading those extensions (strictly: one of each, a DER INTEGER of 0 to 255 for each TCB
//! component, a hwID of the product's length) and the two comparisons. It must never read them
//! from a certificate whose signature chain has not been checked: callers pass the signer only
//! after `amd_chain` accepted it.

use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::{Oid, oid};

use crate::error::{AttestationError, RejectReason, TcbComponent};
use crate::reference::Product;
use crate::report::{Report, Tcb};

/// hwID: the chip identifier the VCEK was issued for.
const HW_ID: Oid<'static> = oid!(1.3.6.1.4.1.3704.1.4);
const BOOTLOADER: Oid<'static> = oid!(1.3.6.1.4.1.3704.1.3.1);
const TEE: Oid<'static> = oid!(1.3.6.1.4.1.3704.1.3.2);
const SNP: Oid<'static> = oid!(1.3.6.1.4.1.3704.1.3.3);
const MICROCODE: Oid<'static> = oid!(1.3.6.1.4.1.3704.1.3.8);
const FMC: Oid<'static> = oid!(1.3.6.1.4.1.3704.1.3.9);

/// Bytes of the hwID: Turin's VCEKs carry the first 8 bytes of the chip ID, the others all 64.
pub(crate) fn hw_id_len(product: Product) -> usize {
    match product {
        Product::Milan | Product::Genoa => 64,
        Product::Turin => 8,
    }
}

/// The value of the extension `oid`, which must be present exactly once.
fn extension<'a>(
    cert: &'a X509Certificate<'_>,
    oid: &Oid<'_>,
    what: &'static str,
) -> Result<&'a [u8], AttestationError> {
    let mut found = cert.extensions().iter().filter(|e| &e.oid == oid);
    match (found.next(), found.next()) {
        (Some(ext), None) => Ok(ext.value),
        _ => Err(RejectReason::SignerExtension(what).into()),
    }
}

/// A DER INTEGER from 0 to 255, minimally encoded.
fn der_u8(value: &[u8]) -> Option<u8> {
    match *value {
        [0x02, 0x01, v] if v < 0x80 => Some(v),
        [0x02, 0x02, 0x00, v] if v >= 0x80 => Some(v),
        _ => None,
    }
}

/// The hwID is the raw bytes in older certificates and a DER OCTET STRING in newer ones.
fn hw_id_bytes(value: &[u8], len: usize) -> Option<&[u8]> {
    if value.len() == len {
        return Some(value);
    }
    match value {
        [0x04, l, rest @ ..] if usize::from(*l) == len && rest.len() == len => Some(rest),
        _ => None,
    }
}

fn tcb_component(
    cert: &X509Certificate<'_>,
    oid: &Oid<'_>,
    what: &'static str,
) -> Result<u8, AttestationError> {
    der_u8(extension(cert, oid, what)?).ok_or(RejectReason::SignerExtension(what).into())
}

/// The TCB the certificate's key was derived for, in the shape of `product`'s TCB.
pub(crate) fn certified_tcb(
    cert: &X509Certificate<'_>,
    product: Product,
) -> Result<Tcb, AttestationError> {
    let bootloader = tcb_component(cert, &BOOTLOADER, "TCB bootloader")?;
    let tee = tcb_component(cert, &TEE, "TCB tee")?;
    let snp = tcb_component(cert, &SNP, "TCB snp")?;
    let microcode = tcb_component(cert, &MICROCODE, "TCB microcode")?;
    Ok(match product {
        Product::Milan | Product::Genoa => Tcb::new(bootloader, tee, snp, microcode),
        Product::Turin => {
            let fmc = tcb_component(cert, &FMC, "TCB fmc")?;
            Tcb::turin(fmc, bootloader, tee, snp, microcode)
        }
    })
}

/// The hwID of a VCEK: 64 bytes (8 on Turin).
pub(crate) fn hw_id<'a>(
    cert: &'a X509Certificate<'_>,
    product: Product,
) -> Result<&'a [u8], AttestationError> {
    let value = extension(cert, &HW_ID, "hwID")?;
    hw_id_bytes(value, hw_id_len(product)).ok_or(RejectReason::SignerExtension("hwID").into())
}

/// The VCEK's hwID equals the report's `chip_id` (its first 8 bytes on Turin).
pub(crate) fn check_hw_id(
    cert: &X509Certificate<'_>,
    report: &Report,
    product: Product,
) -> Result<(), AttestationError> {
    let hw_id = hw_id(cert, product)?;
    if report.chip_id().get(..hw_id.len()) == Some(hw_id) {
        Ok(())
    } else {
        Err(RejectReason::ChipIdMismatch.into())
    }
}

/// The certificate's TCB equals the report's `reported_tcb`, component by component.
pub(crate) fn check_tcb(
    cert: &X509Certificate<'_>,
    reported: Tcb,
    product: Product,
) -> Result<(), AttestationError> {
    let certified = certified_tcb(cert, product)?;
    let pairs = [
        (
            TcbComponent::Bootloader,
            certified.bootloader,
            reported.bootloader,
        ),
        (TcbComponent::Tee, certified.tee, reported.tee),
        (TcbComponent::Snp, certified.snp, reported.snp),
        (
            TcbComponent::Microcode,
            certified.microcode,
            reported.microcode,
        ),
    ];
    if let Some((component, _, _)) = pairs.iter().find(|(_, c, r)| c != r) {
        return Err(RejectReason::CertificateTcbMismatch {
            component: *component,
        }
        .into());
    }
    if certified.fmc != reported.fmc {
        return Err(RejectReason::CertificateTcbMismatch {
            component: TcbComponent::Fmc,
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain;
    use crate::error::CertRole;
    use crate::report::ReportBuilder;
    use crate::testing::snp as vectors;

    fn with_cert<T>(der: &[u8], f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
        f(&chain::parse_cert(der, CertRole::Signer).unwrap())
    }

    #[test]
    fn milan_vcek_extensions_match_its_report() {
        let v = vectors::virtee_milan();
        with_cert(&v.cert, |cert| {
            assert_eq!(hw_id(cert, Product::Milan).unwrap(), v.report().chip_id());
            assert_eq!(
                certified_tcb(cert, Product::Milan).unwrap(),
                Tcb::new(3, 0, 8, 115)
            );
            check_hw_id(cert, &v.report(), Product::Milan).unwrap();
            check_tcb(cert, Tcb::new(3, 0, 8, 115), Product::Milan).unwrap();
        });
    }

    #[test]
    fn another_chips_report_does_not_match_the_hw_id() {
        let vcek = vectors::virtee_milan().cert;
        let other = vectors::trustee_milan().report();
        with_cert(&vcek, |cert| {
            assert_eq!(
                check_hw_id(cert, &other, Product::Milan),
                Err(RejectReason::ChipIdMismatch.into())
            );
        });
    }

    #[test]
    fn a_tcb_other_than_the_certified_one_names_the_first_differing_component() {
        let vcek = vectors::virtee_milan().cert;
        with_cert(&vcek, |cert| {
            for (tcb, component) in [
                (Tcb::new(2, 0, 8, 115), TcbComponent::Bootloader),
                (Tcb::new(3, 1, 8, 115), TcbComponent::Tee),
                (Tcb::new(3, 0, 9, 115), TcbComponent::Snp),
                (Tcb::new(3, 0, 8, 116), TcbComponent::Microcode),
            ] {
                assert_eq!(
                    check_tcb(cert, tcb, Product::Milan),
                    Err(RejectReason::CertificateTcbMismatch { component }.into())
                );
            }
        });
    }

    #[test]
    fn turin_vcek_has_an_8_byte_hw_id_and_an_fmc() {
        let der = vectors::read("virtee-sev-vcek_turin.der");
        with_cert(&der, |cert| {
            let id = hw_id(cert, Product::Turin).unwrap().to_vec();
            assert_eq!(hex::encode(&id), "1e550a8ee5cf9f4d");
            let tcb = certified_tcb(cert, Product::Turin).unwrap();
            assert_eq!(tcb, Tcb::turin(0, 0, 0, 0, 9));
            // A Turin report carries the hwID as the prefix of its 64-byte chip_id.
            let mut chip_id = [0u8; 64];
            chip_id[..8].copy_from_slice(&id);
            let raw = ReportBuilder::new().chip_id(&chip_id).build_unsigned();
            check_hw_id(cert, &Report::parse(&raw).unwrap(), Product::Turin).unwrap();
            chip_id[7] ^= 1;
            let raw = ReportBuilder::new().chip_id(&chip_id).build_unsigned();
            assert_eq!(
                check_hw_id(cert, &Report::parse(&raw).unwrap(), Product::Turin),
                Err(RejectReason::ChipIdMismatch.into())
            );
            // The FMC takes part in the comparison on Turin.
            assert_eq!(
                check_tcb(cert, Tcb::turin(1, 0, 0, 0, 9), Product::Turin),
                Err(RejectReason::CertificateTcbMismatch {
                    component: TcbComponent::Fmc
                }
                .into())
            );
            // A Milan-shaped hwID read of a Turin certificate is malformed, not a match.
            assert_eq!(
                hw_id(cert, Product::Milan).map(<[u8]>::to_vec),
                Err(RejectReason::SignerExtension("hwID").into())
            );
        });
    }

    #[test]
    fn both_hw_id_encodings_of_trustees_invalid_vceks_parse() {
        // Legacy: the raw 64 bytes; new: a DER OCTET STRING around them. Both hold 00 01 .. 3f.
        let expected: Vec<u8> = (0..64).collect();
        for file in [
            "trustee-test-vcek-invalid-legacy.der",
            "trustee-test-vcek-invalid-new.der",
        ] {
            let der = vectors::read(file);
            with_cert(&der, |cert| {
                assert_eq!(hw_id(cert, Product::Milan).unwrap(), expected, "{file}");
            });
        }
    }

    #[test]
    fn a_vlek_has_a_tcb_and_no_hw_id() {
        let v = vectors::trustee_vlek();
        with_cert(&v.cert, |cert| {
            assert_eq!(
                certified_tcb(cert, Product::Milan).unwrap(),
                Tcb::new(4, 0, 24, 217)
            );
            assert_eq!(
                hw_id(cert, Product::Milan).map(<[u8]>::to_vec),
                Err(RejectReason::SignerExtension("hwID").into())
            );
        });
    }

    #[test]
    fn der_integers_are_read_strictly() {
        assert_eq!(der_u8(&[0x02, 0x01, 0x73]), Some(115));
        assert_eq!(der_u8(&[0x02, 0x02, 0x00, 0xD9]), Some(217));
        assert_eq!(der_u8(&[0x02, 0x01, 0xD9]), None, "negative");
        assert_eq!(der_u8(&[0x02, 0x02, 0x00, 0x05]), None, "not minimal");
        assert_eq!(der_u8(&[0x02, 0x02, 0x01, 0x00]), None, "above 255");
        assert_eq!(der_u8(&[0x04, 0x01, 0x05]), None, "not an INTEGER");
        assert_eq!(der_u8(&[0x02, 0x01, 0x05, 0x00]), None, "trailing byte");
    }
}
