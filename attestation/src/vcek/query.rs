//! What to look for: the VCEK of one product, chip and TCB ([`VcekQuery`]), and the names it has
//! at AMD's KDS and in the on-disk cache.
//!
//! Owns reading those three out of a report and [`candidate_products`]. It must never decide that a
//! certificate fits: `crate::snp::check_signer_certificate` does, for every source.

use crate::error::AttestationError;
use crate::reference::Product;
use crate::report::{Report, Tcb};
use crate::snp::{self, reported_product};

/// The VCEK AMD issued for one chip at one TCB.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VcekQuery {
    product: Product,
    hw_id: Vec<u8>,
    tcb: Tcb,
}

/// The products a report can come from: the one its CPUID fields name (version 3 on), else, for
/// version 2, Milan and Genoa (Turin's firmware writes version 3 or later).
pub fn candidate_products(report: &Report) -> Result<Vec<Product>, AttestationError> {
    Ok(match reported_product(report)? {
        Some(product) => vec![product],
        None => vec![Product::Milan, Product::Genoa],
    })
}

impl VcekQuery {
    /// The VCEK that signed `report`, were it made on `product`: the chip ID (its first 8 bytes on
    /// Turin) and the reported TCB in that product's layout.
    pub fn for_report(report: &Report, product: Product) -> Self {
        let hw_id = report.chip_id()[..snp::hw_id_len(product)].to_vec();
        Self {
            product,
            hw_id,
            tcb: Tcb::decode(report.reported_tcb(), product),
        }
    }

    /// The product.
    pub fn product(&self) -> Product {
        self.product
    }

    /// The KDS path and query: `/vcek/v1/{Milan|Genoa|Turin}/{hwID hex}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`,
    /// with `fmcSPL` first on Turin; each SPL in decimal, at least two digits, as AMD's examples.
    pub fn kds_path(&self) -> String {
        let t = &self.tcb;
        let fmc = t.fmc.map(|f| format!("fmcSPL={f:02}&")).unwrap_or_default();
        format!(
            "/vcek/v1/{}/{}?{fmc}blSPL={:02}&teeSPL={:02}&snpSPL={:02}&ucodeSPL={:02}",
            product_name(self.product),
            hex::encode(&self.hw_id),
            t.bootloader,
            t.tee,
            t.snp,
            t.microcode,
        )
    }

    /// The cache's file name: `{product}-{hwID hex}-{TCB}.der`, e.g.
    /// `Milan-<128 hex>-bl03-tee00-snp08-ucode115.der` (`fmc..-` before `bl` on Turin).
    pub fn cache_file_name(&self) -> String {
        format!(
            "{}-{}-{}.der",
            product_name(self.product),
            hex::encode(&self.hw_id),
            self.tcb_label()
        )
    }

    fn tcb_label(&self) -> String {
        let t = &self.tcb;
        let fmc = t.fmc.map(|f| format!("fmc{f:02}-")).unwrap_or_default();
        format!(
            "{fmc}bl{:02}-tee{:02}-snp{:02}-ucode{:02}",
            t.bootloader, t.tee, t.snp, t.microcode
        )
    }
}

/// For messages: `Milan chip 0123abcd… at TCB bl03-tee00-snp08-ucode115`.
impl std::fmt::Display for VcekQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hw_id = hex::encode(&self.hw_id);
        write!(
            f,
            "{} chip {}… at TCB {}",
            product_name(self.product),
            hw_id.get(..16).unwrap_or(&hw_id),
            self.tcb_label()
        )
    }
}

/// The product's name in KDS paths.
pub(crate) fn product_name(product: Product) -> &'static str {
    match product {
        Product::Milan => "Milan",
        Product::Genoa => "Genoa",
        Product::Turin => "Turin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ReportBuilder;
    use crate::testing::snp as vectors;

    #[test]
    fn milan_paths_carry_the_64_byte_hw_id_and_four_spls() {
        let v = vectors::virtee_milan();
        let report = v.report();
        let q = VcekQuery::for_report(&report, Product::Milan);
        let hw_id = hex::encode(report.chip_id());
        assert_eq!(hw_id.len(), 128);
        assert_eq!(
            q.kds_path(),
            format!("/vcek/v1/Milan/{hw_id}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115")
        );
        assert_eq!(
            q.cache_file_name(),
            format!("Milan-{hw_id}-bl03-tee00-snp08-ucode115.der")
        );
        assert!(q.to_string().starts_with("Milan chip "), "{q}");
    }

    #[test]
    fn turin_paths_carry_an_8_byte_hw_id_and_the_fmc_first() {
        let mut chip_id = [0xEE; 64];
        chip_id[..8].copy_from_slice(&hex::decode("1e550a8ee5cf9f4d").unwrap());
        let raw = ReportBuilder::new()
            .version(3)
            .cpuid(0x1A, 0x02, 0)
            .chip_id(&chip_id)
            .reported_tcb_raw(Tcb::turin(1, 2, 3, 4, 9).to_turin())
            .build_unsigned();
        let report = Report::parse(&raw).unwrap();
        assert_eq!(candidate_products(&report).unwrap(), vec![Product::Turin]);
        let q = VcekQuery::for_report(&report, Product::Turin);
        assert_eq!(
            q.kds_path(),
            "/vcek/v1/Turin/1e550a8ee5cf9f4d?fmcSPL=01&blSPL=02&teeSPL=03&snpSPL=04&ucodeSPL=09"
        );
        assert_eq!(
            q.cache_file_name(),
            "Turin-1e550a8ee5cf9f4d-fmc01-bl02-tee03-snp04-ucode09.der"
        );
    }

    #[test]
    fn version_2_reports_may_come_from_milan_or_genoa_and_genoa_is_named_by_cpuid() {
        let v2 = vectors::virtee_milan().report();
        assert_eq!(
            candidate_products(&v2).unwrap(),
            vec![Product::Milan, Product::Genoa]
        );
        let genoa = vectors::trustee_genoa_e2e().report();
        assert_eq!(candidate_products(&genoa).unwrap(), vec![Product::Genoa]);
    }
}
