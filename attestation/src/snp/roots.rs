//! The pinned AMD certificates: for each product, the ARK (AMD root key), the ASK (which signs
//! VCEKs) and the ASVK (which signs VLEKs), compiled into the binary from `roots/`.
//!
//! Owns the bytes and which product and key kind they belong to. It must never load a root from
//! anywhere else (a file, the evidence, the network): evidence may repeat these certificates, and
//! `amd_chain` then requires them to be byte for byte these. Origins are in `roots/README.md`.

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use crate::reference::Product;
use crate::snp::signer::SignerKind;

/// The AMD certificates of one product, DER.
#[derive(Debug)]
pub(crate) struct PinnedChain {
    /// AMD Root Key: self-signed, signs the ASK and the ASVK.
    pub(crate) ark: &'static [u8],
    /// AMD SEV Signing Key: signs VCEKs.
    pub(crate) ask: &'static [u8],
    /// AMD SEV VLEK Signing Key: signs VLEKs.
    pub(crate) asvk: &'static [u8],
}

impl PinnedChain {
    /// The intermediate that signs keys of `kind`: the ASK for a VCEK, the ASVK for a VLEK.
    pub(crate) fn intermediate(&self, kind: SignerKind) -> &'static [u8] {
        match kind {
            SignerKind::Vcek => self.ask,
            SignerKind::Vlek => self.asvk,
        }
    }
}

const MILAN: PinnedChain = PinnedChain {
    ark: include_bytes!("roots/milan/ark.der"),
    ask: include_bytes!("roots/milan/ask.der"),
    asvk: include_bytes!("roots/milan/asvk.der"),
};

const GENOA: PinnedChain = PinnedChain {
    ark: include_bytes!("roots/genoa/ark.der"),
    ask: include_bytes!("roots/genoa/ask.der"),
    asvk: include_bytes!("roots/genoa/asvk.der"),
};

const TURIN: PinnedChain = PinnedChain {
    ark: include_bytes!("roots/turin/ark.der"),
    ask: include_bytes!("roots/turin/ask.der"),
    asvk: include_bytes!("roots/turin/asvk.der"),
};

/// The pinned certificates of `product`.
pub(crate) fn pinned(product: Product) -> &'static PinnedChain {
    match product {
        Product::Milan => &MILAN,
        Product::Genoa => &GENOA,
        Product::Turin => &TURIN,
    }
}

/// Every product, for lookups over all pinned chains.
pub(crate) const PRODUCTS: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

/// The product whose pinned intermediate for `kind` is named as the issuer of `signer_der`. A
/// name is no proof: this only tells which product a certificate claims to belong to.
pub(crate) fn product_issuing(kind: SignerKind, signer_der: &[u8]) -> Option<Product> {
    let (_, signer) = X509Certificate::from_der(signer_der).ok()?;
    PRODUCTS.into_iter().find(|product| {
        X509Certificate::from_der(pinned(*product).intermediate(kind))
            .is_ok_and(|(_, pinned)| pinned.subject().as_raw() == signer.issuer().as_raw())
    })
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn sha256_hex(der: &[u8]) -> String {
        hex::encode(Sha256::digest(der))
    }

    /// The ARK digests published with the test vectors (snp-vectors/README.md), which three
    /// projects' copies of the AMD roots agree on; the same values are in roots/README.md.
    #[test]
    fn each_ark_is_the_published_amd_root() {
        let expected = [
            (
                Product::Milan,
                "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
            ),
            (
                Product::Genoa,
                "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
            ),
            (
                Product::Turin,
                "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
            ),
        ];
        for (product, digest) in expected {
            assert_eq!(sha256_hex(pinned(product).ark), digest, "{product:?} ARK");
        }
    }

    #[test]
    fn intermediates_are_the_published_ones() {
        let expected = [
            (
                Product::Milan,
                "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b",
                "c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5",
            ),
            (
                Product::Genoa,
                "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521",
                "197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372",
            ),
            (
                Product::Turin,
                "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185",
                "104e10a8bd060a3c20a434261a57d0588fd65a88915b4f65b08bdecaf8df1a3c",
            ),
        ];
        for (product, ask, asvk) in expected {
            assert_eq!(sha256_hex(pinned(product).ask), ask, "{product:?} ASK");
            assert_eq!(sha256_hex(pinned(product).asvk), asvk, "{product:?} ASVK");
        }
    }

    #[test]
    fn names_say_which_product_and_key_each_certificate_is() {
        let cn = |der: &[u8]| {
            let (_, cert) = X509Certificate::from_der(der).unwrap();
            let name = cert.subject().iter_common_name().next().unwrap();
            name.as_str().unwrap().to_owned()
        };
        for (product, name) in [
            (Product::Milan, "Milan"),
            (Product::Genoa, "Genoa"),
            (Product::Turin, "Turin"),
        ] {
            let chain = pinned(product);
            assert_eq!(cn(chain.ark), format!("ARK-{name}"));
            assert_eq!(
                cn(chain.intermediate(SignerKind::Vcek)),
                format!("SEV-{name}")
            );
            assert_eq!(
                cn(chain.intermediate(SignerKind::Vlek)),
                format!("SEV-VLEK-{name}")
            );
        }
    }

    #[test]
    fn the_issuer_name_tells_which_product_a_signer_claims() {
        use crate::testing::snp as vectors;
        assert_eq!(
            product_issuing(SignerKind::Vcek, &vectors::virtee_milan().cert),
            Some(Product::Milan)
        );
        assert_eq!(
            product_issuing(SignerKind::Vcek, &vectors::trustee_genoa_e2e().cert),
            Some(Product::Genoa)
        );
        assert_eq!(
            product_issuing(SignerKind::Vlek, &vectors::trustee_vlek().cert),
            Some(Product::Milan)
        );
        assert_eq!(
            product_issuing(SignerKind::Vlek, &vectors::virtee_milan().cert),
            None
        );
        assert_eq!(
            product_issuing(SignerKind::Vcek, b"not a certificate"),
            None
        );
    }
}
