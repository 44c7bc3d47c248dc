//! Certificate checks for evidence chains: parsing, ECDSA P-384/SHA-384 signatures, validity.
//!
//! Owns the X.509 mechanics both paths share: parsing, validity, the P-384 key of a signer, and
//! the ECDSA links of the simulated chain (the RSA-PSS links of the AMD chain are
//! `snp::amd_chain`'s). It verifies signatures directly on the TBS bytes, as the AMD chain
//! requires (no path builder). It must never decide which root is trusted: callers pin the
//! anchor, this module only checks links.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P384_SHA384_ASN1, ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
use p384::pkcs8::DecodePublicKey as _;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA384;
use x509_parser::prelude::FromDer as _;
use x509_parser::time::ASN1Time;

use crate::error::{AttestationError, CertRole, RejectReason};

/// Parses one DER certificate; trailing bytes are malformed.
pub(crate) fn parse_cert(
    der: &[u8],
    role: CertRole,
) -> Result<X509Certificate<'_>, AttestationError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(AttestationError::malformed(format!(
            "{role} certificate: trailing bytes after the DER"
        ))),
        Err(e) => Err(AttestationError::malformed(format!(
            "{role} certificate: {e}"
        ))),
    }
}

/// An ECDSA P-384 public key that parsed as one (a point on the curve), verified with AWS-LC's
/// assembly arithmetic (`aws-lc-rs`): one P-384 verification is most of what a NewMeshCert costs, and
/// AWS-LC's is about 3.7 times ring's on the benchmark's machine, ring's several times the `p384`
/// crate's (the benchmark's crypto floor row measures ring and AWS-LC side by side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct P384Key {
    /// The uncompressed SEC1 point (0x04 || x || y).
    point: Vec<u8>,
}

impl P384Key {
    /// The key of a `p384` verifying key (tests sign with `p384`).
    #[cfg(test)]
    pub(crate) fn from_p384(key: &p384::ecdsa::VerifyingKey) -> P384Key {
        P384Key {
            point: key.to_encoded_point(false).as_bytes().to_vec(),
        }
    }

    /// Verifies a fixed-size signature (`r || s`, big-endian, 48 bytes each) over `message`.
    pub(crate) fn verify_fixed(&self, message: &[u8], r_s: &[u8; 96]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &self.point)
            .verify(message, r_s)
            .is_ok()
    }

    /// Verifies a DER-encoded (X9.62) signature over `message`.
    pub(crate) fn verify_der(&self, message: &[u8], der: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, &self.point)
            .verify(message, der)
            .is_ok()
    }
}

/// The certificate's key, which must be ECDSA on P-384. The `p384` crate judges the
/// SubjectPublicKeyInfo (algorithm, curve, a point on the curve), as it always did; AWS-LC verifies.
pub(crate) fn p384_key(
    cert: &X509Certificate<'_>,
    role: CertRole,
) -> Result<P384Key, AttestationError> {
    let key =
        p384::ecdsa::VerifyingKey::from_public_key_der(cert.public_key().raw).map_err(|e| {
            AttestationError::malformed(format!("{role} certificate: not an ECDSA P-384 key: {e}"))
        })?;
    Ok(P384Key {
        point: key.to_encoded_point(false).as_bytes().to_vec(),
    })
}

/// Certificate links that passed their check, remembered by the exact DER bytes of both
/// certificates, so that the chain of a VCEK (simulated or AMD's) is verified once, not at every
/// handshake.
///
/// What a link check decides (the names, the algorithm identifiers, the signature) is a function of
/// the two certificates' bytes alone, never of the time or of any configuration: a remembered success
/// is exactly what a fresh check would conclude. Validity periods depend on the time and are never
/// remembered: callers check them at every verification. Failures are not remembered (a peer could
/// fill the set with them). Bounded: when full it is emptied, which costs fresh checks, never a
/// wrong verdict.
pub(crate) struct VerifiedLinks {
    links: Mutex<BTreeSet<Vec<u8>>>,
}

/// Links remembered at most: a cluster sees a few VCEKs per chip and TCB, not thousands.
const VERIFIED_LINKS_MAX: usize = 256;

