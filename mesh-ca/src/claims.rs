//! The attested claims a workload leaf certificate carries, as X.509 extensions, so that relying
//! services can decide on what the coordinator verified (which platform, which launch measurement,
//! which policy, which TCB, which chip) without asking it.
//!
//! Owns the OIDs (normative: docs/PROTOCOL.md restates them) and their DER encoding. Every extension is
//! non-critical, so a verifier that does not know them still accepts the certificate. It must never
//! judge claims: the coordinator passes claims that already passed verification.
//!
//! | OID | content |
//! |---|---|
//! | `1.3.6.1.4.1.58270.2.1` | platform, UTF8String: `"snp"`, `"simulated"` or `"tdx"` |
//! | `1.3.6.1.4.1.58270.2.2` | launch measurement, OCTET STRING (48 bytes) |
//! | `1.3.6.1.4.1.58270.2.3` | HOST_DATA: the policy hash, OCTET STRING (32 bytes) |
//! | `1.3.6.1.4.1.58270.2.4` | chip ID, OCTET STRING (64 bytes; zero for a VLEK-signed report) |
//! | `1.3.6.1.4.1.58270.2.5.{1,2,3,8,9}` | reported TCB: bootloader, TEE, SNP, microcode, FMC (Turin only), each an INTEGER, numbered as in AMD's VCEK extensions |
//! | `1.3.6.1.4.1.58270.2.6.{1..4}` | TDX only: RTMR0..RTMR3, OCTET STRING (48 bytes each) |
//! | `1.3.6.1.4.1.58270.2.6.5` | TDX only: MRSEAM, OCTET STRING (48 bytes) |
//! | `1.3.6.1.4.1.58270.2.6.6` | TDX only: TEE_TCB_SVN, OCTET STRING (16 bytes) |
//! | `1.3.6.1.4.1.58270.2.6.7` | TDX only: TD attributes, OCTET STRING (8 bytes, as in the quote) |
//! | `1.3.6.1.4.1.58270.2.6.8` | TDX only: XFAM, OCTET STRING (8 bytes, as in the quote) |
//! | `1.3.6.1.4.1.58270.2.6.9` | TDX only: Intel's TCB status, UTF8String (e.g. `UpToDate`) |
//! | `1.3.6.1.4.1.58270.2.6.10` | TDX only: FMSPC, OCTET STRING (6 bytes) |
//!
//! On TDX, `.2` is MRTD and `.3` the policy hash from MRCONFIGID; `.4` and `.5` (SNP's chip ID and
//! TCB) are absent.

use rcgen::CustomExtension;

/// The arc under which the claims live (provisional, like the evidence OID: see docs/PROTOCOL.md).
pub const CLAIMS_ARC: &[u64] = &[1, 3, 6, 1, 4, 1, 58270, 2];

/// What the coordinator verified about a workload, to put into its leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedClaims {
    /// `"snp"`, `"simulated"` or `"tdx"`.
    pub platform: String,
    /// The launch measurement.
    pub measurement: Vec<u8>,
    /// HOST_DATA, the workload's policy hash.
    pub host_data: [u8; 32],
    /// The chip ID.
    pub chip_id: Vec<u8>,
    /// The reported TCB.
    pub reported_tcb: TcbClaims,
    /// On TDX: the quote's claims beyond MRTD and the policy hash.
    pub tdx: Option<TdxLeafClaims>,
}

/// The TDX claims a leaf carries (`1.3.6.1.4.1.58270.2.6.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxLeafClaims {
    /// RTMR0..RTMR3, 48 bytes each.
    pub rtmr: [Vec<u8>; 4],
    /// MRSEAM, 48 bytes.
    pub mrseam: Vec<u8>,
    /// TEE_TCB_SVN, 16 bytes.
    pub tee_tcb_svn: Vec<u8>,
    /// TD attributes, 8 bytes as in the quote.
    pub td_attributes: Vec<u8>,
    /// XFAM, 8 bytes as in the quote.
    pub xfam: Vec<u8>,
    /// Intel's TCB status.
    pub tcb_status: String,
    /// FMSPC, 6 bytes.
    pub fmspc: Vec<u8>,
}

/// The reported TCB's components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcbClaims {
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
    /// Only on Turin.
    pub fmc: Option<u8>,
}

