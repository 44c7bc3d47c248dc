//! The root CA, the mesh CA and the leaf certificates they issue.
//!
//! This module owns every X.509 certificate Concord makes: the self-signed root CA (its key comes
//! from the seed, see `seed.rs`), the mesh CA of a manifest (one random key, certified twice: a
//! self-signed certificate that data owners pin and an intermediate under the root, as Contrast's
//! coordinator does), and the workload leaves. It must never derive the mesh CA key from the seed
//! (Invariant 3), never give the mesh CA key away except by keeping the [`MeshCa`] in memory, never
//! print a private key in `Debug`, and never certify a name or key it has not checked.

use std::fmt;
use std::net::IpAddr;

use base64::Engine as _;
use p256::pkcs8::DecodePublicKey as _;
use rand::rngs::OsRng;
use rand::{CryptoRng, RngCore};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, PublicKeyData as _, SanType, SerialNumber,
};
use sha2::{Digest as _, Sha256};
use time::{Duration, OffsetDateTime, UtcOffset};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256;
use zeroize::Zeroizing;

use crate::claims::{AttestedClaims, claim_extensions};
use crate::{MeshCaError, rng};

const ROOT_CA_COMMON_NAME: &str = "Concord root CA";
const MESH_CA_COMMON_NAME: &str = "Concord mesh CA";
/// How errors name the two mesh CA certificates (and the `from_parts` argument each came in).
const MESH_CA_CERT_NAME: &str = "self-signed mesh CA certificate (mesh_ca_der)";
const INTERMEDIATE_CERT_NAME: &str =
    "mesh CA intermediate certificate signed by the root CA (intermediate_der)";

/// Certificates start an hour in the past so that a peer whose clock is a little behind
/// does not reject a certificate issued a moment ago.
const BACKDATE: Duration = Duration::hours(1);
/// Ten years, counting leap days.
const CA_LIFETIME: Duration = Duration::days(3652);
const LEAF_LIFETIME: Duration = Duration::days(365);

const SERIAL_LEN: usize = 16;
/// RFC 5280's upper bound for a common name (ub-common-name).
const MAX_COMMON_NAME_CHARS: usize = 64;

/// A P-256 key that rcgen can sign with. It keeps RustCrypto's `SecretKey` (wiped on drop; what
/// [`MeshCa::key_for_attested_peer`] reads) and one AWS-LC key pair made from it when the signer is
/// made, checked there against the public key. Signatures are AWS-LC's (assembly, one scalar
/// multiplication each): ring's key pair, made afresh for every signature so that no unwiped copy
/// outlived it, derived the public key again each time, which doubled a signature's cost (issue
/// 11.1). AWS-LC's copy of the scalar is wiped when the key pair drops: every allocation AWS-LC
/// frees is cleansed first (`OPENSSL_free`).
struct P256Signer {
    secret: p256::SecretKey,
    verifying_key: p256::ecdsa::VerifyingKey,
    /// Uncompressed SEC1 point, what rcgen writes into the SubjectPublicKeyInfo and AWS-LC checked
    /// the key pair against.
    public_point: Vec<u8>,
    signing: aws_lc_rs::signature::EcdsaKeyPair,
}

impl P256Signer {
    /// The signer of `secret`, whose public key it derives ([`public_key_of`]).
    fn new(secret: &p256::SecretKey) -> Result<Self, MeshCaError> {
        let refused = || {
            MeshCaError::CertificateGeneration(
                "AWS-LC refused a P-256 key that RustCrypto accepted".into(),
            )
        };
        let public = public_key_of(secret).ok_or_else(refused)?;
        Self::with_public(secret, &public).ok_or_else(refused)
    }

    /// The signer of `secret`, whose public key a certificate says is `public`; None if it is not
    /// (AWS-LC derives `secret`'s public key and compares).
    fn with_public(secret: &p256::SecretKey, public: &p256::PublicKey) -> Option<Self> {
        let verifying_key = p256::ecdsa::VerifyingKey::from(public);
        let public_point = verifying_key.to_encoded_point(false).as_bytes().to_vec();
        let scalar = Zeroizing::new(secret.to_bytes());
        let signing = aws_lc_rs::signature::EcdsaKeyPair::from_private_key_and_public_key(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            scalar.as_slice(),
            &public_point,
        )
        .ok()?;
        Some(P256Signer {
            secret: secret.clone(),
            verifying_key,
            public_point,
            signing,
        })
    }
}

impl fmt::Debug for P256Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("P256Signer")
            .field("public_key", &hex::encode(&self.public_point))
            .field("secret_key", &"[redacted]")
            .finish()
    }
}

impl rcgen::PublicKeyData for P256Signer {
    fn der_bytes(&self) -> &[u8] {
        &self.public_point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for P256Signer {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        // AWS-LC draws each nonce from its own DRBG (seeded from the OS) and mixes the key and the
        // message into it, so a weak draw does not expose the key; the `rng` argument is unused.
        let signature = self
            .signing
            .sign(&aws_lc_rs::rand::SystemRandom::new(), msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        Ok(signature.as_ref().to_vec())
    }
}

/// A new mesh CA key and its public key. Random from the OS CSPRNG like every mesh CA key (never from
/// the seed: Invariant 3), kept only in memory and wiped on drop; certifying it consumes it.
pub(crate) struct MeshCaKey {
    secret: p256::SecretKey,
    public: p256::PublicKey,
}

impl MeshCaKey {
    fn generate_with<R: RngCore + CryptoRng + ?Sized>(
        rng: &mut R,
    ) -> Result<MeshCaKey, MeshCaError> {
        let secret = random_p256_key(rng)?;
        let public = public_key_of(&secret).ok_or_else(|| {
            MeshCaError::CertificateGeneration(
                "AWS-LC refused a freshly generated mesh CA key".into(),
            )
        })?;
        Ok(MeshCaKey { secret, public })
    }
}

impl fmt::Debug for MeshCaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshCaKey")
            .field(
                "public_key",
                &hex::encode(p256::EncodedPoint::from(&self.public).as_bytes()),
            )
            .field("secret_key", &"[redacted]")
            .finish()
    }
}

/// A certificate issued to a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// The same certificate, PEM.
    pub pem: String,
}

/// The deployment's root CA: a self-signed certificate for the seed-derived root CA key.
/// It signs each manifest's mesh CA intermediate.
pub struct RootCa {
    issuer: Issuer<'static, P256Signer>,
    cert_der: Vec<u8>,
    cert_pem: String,
    not_after: OffsetDateTime,
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa")
            .field("cert_sha256", &hex::encode(Sha256::digest(&self.cert_der)))
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl RootCa {
    /// A new self-signed root CA certificate for `key` (from [`crate::SeedEngine::root_ca_key`]),
    /// valid from an hour before `now` for ten years, with a random serial.
    pub fn create(key: &p256::SecretKey, now: OffsetDateTime) -> Result<RootCa, MeshCaError> {
        Self::create_with(&mut OsRng, key, now)
    }

    pub(crate) fn create_with<R: RngCore + CryptoRng + ?Sized>(
        rng: &mut R,
        key: &p256::SecretKey,
        now: OffsetDateTime,
    ) -> Result<RootCa, MeshCaError> {
        let signer = P256Signer::new(key)?;
        let (not_before, not_after) = validity(now, CA_LIFETIME, None)?;
        let params = ca_params(
            ROOT_CA_COMMON_NAME,
            random_serial(rng, "choosing the root CA serial number")?,
            not_before,
            not_after,
            BasicConstraints::Unconstrained,
        );
        let cert_der = params.self_signed(&signer)?.der().to_vec();
        Ok(RootCa {
            cert_pem: pem_certificate(&cert_der),
            issuer: Issuer::new(params, signer),
            cert_der,
            not_after,
        })
    }

    /// Rebuilds the root CA from its stored certificate and the seed-derived key. The certificate
    /// came from disk or the network, so it is checked (Invariant 2): it must be a self-signed CA
    /// certificate named "Concord root CA" for exactly this key.
    pub fn from_parts(cert_der: Vec<u8>, key: &p256::SecretKey) -> Result<RootCa, MeshCaError> {
        let signer = P256Signer::new(key)?;
        let not_after = check_root_certificate(&cert_der, &signer)?;
        // The checks above made sure that the certificate's subject and key identifier are
        // what these parameters give, so certificates issued now chain to the stored one.
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(ROOT_CA_COMMON_NAME);
        params.key_usages = ca_key_usages();
        Ok(RootCa {
            cert_pem: pem_certificate(&cert_der),
            issuer: Issuer::new(params, signer),
            cert_der,
            not_after,
        })
    }

    /// The root CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The root CA certificate, PEM (an owned copy: callers put it into responses).
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }
}

/// A manifest's mesh CA: a random P-256 key that lives only in this value, certified by a
/// self-signed certificate (what data owners pin) and by an intermediate signed by the root CA
/// (what workloads present in their chain). Both certificates have the same subject and key,
/// so a leaf verifies against either.
pub struct MeshCa {
    issuer: Issuer<'static, P256Signer>,
    mesh_ca_der: Vec<u8>,
    mesh_ca_pem: String,
    intermediate_der: Vec<u8>,
    intermediate_pem: String,
    not_after: OffsetDateTime,
}

