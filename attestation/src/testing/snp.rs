//! Real AMD SEV-SNP reports and the certificates that signed them (`testdata/`, origins in its
//! README), with reference values built to accept each, and a time of check at which every
//! certificate of its chain is valid.

use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::evidence::{Evidence, Platform};
use crate::reference::{Measurement, MinimumTcb, Product, ReferenceValues, SnpReference};
use crate::report::{Report, Tcb};

/// The absolute path of a file in `attestation/testdata/`.
pub fn path(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(file)
}

/// The bytes of a file in `attestation/testdata/`.
pub fn read(file: &str) -> Vec<u8> {
    let path = path(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every certificate of a PEM file in `attestation/testdata/`, DER.
pub fn pem_certificates(file: &str) -> Vec<Vec<u8>> {
    let pem = read(file);
    x509_parser::pem::Pem::iter_from_buffer(&pem)
        .map(|p| p.unwrap().contents)
        .collect()
}

/// An RFC 3339 time.
pub fn time(rfc3339: &str) -> SystemTime {
    OffsetDateTime::parse(rfc3339, &Rfc3339).unwrap().into()
}

/// The time of check for every vector whose certificates are valid then.
pub const AT: &str = "2026-01-01T00:00:00Z";

/// A real report, the certificates the evidence carries (signer first), and what to expect.
#[derive(Debug, Clone)]
pub struct Vector {
    /// A short name for assertion messages.
    pub name: &'static str,
    /// The report file in `testdata/`.
    pub report_file: &'static str,
    /// The signer certificate's file in `testdata/` (DER, or PEM with the chain after it).
    pub cert_file: &'static str,
    /// The raw report.
    pub report: Vec<u8>,
    /// The VCEK or VLEK, DER.
    pub cert: Vec<u8>,
    /// Certificates sent after the signer (the pinned ASK and ARK, when the source has them).
    pub chain: Vec<Vec<u8>>,
    /// The product the report comes from.
    pub product: Product,
    /// A time at which every certificate of the chain is valid.
    pub at: SystemTime,
    /// The report's guest policy allows debugging (the go-sev-guest report).
    pub debug: bool,
}

impl Vector {
    fn new(
        name: &'static str,
        report_file: &'static str,
        cert_file: &'static str,
        product: Product,
    ) -> Self {
        let mut certs = if cert_file.ends_with(".pem") {
            pem_certificates(cert_file)
        } else {
            vec![read(cert_file)]
        };
        let cert = certs.remove(0);
        Self {
            name,
            report_file,
            cert_file,
            report: read(report_file),
            cert,
            chain: certs,
            product,
            at: time(AT),
            debug: false,
        }
    }

    /// The parsed report.
    pub fn report(&self) -> Report {
        Report::parse(&self.report).unwrap()
    }

    /// The report's `report_data`: the binding a verifier of this vector expects.
    pub fn report_data(&self) -> [u8; 64] {
        *self.report().report_data()
    }

    /// The reported TCB, with the product's layout.
    pub fn reported_tcb(&self) -> Tcb {
        Tcb::decode(self.report().reported_tcb(), self.product)
    }

    /// SNP evidence: the report, the signer, and the chain the source carried.
    pub fn evidence(&self) -> Evidence {
        let mut certificates = vec![self.cert.clone()];
        certificates.extend(self.chain.iter().cloned());
        Evidence {
            platform: Platform::Snp,
            report: self.report.clone(),
            certificates,
            crls: vec![],
        }
    }

    /// An entry that accepts this report and nothing weaker: its product, its measurement, its
    /// reported TCB as the minimum, debug allowed only if the report needs it, any chip.
    pub fn reference(&self) -> SnpReference {
        let tcb = self.reported_tcb();
        SnpReference {
            product: self.product,
            trusted_measurements: vec![Measurement(*self.report().measurement())],
            minimum_tcb: MinimumTcb {
                bootloader: tcb.bootloader,
                tee: tcb.tee,
                snp: tcb.snp,
                microcode: tcb.microcode,
                fmc: tcb.fmc,
            },
            allow_debug: self.debug,
            allow_migration_agent: false,
            allowed_chip_ids: None,
        }
    }

    /// Reference values with [`reference`](Self::reference) as their only entry.
    pub fn reference_values(&self) -> ReferenceValues {
        ReferenceValues {
            snp: vec![self.reference()],
            simulated: vec![],
            tdx: vec![],
        }
    }
}

/// Milan, VCEK, version 2 (virtee/sev).
pub fn virtee_milan() -> Vector {
    Vector::new(
        "virtee Milan",
        "virtee-sev-report_milan.bin",
        "virtee-sev-vcek_milan.der",
        Product::Milan,
    )
}

/// Milan, VCEK, version 2, current TCB newer than the reported one (trustee).
pub fn trustee_milan() -> Vector {
    Vector::new(
        "trustee test-report",
        "trustee-test-report.bin",
        "trustee-test-vcek.der",
        Product::Milan,
    )
}

/// Genoa family (CPUID model A0h), bare metal, VCEK, version 3 (trustee e2e).
pub fn trustee_genoa_e2e() -> Vector {
    Vector::new(
        "trustee e2e Genoa",
        "trustee-e2e-report.bin",
        "trustee-e2e-vcek.der",
        Product::Genoa,
    )
}

/// Genoa on Azure, VCEK, version 3; the VCEK as PEM (trustee az-snp-vtpm).
pub fn azure_genoa() -> Vector {
    Vector::new(
        "trustee Azure Genoa",
        "trustee-az-genoa-report.bin",
        "trustee-az-vcek-genoa.pem",
        Product::Genoa,
    )
}

/// Milan on Azure, VCEK, version 2; the PEM carries the VCEK, the ASK and the ARK (trustee).
pub fn azure_milan() -> Vector {
    Vector::new(
        "trustee Azure Milan (HCL)",
        "trustee-az-hcl-report.bin",
        "trustee-az-vcek-chain.pem",
        Product::Milan,
    )
}

/// Milan, VCEK, version 2, guest policy with DEBUG on (google/go-sev-guest).
pub fn go_sev_guest_debug() -> Vector {
    Vector {
        debug: true,
        ..Vector::new(
            "go-sev-guest (debug)",
            "go-sev-guest-attestation.bin",
            "go-sev-guest-vcek.der",
            Product::Milan,
        )
    }
}

/// Milan, VLEK, version 3, VMPL 1, chip_id zero; the VLEK expired on 2025-12-10 (trustee).
pub fn trustee_vlek() -> Vector {
    Vector {
        at: time("2025-06-01T00:00:00Z"),
        ..Vector::new(
            "trustee VLEK",
            "trustee-test-vlek-report.bin",
            "trustee-test-vlek.der",
            Product::Milan,
        )
    }
}

/// Every vector that [`Vector::reference`] accepts at [`Vector::at`].
pub fn accepted() -> Vec<Vector> {
    vec![
        virtee_milan(),
        trustee_milan(),
        trustee_genoa_e2e(),
        azure_genoa(),
        azure_milan(),
        go_sev_guest_debug(),
    ]
}

/// A P-384 key with a certificate shaped like a VCEK or VLEK (AMD's hwID and TCB extensions), but
/// self-signed: NOT AMD's. For the checks that come after the chain, which no real report can
/// reach with a mismatch (its signature would fail first), and for Turin, of which no report is
/// among the vectors.
pub struct FakeAmdSigner {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Its key.
    pub key: p384::ecdsa::SigningKey,
}

impl std::fmt::Debug for FakeAmdSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAmdSigner").finish_non_exhaustive()
    }
}

