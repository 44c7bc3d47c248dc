//! Arithmetic in GF(2^8) for Shamir secret sharing.
//!
//! This module owns the field (the AES polynomial x^8 + x^4 + x^3 + x + 1). It must never use
//! lookup tables or branches that depend on its operands: share values are secret, and a
//! table indexed by them would leak them through the cache.

/// The low byte of the AES reduction polynomial 0x11b.
const REDUCTION: u8 = 0x1b;

/// Addition and subtraction are both XOR in characteristic 2.
pub(crate) fn add(a: u8, b: u8) -> u8 {
    a ^ b
}

/// Carry-less multiplication reduced modulo the AES polynomial, in constant time.
pub(crate) fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0u8;
    for _ in 0..8 {
        // All-ones when the low bit of b is set: adds `a` without a branch.
        product ^= a & 0u8.wrapping_sub(b & 1);
        // All-ones when a's top bit is set: reduces without a branch.
        let carry = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (REDUCTION & carry);
        b >>= 1;
    }
    product
}

/// The multiplicative inverse, as a^254 (Fermat), in constant time. Maps 0 to 0, which callers
/// never ask for: they invert differences of distinct nonzero x-coordinates.
pub(crate) fn inv(a: u8) -> u8 {
    // 254 = 0b1111_1110: square-and-multiply with a fixed sequence of operations.
    let a2 = mul(a, a);
    let a3 = mul(a2, a);
    let a6 = mul(a3, a3);
    let a7 = mul(a6, a);
    let a14 = mul(a7, a7);
    let a15 = mul(a14, a);
    let a30 = mul(a15, a15);
    let a31 = mul(a30, a);
    let a62 = mul(a31, a31);
    let a63 = mul(a62, a);
    let a126 = mul(a63, a63);
    let a127 = mul(a126, a);
    mul(a127, a127)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Worked examples from FIPS-197 (the AES standard), section 4.2 and 4.2.1.
    #[test]
    fn multiplication_matches_fips_197() {
        assert_eq!(mul(0x57, 0x83), 0xc1);
        assert_eq!(mul(0x57, 0x13), 0xfe);
        assert_eq!(mul(0x57, 0x02), 0xae);
        assert_eq!(mul(0x57, 0x10), 0x07);
    }

    #[test]
    fn inverse_matches_known_pair_and_is_an_inverse_everywhere() {
        // {53} and {ca} are inverses in the AES field (FIPS-197 S-box construction example).
        assert_eq!(inv(0x53), 0xca);
        assert_eq!(inv(0xca), 0x53);
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "a = {a:#04x}");
        }
        assert_eq!(inv(0), 0);
    }

    #[test]
    fn multiplication_is_commutative_and_distributes_over_addition() {
        for a in 0..=255u8 {
            for b in [0u8, 1, 2, 0x53, 0x80, 0xff] {
                assert_eq!(mul(a, b), mul(b, a));
                assert_eq!(mul(a, add(b, 0x1d)), add(mul(a, b), mul(a, 0x1d)));
            }
        }
    }
}