impl fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshCa")
            .field(
                "mesh_ca_sha256",
                &hex::encode(Sha256::digest(&self.mesh_ca_der)),
            )
            .field(
                "intermediate_sha256",
                &hex::encode(Sha256::digest(&self.intermediate_der)),
            )
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl MeshCa {
    /// A mesh CA with a new random key from the OS CSPRNG (never from the seed: Invariant 3),
    /// certified self-signed and by `root`, valid from an hour before `now` for ten years (but
    /// not beyond the root certificate).
    pub fn generate(root: &RootCa, now: OffsetDateTime) -> Result<MeshCa, MeshCaError> {
        Self::generate_with(&mut OsRng, root, now)
    }

    pub(crate) fn generate_with<R: RngCore + CryptoRng + ?Sized>(
        rng: &mut R,
        root: &RootCa,
        now: OffsetDateTime,
    ) -> Result<MeshCa, MeshCaError> {
        let key = MeshCaKey::generate_with(rng)?;
        Self::certify(rng, key, root, now)
    }

    /// Certifies `key` self-signed and by `root` (serials from `rng`).
    fn certify<R: RngCore + CryptoRng + ?Sized>(
        rng: &mut R,
        key: MeshCaKey,
        root: &RootCa,
        now: OffsetDateTime,
    ) -> Result<MeshCa, MeshCaError> {
        let signer = P256Signer::with_public(&key.secret, &key.public).ok_or_else(|| {
            MeshCaError::CertificateGeneration(
                "AWS-LC refused a freshly generated mesh CA key".into(),
            )
        })?;
        drop(key);
        let (not_before, not_after) = validity(now, CA_LIFETIME, Some(root.not_after))?;
        // Path length 0: the mesh CA signs leaves, never another CA.
        let mut params = ca_params(
            MESH_CA_COMMON_NAME,
            random_serial(rng, "choosing the mesh CA serial number")?,
            not_before,
            not_after,
            BasicConstraints::Constrained(0),
        );
        let mesh_ca_der = params.self_signed(&signer)?.der().to_vec();

        params.serial_number = Some(random_serial(
            rng,
            "choosing the mesh CA intermediate serial number",
        )?);
        params.use_authority_key_identifier_extension = true;
        let intermediate_der = params.signed_by(&signer, &root.issuer)?.der().to_vec();

        Ok(MeshCa {
            mesh_ca_pem: pem_certificate(&mesh_ca_der),
            intermediate_pem: pem_certificate(&intermediate_der),
            issuer: Issuer::new(params, signer),
            mesh_ca_der,
            intermediate_der,
            not_after,
        })
    }

    /// Rebuilds a mesh CA received from a ready peer during peer recovery: its private scalar
    /// (from [`MeshCa::key_for_attested_peer`] on the peer) and its two certificates, exactly as
    /// the peer holds them. The rebuilt CA issues leaves exactly as the peer does, and
    /// [`MeshCa::mesh_ca_der`] and [`MeshCa::intermediate_der`] return the bytes given here.
    ///
    /// Everything is checked, and anything off is refused (Invariant 2): `key` must be a valid
    /// nonzero P-256 scalar; each certificate must be one whole DER certificate for exactly the
    /// public key of `key`, with subject CN=Concord mesh CA and the key identifier Concord
    /// computes, a CA with path length 0 that may sign certificates, signed with ECDSA-SHA256;
    /// `mesh_ca_der` must be self-signed, and `intermediate_der` signed by `root`, with `root`'s
    /// subject as its issuer and `root`'s key identifier as its authority key identifier. Both
    /// must expire at the same time, not after `root`; leaves are capped at that time.
    ///
    /// This cannot tell whether the pair is the *current* mesh CA of the latest manifest (an old
    /// mesh CA of the same deployment passes every check): callers take both certificates from
    /// their own verified history, not from the peer, or compare them with it.
    pub fn from_parts(
        key: &[u8; 32],
        mesh_ca_der: Vec<u8>,
        intermediate_der: Vec<u8>,
        root: &RootCa,
    ) -> Result<MeshCa, MeshCaError> {
        let secret = mesh_ca_key_from_bytes(key)?;
        let reject = |reason| MeshCaError::MeshCaCertificateRejected {
            certificate: MESH_CA_CERT_NAME,
            reason,
        };
        // Parsed once, for the key here and for every check below.
        let own = parse_whole_certificate(&mesh_ca_der).map_err(reject)?;
        // The key the self-signed certificate names, which `check_mesh_ca_certificates` holds both
        // certificates to; the signer only for a key that is that key's private half.
        let named = p256::PublicKey::from_public_key_der(own.public_key().raw)
            .map_err(|_| reject("its public key is not a P-256 key".into()))?;
        let signer = P256Signer::with_public(&secret, &named).ok_or_else(|| {
            MeshCaError::MeshCaCertificateRejected {
                certificate: MESH_CA_CERT_NAME,
                reason: "its public key is not the public key of the mesh CA key sent with it"
                    .into(),
            }
        })?;
        drop(secret);
        let not_after = check_mesh_ca_certificates(&own, &intermediate_der, &signer, root)?;
        // rcgen reads the issuer's subject, key identifier and key usages from the certificate:
        // the checks above made sure they are what `generate` puts there, so leaves name the
        // same issuer and authority key identifier as the peer's do.
        let issuer =
            Issuer::from_ca_cert_der(&mesh_ca_der.as_slice().into(), signer).map_err(|err| {
                MeshCaError::MeshCaCertificateRejected {
                    certificate: MESH_CA_CERT_NAME,
                    reason: format!("it cannot be used to issue certificates ({err})"),
                }
            })?;
        Ok(MeshCa {
            mesh_ca_pem: pem_certificate(&mesh_ca_der),
            intermediate_pem: pem_certificate(&intermediate_der),
            issuer,
            mesh_ca_der,
            intermediate_der,
            not_after,
        })
    }

    /// The mesh CA's private P-256 scalar, big-endian, wiped when the returned value drops.
    ///
    /// This is the ONLY way the mesh CA key leaves this value's memory, and it exists for peer
    /// recovery alone. A caller may send it only over a mutually attested TLS connection whose
    /// peer evidence matched a policy with role `coordinator` in the current verified manifest
    /// (Invariant 1(b)); the receiver rebuilds the CA with [`MeshCa::from_parts`]. Never log it,
    /// never store it (on disk or anywhere the host can read), never put it into Raft, and never
    /// hand it to anything derived from the seed (Invariant 3).
    pub fn key_for_attested_peer(&self) -> Zeroizing<[u8; 32]> {
        let scalar = Zeroizing::new(self.issuer.key().secret.to_bytes());
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&scalar);
        out
    }

    /// The self-signed mesh CA certificate, DER: what data owners pin.
    pub fn mesh_ca_der(&self) -> &[u8] {
        &self.mesh_ca_der
    }

    /// The self-signed mesh CA certificate, PEM.
    pub fn mesh_ca_pem(&self) -> String {
        self.mesh_ca_pem.clone()
    }

    /// The mesh CA certificate signed by the root CA, DER.
    pub fn intermediate_der(&self) -> &[u8] {
        &self.intermediate_der
    }

    /// The mesh CA certificate signed by the root CA, PEM.
    pub fn intermediate_pem(&self) -> String {
        self.intermediate_pem.clone()
    }

    /// Issues a leaf for the key in `subject_public_key_info_der` (P-256, P-384 or Ed25519).
    ///
    /// Each SAN that parses as an IP address becomes an IP SAN, one containing "://" a URI SAN,
    /// anything else a DNS name (letters, digits and hyphens; a `*` only as the whole leftmost
    /// label of a longer name); see [`check_subject_alt_name`]. The common name is 1 to 64
    /// characters. The leaf is valid from an hour before `now` for 365 days (but not beyond the
    /// mesh CA), is not a CA, and may be used for TLS servers and clients.
    pub fn issue(
        &self,
        subject_public_key_info_der: &[u8],
        common_name: &str,
        sans: &[String],
        now: OffsetDateTime,
    ) -> Result<IssuedCert, MeshCaError> {
        self.issue_with(
            &mut OsRng,
            subject_public_key_info_der,
            common_name,
            sans,
            None,
            now,
        )
    }

    /// [`issue`](Self::issue), with the attested claims the coordinator verified as non-critical
    /// extensions ([`crate::claims`]).
    pub fn issue_attested(
        &self,
        subject_public_key_info_der: &[u8],
        common_name: &str,
        sans: &[String],
        claims: &AttestedClaims,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, MeshCaError> {
        self.issue_with(
            &mut OsRng,
            subject_public_key_info_der,
            common_name,
            sans,
            Some(claims),
            now,
        )
    }

    pub(crate) fn issue_with<R: RngCore + CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        subject_public_key_info_der: &[u8],
        common_name: &str,
        sans: &[String],
        claims: Option<&AttestedClaims>,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, MeshCaError> {
        let public_key = leaf_public_key(subject_public_key_info_der)?;
        check_common_name(common_name)?;
        let subject_alt_names = sans
            .iter()
            .map(|san| subject_alt_name(san))
            .collect::<Result<Vec<_>, _>>()?;
        let (not_before, not_after) = validity(now, LEAF_LIFETIME, Some(self.not_after))?;

        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(common_name);
        params.subject_alt_names = subject_alt_names;
        // Explicit CA:FALSE, so no verifier can be talked into treating a leaf as a CA.
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(random_serial(rng, "choosing a leaf serial number")?);
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        params.custom_extensions = claims.map(claim_extensions).unwrap_or_default();

        let der = params.signed_by(&public_key, &self.issuer)?.der().to_vec();
        Ok(IssuedCert {
            pem: pem_certificate(&der),
            der,
        })
    }

    /// What a workload presents: its leaf, then the intermediate that chains it to the root CA.
    pub fn chain_pem(&self, leaf: &IssuedCert) -> String {
        format!("{}{}", leaf.pem, self.intermediate_pem)
    }

    /// The mesh CA's private scalar, for tests that check it never appears or repeats.
    #[cfg(test)]
    pub(crate) fn secret_scalar_for_tests(&self) -> Zeroizing<[u8; 32]> {
        self.key_for_attested_peer()
    }
}

fn common_name_dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ca_key_usages() -> Vec<KeyUsagePurpose> {
    vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]
}