const AMD_OID: [u64; 7] = [1, 3, 6, 1, 4, 1, 3704];

fn amd_extension(arc: &[u64], content: Vec<u8>) -> rcgen::CustomExtension {
    let oid: Vec<u64> = AMD_OID.iter().chain(arc).copied().collect();
    rcgen::CustomExtension::from_oid_content(&oid, content)
}

/// A DER INTEGER of 0 to 255, minimally encoded.
fn der_u8(v: u8) -> Vec<u8> {
    if v < 0x80 {
        vec![0x02, 0x01, v]
    } else {
        vec![0x02, 0x02, 0x00, v]
    }
}

impl FakeAmdSigner {
    /// A VCEK-shaped certificate for `hw_id` (64 bytes; 8 on Turin) and `tcb` (with `fmc` on Turin).
    pub fn vcek(hw_id: &[u8], tcb: Tcb) -> Self {
        let mut extensions = Self::tcb_extensions(tcb);
        extensions.push(amd_extension(&[1, 4], hw_id.to_vec()));
        Self::new("fake SEV-VCEK", extensions)
    }

    /// A VLEK-shaped certificate for `tcb`: no hwID.
    pub fn vlek(tcb: Tcb) -> Self {
        Self::new("fake SEV-VLEK", Self::tcb_extensions(tcb))
    }

    fn tcb_extensions(tcb: Tcb) -> Vec<rcgen::CustomExtension> {
        let mut extensions = vec![
            amd_extension(&[1, 3, 1], der_u8(tcb.bootloader)),
            amd_extension(&[1, 3, 2], der_u8(tcb.tee)),
            amd_extension(&[1, 3, 3], der_u8(tcb.snp)),
            amd_extension(&[1, 3, 8], der_u8(tcb.microcode)),
        ];
        if let Some(fmc) = tcb.fmc {
            extensions.push(amd_extension(&[1, 3, 9], der_u8(fmc)));
        }
        extensions
    }

    fn new(cn: &str, extensions: Vec<rcgen::CustomExtension>) -> Self {
        use p384::pkcs8::DecodePrivateKey as _;
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.custom_extensions = extensions;
        let cert = params.self_signed(&key_pair).unwrap();
        Self {
            der: cert.der().to_vec(),
            key: p384::ecdsa::SigningKey::from_pkcs8_der(key_pair.serialized_der()).unwrap(),
        }
    }

    /// Signs a report with this key, as the firmware would.
    pub fn sign(&self, raw: &mut [u8; crate::report::REPORT_LEN]) {
        crate::simulated::sign_report(&self.key, raw).unwrap();
    }
}