/// The claims as non-critical extensions, in OID order.
pub fn claim_extensions(claims: &AttestedClaims) -> Vec<CustomExtension> {
    if let Some(tdx) = &claims.tdx {
        let mut extensions = vec![
            extension(&[1], der_tlv(0x0c, claims.platform.as_bytes())),
            extension(&[2], der_tlv(0x04, &claims.measurement)),
            extension(&[3], der_tlv(0x04, &claims.host_data)),
        ];
        for (n, rtmr) in (1..).zip(&tdx.rtmr) {
            extensions.push(extension(&[6, n], der_tlv(0x04, rtmr)));
        }
        extensions.extend([
            extension(&[6, 5], der_tlv(0x04, &tdx.mrseam)),
            extension(&[6, 6], der_tlv(0x04, &tdx.tee_tcb_svn)),
            extension(&[6, 7], der_tlv(0x04, &tdx.td_attributes)),
            extension(&[6, 8], der_tlv(0x04, &tdx.xfam)),
            extension(&[6, 9], der_tlv(0x0c, tdx.tcb_status.as_bytes())),
            extension(&[6, 10], der_tlv(0x04, &tdx.fmspc)),
        ]);
        return extensions;
    }
    let tcb = claims.reported_tcb;
    let mut components = vec![
        (1, tcb.bootloader),
        (2, tcb.tee),
        (3, tcb.snp),
        (8, tcb.microcode),
    ];
    if let Some(fmc) = tcb.fmc {
        components.push((9, fmc));
    }
    let mut extensions = vec![
        extension(&[1], der_tlv(0x0c, claims.platform.as_bytes())),
        extension(&[2], der_tlv(0x04, &claims.measurement)),
        extension(&[3], der_tlv(0x04, &claims.host_data)),
        extension(&[4], der_tlv(0x04, &claims.chip_id)),
    ];
    extensions.extend(
        components
            .into_iter()
            .map(|(n, v)| extension(&[5, n], der_integer(v))),
    );
    extensions
}

fn extension(suffix: &[u64], content: Vec<u8>) -> CustomExtension {
    let oid: Vec<u64> = CLAIMS_ARC.iter().chain(suffix).copied().collect();
    let mut ext = CustomExtension::from_oid_content(&oid, content);
    ext.set_criticality(false);
    ext
}

/// A DER TLV with a definite length (short or long form).
fn der_tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(value);
    out
}