fn ca_params(
    common_name: &str,
    serial: SerialNumber,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    path_len: BasicConstraints,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(common_name);
    params.is_ca = IsCa::Ca(path_len);
    params.key_usages = ca_key_usages();
    params.serial_number = Some(serial);
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

/// `now - 1h .. min(now + lifetime, cap)`, where `cap` is the issuing CA's own expiry.
fn validity(
    now: OffsetDateTime,
    lifetime: Duration,
    cap: Option<OffsetDateTime>,
) -> Result<(OffsetDateTime, OffsetDateTime), MeshCaError> {
    let now = now.to_offset(UtcOffset::UTC);
    let not_before = now
        .checked_sub(BACKDATE)
        .ok_or(MeshCaError::InvalidValidity {
            reason: "the start of validity is before the earliest representable time",
        })?;
    let mut not_after = now
        .checked_add(lifetime)
        .ok_or(MeshCaError::InvalidValidity {
            reason: "the end of validity is after the latest representable time",
        })?;
    if let Some(cap) = cap {
        if cap <= now {
            return Err(MeshCaError::InvalidValidity {
                reason: "the issuing CA's certificate has already expired",
            });
        }
        not_after = not_after.min(cap);
    }
    // X.509 times (UTCTime and GeneralizedTime) hold years 0000 to 9999 only.
    if not_before.year() < 0 || not_after.year() > 9999 {
        return Err(MeshCaError::InvalidValidity {
            reason: "the validity falls outside the years 0000 to 9999 that X.509 can encode",
        });
    }
    Ok((not_before, not_after))
}

/// 16 random bytes, top bit clear (a positive INTEGER) and next bit set (so DER keeps all 16
/// bytes): 126 random bits, far more than the 64 that CAs are asked for.
fn random_serial<R: RngCore + CryptoRng + ?Sized>(
    rng: &mut R,
    purpose: &'static str,
) -> Result<SerialNumber, MeshCaError> {
    let mut bytes = [0u8; SERIAL_LEN];
    rng::fill(rng, &mut bytes, purpose)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A uniformly random valid P-256 scalar by rejection sampling.
fn random_p256_key<R: RngCore + CryptoRng + ?Sized>(
    rng: &mut R,
) -> Result<p256::SecretKey, MeshCaError> {
    // A uniform draw is invalid with probability about 2^-32; 64 invalid draws in a row
    // mean the source is broken, not unlucky.
    for _ in 0..64 {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng::fill(rng, bytes.as_mut(), "generating the mesh CA key")?;
        if let Ok(key) = p256::SecretKey::from_bytes(bytes.as_ref().into()) {
            return Ok(key);
        }
    }
    Err(MeshCaError::EntropyUnavailable {
        purpose: "generating the mesh CA key (the generator kept returning invalid scalars)",
    })
}

/// `secret`'s public key, computed by AWS-LC (assembly: about 20 µs here). RustCrypto's
/// `SecretKey::public_key` takes about 0.12 ms, which each new mesh CA key paid (issue 11.3: on a
/// leader under writes, a tenth of its CPU). None if AWS-LC refuses the scalar, which a valid
/// `SecretKey` never is.
fn public_key_of(secret: &p256::SecretKey) -> Option<p256::PublicKey> {
    use aws_lc_rs::agreement::{ECDH_P256, PrivateKey};
    let scalar = Zeroizing::new(secret.to_bytes());
    let point = PrivateKey::from_private_key(&ECDH_P256, scalar.as_slice())
        .ok()?
        .compute_public_key()
        .ok()?;
    p256::PublicKey::from_sec1_bytes(point.as_ref()).ok()
}

/// A mesh CA key received as bytes: a P-256 scalar in `1..n`, big-endian.
fn mesh_ca_key_from_bytes(key: &[u8; 32]) -> Result<p256::SecretKey, MeshCaError> {
    if key.iter().all(|&b| b == 0) {
        return Err(MeshCaError::InvalidMeshCaKey {
            reason: "it is zero",
        });
    }
    p256::SecretKey::from_bytes(key.into()).map_err(|_| MeshCaError::InvalidMeshCaKey {
        reason: "it is not below the order of the P-256 group",
    })
}

fn pem_certificate(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::with_capacity(body.len() + body.len() / 64 + 64);
    pem.push_str("-----BEGIN CERTIFICATE-----\n");
    for (i, c) in body.chars().enumerate() {
        if i > 0 && i % 64 == 0 {
            pem.push('\n');
        }
        pem.push(c);
    }
    pem.push_str("\n-----END CERTIFICATE-----\n");
    pem
}

/// Checks a stored root CA certificate against the seed-derived key (`signer`'s) and returns its
/// expiry.
fn check_root_certificate(der: &[u8], signer: &P256Signer) -> Result<OffsetDateTime, MeshCaError> {
    let reject = |reason: String| MeshCaError::RootCertificateRejected { reason };

    let cert = parse_whole_certificate(der).map_err(reject)?;
    check_certificate_key(
        &cert,
        &p256::PublicKey::from(&signer.verifying_key),
        "the root CA key derived from this seed",
    )
    .map_err(reject)?;
    check_ecdsa_sha256_signature(
        &cert,
        &signer.verifying_key,
        "its self-signature does not verify",
    )
    .map_err(reject)?;
    if cert.issuer().as_raw() != cert.subject().as_raw() {
        return Err(reject("it is not self-issued".into()));
    }
    check_sole_common_name(&cert, ROOT_CA_COMMON_NAME).map_err(reject)?;
    ca_path_len(&cert).map_err(reject)?;
    // Intermediates name the root by this key identifier; it must be the one Concord computes.
    check_subject_key_identifier(&cert, signer).map_err(reject)?;

    Ok(cert.validity().not_after.to_datetime())
}

/// Checks a mesh CA certificate pair received from a peer against the key sent with it and
/// against this deployment's root CA, and returns the pair's expiry.
///
/// Both certificates must be exactly what [`MeshCa::generate`] makes for `signer`: the same
/// subject (CN=Concord mesh CA) and key identifier, CA with path length 0, allowed to sign
/// certificates; one self-signed, the other signed by `root` and naming it as its issuer.
fn check_mesh_ca_certificates(
    own: &X509Certificate<'_>,
    intermediate_der: &[u8],
    signer: &P256Signer,
    root: &RootCa,
) -> Result<OffsetDateTime, MeshCaError> {
    let reject_own = |reason: String| MeshCaError::MeshCaCertificateRejected {
        certificate: MESH_CA_CERT_NAME,
        reason,
    };
    let reject_intermediate = |reason: String| MeshCaError::MeshCaCertificateRejected {
        certificate: INTERMEDIATE_CERT_NAME,
        reason,
    };
    let public_key = &signer.verifying_key;
    let expected_key = p256::PublicKey::from(public_key);
    let key_name = "the public key of the mesh CA key sent with it";

    check_certificate_key(own, &expected_key, key_name).map_err(reject_own)?;
    check_ecdsa_sha256_signature(own, public_key, "its self-signature does not verify")
        .map_err(reject_own)?;
    if own.issuer().as_raw() != own.subject().as_raw() {
        return Err(reject_own("it is not self-issued".into()));
    }
    check_mesh_ca_fields(own, signer).map_err(reject_own)?;

    let intermediate = parse_whole_certificate(intermediate_der).map_err(reject_intermediate)?;
    check_certificate_key(&intermediate, &expected_key, key_name).map_err(reject_intermediate)?;
    let root_key = root.issuer.key();
    check_ecdsa_sha256_signature(
        &intermediate,
        &root_key.verifying_key,
        "its signature does not verify with this deployment's root CA key",
    )
    .map_err(reject_intermediate)?;
    // The root was checked when it was built, so this parse succeeds; still, fail closed.
    let root_cert = parse_whole_certificate(&root.cert_der).map_err(|reason| {
        MeshCaError::RootCertificateRejected {
            reason: format!("it no longer parses ({reason})"),
        }
    })?;
    if intermediate.issuer().as_raw() != root_cert.subject().as_raw() {
        return Err(reject_intermediate(format!(
            "its issuer is {}, not this deployment's root CA ({})",
            intermediate.issuer(),
            root_cert.subject()
        )));
    }
    // Chain builders match the intermediate to the root by this identifier.
    let root_key_id = CertificateParams::default().key_identifier(root_key);
    let authority_key_id = intermediate
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => Some(aki.key_identifier.as_ref()),
            _ => None,
        })
        .flatten();
    if authority_key_id.map(|id| id.0) != Some(root_key_id.as_slice()) {
        return Err(reject_intermediate(
            "its authority key identifier is missing or does not name this deployment's root CA"
                .into(),
        ));
    }
    check_mesh_ca_fields(&intermediate, signer).map_err(reject_intermediate)?;
    // Leaves name their issuer by these bytes and verify against either certificate, so both
    // must carry the very same subject.
    if intermediate.subject().as_raw() != own.subject().as_raw() {
        return Err(reject_intermediate(
            "its subject is not encoded exactly as the self-signed mesh CA certificate's".into(),
        ));
    }

    let not_after = own.validity().not_after.to_datetime();
    if intermediate.validity().not_after.to_datetime() != not_after {
        return Err(reject_intermediate(format!(
            "it expires at {}, but the self-signed mesh CA certificate at {not_after}; Concord \
             certifies the mesh CA key with one validity",
            intermediate.validity().not_after.to_datetime()
        )));
    }
    if not_after > root.not_after {
        return Err(reject_intermediate(format!(
            "it expires at {not_after}, after the root CA certificate ({})",
            root.not_after
        )));
    }
    Ok(not_after)
}

/// What both mesh CA certificates share: subject, CA with path length 0, certificate signing,
/// and the key identifier Concord computes.
fn check_mesh_ca_fields(cert: &X509Certificate<'_>, signer: &P256Signer) -> Result<(), String> {
    check_sole_common_name(cert, MESH_CA_COMMON_NAME)?;
    if ca_path_len(cert)? != Some(0) {
        return Err("it is a CA certificate without the path length 0 a mesh CA has".into());
    }
    match cert.key_usage() {
        Ok(Some(usage)) if usage.value.key_cert_sign() => {}
        _ => return Err("its key usage does not allow signing certificates".into()),
    }
    check_subject_key_identifier(cert, signer)
}

/// One DER X.509 certificate and nothing after it.
fn parse_whole_certificate(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| format!("it is not a DER X.509 certificate ({err})"))?;
    if !rest.is_empty() {
        return Err(format!(
            "{} unexpected bytes follow the certificate",
            rest.len()
        ));
    }
    Ok(cert)
}

/// The certificate's key must be the P-256 key `expected`, described as `expected_name`.
fn check_certificate_key(
    cert: &X509Certificate<'_>,
    expected: &p256::PublicKey,
    expected_name: &str,
) -> Result<(), String> {
    let cert_key = p256::PublicKey::from_public_key_der(cert.public_key().raw)
        .map_err(|_| "its public key is not a P-256 key".to_string())?;
    if &cert_key != expected {
        return Err(format!("its public key is not {expected_name}"));
    }
    Ok(())
}

