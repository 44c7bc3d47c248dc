//! A test AMD hierarchy, made in the tests: an ARK (RSA-4096, self-signed with RSASSA-PSS/SHA-384
//! as AMD signs), an ASK it signs, a VCEK-shaped P-384 certificate the ASK signs, and CRLs the ARK
//! (or, to forge one, the ASK) signs. NOT AMD's: nothing pinned trusts it, so it serves the checks
//! that take the ARK as a parameter (`snp::crl`). The RSA keys are made once per test process.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use rsa::RsaPrivateKey;
use rsa::pkcs8::EncodePublicKey as _;
use sha2::{Digest, Sha384};
use time::OffsetDateTime;

use crate::reference::Product;
use crate::snp::roots;

/// The test ASK's serial number.
pub const ASK_SERIAL: u64 = 0x01_0001;
/// The test VCEK's serial number.
pub const VCEK_SERIAL: u64 = 0x4242;
/// A serial number of no certificate of the hierarchy.
pub const UNRELATED_SERIAL: u64 = 0x7777;

/// The `thisUpdate` of the CRLs made here.
pub fn this_update() -> SystemTime {
    super::snp::time("2026-01-01T00:00:00Z")
}
/// Their `nextUpdate`: a week later.
pub fn next_update() -> SystemTime {
    this_update() + Duration::from_secs(7 * 86_400)
}
/// A time at which the CRLs made here are fresh.
pub fn now() -> SystemTime {
    this_update() + Duration::from_secs(86_400)
}

/// One product's test hierarchy.
pub struct TestAmd {
    /// The ARK, DER.
    pub ark: Vec<u8>,
    /// The ASK, DER, signed by the ARK.
    pub ask: Vec<u8>,
    /// A VCEK-shaped certificate signed by the ASK, DER.
    pub vcek: Vec<u8>,
    name: &'static str,
    ark_key: &'static RsaPrivateKey,
    ask_key: &'static RsaPrivateKey,
}

impl std::fmt::Debug for TestAmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestAmd")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn key(slot: &'static OnceLock<RsaPrivateKey>) -> &'static RsaPrivateKey {
    slot.get_or_init(|| RsaPrivateKey::new(&mut rand::rngs::OsRng, 4096).unwrap())
}

static KEY_A: OnceLock<RsaPrivateKey> = OnceLock::new();
static KEY_B: OnceLock<RsaPrivateKey> = OnceLock::new();

/// A test hierarchy named like Milan's (`ARK-Milan`, `SEV-Milan`).
pub fn milan() -> TestAmd {
    TestAmd::new("Milan", key(&KEY_A), key(&KEY_B))
}

/// A test hierarchy named like Genoa's, with the keys swapped: another product's root.
pub fn genoa() -> TestAmd {
    TestAmd::new("Genoa", key(&KEY_B), key(&KEY_A))
}

impl TestAmd {
    fn new(
        name: &'static str,
        ark_key: &'static RsaPrivateKey,
        ask_key: &'static RsaPrivateKey,
    ) -> Self {
        let ark_name = dn(&format!("ARK-{name}"));
        let ask_name = dn(&format!("SEV-{name}"));
        let ark = certificate(0x01_0000, &ark_name, &ark_name, &rsa_spki(ark_key), ark_key);
        let ask = certificate(
            ASK_SERIAL,
            &ark_name,
            &ask_name,
            &rsa_spki(ask_key),
            ark_key,
        );
        let vcek_key = p384::SecretKey::random(&mut rand::rngs::OsRng);
        let vcek_spki = vcek_key
            .public_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec();
        let vcek = certificate(VCEK_SERIAL, &ask_name, &dn("SEV-VCEK"), &vcek_spki, ask_key);
        Self {
            ark,
            ask,
            vcek,
            name,
            ark_key,
            ask_key,
        }
    }

    /// The product whose name this hierarchy carries.
    pub fn product(&self) -> Product {
        if self.name == "Genoa" {
            Product::Genoa
        } else {
            Product::Milan
        }
    }

    /// A CRL signed by the ARK, fresh at [`now`], listing `serials`.
    pub fn crl(&self, serials: &[u64]) -> Vec<u8> {
        self.crl_at(serials, this_update(), next_update())
    }

