//! AMD's certificate revocation lists: which ASK, ASVK, VCEK or VLEK AMD has revoked.
//!
//! Owns reading a CRL that came with the evidence (or that the verifier was given), checking that
//! the pinned ARK of the product signed it (RSASSA-PSS with SHA-384, as AMD signs its
//! certificates), that it is fresh at the time of check (`thisUpdate` ≤ now < `nextUpdate`, plus
//! the grace [`SnpRevocation::Required`] allows), and that neither the intermediate nor the signer
//! is listed. It must never take a CRL's word without the ARK's signature, never treat a missing or
//! stale CRL as "nothing revoked" unless the relying side said so ([`SnpRevocation`]), and never
//! fetch anything (the issuing side does: `crate::vcek::CrlSource`).

use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha384};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::error::{AttestationError, CertRole, RejectReason};
use crate::snp::amd_chain;

/// A CRL is a few kB (AMD's list a handful of intermediates); a larger one is not read.
pub const MAX_CRL_LEN: usize = 64 * 1024;

/// At most this many CRLs are read from one piece of evidence (one per key kind is enough).
pub const MAX_CRLS: usize = 4;

/// What the relying side requires of AMD's revocation list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnpRevocation {
    /// The default: a CRL signed by the product's ARK comes with the evidence (or is given to the
    /// verifier), it is valid at the time of check, and it lists neither the intermediate nor the
    /// signer. `accept_stale_for` extends its validity past `nextUpdate` by at most that much
    /// (zero by default): for an outage of AMD's KDS, never for ever.
    Required {
        /// How long past `nextUpdate` a CRL is still accepted.
        accept_stale_for: Duration,
    },
    /// Revocation is not checked: for reading old evidence offline (`concord attestation
    /// verify-report --no-revocation-check`), never for admitting a peer. Named, never a default.
    NotChecked,
}

impl Default for SnpRevocation {
    fn default() -> Self {
        Self::Required {
            accept_stale_for: Duration::ZERO,
        }
    }
}

/// Checks that the CRLs sent with the evidence (`crls`) revoke neither `intermediate` nor
/// `signer`, under `policy`: at least one must be signed by `ark`'s key, name `ark` as its issuer
/// and be fresh at `now`; every CRL so signed is consulted, fresh or not (a stale list still
/// revokes what it lists). CRLs of another issuer are ignored.
pub(crate) fn check(
    crls: &[Vec<u8>],
    ark: &X509Certificate<'_>,
    intermediate: &X509Certificate<'_>,
    signer: &X509Certificate<'_>,
    now: SystemTime,
    policy: SnpRevocation,
) -> Result<Option<i64>, AttestationError> {
    let SnpRevocation::Required { accept_stale_for } = policy else {
        return Ok(None);
    };
    if crls.len() > MAX_CRLS {
        return Err(AttestationError::malformed(format!(
            "the evidence carries {} CRLs; at most {MAX_CRLS} are read",
            crls.len()
        )));
    }
    // The latest time (Unix seconds) until which a fresh CRL of these makes the same verdict:
    // its nextUpdate plus the grace. A verdict may be reused only until then.
    let mut fresh: Option<i64> = None;
    let mut first_failure: Option<AttestationError> = None;
    for der in crls {
        let crl = parse(der)?;
        if crl.issuer().as_raw() != ark.subject().as_raw() {
            continue;
        }
        if let Err(e) = check_signature(der, &crl, ark) {
            first_failure.get_or_insert(e);
            continue;
        }
        for (cert, role) in [
            (intermediate, CertRole::Intermediate),
            (signer, CertRole::Signer),
        ] {
            if crl
                .iter_revoked_certificates()
                .any(|revoked| revoked.serial() == &cert.tbs_certificate.serial)
            {
                return Err(RejectReason::CertificateRevoked { role }.into());
            }
        }
        match check_freshness(&crl, now, accept_stale_for) {
            Ok(()) => {
                let grace = i64::try_from(accept_stale_for.as_secs()).unwrap_or(i64::MAX);
                let until = crl
                    .next_update()
                    // Fresh while `now < nextUpdate + grace`: the last whole second is one before.
                    .map_or(i64::MIN, |t| {
                        t.timestamp().saturating_add(grace).saturating_sub(1)
                    });
                fresh = Some(fresh.map_or(until, |f| f.max(until)));
            }
            Err(e) => {
                first_failure.get_or_insert(e);
            }
        }
    }
    if let Some(until) = fresh {
        return Ok(Some(until));
    }
    Err(first_failure.unwrap_or_else(|| RejectReason::CrlMissing { sent: crls.len() }.into()))
}

/// Reads a CRL: DER, nothing after it, at most [`MAX_CRL_LEN`] bytes.
pub(crate) fn parse(der: &[u8]) -> Result<CertificateRevocationList<'_>, AttestationError> {
    if der.len() > MAX_CRL_LEN {
        return Err(AttestationError::malformed(format!(
            "a CRL of {} bytes; at most {MAX_CRL_LEN} are read",
            der.len()
        )));
    }
    match CertificateRevocationList::from_der(der) {
        Ok(([], crl)) => Ok(crl),
        Ok(_) => Err(AttestationError::malformed("CRL: bytes after the DER")),
        Err(e) => Err(AttestationError::malformed(format!("CRL: {e}"))),
    }
}