/// The certificate must be signed with ECDSA-SHA256 by `key`; `failure` says what it means
/// when the signature does not verify.
fn check_ecdsa_sha256_signature(
    cert: &X509Certificate<'_>,
    key: &p256::ecdsa::VerifyingKey,
    failure: &str,
) -> Result<(), String> {
    verify_certificate_signature(cert, key.to_encoded_point(false).as_bytes())
        .map_err(|e| e.unwrap_or_else(|| failure.to_string()))
}

/// Whether `cert` is signed with ECDSA-SHA256 by the P-256 key `issuer_point` (SEC1). `Err(None)`
/// if the signature does not verify; `Err(Some(reason))` if it is not an ECDSA-SHA256 signature.
///
/// A replica checks the same mesh CA certificates when it applies a transition and again when it
/// opens the mesh CA key sealed to it (`MeshCa::from_parts`), so the last verdicts that held are
/// kept ([`VERIFIED_KEPT`]), each under the SHA-256 of exactly what it depends on: the key, the
/// signed bytes and the signature, each with its length. A kept verdict is only found for those very
/// bytes, which a fresh check would accept too.
pub fn verify_certificate_signature(
    cert: &X509Certificate<'_>,
    issuer_point: &[u8],
) -> Result<(), Option<String>> {
    if cert.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA256 {
        return Err(Some("it is not signed with ECDSA-SHA256".into()));
    }
    let signed: &[u8] = cert.tbs_certificate.as_ref();
    let signature: &[u8] = &cert.signature_value.data;
    let digest = {
        let mut h = Sha256::new();
        for part in [issuer_point, signed, signature] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        <[u8; 32]>::from(h.finalize())
    };
    let verified = || {
        VERIFIED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if verified().contains(&digest) {
        return Ok(());
    }
    // ring's assembly P-256, not RustCrypto's: about six times faster here, and every replica checks
    // two or three of these certificates for each manifest update.
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, issuer_point)
        .verify(signed, signature)
        .map_err(|_| None)?;
    let mut kept = verified();
    if kept.len() >= VERIFIED_KEPT {
        kept.pop_front();
    }
    kept.push_back(digest);
    Ok(())
}

/// How many certificate signature verdicts [`verify_certificate_signature`] keeps.
pub const VERIFIED_KEPT: usize = 32;

/// The digests of the last certificate signatures that verified, oldest first.
static VERIFIED: std::sync::Mutex<std::collections::VecDeque<[u8; 32]>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// The subject must be exactly one attribute, the common name `common_name`.
fn check_sole_common_name(cert: &X509Certificate<'_>, common_name: &str) -> Result<(), String> {
    let subject = cert.subject();
    let mut common_names = subject.iter_common_name();
    let found = common_names.next().and_then(|cn| cn.as_str().ok());
    if subject.iter().count() != 1
        || subject.iter_attributes().count() != 1
        || common_names.next().is_some()
        || found != Some(common_name)
    {
        return Err(format!("its subject is not CN={common_name}"));
    }
    Ok(())
}

/// The certificate must be a CA; returns its path length constraint.
fn ca_path_len(cert: &X509Certificate<'_>) -> Result<Option<u32>, String> {
    match cert.basic_constraints() {
        Ok(Some(constraints)) if constraints.value.ca => Ok(constraints.value.path_len_constraint),
        _ => Err("it is not a CA certificate".into()),
    }
}

/// The subject key identifier must be the one Concord computes for `signer` (what it writes
/// as the authority key identifier of everything the CA signs).
fn check_subject_key_identifier(
    cert: &X509Certificate<'_>,
    signer: &P256Signer,
) -> Result<(), String> {
    let expected_key_id = CertificateParams::default().key_identifier(signer);
    let key_id = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(key_id) => Some(key_id.0),
            _ => None,
        });
    if key_id != Some(expected_key_id.as_slice()) {
        return Err("its subject key identifier is missing or not the one Concord computes".into());
    }
    Ok(())
}

/// Parses the key to certify and checks that it is a valid point of a supported curve, so that
/// Concord never certifies bytes that nobody can hold a private key for.
fn leaf_public_key(spki_der: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo, MeshCaError> {
    let unsupported = |reason: String| MeshCaError::UnsupportedPublicKey { reason };
    let spki = rcgen::SubjectPublicKeyInfo::from_der(spki_der).map_err(|err| {
        unsupported(format!(
            "it is not a DER SubjectPublicKeyInfo of a known algorithm ({err})"
        ))
    })?;
    let algorithm = spki.algorithm();
    if algorithm == &rcgen::PKCS_ECDSA_P256_SHA256 {
        p256::PublicKey::from_public_key_der(spki_der)
            .map_err(|_| unsupported("it is not a valid P-256 point".into()))?;
    } else if algorithm == &rcgen::PKCS_ECDSA_P384_SHA384 {
        p384::PublicKey::from_public_key_der(spki_der)
            .map_err(|_| unsupported("it is not a valid P-384 point".into()))?;
    } else if algorithm == &rcgen::PKCS_ED25519 {
        ed25519_dalek::VerifyingKey::from_public_key_der(spki_der)
            .map_err(|_| unsupported("it is not a valid Ed25519 point".into()))?;
    } else {
        return Err(unsupported(format!("{algorithm:?} keys are not certified")));
    }
    Ok(spki)
}

fn check_common_name(common_name: &str) -> Result<(), MeshCaError> {
    let invalid = |reason| MeshCaError::InvalidCommonName {
        value: common_name.to_string(),
        reason,
    };
    if common_name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if common_name.chars().count() > MAX_COMMON_NAME_CHARS {
        return Err(invalid("it is longer than the 64 characters X.509 allows"));
    }
    if common_name.chars().any(char::is_control) {
        return Err(invalid("it contains control characters"));
    }
    Ok(())
}

/// Checks a manifest SAN exactly as [`MeshCa::issue`] will, so that a manifest can be refused
/// when it is set rather than when a workload asks for its certificate.
pub fn check_subject_alt_name(value: &str) -> Result<(), MeshCaError> {
    subject_alt_name(value).map(drop)
}

/// Sorts a manifest SAN into its X.509 type, checking that it is well formed.
fn subject_alt_name(value: &str) -> Result<SanType, MeshCaError> {
    let invalid = |reason: &str| MeshCaError::InvalidSubjectAltName {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if value.contains("://") {
        check_uri(value).map_err(invalid)?;
        return Ok(SanType::URI(Ia5String::try_from(value)?));
    }
    check_dns_name(value).map_err(invalid)?;
    Ok(SanType::DnsName(Ia5String::try_from(value)?))
}

fn check_uri(value: &str) -> Result<(), &'static str> {
    let (scheme, rest) = value
        .split_once("://")
        .ok_or("it has no scheme (such as spiffe://)")?;
    let mut scheme_chars = scheme.chars();
    if !scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !scheme_chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Err(
            "its scheme must start with a letter and hold only letters, digits, +, - and .",
        );
    }
    if rest.is_empty() {
        return Err("nothing follows the scheme");
    }
    // IA5String must be ASCII; spaces and control characters are never part of a URI.
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("it contains spaces, control characters or non-ASCII characters");
    }
    Ok(())
}

