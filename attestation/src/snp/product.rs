//! Which product (processor generation) a report comes from, as far as the report says.
//!
//! Owns the table from CPUID family and model to [`Product`] and the check that a report of
//! version 3 or later names the product of the reference values entry. Version 2 reports carry no
//! CPUID fields: for them the product is only established by the chain to that product's ARK
//! (`amd_chain`). It must never decide trust by itself: it only rejects mismatches.

use crate::error::{AttestationError, RejectReason};
use crate::reference::Product;
use crate::report::Report;

/// The first report version with the CPUID fields.
const FIRST_VERSION_WITH_CPUID: u32 = 3;

/// The product of a CPUID family and model (AMD's public processor tables), if known.
pub(crate) fn from_cpuid(family: u8, model: u8) -> Option<Product> {
    match (family, model) {
        // Family 19h (Zen 3 and Zen 4): Milan (EPYC 7003) at models 00h-0Fh; Genoa (EPYC 9004)
        // at 10h-1Fh, and its Bergamo and Siena variants at A0h-AFh, which use Genoa's keys.
        (0x19, 0x00..=0x0F) => Some(Product::Milan),
        (0x19, 0x10..=0x1F | 0xA0..=0xAF) => Some(Product::Genoa),
        // Family 1Ah (Zen 5): Turin (EPYC 9005), dense variant included.
        (0x1A, 0x00..=0x1F) => Some(Product::Turin),
        _ => None,
    }
}

/// What the report's CPUID fields say: `Ok(None)` for version 2 (no such fields), an error for a
/// family and model of no known product.
pub fn reported_product(report: &Report) -> Result<Option<Product>, AttestationError> {
    if report.version() < FIRST_VERSION_WITH_CPUID {
        return Ok(None);
    }
    let (family, model) = (report.cpuid_family(), report.cpuid_model());
    match from_cpuid(family, model) {
        Some(product) => Ok(Some(product)),
        None => Err(RejectReason::UnknownProduct { family, model }.into()),
    }
}

/// A report that names its product (version 3 and later) names `expected`.
pub(crate) fn check_product(report: &Report, expected: Product) -> Result<(), AttestationError> {
    match reported_product(report)? {
        Some(reported) if reported != expected => {
            Err(RejectReason::WrongProduct { reported, expected }.into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ReportBuilder;

    fn report(version: u32, family: u8, model: u8) -> Report {
        let raw = ReportBuilder::new()
            .version(version)
            .cpuid(family, model, 1)
            .build_unsigned();
        Report::parse(&raw).unwrap()
    }

    #[test]
    fn known_families_and_models() {
        assert_eq!(from_cpuid(0x19, 0x01), Some(Product::Milan));
        assert_eq!(from_cpuid(0x19, 0x11), Some(Product::Genoa));
        assert_eq!(from_cpuid(0x19, 0xA0), Some(Product::Genoa));
        assert_eq!(from_cpuid(0x1A, 0x02), Some(Product::Turin));
        assert_eq!(from_cpuid(0x1A, 0x11), Some(Product::Turin));
        assert_eq!(
            from_cpuid(0x17, 0x31),
            None,
            "Rome has no SNP reports Concord accepts"
        );
        assert_eq!(from_cpuid(0x19, 0x21), None, "a desktop part");
        assert_eq!(from_cpuid(0, 0), None);
    }

    #[test]
    fn version_2_names_no_product_and_passes_any_entry() {
        let r = report(2, 0x19, 0x11);
        assert_eq!(reported_product(&r), Ok(None));
        check_product(&r, Product::Milan).unwrap();
    }

    #[test]
    fn version_3_must_name_the_entry_product() {
        let genoa = report(3, 0x19, 0x11);
        check_product(&genoa, Product::Genoa).unwrap();
        assert_eq!(
            check_product(&genoa, Product::Milan),
            Err(RejectReason::WrongProduct {
                reported: Product::Genoa,
                expected: Product::Milan
            }
            .into())
        );
        assert_eq!(
            check_product(&report(5, 0x42, 0x01), Product::Turin),
            Err(RejectReason::UnknownProduct {
                family: 0x42,
                model: 0x01
            }
            .into())
        );
    }
}
