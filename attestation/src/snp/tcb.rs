//! The reported TCB against the reference values' minimum, component by component.
//!
//! Owns reading `reported_tcb` with the layout of the entry's product (Turin's differs and has an
//! FMC component) and the per-component comparison. It must never compare the 8-byte values as
//! integers: a newer microcode does not make up for an older bootloader.

use crate::error::{AttestationError, RejectReason, TcbComponent};
use crate::reference::{MinimumTcb, Product};
use crate::report::{Report, Tcb};

/// `reported_tcb`, decoded with the layout of `product`.
pub(crate) fn reported(report: &Report, product: Product) -> Tcb {
    Tcb::decode(report.reported_tcb(), product)
}

/// Every component at least its minimum. On Turin an absent `minimum_tcb.fmc` means 0.
pub(crate) fn check_minimum(tcb: Tcb, minimum: &MinimumTcb) -> Result<(), AttestationError> {
    let pairs = [
        (TcbComponent::Bootloader, tcb.bootloader, minimum.bootloader),
        (TcbComponent::Tee, tcb.tee, minimum.tee),
        (TcbComponent::Snp, tcb.snp, minimum.snp),
        (TcbComponent::Microcode, tcb.microcode, minimum.microcode),
        (
            TcbComponent::Fmc,
            tcb.fmc.unwrap_or(0),
            minimum.fmc.unwrap_or(0),
        ),
    ];
    for (component, reported, minimum) in pairs {
        if reported < minimum {
            return Err(RejectReason::TcbBelowMinimum {
                component,
                reported,
                minimum,
            }
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: MinimumTcb = MinimumTcb {
        bootloader: 3,
        tee: 1,
        snp: 8,
        microcode: 115,
        fmc: None,
    };

    fn below(component: TcbComponent, reported: u8, minimum: u8) -> Result<(), AttestationError> {
        Err(RejectReason::TcbBelowMinimum {
            component,
            reported,
            minimum,
        }
        .into())
    }

    #[test]
    fn each_component_is_compared_on_its_own() {
        check_minimum(Tcb::new(3, 1, 8, 115), &MIN).unwrap();
        check_minimum(Tcb::new(4, 2, 9, 200), &MIN).unwrap();
        let t = |bl, tee, snp, ucode| check_minimum(Tcb::new(bl, tee, snp, ucode), &MIN);
        assert_eq!(t(2, 9, 99, 255), below(TcbComponent::Bootloader, 2, 3));
        assert_eq!(t(9, 0, 99, 255), below(TcbComponent::Tee, 0, 1));
        assert_eq!(t(9, 9, 7, 255), below(TcbComponent::Snp, 7, 8));
        assert_eq!(t(9, 9, 99, 114), below(TcbComponent::Microcode, 114, 115));
    }

    #[test]
    fn turin_fmc_has_a_minimum_too() {
        let min = MinimumTcb {
            fmc: Some(2),
            ..MIN
        };
        check_minimum(Tcb::turin(2, 3, 1, 8, 115), &min).unwrap();
        assert_eq!(
            check_minimum(Tcb::turin(1, 3, 1, 8, 115), &min),
            below(TcbComponent::Fmc, 1, 2)
        );
        // Without a minimum, any FMC version is enough.
        check_minimum(Tcb::turin(0, 3, 1, 8, 115), &MIN).unwrap();
    }

    #[test]
    fn the_layout_follows_the_product() {
        use crate::report::ReportBuilder;
        let raw = ReportBuilder::new()
            .reported_tcb_raw(u64::from_le_bytes([1, 3, 1, 8, 0, 0, 0, 115]))
            .build_unsigned();
        let report = Report::parse(&raw).unwrap();
        assert_eq!(
            reported(&report, Product::Turin),
            Tcb::turin(1, 3, 1, 8, 115)
        );
        assert_eq!(reported(&report, Product::Milan), Tcb::new(1, 3, 0, 115));
    }
}