/// A non-negative INTEGER: a leading zero byte when the high bit is set, as DER requires.
fn der_integer(v: u8) -> Vec<u8> {
    if v & 0x80 != 0 {
        der_tlv(0x02, &[0, v])
    } else {
        der_tlv(0x02, &[v])
    }
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::{FromDer as _, X509Certificate};

    use super::*;

    fn claims(fmc: Option<u8>) -> AttestedClaims {
        AttestedClaims {
            platform: "snp".into(),
            measurement: vec![0x4d; 48],
            host_data: [0x11; 32],
            chip_id: vec![0xc1; 64],
            reported_tcb: TcbClaims {
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 209,
                fmc,
            },
            tdx: None,
        }
    }

    #[test]
    fn a_tdx_leaf_carries_the_tdx_claims_and_no_snp_ones() {
        use crate::testing::{fixed_now, golden_engine};
        let root =
            crate::RootCa::create(&golden_engine().root_ca_key().unwrap(), fixed_now()).unwrap();
        let mesh = crate::MeshCa::generate(&root, fixed_now()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let mut c = claims(None);
        c.platform = "tdx".into();
        c.tdx = Some(TdxLeafClaims {
            rtmr: [vec![1; 48], vec![2; 48], vec![3; 48], vec![4; 48]],
            mrseam: vec![5; 48],
            tee_tcb_svn: vec![6; 16],
            td_attributes: vec![0, 0, 0, 0x10, 0, 0, 0, 0],
            xfam: vec![0xe7, 2, 6, 0, 0, 0, 0, 0],
            tcb_status: "UpToDate".into(),
            fmspc: vec![0xb0, 0xc0, 0x6f, 0, 0, 0],
        });
        let leaf = mesh
            .issue_attested(&spki, "web", &[], &c, fixed_now())
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&leaf.der).unwrap();
        let find = |suffix: &str| {
            let oid = format!("1.3.6.1.4.1.58270.2.{suffix}");
            cert.extensions()
                .iter()
                .find(|e| e.oid.to_id_string() == oid)
                .map(|e| {
                    assert!(!e.critical);
                    e.value.to_vec()
                })
        };
        assert_eq!(find("1").unwrap(), [&[0x0c, 3][..], b"tdx"].concat());
        assert_eq!(find("2").unwrap(), [&[0x04, 48][..], &[0x4d; 48]].concat());
        assert_eq!(find("6.1").unwrap(), [&[0x04, 48][..], &[1; 48]].concat());
        assert_eq!(find("6.4").unwrap(), [&[0x04, 48][..], &[4; 48]].concat());
        assert_eq!(find("6.5").unwrap(), [&[0x04, 48][..], &[5; 48]].concat());
        assert_eq!(find("6.6").unwrap(), [&[0x04, 16][..], &[6; 16]].concat());
        assert_eq!(find("6.7").unwrap()[..2], [0x04, 8]);
        assert_eq!(find("6.9").unwrap(), [&[0x0c, 8][..], b"UpToDate"].concat());
        assert_eq!(
            find("6.10").unwrap(),
            vec![0x04, 6, 0xb0, 0xc0, 0x6f, 0, 0, 0]
        );
        assert!(find("4").is_none() && find("5.1").is_none());
    }

    /// Read back by x509-parser (not the writer), every claim is where the table says, non-critical.
    #[test]
    fn a_leaf_carries_every_claim_under_its_oid() {
        use crate::testing::{fixed_now, golden_engine};
        let root =
            crate::RootCa::create(&golden_engine().root_ca_key().unwrap(), fixed_now()).unwrap();
        let mesh = crate::MeshCa::generate(&root, fixed_now()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let leaf = mesh
            .issue_attested(
                &spki,
                "web",
                &["web".into()],
                &claims(Some(1)),
                crate::testing::fixed_now(),
            )
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&leaf.der).unwrap();
        let find = |suffix: &str| {
            let oid = format!("1.3.6.1.4.1.58270.2.{suffix}");
            let ext = cert
                .extensions()
                .iter()
                .find(|e| e.oid.to_id_string() == oid)
                .unwrap_or_else(|| panic!("no extension {oid}"));
            assert!(!ext.critical, "{oid} must not be critical");
            ext.value.to_vec()
        };
        assert_eq!(find("1"), [&[0x0c, 3][..], b"snp"].concat());
        assert_eq!(find("2"), [&[0x04, 48][..], &[0x4d; 48]].concat());
        assert_eq!(find("3"), [&[0x04, 32][..], &[0x11; 32]].concat());
        assert_eq!(find("4"), [&[0x04, 64][..], &[0xc1; 64]].concat());
        assert_eq!(find("5.1"), vec![0x02, 1, 3]);
        assert_eq!(find("5.2"), vec![0x02, 1, 0]);
        assert_eq!(find("5.3"), vec![0x02, 1, 8]);
        assert_eq!(find("5.8"), vec![0x02, 2, 0, 209]);
        assert_eq!(find("5.9"), vec![0x02, 1, 1]);
        // Without FMC (Milan, Genoa) there is no 5.9; a plain `issue` carries no claims at all.
        let milan = mesh
            .issue_attested(
                &spki,
                "web",
                &[],
                &claims(None),
                crate::testing::fixed_now(),
            )
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&milan.der).unwrap();
        assert!(
            !cert
                .extensions()
                .iter()
                .any(|e| e.oid.to_id_string().ends_with("58270.2.5.9"))
        );
        let plain = mesh
            .issue(&spki, "web", &[], crate::testing::fixed_now())
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&plain.der).unwrap();
        assert!(
            !cert
                .extensions()
                .iter()
                .any(|e| e.oid.to_id_string().contains("58270.2"))
        );
    }

    #[test]
    fn der_encodings_are_canonical() {
        assert_eq!(der_integer(0), vec![0x02, 0x01, 0x00]);
        assert_eq!(der_integer(115), vec![0x02, 0x01, 115]);
        assert_eq!(der_integer(200), vec![0x02, 0x02, 0x00, 200]);
        assert_eq!(der_tlv(0x04, &[1, 2]), vec![0x04, 0x02, 1, 2]);
        let long = der_tlv(0x04, &[7; 200]);
        assert_eq!(&long[..3], &[0x04, 0x81, 200]);
        assert_eq!(long.len(), 203);
    }
}