impl VerifiedLinks {
    pub(crate) const fn new() -> VerifiedLinks {
        VerifiedLinks {
            links: Mutex::new(BTreeSet::new()),
        }
    }

    /// `check()`'s verdict on the link `issuer_der` → `child_der`, from memory when it passed before.
    pub(crate) fn check(
        &self,
        issuer_der: &[u8],
        child_der: &[u8],
        check: impl FnOnce() -> Result<(), AttestationError>,
    ) -> Result<(), AttestationError> {
        // The issuer's length first, so that no two pairs of certificates share a key.
        let mut key = Vec::with_capacity(8 + issuer_der.len() + child_der.len());
        key.extend_from_slice(&(issuer_der.len() as u64).to_be_bytes());
        key.extend_from_slice(issuer_der);
        key.extend_from_slice(child_der);
        if self.lock().contains(&key) {
            return Ok(());
        }
        check()?;
        let mut links = self.lock();
        if links.len() >= VERIFIED_LINKS_MAX {
            links.clear();
        }
        links.insert(key);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<Vec<u8>>> {
        // The set holds only successes, each complete once inserted: a panic elsewhere while the
        // lock was held leaves nothing half-written.
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The links of every chain this process verified (simulated and AMD).
pub(crate) static VERIFIED_LINKS: VerifiedLinks = VerifiedLinks::new();

/// Checks that `child` names `issuer` as its issuer and carries an ECDSA P-384/SHA-384 signature
/// by `issuer_key` over its TBS bytes. For a self-signed root, pass the root twice. The key must be
/// `issuer`'s (as [`p384_key`] read it): a success is remembered by the two certificates' bytes.
pub(crate) fn check_issued_by(
    child: &X509Certificate<'_>,
    role: CertRole,
    issuer: &X509Certificate<'_>,
    issuer_key: &P384Key,
) -> Result<(), AttestationError> {
    VERIFIED_LINKS.check(issuer.as_raw(), child.as_raw(), || {
        check_issued_by_now(child, role, issuer, issuer_key)
    })
}

fn check_issued_by_now(
    child: &X509Certificate<'_>,
    role: CertRole,
    issuer: &X509Certificate<'_>,
    issuer_key: &P384Key,
) -> Result<(), AttestationError> {
    if child.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(RejectReason::CertificateChain { role }.into());
    }
    let bad_signature = || AttestationError::from(RejectReason::CertificateSignature { role });
    // The outer and the signed algorithm identifiers must both say ECDSA with SHA-384.
    if child.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA384
        || child.tbs_certificate.signature.algorithm != OID_SIG_ECDSA_WITH_SHA384
        || child.signature_value.unused_bits != 0
    {
        return Err(bad_signature());
    }
    // Strict DER, as `p384::ecdsa::Signature::from_der` read it before: ring refuses anything else.
    if !issuer_key.verify_der(child.tbs_certificate.as_ref(), &child.signature_value.data) {
        return Err(bad_signature());
    }
    Ok(())
}

/// Checks `not_before <= now <= not_after`.
pub(crate) fn check_validity(
    cert: &X509Certificate<'_>,
    role: CertRole,
    now: SystemTime,
) -> Result<(), AttestationError> {
    let now = asn1_time(now)?;
    let validity = cert.validity();
    if now < validity.not_before {
        return Err(RejectReason::CertificateNotYetValid { role }.into());
    }
    if now > validity.not_after {
        return Err(RejectReason::CertificateExpired { role }.into());
    }
    Ok(())
}

/// The seconds during which every certificate of a chain is valid: what [`check_validity`] of each
/// accepts, so that a verdict can be reused exactly while the time stays inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    from: i64,
    until: i64,
}

impl Window {
    /// The validity of `cert`.
    pub(crate) fn of(cert: &X509Certificate<'_>) -> Window {
        let validity = cert.validity();
        Window {
            from: validity.not_before.timestamp(),
            until: validity.not_after.timestamp(),
        }
    }

    /// This window, ending at `until` (Unix seconds) at the latest.
    pub(crate) fn ending_by(self, until: i64) -> Window {
        Window {
            from: self.from,
            until: self.until.min(until),
        }
    }