/// `crl` carries the RSASSA-PSS/SHA-384 signature of `ark`'s 4096-bit key over its TBS bytes.
fn check_signature(
    der: &[u8],
    crl: &CertificateRevocationList<'_>,
    ark: &X509Certificate<'_>,
) -> Result<(), AttestationError> {
    let bad = || AttestationError::from(RejectReason::CrlSignature);
    if !amd_chain::is_amd_pss_pair(&crl.signature_algorithm, &crl.tbs_cert_list.signature)
        || !amd_chain::is_rsa_4096(ark)
    {
        return Err(bad());
    }
    let Ok(PublicKey::RSA(key)) = ark.public_key().parsed() else {
        return Err(bad());
    };
    let key = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(key.modulus),
        rsa::BigUint::from_bytes_be(key.exponent),
    )
    .map_err(|_| bad())?;
    let tbs = first_element(der).ok_or_else(bad)?;
    let hashed = Sha384::digest(tbs);
    let scheme = rsa::Pss::new_with_salt::<Sha384>(amd_chain::PSS_SALT_LEN as usize);
    key.verify(scheme, &hashed, &crl.signature_value.data)
        .map_err(|_| bad())
}

/// `thisUpdate` ≤ `now` < `nextUpdate` + `grace`; a CRL without `nextUpdate` is never fresh.
fn check_freshness(
    crl: &CertificateRevocationList<'_>,
    now: SystemTime,
    grace: Duration,
) -> Result<(), AttestationError> {
    let now = OffsetDateTime::from(now);
    if now < crl.last_update().to_datetime() {
        return Err(RejectReason::CrlNotYetValid.into());
    }
    let Some(next) = crl.next_update() else {
        return Err(RejectReason::CrlStale {
            next_update: "none".into(),
        }
        .into());
    };
    if now >= next.to_datetime() + grace {
        return Err(RejectReason::CrlStale {
            next_update: next.to_string(),
        }
        .into());
    }
    Ok(())
}

/// The whole first element (tag, length, content) inside the outer SEQUENCE of `der`: the signed
/// part of a CRL, byte for byte as it was signed.
fn first_element(der: &[u8]) -> Option<&[u8]> {
    let (header, len) = tlv_header(der)?;
    let content = der.get(header..header.checked_add(len)?)?;
    let (inner_header, inner_len) = tlv_header(content)?;
    content.get(..inner_header.checked_add(inner_len)?)
}

/// The header length and content length of the DER element at the start of `bytes`.
fn tlv_header(bytes: &[u8]) -> Option<(usize, usize)> {
    let first = *bytes.get(1)?;
    if first < 0x80 {
        return Some((2, usize::from(first)));
    }
    let count = usize::from(first & 0x7f);
    if count == 0 || count > 4 {
        return None;
    }
    let len = bytes
        .get(2..2 + count)?
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Some((2 + count, len))
}