/// RFC 1123 host names: labels of letters, digits and hyphens, not starting or ending with a
/// hyphen, at most 63 characters each and 253 in all. A `*` may stand as the whole leftmost
/// label of a name with at least one more label (`*.web.example.com`); a lone `*` is refused,
/// since it would be a certificate for every name.
fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 253 {
        return Err("a DNS name is at most 253 characters long");
    }
    let labels: Vec<&str> = name.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if label.is_empty() {
            return Err("it has an empty label (a leading or trailing dot, or two in a row)");
        }
        if *label == "*" {
            if i == 0 && labels.len() > 1 {
                continue;
            }
            return Err(
                "a wildcard `*` may only be the whole leftmost label, followed by at least one more",
            );
        }
        if label.len() > 63 {
            return Err("a DNS label is at most 63 characters long");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("a DNS name holds only letters, digits, hyphens and dots");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a DNS label must not start or end with a hyphen");
        }
    }
    if labels
        .last()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("its last label is all digits, so it looks like a malformed IP address");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::path::Path;

    use ed25519_dalek::pkcs8::EncodePublicKey as _;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;

    use super::*;
    use crate::testing::{
        FailingRng, FailsAfter, fixed_now, golden_engine, openssl, other_engine, p256_spki,
        p384_spki,
    };

    fn golden_root() -> RootCa {
        RootCa::create(&golden_engine().root_ca_key().unwrap(), fixed_now()).unwrap()
    }

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        assert!(rest.is_empty());
        cert
    }

    fn sans(values: &[&str]) -> Vec<String> {
        values.iter().map(|s| s.to_string()).collect()
    }

    fn write(dir: &Path, name: &str, pem: impl AsRef<str>) {
        std::fs::write(dir.join(name), pem.as_ref()).unwrap();
    }

    /// AWS-LC's public key of a scalar is RustCrypto's, for the smallest and largest scalars and
    /// random ones.
    #[test]
    fn aws_lc_derives_the_public_key_rustcrypto_does() {
        // n - 1, the largest valid P-256 scalar.
        let largest: [u8; 32] =
            hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632550")
                .unwrap()
                .try_into()
                .unwrap();
        let mut one = [0u8; 32];
        one[31] = 1;
        let mut keys = vec![
            p256::SecretKey::from_bytes(&one.into()).unwrap(),
            p256::SecretKey::from_bytes(&largest.into()).unwrap(),
        ];
        keys.extend((0..8).map(|_| random_p256_key(&mut OsRng).unwrap()));
        for key in &keys {
            assert_eq!(public_key_of(key), Some(key.public_key()));
        }
    }

    /// A kept verdict holds only for the exact key, signed bytes and signature it was reached for,
    /// and only verdicts that held are kept, at most `VERIFIED_KEPT` of them.
    #[test]
    fn a_kept_signature_verdict_holds_only_for_its_own_bytes() {
        let root = golden_root();
        let mesh = MeshCa::generate(&root, fixed_now()).unwrap();
        let root_point = parse(root.cert_der())
            .public_key()
            .subject_public_key
            .data
            .to_vec();
        let der = mesh.intermediate_der().to_vec();
        let intermediate = parse(&der);
        let mesh_point = intermediate.public_key().subject_public_key.data.to_vec();
        assert_eq!(
            verify_certificate_signature(&intermediate, &root_point),
            Ok(())
        );
        // Kept now: the same bytes again, and nothing else.
        assert_eq!(
            verify_certificate_signature(&intermediate, &root_point),
            Ok(())
        );
        assert_eq!(
            verify_certificate_signature(&intermediate, &mesh_point),
            Err(None),
            "another key"
        );
        let mut forged = der.clone();
        let at = forged.len() - 5;
        forged[at] ^= 1;
        assert_eq!(
            verify_certificate_signature(&parse(&forged), &root_point),
            Err(None),
            "a changed signature"
        );
        let kept = |d: &[u8], point: &[u8]| {
            let cert = parse(d);
            let mut h = Sha256::new();
            for part in [
                point,
                cert.tbs_certificate.as_ref(),
                &cert.signature_value.data,
            ] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
            VERIFIED
                .lock()
                .unwrap()
                .contains(&<[u8; 32]>::from(h.finalize()))
        };
        assert!(!kept(&forged, &root_point) && !kept(&der, &mesh_point));
        // Bounded: after as many other verdicts as are kept, the first is gone.
        for _ in 0..VERIFIED_KEPT {
            let other = MeshCa::generate(&root, fixed_now()).unwrap();
            let cert = parse(other.intermediate_der());
            assert_eq!(verify_certificate_signature(&cert, &root_point), Ok(()));
        }
        assert!(VERIFIED.lock().unwrap().len() <= VERIFIED_KEPT);
        assert!(!kept(&der, &root_point));
    }

    #[test]
    fn root_ca_is_a_self_signed_ca_with_the_documented_fields() {
        let root = golden_root();
        let cert = parse(root.cert_der());
        assert_eq!(cert.subject().to_string(), "CN=Concord root CA");
        assert_eq!(cert.issuer().to_string(), "CN=Concord root CA");
        assert!(cert.basic_constraints().unwrap().unwrap().value.ca);
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.key_cert_sign() && usage.crl_sign());
        assert!(!usage.digital_signature());
        assert_eq!(
            cert.validity().not_before.to_datetime(),
            fixed_now() - Duration::hours(1)
        );
        assert_eq!(
            cert.validity().not_after.to_datetime(),
            fixed_now() + Duration::days(3652)
        );
        let serial = cert.raw_serial();
        assert_eq!(serial.len(), 16);
        assert_eq!(serial[0] & 0x80, 0, "serial must be positive");
        assert!(root.cert_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(root.cert_pem().ends_with("-----END CERTIFICATE-----\n"));
        let expected_key = golden_engine().root_ca_key().unwrap().public_key();
        assert_eq!(
            p256::PublicKey::from_public_key_der(cert.public_key().raw).unwrap(),
            expected_key
        );
    }

    #[test]
    fn root_ca_from_parts_accepts_its_own_certificate_only() {
        let key = golden_engine().root_ca_key().unwrap();
        let root = RootCa::create(&key, fixed_now()).unwrap();
        let rebuilt = RootCa::from_parts(root.cert_der().to_vec(), &key).unwrap();
        assert_eq!(rebuilt.cert_der(), root.cert_der());
        assert_eq!(rebuilt.cert_pem(), root.cert_pem());

        // Another seed's key: the stored certificate is not ours.
        let other_key = other_engine().root_ca_key().unwrap();
        let err = RootCa::from_parts(root.cert_der().to_vec(), &other_key).unwrap_err();
        assert!(
            matches!(&err, MeshCaError::RootCertificateRejected { reason } if reason.contains("not the root CA key")),
            "{err}"
        );

        // Not a certificate at all, and a certificate with trailing garbage.
        assert!(matches!(
            RootCa::from_parts(b"not a certificate".to_vec(), &key),
            Err(MeshCaError::RootCertificateRejected { .. })
        ));
        let mut trailing = root.cert_der().to_vec();
        trailing.push(0);
        assert!(matches!(
            RootCa::from_parts(trailing, &key),
            Err(MeshCaError::RootCertificateRejected { .. })
        ));

        // A tampered certificate (one byte of the TBS changed, here in the serial): the
        // self-signature no longer verifies.
        let mut tampered = root.cert_der().to_vec();
        let serial = parse(root.cert_der()).raw_serial().to_vec();
        let at = tampered
            .windows(serial.len())
            .position(|w| w == serial.as_slice())
            .unwrap();
        tampered[at + 5] ^= 1;
        let err = RootCa::from_parts(tampered, &key).unwrap_err();
        assert!(
            matches!(&err, MeshCaError::RootCertificateRejected { reason } if reason.contains("self-signature")),
            "{err}"
        );

        // The mesh CA certificate is self-signed too, but for another key and name.
        let mesh = MeshCa::generate(&root, fixed_now()).unwrap();
        assert!(matches!(
            RootCa::from_parts(mesh.mesh_ca_der().to_vec(), &key),
            Err(MeshCaError::RootCertificateRejected { .. })
        ));
    }

    #[test]
    fn rebuilt_root_issues_intermediates_that_chain_to_the_stored_root() {
        let key = golden_engine().root_ca_key().unwrap();
        let root = RootCa::create(&key, fixed_now()).unwrap();
        let rebuilt = RootCa::from_parts(root.cert_der().to_vec(), &key).unwrap();
        let mesh = MeshCa::generate(&rebuilt, fixed_now()).unwrap();
        let leaf = mesh
            .issue(&p256_spki(), "web", &sans(&["web"]), fixed_now())
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "root.pem", root.cert_pem());
        write(dir.path(), "intermediate.pem", mesh.intermediate_pem());
        write(dir.path(), "leaf.pem", &leaf.pem);
        let (ok, out) = openssl(
            dir.path(),
            &[
                "verify",
                "-attime",
                &fixed_now().unix_timestamp().to_string(),
                "-CAfile",
                "root.pem",
                "-untrusted",
                "intermediate.pem",
                "leaf.pem",
            ],
        );
        assert!(ok, "{out}");
    }

    #[test]
    fn mesh_ca_key_is_random_and_not_derived_from_the_seed() {
        // Invariant 3: same seed, same root, same time: the mesh CA keys must still differ, and
        // none may equal anything the seed derives.
        let engine = golden_engine();
        let root = golden_root();
        let a = MeshCa::generate(&root, fixed_now()).unwrap();
        let b = MeshCa::generate(&root, fixed_now()).unwrap();
        let rebuilt =
            RootCa::from_parts(root.cert_der().to_vec(), &engine.root_ca_key().unwrap()).unwrap();
        let c = MeshCa::generate(&rebuilt, fixed_now()).unwrap();

        let scalars = [
            a.secret_scalar_for_tests(),
            b.secret_scalar_for_tests(),
            c.secret_scalar_for_tests(),
        ];
        assert_ne!(scalars[0], scalars[1]);
        assert_ne!(scalars[0], scalars[2]);
        assert_ne!(scalars[1], scalars[2]);
        assert_ne!(a.mesh_ca_der(), b.mesh_ca_der());

        let root_key: [u8; 32] = engine.root_ca_key().unwrap().to_bytes().into();
        let mut derived = vec![root_key, engine.transition_signing_key().to_bytes()];
        for id in [
            "",
            "default/web",
            "default/db",
            "mesh-ca",
            "concord/v1/mesh-ca",
        ] {
            derived.push(*engine.workload_secret(id));
        }
        for scalar in &scalars {
            for d in &derived {
                assert_ne!(
                    scalar.as_ref(),
                    d,
                    "mesh CA key equals a seed-derived value"
                );
            }
        }
        // And the certified public key is not the root's.
        let mesh_key = parse(a.mesh_ca_der()).public_key().raw.to_vec();
        let root_spki = parse(root.cert_der()).public_key().raw.to_vec();
        assert_ne!(mesh_key, root_spki);
    }

    /// Receiving side of peer recovery: the root rebuilt from its stored certificate, then the
    /// mesh CA from what the peer sent.
    fn rebuild(mesh: &MeshCa, root: &RootCa) -> Result<MeshCa, MeshCaError> {
        let root = RootCa::from_parts(
            root.cert_der().to_vec(),
            &golden_engine().root_ca_key().unwrap(),
        )
        .unwrap();
        MeshCa::from_parts(
            &mesh.key_for_attested_peer(),
            mesh.mesh_ca_der().to_vec(),
            mesh.intermediate_der().to_vec(),
            &root,
        )
    }

    fn authority_key_id(cert: &X509Certificate<'_>) -> Vec<u8> {
        cert.iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    Some(aki.key_identifier.as_ref().unwrap().0.to_vec())
                }
                _ => None,
            })
            .unwrap()
    }

    /// A mesh CA certificate pair for `key`, made as `MeshCa::generate` makes it, with the
    /// intermediate signed by `issuer`, after `tweak` changed the parameters (its second
    /// argument says whether the intermediate's are being changed).
    fn mesh_certs_with(
        key: &[u8; 32],
        issuer: &Issuer<'_, P256Signer>,
        cap: OffsetDateTime,
        tweak: impl Fn(&mut CertificateParams, bool),
    ) -> (Vec<u8>, Vec<u8>) {
        let signer = P256Signer::new(&p256::SecretKey::from_bytes(key.into()).unwrap()).unwrap();
        let (not_before, not_after) = validity(fixed_now(), CA_LIFETIME, Some(cap)).unwrap();
        let serial = || random_serial(&mut OsRng, "test serial").unwrap();
        let mut params = ca_params(
            MESH_CA_COMMON_NAME,
            serial(),
            not_before,
            not_after,
            BasicConstraints::Constrained(0),
        );
        tweak(&mut params, false);
        let own = params.self_signed(&signer).unwrap().der().to_vec();
        let mut params = ca_params(
            MESH_CA_COMMON_NAME,
            serial(),
            not_before,
            not_after,
            BasicConstraints::Constrained(0),
        );
        params.use_authority_key_identifier_extension = true;
        tweak(&mut params, true);
        let intermediate = params.signed_by(&signer, issuer).unwrap().der().to_vec();
        (own, intermediate)
    }

    #[track_caller]
    fn assert_rejected(
        result: Result<MeshCa, MeshCaError>,
        certificate: &str,
        reason_contains: &str,
    ) {
        match result {
            Err(MeshCaError::MeshCaCertificateRejected {
                certificate: which,
                reason,
            }) => {
                assert_eq!(which, certificate, "{reason}");
                assert!(
                    reason.contains(reason_contains),
                    "expected {reason_contains:?} in {reason:?}"
                );
            }
            Err(other) => panic!("expected {certificate} rejected, got: {other}"),
            Ok(_) => panic!("expected {certificate} rejected ({reason_contains}), got a MeshCa"),
        }
    }

    #[test]
    fn key_for_attested_peer_is_the_certified_key() {
        let mesh = MeshCa::generate(&golden_root(), fixed_now()).unwrap();
        let key = mesh.key_for_attested_peer();
        let public = p256::SecretKey::from_bytes(key.as_ref().into())
            .unwrap()
            .public_key();
        for der in [mesh.mesh_ca_der(), mesh.intermediate_der()] {
            assert_eq!(
                p256::PublicKey::from_public_key_der(parse(der).public_key().raw).unwrap(),
                public
            );
        }
        assert_eq!(key, mesh.key_for_attested_peer());
        let other = MeshCa::generate(&golden_root(), fixed_now()).unwrap();
        assert_ne!(key, other.key_for_attested_peer());
    }

    #[test]
    fn mesh_ca_from_parts_round_trips_and_issues_leaves_that_verify() {
        let root = golden_root();
        let mesh = MeshCa::generate(&root, fixed_now()).unwrap();
        let rebuilt = rebuild(&mesh, &root).unwrap();

        // The very bytes received, not new certificates.
        assert_eq!(rebuilt.mesh_ca_der(), mesh.mesh_ca_der());
        assert_eq!(rebuilt.intermediate_der(), mesh.intermediate_der());
        assert_eq!(rebuilt.mesh_ca_pem(), mesh.mesh_ca_pem());
        assert_eq!(rebuilt.intermediate_pem(), mesh.intermediate_pem());
        assert_eq!(rebuilt.not_after, mesh.not_after);
        assert_eq!(
            rebuilt.key_for_attested_peer(),
            mesh.key_for_attested_peer()
        );

        // Leaves name the same issuer, by the same bytes and key identifier, as the sender's.
        let spki = p256_spki();
        let theirs = mesh
            .issue(&spki, "web", &sans(&["web"]), fixed_now())
            .unwrap();
        let ours = rebuilt
            .issue(&spki, "web", &sans(&["web"]), fixed_now())
            .unwrap();
        let (theirs, ours_cert) = (parse(&theirs.der), parse(&ours.der));
        assert_eq!(ours_cert.issuer().as_raw(), theirs.issuer().as_raw());
        assert_eq!(
            ours_cert.issuer().as_raw(),
            parse(mesh.mesh_ca_der()).subject().as_raw()
        );
        assert_eq!(authority_key_id(&ours_cert), authority_key_id(&theirs));
        assert_eq!(ours_cert.validity().not_after, theirs.validity().not_after);
        assert_eq!(
            rebuilt.chain_pem(&ours),
            format!("{}{}", ours.pem, mesh.intermediate_pem())
        );

        // openssl accepts the rebuilt CA's leaf under the sender's certificates.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "root.pem", root.cert_pem());
        write(dir.path(), "intermediate.pem", mesh.intermediate_pem());
        write(dir.path(), "mesh_ca.pem", mesh.mesh_ca_pem());
        write(dir.path(), "leaf.pem", &ours.pem);
        write(dir.path(), "chain.pem", rebuilt.chain_pem(&ours));
        let at_time = (fixed_now() + Duration::days(1))
            .unix_timestamp()
            .to_string();
        let verify = |args: &[&str]| {
            let mut all = vec!["verify", "-attime", &at_time, "-x509_strict"];
            all.extend_from_slice(args);
            openssl(dir.path(), &all)
        };
        let (ok, out) = verify(&["-CAfile", "mesh_ca.pem", "leaf.pem"]);
        assert!(ok, "via the pinned mesh CA: {out}");
        let (ok, out) = verify(&[
            "-CAfile",
            "root.pem",
            "-untrusted",
            "intermediate.pem",
            "leaf.pem",
        ]);
        assert!(ok, "via root and intermediate: {out}");
        let (ok, out) = verify(&["-CAfile", "root.pem", "-untrusted", "chain.pem", "leaf.pem"]);
        assert!(ok, "via chain_pem: {out}");
        // Control: another mesh CA's certificate does not vouch for it.
        write(
            dir.path(),
            "other_mesh_ca.pem",
            MeshCa::generate(&root, fixed_now()).unwrap().mesh_ca_pem(),
        );
        let (ok, _) = verify(&["-CAfile", "other_mesh_ca.pem", "leaf.pem"]);
        assert!(!ok, "verified against another mesh CA");
    }

    #[test]
    fn rebuilt_mesh_ca_keeps_the_received_expiry() {
        let root = golden_root();
        // Made nine years after the root, so it ends when the root ends, not ten years on.
        let mesh = MeshCa::generate(&root, fixed_now() + Duration::days(9 * 365)).unwrap();
        let rebuilt = rebuild(&mesh, &root).unwrap();
        assert_eq!(rebuilt.not_after, root.not_after);
        let leaf_time = root.not_after - Duration::days(100);
        let leaf = rebuilt.issue(&p256_spki(), "web", &[], leaf_time).unwrap();
        assert_eq!(
            parse(&leaf.der).validity().not_after.to_datetime(),
            root.not_after
        );
        assert!(matches!(
            rebuilt.issue(&p256_spki(), "web", &[], root.not_after),
            Err(MeshCaError::InvalidValidity { .. })
        ));
    }

    #[test]
    fn mesh_ca_from_parts_refuses_what_does_not_belong_together() {
        let root = golden_root();
        let mesh = MeshCa::generate(&root, fixed_now()).unwrap();
        let key = mesh.key_for_attested_peer();
        let own = || mesh.mesh_ca_der().to_vec();
        let intermediate = || mesh.intermediate_der().to_vec();

        // Control: the right parts are accepted.
        MeshCa::from_parts(&key, own(), intermediate(), &root).unwrap();

        // The key of another mesh CA.
        let other = MeshCa::generate(&root, fixed_now()).unwrap();
        let other_key = other.key_for_attested_peer();
        let err = MeshCa::from_parts(&other_key, own(), intermediate(), &root).unwrap_err();
        assert!(!err.to_string().contains(&hex::encode(other_key.as_ref())));
        assert_rejected(
            Err(err),
            MESH_CA_CERT_NAME,
            "not the public key of the mesh CA key sent with it",
        );
        // Another mesh CA's intermediate beside this one's self-signed certificate.
        assert_rejected(
            MeshCa::from_parts(&key, own(), other.intermediate_der().to_vec(), &root),
            INTERMEDIATE_CERT_NAME,
            "not the public key of the mesh CA key sent with it",
        );

        // Swapped arguments, and the self-signed certificate given twice.
        assert_rejected(
            MeshCa::from_parts(&key, intermediate(), own(), &root),
            MESH_CA_CERT_NAME,
            "self-signature does not verify",
        );
        assert_rejected(
            MeshCa::from_parts(&key, own(), own(), &root),
            INTERMEDIATE_CERT_NAME,
            "does not verify with this deployment's root CA key",
        );

        // The intermediate of the same key under another deployment's root.
        let other_root =
            RootCa::create(&other_engine().root_ca_key().unwrap(), fixed_now()).unwrap();
        let (foreign_own, foreign_intermediate) =
            mesh_certs_with(&key, &other_root.issuer, other_root.not_after, |_, _| {});
        MeshCa::from_parts(
            &key,
            foreign_own.clone(),
            foreign_intermediate.clone(),
            &other_root,
        )
        .unwrap();
        assert_rejected(
            MeshCa::from_parts(&key, own(), foreign_intermediate, &root),
            INTERMEDIATE_CERT_NAME,
            "does not verify with this deployment's root CA key",
        );
        // And the whole foreign pair, offered to this deployment.
        let (_, foreign_intermediate) =
            mesh_certs_with(&key, &other_root.issuer, other_root.not_after, |_, _| {});
        assert_rejected(
            MeshCa::from_parts(&key, foreign_own, foreign_intermediate, &root),
            INTERMEDIATE_CERT_NAME,
            "does not verify with this deployment's root CA key",
        );

        // Truncated certificates, and trailing bytes.
        let mut truncated = own();
        truncated.truncate(truncated.len() - 1);
        assert_rejected(
            MeshCa::from_parts(&key, truncated, intermediate(), &root),
            MESH_CA_CERT_NAME,
            "not a DER X.509 certificate",
        );
        let mut truncated = intermediate();
        truncated.truncate(truncated.len() / 2);
        assert_rejected(
            MeshCa::from_parts(&key, own(), truncated, &root),
            INTERMEDIATE_CERT_NAME,
            "not a DER X.509 certificate",
        );
        assert_rejected(
            MeshCa::from_parts(&key, Vec::new(), intermediate(), &root),
            MESH_CA_CERT_NAME,
            "not a DER X.509 certificate",
        );
        let mut trailing = intermediate();
        trailing.push(0);
        assert_rejected(
            MeshCa::from_parts(&key, own(), trailing, &root),
            INTERMEDIATE_CERT_NAME,
            "1 unexpected bytes follow",
        );

        // A tampered certificate: one byte of its serial changed.
        let mut tampered = intermediate();
        let serial = parse(mesh.intermediate_der()).raw_serial().to_vec();
        let at = tampered
            .windows(serial.len())
            .position(|w| w == serial.as_slice())
            .unwrap();
        tampered[at + 5] ^= 1;
        assert_rejected(
            MeshCa::from_parts(&key, own(), tampered, &root),
            INTERMEDIATE_CERT_NAME,
            "does not verify with this deployment's root CA key",
        );

        // The root certificate where a mesh CA certificate belongs.
        assert_rejected(
            MeshCa::from_parts(&key, root.cert_der().to_vec(), intermediate(), &root),
            MESH_CA_CERT_NAME,
            "not the public key of the mesh CA key",
        );
    }

    #[test]
    fn mesh_ca_from_parts_refuses_invalid_keys() {
        let root = golden_root();
        let mesh = MeshCa::generate(&root, fixed_now()).unwrap();
        let n_bytes: [u8; 32] =
            hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551")
                .unwrap()
                .try_into()
                .unwrap();
        for (key, reason) in [
            ([0u8; 32], "it is zero"),
            ([0xff; 32], "not below the order"),
            (n_bytes, "not below the order"),
        ] {
            let err = MeshCa::from_parts(
                &key,
                mesh.mesh_ca_der().to_vec(),
                mesh.intermediate_der().to_vec(),
                &root,
            )
            .unwrap_err();
            assert!(
                matches!(&err, MeshCaError::InvalidMeshCaKey { reason: r } if r.contains(reason)),
                "{err}"
            );
            assert!(err.to_string().contains("recover from another"), "{err}");
        }
    }

    #[test]
    fn mesh_ca_from_parts_refuses_certificates_concord_does_not_make() {
        let root = golden_root();
        let key = MeshCa::generate(&root, fixed_now())
            .unwrap()
            .key_for_attested_peer();
        let build = |tweak: &dyn Fn(&mut CertificateParams, bool)| {
            let (own, intermediate) = mesh_certs_with(&key, &root.issuer, root.not_after, tweak);
            MeshCa::from_parts(&key, own, intermediate, &root)
        };
        let both = |f: fn(&mut CertificateParams)| move |p: &mut CertificateParams, _: bool| f(p);
        let only_intermediate = |f: fn(&mut CertificateParams)| {
            move |p: &mut CertificateParams, i: bool| {
                if i {
                    f(p)
                }
            }
        };

        // Control: made like `generate` makes them, these are accepted.
        build(&|_, _| {}).unwrap();

        assert_rejected(
            build(&both(|p| {
                p.distinguished_name = common_name_dn("Concord other CA")
            })),
            MESH_CA_CERT_NAME,
            "its subject is not CN=Concord mesh CA",
        );
        assert_rejected(
            build(&only_intermediate(|p| {
                p.distinguished_name
                    .push(DnType::OrganizationName, "Concord")
            })),
            INTERMEDIATE_CERT_NAME,
            "its subject is not CN=Concord mesh CA",
        );
        assert_rejected(
            build(&both(|p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
            })),
            MESH_CA_CERT_NAME,
            "path length 0",
        );
        assert_rejected(
            build(&only_intermediate(|p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1))
            })),
            INTERMEDIATE_CERT_NAME,
            "path length 0",
        );
        assert_rejected(
            build(&both(|p| p.is_ca = IsCa::ExplicitNoCa)),
            MESH_CA_CERT_NAME,
            "not a CA certificate",
        );
        assert_rejected(
            build(&only_intermediate(|p| {
                p.key_usages = vec![KeyUsagePurpose::DigitalSignature]
            })),
            INTERMEDIATE_CERT_NAME,
            "key usage does not allow signing certificates",
        );
        assert_rejected(
            build(&both(|p| {
                p.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(vec![7; 20])
            })),
            MESH_CA_CERT_NAME,
            "subject key identifier",
        );
        assert_rejected(
            build(&only_intermediate(|p| p.not_after -= Duration::days(1))),
            INTERMEDIATE_CERT_NAME,
            "with one validity",
        );
        assert_rejected(
            build(&both(|p| p.not_after += Duration::days(1))),
            INTERMEDIATE_CERT_NAME,
            "after the root CA certificate",
        );

        // Signed by the root key, but naming another issuer, or another authority key.
        let root_signer = || P256Signer::new(&golden_engine().root_ca_key().unwrap()).unwrap();
        let mut renamed = CertificateParams::default();
        renamed.distinguished_name = common_name_dn("Concord other root CA");
        let renamed = Issuer::new(renamed, root_signer());
        let (own, intermediate) = mesh_certs_with(&key, &renamed, root.not_after, |_, _| {});
        assert_rejected(
            MeshCa::from_parts(&key, own, intermediate, &root),
            INTERMEDIATE_CERT_NAME,
            "its issuer is CN=Concord other root CA, not this deployment's root CA",
        );
        let mut other_key_id = CertificateParams::default();
        other_key_id.distinguished_name = common_name_dn(ROOT_CA_COMMON_NAME);
        other_key_id.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(vec![7; 20]);
        // Signed by the mesh CA key itself, but naming the root as issuer: not self-issued.
        let mut named_root = CertificateParams::default();
        named_root.distinguished_name = common_name_dn(ROOT_CA_COMMON_NAME);
        let mesh_signer =
            P256Signer::new(&p256::SecretKey::from_bytes(key.as_ref().into()).unwrap()).unwrap();
        let posing = Issuer::new(named_root, mesh_signer);
        let (own, _) = mesh_certs_with(&key, &root.issuer, root.not_after, |_, _| {});
        let (_, not_self_issued) = mesh_certs_with(&key, &posing, root.not_after, |_, _| {});
        MeshCa::from_parts(&key, own.clone(), not_self_issued.clone(), &root).unwrap_err();
        assert_rejected(
            MeshCa::from_parts(&key, not_self_issued, own, &root),
            MESH_CA_CERT_NAME,
            "it is not self-issued",
        );
        let other_key_id = Issuer::new(other_key_id, root_signer());
        let (own, intermediate) = mesh_certs_with(&key, &other_key_id, root.not_after, |_, _| {});
        assert_rejected(
            MeshCa::from_parts(&key, own, intermediate, &root),
            INTERMEDIATE_CERT_NAME,
            "authority key identifier",
        );
    }

    #[test]
    fn debug_of_a_rebuilt_mesh_ca_redacts_its_key() {
        let root = golden_root();
        let mesh = MeshCa::generate(&root, fixed_now()).unwrap();
        let rebuilt = rebuild(&mesh, &root).unwrap();
        let secret = mesh.key_for_attested_peer();
        let debug = format!("{rebuilt:?} {rebuilt:#?} {:?}", rebuilt.issuer);
        assert!(debug.contains("redacted"), "{debug}");
        assert!(!debug.contains(&hex::encode(secret.as_ref())), "{debug}");
        assert!(
            !debug.contains(&format!("{:?}", secret.as_ref())),
            "{debug}"
        );
        assert!(!debug.to_lowercase().contains("scalar"), "{debug}");
        // The digests of the received certificates, as for a generated one.
        assert_eq!(
            format!("{rebuilt:?}"),
            format!("{mesh:?}"),
            "a rebuilt mesh CA shows as the one it was rebuilt from"
        );
    }

    #[test]
    fn debug_output_redacts_ca_keys() {
        let root = golden_root();
        let mesh = MeshCa::generate(&root, fixed_now()).unwrap();
        let secret = mesh.secret_scalar_for_tests();
        let root_secret = golden_engine().root_ca_key().unwrap().to_bytes();
        let debug = format!("{mesh:?} {mesh:#?} {root:?} {:?}", mesh.issuer);
        assert!(debug.contains("redacted"), "{debug}");
        assert!(!debug.contains(&hex::encode(secret.as_ref())), "{debug}");
        assert!(!debug.contains(&hex::encode(root_secret)), "{debug}");
        assert!(
            !debug.contains(&format!("{:?}", secret.as_ref())),
            "{debug}"
        );
        assert!(!debug.to_lowercase().contains("scalar"), "{debug}");
    }

    #[test]
    fn leaf_chain_verifies_with_openssl_for_p256_p384_and_ed25519_keys() {
        let root = golden_root();
        let mesh = MeshCa::generate(&root, fixed_now()).unwrap();
        let ed25519_spki = ed25519_dalek::SigningKey::from_bytes(&[9; 32])
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .into_vec();
        let at_time = (fixed_now() + Duration::days(1))
            .unix_timestamp()
            .to_string();

        for (name, spki) in [
            ("p256", p256_spki()),
            ("p384", p384_spki()),
            ("ed25519", ed25519_spki),
        ] {
            let leaf = mesh
                .issue(
                    &spki,
                    name,
                    &sans(&["web", "10.0.0.7", "spiffe://example.org/web"]),
                    fixed_now(),
                )
                .unwrap();
            assert_eq!(parse(&leaf.der).public_key().raw, spki.as_slice());

            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "root.pem", root.cert_pem());
            write(dir.path(), "intermediate.pem", mesh.intermediate_pem());
            write(dir.path(), "mesh_ca.pem", mesh.mesh_ca_pem());
            write(dir.path(), "leaf.pem", &leaf.pem);
            write(dir.path(), "chain.pem", mesh.chain_pem(&leaf));
            write(
                dir.path(),
                "other_root.pem",
                RootCa::create(&other_engine().root_ca_key().unwrap(), fixed_now())
                    .unwrap()
                    .cert_pem(),
            );

            let verify = |args: &[&str]| {
                let mut all = vec!["verify", "-attime", &at_time, "-x509_strict"];
                all.extend_from_slice(args);
                openssl(dir.path(), &all)
            };
            let (ok, out) = verify(&[
                "-CAfile",
                "root.pem",
                "-untrusted",
                "intermediate.pem",
                "leaf.pem",
            ]);
            assert!(ok, "{name} via root: {out}");
            let (ok, out) = verify(&["-CAfile", "mesh_ca.pem", "leaf.pem"]);
            assert!(ok, "{name} via pinned mesh CA: {out}");
            // The chain a workload presents holds everything between leaf and root.
            let (ok, out) = verify(&["-CAfile", "root.pem", "-untrusted", "chain.pem", "leaf.pem"]);
            assert!(ok, "{name} via chain_pem: {out}");
            let (ok, out) = verify(&[
                "-purpose",
                "sslserver",
                "-CAfile",
                "mesh_ca.pem",
                "leaf.pem",
            ]);
            assert!(ok, "{name} as TLS server: {out}");
            let (ok, out) = verify(&[
                "-purpose",
                "sslclient",
                "-CAfile",
                "mesh_ca.pem",
                "leaf.pem",
            ]);
            assert!(ok, "{name} as TLS client: {out}");

            // Controls, so the checks above can fail: no intermediate, or another root.
            let (ok, _) = verify(&["-CAfile", "root.pem", "leaf.pem"]);
            assert!(!ok, "{name}: verified without the intermediate");
            let (ok, _) = verify(&[
                "-CAfile",
                "other_root.pem",
                "-untrusted",
                "intermediate.pem",
                "leaf.pem",
            ]);
            assert!(!ok, "{name}: verified against another deployment's root");
        }
    }

    #[test]
    fn chain_pem_is_leaf_then_intermediate() {
        let mesh = MeshCa::generate(&golden_root(), fixed_now()).unwrap();
        let leaf = mesh.issue(&p256_spki(), "web", &[], fixed_now()).unwrap();
        assert_eq!(
            mesh.chain_pem(&leaf),
            format!("{}{}", leaf.pem, mesh.intermediate_pem())
        );
        assert_eq!(
            mesh.chain_pem(&leaf)
                .matches("-----BEGIN CERTIFICATE-----")
                .count(),
            2
        );
    }

    #[test]
    fn mesh_ca_and_intermediate_share_subject_and_key() {
        let root = golden_root();
        let mesh = MeshCa::generate(&root, fixed_now()).unwrap();
        let own = parse(mesh.mesh_ca_der());
        let intermediate = parse(mesh.intermediate_der());
        assert_eq!(own.subject().to_string(), "CN=Concord mesh CA");
        assert_eq!(own.issuer().to_string(), "CN=Concord mesh CA");
        assert_eq!(intermediate.subject().to_string(), "CN=Concord mesh CA");
        assert_eq!(intermediate.issuer().to_string(), "CN=Concord root CA");
        assert_eq!(own.public_key().raw, intermediate.public_key().raw);
        assert_ne!(own.raw_serial(), intermediate.raw_serial());
        for cert in [&own, &intermediate] {
            let constraints = cert.basic_constraints().unwrap().unwrap().value;
            assert!(constraints.ca);
            assert_eq!(constraints.path_len_constraint, Some(0));
        }
    }

    #[test]
    fn leaf_has_the_documented_fields() {
        let mesh = MeshCa::generate(&golden_root(), fixed_now()).unwrap();
        let leaf = mesh
            .issue(&p256_spki(), "web", &sans(&["web"]), fixed_now())
            .unwrap();
        let cert = parse(&leaf.der);
        assert_eq!(cert.subject().to_string(), "CN=web");
        assert_eq!(cert.issuer().to_string(), "CN=Concord mesh CA");
        assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.digital_signature());
        assert!(!usage.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert_eq!(
            cert.validity().not_before.to_datetime(),
            fixed_now() - Duration::hours(1)
        );
        assert_eq!(
            cert.validity().not_after.to_datetime(),
            fixed_now() + Duration::days(365)
        );
        assert_eq!(cert.raw_serial().len(), 16);
        assert_eq!(cert.raw_serial()[0] & 0x80, 0);
    }

    #[test]
    fn leaf_serials_differ() {
        let mesh = MeshCa::generate(&golden_root(), fixed_now()).unwrap();
        let spki = p256_spki();
        let serials: std::collections::HashSet<Vec<u8>> = (0..20)
            .map(|_| {
                let leaf = mesh.issue(&spki, "web", &[], fixed_now()).unwrap();
                parse(&leaf.der).raw_serial().to_vec()
            })
            .collect();
        assert_eq!(serials.len(), 20);
    }

    #[test]
    fn sans_land_in_the_right_general_name_type() {
        let mesh = MeshCa::generate(&golden_root(), fixed_now()).unwrap();
        let leaf = mesh
            .issue(
                &p256_spki(),
                "web",
                &sans(&[
                    "web",
                    "web.default.svc.cluster.local",
                    "*.web.example.com",
                    "10.0.0.7",
                    "::1",
                    "spiffe://example.org/web",
                    "https://web.example.com:8443/path?q=1",
                ]),
                fixed_now(),
            )
            .unwrap();
        let cert = parse(&leaf.der);
        let names = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        let expected = [
            GeneralName::DNSName("web"),
            GeneralName::DNSName("web.default.svc.cluster.local"),
            GeneralName::DNSName("*.web.example.com"),
            GeneralName::IPAddress(&Ipv4Addr::new(10, 0, 0, 7).octets()),
            GeneralName::IPAddress(&Ipv6Addr::LOCALHOST.octets()),
            GeneralName::URI("spiffe://example.org/web"),
            GeneralName::URI("https://web.example.com:8443/path?q=1"),
        ];
        assert_eq!(names.len(), expected.len());
        for (got, want) in names.iter().zip(expected.iter()) {
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
    }

    #[test]
    fn invalid_sans_are_rejected_with_the_value_named() {
        let mesh = MeshCa::generate(&golden_root(), fixed_now()).unwrap();
        let spki = p256_spki();
        for bad in [
            "",
            "bad_name",
            "-web",
            "web-",
            "a..b",
            ".web",
            "web.",
            "web name",
            "wéb",
            "*",
            "*.*.example.com",
            "w*b.example.com",
            "web.*.example.com",
            "10.0.0.256",
            "1234",
            "fe80::1%eth0",
            "://no-scheme",
            "1http://x",
            "spiffe://",
            "spiffe://example.org/a b",
            &"a".repeat(64),
            &format!("{}.com", "a.".repeat(130)),
        ] {
            let err = mesh
                .issue(&spki, "web", &sans(&["ok.example.com", bad]), fixed_now())
                .unwrap_err();
            match &err {
                MeshCaError::InvalidSubjectAltName { value, .. } => assert_eq!(value, bad),
                other => panic!("{bad:?}: unexpected error {other}"),
            }
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        // The longest valid label is fine.
        mesh.issue(&spki, "web", &sans(&[&"a".repeat(63)]), fixed_now())
            .unwrap();
        // The public checker agrees with issuance.
        assert!(check_subject_alt_name("web.default.svc.cluster.local").is_ok());
        assert!(check_subject_alt_name("spiffe://example.org/web").is_ok());
        assert!(matches!(
            check_subject_alt_name("bad_name"),
            Err(MeshCaError::InvalidSubjectAltName { .. })
        ));
    }

    #[test]
    fn invalid_common_names_and_keys_are_rejected() {
        let mesh = MeshCa::generate(&golden_root(), fixed_now()).unwrap();
        let spki = p256_spki();
        for bad in ["", "line\nbreak", &"x".repeat(65)] {
            assert!(matches!(
                mesh.issue(&spki, bad, &[], fixed_now()),
                Err(MeshCaError::InvalidCommonName { .. })
            ));
        }
        mesh.issue(&spki, &"x".repeat(64), &[], fixed_now())
            .unwrap();

        assert!(matches!(
            mesh.issue(b"garbage", "web", &[], fixed_now()),
            Err(MeshCaError::UnsupportedPublicKey { .. })
        ));
        // A P-256 SPKI whose point is off the curve.
        let mut off_curve = spki.clone();
        *off_curve.last_mut().unwrap() ^= 1;
        let err = mesh.issue(&off_curve, "web", &[], fixed_now()).unwrap_err();
        assert!(
            matches!(&err, MeshCaError::UnsupportedPublicKey { reason } if reason.contains("P-256")),
            "{err}"
        );
        let mut trailing = spki.clone();
        trailing.push(0);
        assert!(matches!(
            mesh.issue(&trailing, "web", &[], fixed_now()),
            Err(MeshCaError::UnsupportedPublicKey { .. })
        ));
    }

    #[test]
    fn rsa_keys_are_not_certified() {
        let dir = tempfile::tempdir().unwrap();
        let (ok, out) = openssl(
            dir.path(),
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "rsa.pem",
            ],
        );
        assert!(ok, "{out}");
        let (ok, out) = openssl(
            dir.path(),
            &[
                "pkey", "-in", "rsa.pem", "-pubout", "-outform", "DER", "-out", "rsa.der",
            ],
        );
        assert!(ok, "{out}");
        let spki = std::fs::read(dir.path().join("rsa.der")).unwrap();
        let mesh = MeshCa::generate(&golden_root(), fixed_now()).unwrap();
        let err = mesh.issue(&spki, "web", &[], fixed_now()).unwrap_err();
        assert!(
            matches!(err, MeshCaError::UnsupportedPublicKey { .. }),
            "{err}"
        );
    }

    #[test]
    fn validity_never_outlives_the_issuer() {
        let root = golden_root();
        // A mesh CA made nine years after the root ends when the root ends.
        let later = fixed_now() + Duration::days(9 * 365);
        let mesh = MeshCa::generate(&root, later).unwrap();
        let root_end = parse(root.cert_der()).validity().not_after.to_datetime();
        assert_eq!(
            parse(mesh.intermediate_der())
                .validity()
                .not_after
                .to_datetime(),
            root_end
        );
        // A leaf issued in the mesh CA's last half year ends with it.
        let leaf_time = root_end - Duration::days(100);
        let leaf = mesh.issue(&p256_spki(), "web", &[], leaf_time).unwrap();
        assert_eq!(
            parse(&leaf.der).validity().not_after.to_datetime(),
            root_end
        );
        // After that, nothing is issued.
        let err = mesh
            .issue(&p256_spki(), "web", &[], root_end + Duration::seconds(1))
            .unwrap_err();
        assert!(matches!(err, MeshCaError::InvalidValidity { .. }), "{err}");
        assert!(matches!(
            MeshCa::generate(&root, root_end),
            Err(MeshCaError::InvalidValidity { .. })
        ));
    }

    #[test]
    fn entropy_failure_is_an_error_not_a_panic() {
        let key = golden_engine().root_ca_key().unwrap();
        let root = golden_root();
        let is_entropy =
            |r: Result<(), MeshCaError>| matches!(r, Err(MeshCaError::EntropyUnavailable { .. }));
        assert!(is_entropy(
            RootCa::create_with(&mut FailingRng, &key, fixed_now()).map(drop)
        ));
        assert!(is_entropy(
            MeshCa::generate_with(&mut FailingRng, &root, fixed_now()).map(drop)
        ));
        // Key drawn, serials not.
        assert!(is_entropy(
            MeshCa::generate_with(&mut FailsAfter { good_bytes: 32 }, &root, fixed_now()).map(drop)
        ));
        let mesh = MeshCa::generate(&root, fixed_now()).unwrap();
        assert!(is_entropy(
            mesh.issue_with(&mut FailingRng, &p256_spki(), "web", &[], None, fixed_now())
                .map(drop)
        ));
    }
}