    /// The seconds from `from` to `until` (Unix seconds, both included).
    pub(crate) fn between(from: i64, until: i64) -> Window {
        Window { from, until }
    }

    /// A window no time is in: a verdict that must never be reused.
    pub(crate) fn empty() -> Window {
        Window { from: 1, until: 0 }
    }

    /// The seconds in both windows.
    pub(crate) fn and(self, other: Window) -> Window {
        Window {
            from: self.from.max(other.from),
            until: self.until.min(other.until),
        }
    }

    /// Whether [`check_validity`] would accept every certificate of the window at `now`.
    pub(crate) fn contains(&self, now: SystemTime) -> bool {
        asn1_time(now).is_ok_and(|t| (self.from..=self.until).contains(&t.timestamp()))
    }
}

fn asn1_time(now: SystemTime) -> Result<ASN1Time, AttestationError> {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| AttestationError::Config("the time of check is before 1970".into()))?
        .as_secs();
    let secs = i64::try_from(secs)
        .map_err(|_| AttestationError::Config("the time of check is out of range".into()))?;
    ASN1Time::from_timestamp(secs)
        .map_err(|e| AttestationError::Config(format!("the time of check is out of range: {e}")))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// The P-384 group order.
    const N: [u8; 48] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37,
        0x2d, 0xdf, 0x58, 0x1a, 0x0d, 0xb2, 0x48, 0xb0, 0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc,
        0xc5, 0x29, 0x73,
    ];

    /// `N - x`, big-endian (for `0 < x < N`).
    fn order_minus(x: &[u8; 48]) -> [u8; 48] {
        let mut out = [0u8; 48];
        let mut borrow = 0i16;
        for i in (0..48).rev() {
            let d = i16::from(N[i]) - i16::from(x[i]) - borrow;
            (out[i], borrow) = if d < 0 {
                ((d + 256) as u8, 1)
            } else {
                (d as u8, 0)
            };
        }
        out
    }

    /// DER of `SEQUENCE { INTEGER r, INTEGER s }` with each integer given as its content bytes.
    fn der(r: &[u8], s: &[u8]) -> Vec<u8> {
        let mut body = vec![0x02, r.len() as u8];
        body.extend_from_slice(r);
        body.extend([0x02, s.len() as u8]);
        body.extend_from_slice(s);
        let mut out = vec![0x30, body.len() as u8];
        out.extend(body);
        out
    }

    /// The minimal INTEGER content of a positive big-endian number.
    fn minimal(x: &[u8]) -> Vec<u8> {
        let x = &x[x.iter().position(|&b| b != 0).unwrap_or(x.len() - 1)..];
        let mut out = if x[0] & 0x80 != 0 { vec![0] } else { vec![] };
        out.extend_from_slice(x);
        out
    }

    /// AWS-LC (the verifier now) gives each signature the verdict ring (the verifier before it) gave,
    /// at the edges too: out-of-range scalars, the other valid `s`, and DER that is not strict.
    #[test]
    fn aws_lc_and_ring_agree_on_p384_signatures_at_the_edges() {
        use p384::ecdsa::signature::Signer as _;
        let signer = p384::ecdsa::SigningKey::from_slice(&[7; 48]).unwrap();
        let key = P384Key::from_p384(signer.verifying_key());
        let message = b"the signed part of a report";
        let signature: p384::ecdsa::Signature = signer.sign(message);
        let (r, s): ([u8; 48], [u8; 48]) = (
            signature.r().to_bytes().into(),
            signature.s().to_bytes().into(),
        );
        let fixed = |r: &[u8; 48], s: &[u8; 48]| -> [u8; 96] {
            let mut out = [0; 96];
            out[..48].copy_from_slice(r);
            out[48..].copy_from_slice(s);
            out
        };
        let ring_fixed = |sig: &[u8; 96]| {
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P384_SHA384_FIXED,
                &key.point,
            )
            .verify(message, sig)
            .is_ok()
        };
        let ring_der = |sig: &[u8]| {
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P384_SHA384_ASN1,
                &key.point,
            )
            .verify(message, sig)
            .is_ok()
        };
        let (zero, mut one) = ([0u8; 48], [0u8; 48]);
        one[47] = 1;
        let high_s = order_minus(&s);
        let fixed_cases = [
            ("as signed", fixed(&r, &s), true),
            ("the other valid s (N - s)", fixed(&r, &high_s), true),
            ("r = 0", fixed(&zero, &s), false),
            ("s = 0", fixed(&r, &zero), false),
            ("r = N", fixed(&N, &s), false),
            ("s = N", fixed(&r, &N), false),
            ("s = 1", fixed(&r, &one), false),
        ];
        for (case, sig, expected) in &fixed_cases {
            assert_eq!(key.verify_fixed(message, sig), ring_fixed(sig), "{case}");
            assert_eq!(key.verify_fixed(message, sig), *expected, "{case}");
        }
        assert!(!key.verify_fixed(b"another message", &fixed(&r, &s)));

        let (r_der, s_der) = (minimal(&r), minimal(&s));
        let strict = der(&r_der, &s_der);
        let mut padded_r = vec![0];
        padded_r.extend_from_slice(&r_der);
        let mut trailing = strict.clone();
        trailing.push(0);
        let mut long_length = vec![0x30, 0x81, strict[1]];
        long_length.extend_from_slice(&strict[2..]);
        let mut negative_r = r_der.clone();
        if negative_r[0] == 0 {
            negative_r.remove(0);
        } else {
            negative_r.insert(0, 0xff);
        }
        let der_cases = [
            ("strict DER", strict.clone(), true),
            ("the other valid s", der(&r_der, &minimal(&high_s)), true),
            (
                "r with a needless leading zero",
                der(&padded_r, &s_der),
                false,
            ),
            ("a byte after the sequence", trailing, false),
            ("the sequence's length in long form", long_length, false),
            ("r read as negative", der(&negative_r, &s_der), false),
        ];
        for (case, sig, expected) in &der_cases {
            assert_eq!(key.verify_der(message, sig), ring_der(sig), "{case}");
            assert_eq!(key.verify_der(message, sig), *expected, "{case}");
        }
    }

    #[test]
    fn verified_links_remember_successes_of_exactly_these_bytes() {
        let links = VerifiedLinks::new();
        let calls = Cell::new(0);
        let pass = || {
            calls.set(calls.get() + 1);
            Ok(())
        };
        let fail = || {
            calls.set(calls.get() + 1);
            Err(RejectReason::CertificateSignature {
                role: CertRole::Signer,
            }
            .into())
        };
        links.check(b"issuer", b"child", pass).unwrap();
        links.check(b"issuer", b"child", fail).unwrap();
        assert_eq!(calls.get(), 1, "remembered");
        // Other bytes are checked afresh, also when the concatenations are equal.
        assert!(links.check(b"issuer", b"child2", fail).is_err());
        assert!(links.check(b"issuerchild", b"", fail).is_err());
        assert!(links.check(b"issue", b"rchild", fail).is_err());
        assert_eq!(calls.get(), 4);
        // Failures are not remembered.
        assert!(links.check(b"issuer", b"child2", fail).is_err());
        assert_eq!(calls.get(), 5);
        // Bounded.
        for i in 0..3 * VERIFIED_LINKS_MAX {
            links.check(b"issuer", &i.to_be_bytes(), pass).unwrap();
        }
        assert!(links.lock().len() <= VERIFIED_LINKS_MAX);
    }

    #[test]
    fn a_window_holds_exactly_where_every_validity_check_passes() {
        let root = crate::simulated::SimulatedRoot::generate().unwrap();
        let cert = parse_cert(root.cert_der(), CertRole::Root).unwrap();
        let window = Window::of(&cert);
        let v = cert.validity();
        let at = |secs: i64| UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
        let (from, until) = (v.not_before.timestamp(), v.not_after.timestamp());
        for t in [from - 1, from, from + 1, until - 1, until, until + 1] {
            assert_eq!(
                window.contains(at(t)),
                check_validity(&cert, CertRole::Root, at(t)).is_ok(),
                "at {t}"
            );
        }
        let narrower = Window {
            from: from + 10,
            until: until - 10,
        };
        assert_eq!(window.and(narrower), narrower);
        assert!(!window.and(narrower).contains(at(from + 5)));
    }
}