/// For the issuing side (`crate::vcek::CrlSource`), which sends only what a verifier may accept:
/// `der` is a CRL that `ark_der` (a pinned ARK) issued and signed. Returns its `nextUpdate`
/// (`None` when it has none). Verifiers check the list in full again.
pub(crate) fn issued_by(
    der: &[u8],
    ark_der: &[u8],
) -> Result<Option<SystemTime>, AttestationError> {
    let crl = parse(der)?;
    let ark = crate::chain::parse_cert(ark_der, CertRole::Root)?;
    if crl.issuer().as_raw() != ark.subject().as_raw() {
        return Err(RejectReason::CrlMissing { sent: 1 }.into());
    }
    check_signature(der, &crl, &ark)?;
    Ok(crl.next_update().map(|t| SystemTime::from(t.to_datetime())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain;
    use crate::testing::amd::{self, TestAmd};

    fn parsed(der: &[u8]) -> X509Certificate<'_> {
        chain::parse_cert(der, CertRole::Root).unwrap()
    }

    fn run(
        amd: &TestAmd,
        crls: &[Vec<u8>],
        now: SystemTime,
        policy: SnpRevocation,
    ) -> Result<(), AttestationError> {
        check(
            crls,
            &parsed(&amd.ark),
            &parsed(&amd.ask),
            &parsed(&amd.vcek),
            now,
            policy,
        )
        .map(|_| ())
    }

    fn required() -> SnpRevocation {
        SnpRevocation::default()
    }

    #[test]
    fn the_test_hierarchy_is_linked_like_amds() {
        let amd = amd::milan();
        let ark = parsed(&amd.ark);
        let ask = parsed(&amd.ask);
        amd_chain::check_link((&amd.ark, &ark), CertRole::Root, (&amd.ark, &ark)).unwrap();
        amd_chain::check_link((&amd.ask, &ask), CertRole::Intermediate, (&amd.ark, &ark)).unwrap();
    }

    #[test]
    fn a_fresh_crl_listing_neither_accepts() {
        let amd = amd::milan();
        let crl = amd.crl(&[amd::UNRELATED_SERIAL]);
        run(&amd, &[crl], amd::now(), required()).unwrap();
    }

    #[test]
    fn a_revoked_vcek_is_rejected() {
        let amd = amd::milan();
        let crl = amd.crl(&[amd::VCEK_SERIAL]);
        assert_eq!(
            run(&amd, &[crl], amd::now(), required()),
            Err(RejectReason::CertificateRevoked {
                role: CertRole::Signer
            }
            .into())
        );
    }

    #[test]
    fn a_revoked_ask_is_rejected() {
        let amd = amd::milan();
        let crl = amd.crl(&[amd::UNRELATED_SERIAL, amd::ASK_SERIAL]);
        assert_eq!(
            run(&amd, &[crl], amd::now(), required()),
            Err(RejectReason::CertificateRevoked {
                role: CertRole::Intermediate
            }
            .into())
        );
    }

    #[test]
    fn a_stale_crl_is_rejected_unless_the_switch_allows_it_for_a_while() {
        let amd = amd::milan();
        let crl = amd.crl(&[]);
        let after = amd::next_update() + Duration::from_secs(3600);
        let stale = run(&amd, std::slice::from_ref(&crl), after, required()).unwrap_err();
        assert_eq!(
            stale.reject_reason().map(RejectReason::metric_label),
            Some("crl_stale")
        );
        let a_day = SnpRevocation::Required {
            accept_stale_for: Duration::from_secs(86_400),
        };
        run(&amd, std::slice::from_ref(&crl), after, a_day).unwrap();
        // Bounded: two days late is too late for a one-day grace.
        let later = amd::next_update() + Duration::from_secs(2 * 86_400);
        assert!(run(&amd, std::slice::from_ref(&crl), later, a_day).is_err());
        // A stale list still revokes what it lists, grace or not.
        let revoking = amd.crl(&[amd::VCEK_SERIAL]);
        assert_eq!(
            run(&amd, &[revoking], after, a_day),
            Err(RejectReason::CertificateRevoked {
                role: CertRole::Signer
            }
            .into())
        );
    }

    #[test]
    fn a_crl_from_the_future_is_rejected() {
        let amd = amd::milan();
        let crl = amd.crl(&[]);
        let before = amd::this_update() - Duration::from_secs(60);
        assert_eq!(
            run(&amd, &[crl], before, required()),
            Err(RejectReason::CrlNotYetValid.into())
        );
    }

    #[test]
    fn a_crl_not_signed_by_the_ark_is_rejected() {
        let amd = amd::milan();
        // Signed by the ASK's key, under the ARK's name.
        let forged = amd.crl_signed_by_ask(&[]);
        assert_eq!(
            run(&amd, &[forged], amd::now(), required()),
            Err(RejectReason::CrlSignature.into())
        );
        // One flipped bit of a genuine CRL's signed part.
        let mut flipped = amd.crl(&[]);
        let at = flipped.len() / 3;
        flipped[at] ^= 0x01;
        assert!(run(&amd, &[flipped], amd::now(), required()).is_err());
    }

    #[test]
    fn a_crl_for_another_product_does_not_count() {
        let milan = amd::milan();
        let genoa = amd::genoa();
        let genoa_crl = genoa.crl(&[]);
        assert_eq!(
            run(&milan, &[genoa_crl], amd::now(), required()),
            Err(RejectReason::CrlMissing { sent: 1 }.into())
        );
    }

    #[test]
    fn no_crl_fails_closed_and_not_checked_is_named() {
        let amd = amd::milan();
        assert_eq!(
            run(&amd, &[], amd::now(), required()),
            Err(RejectReason::CrlMissing { sent: 0 }.into())
        );
        run(&amd, &[], amd::now(), SnpRevocation::NotChecked).unwrap();
        assert!(matches!(
            run(&amd, &[b"not a CRL".to_vec()], amd::now(), required()),
            Err(AttestationError::Malformed { .. })
        ));
    }

    /// The cost of one check (an RSA-4096 verification and the list scan):
    /// `cargo test -p concord-attestation --lib crl_check_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn crl_check_cost() {
        let amd = amd::milan();
        let crl = amd.crl(&[amd::UNRELATED_SERIAL]);
        let crls = [crl];
        let (ark, ask, vcek) = (parsed(&amd.ark), parsed(&amd.ask), parsed(&amd.vcek));
        let runs = 200;
        let started = std::time::Instant::now();
        for _ in 0..runs {
            check(&crls, &ark, &ask, &vcek, amd::now(), required()).unwrap();
        }
        println!("one CRL check: {:?}", started.elapsed() / runs);
    }

    #[test]
    fn tlv_headers_are_read_within_bounds() {
        assert_eq!(
            first_element(&[0x30, 0x03, 0x02, 0x01, 0x05]),
            Some(&[0x02, 0x01, 0x05][..])
        );
        assert_eq!(first_element(&[0x30, 0x05, 0x02, 0x09, 0x05]), None);
        assert_eq!(first_element(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(first_element(&[]), None);
    }
}