    /// A CRL signed by the ARK, valid from `this` to `next`, listing `serials`.
    pub fn crl_at(&self, serials: &[u64], this: SystemTime, next: SystemTime) -> Vec<u8> {
        crl(
            &dn(&format!("ARK-{}", self.name)),
            serials,
            this,
            next,
            self.ark_key,
        )
    }

    /// A CRL under the name of the pinned (real) ARK of `product`, signed by this test ARK: what
    /// anyone but AMD can make.
    pub fn crl_as_pinned_ark(&self, product: Product, serials: &[u64]) -> Vec<u8> {
        use x509_parser::prelude::FromDer as _;
        let (_, ark) =
            x509_parser::certificate::X509Certificate::from_der(roots::pinned(product).ark)
                .unwrap();
        crl(
            ark.subject().as_raw(),
            serials,
            this_update(),
            next_update(),
            self.ark_key,
        )
    }

    /// A CRL under the ARK's name, signed by the ASK's key: a forgery.
    pub fn crl_signed_by_ask(&self, serials: &[u64]) -> Vec<u8> {
        crl(
            &dn(&format!("ARK-{}", self.name)),
            serials,
            this_update(),
            next_update(),
            self.ask_key,
        )
    }
}

// A small DER writer: enough for certificates and CRLs of this shape.

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
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
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

fn integer(v: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = v
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    if bytes.first().is_none_or(|b| b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    tlv(0x02, &bytes)
}

fn dn(cn: &str) -> Vec<u8> {
    let oid_cn = [0x06, 0x03, 0x55, 0x04, 0x03];
    let attr = seq(&[&oid_cn, &tlv(0x0c, cn.as_bytes())]);
    seq(&[&tlv(0x31, &attr)])
}

fn utc_time(t: SystemTime) -> Vec<u8> {
    let t = OffsetDateTime::from(t);
    let text = format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}Z",
        t.year() % 100,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    tlv(0x17, text.as_bytes())
}

/// AMD's signature algorithm identifier (RSASSA-PSS, SHA-384, MGF1 SHA-384, salt 48), copied
/// from the pinned Milan ASK (offset 18, 72 bytes).
fn pss_algorithm() -> Vec<u8> {
    roots::pinned(Product::Milan).ask[18..90].to_vec()
}

fn rsa_spki(key: &RsaPrivateKey) -> Vec<u8> {
    key.to_public_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec()
}

fn sign(key: &RsaPrivateKey, tbs: &[u8]) -> Vec<u8> {
    let hashed = Sha384::digest(tbs);
    key.sign_with_rng(
        &mut rand::rngs::OsRng,
        rsa::Pss::new_with_salt::<Sha384>(48),
        &hashed,
    )
    .unwrap()
}

fn signed(tbs: Vec<u8>, key: &RsaPrivateKey) -> Vec<u8> {
    let signature = sign(key, &tbs);
    let mut bits = vec![0u8];
    bits.extend(signature);
    seq(&[&tbs, &pss_algorithm(), &tlv(0x03, &bits)])
}

fn certificate(
    serial: u64,
    issuer: &[u8],
    subject: &[u8],
    spki: &[u8],
    key: &RsaPrivateKey,
) -> Vec<u8> {
    let version = tlv(0xa0, &integer(2));
    let validity = seq(&[
        &utc_time(super::snp::time("2020-01-01T00:00:00Z")),
        &utc_time(super::snp::time("2045-01-01T00:00:00Z")),
    ]);
    let tbs = seq(&[
        &version,
        &integer(serial),
        &pss_algorithm(),
        issuer,
        &validity,
        subject,
        spki,
    ]);
    signed(tbs, key)
}

fn crl(
    issuer: &[u8],
    serials: &[u64],
    this: SystemTime,
    next: SystemTime,
    key: &RsaPrivateKey,
) -> Vec<u8> {
    let entries: Vec<Vec<u8>> = serials
        .iter()
        .map(|s| seq(&[&integer(*s), &utc_time(this)]))
        .collect();
    let revoked = seq(&entries.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let mut parts: Vec<Vec<u8>> = vec![
        integer(1),
        pss_algorithm(),
        issuer.to_vec(),
        utc_time(this),
        utc_time(next),
    ];
    if !serials.is_empty() {
        parts.push(revoked);
    }
    let tbs = seq(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>());
    signed(tbs, key)
}
