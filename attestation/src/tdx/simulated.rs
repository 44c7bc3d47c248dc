//! A simulated Intel hierarchy: TDX quotes in Intel's layout, and collateral for them, signed by
//! keys this process holds instead of Intel's. INSECURE: for tests and machines without TDX.
//!
//! Owns [`SimulatedTdx`]: a P-256 root CA, a PCK CA under it, a PCK certificate and a TCB signing
//! certificate, and the quote and collateral they make. The platform-specific parts Intel's
//! verifier matches against each other (the PCK certificate's SGX extension with FMSPC, CPUSVN and
//! PCESVN; the QE report; the TDX module fields of the TD report; TCB info and QE identity) are
//! taken from the real quote and collateral in `vectors/` (public data), so a simulated quote passes
//! exactly the checks a real one does; what differs is who signs. The PCK CRL can list the PCK
//! certificate, for tests of revocation. It must never be trusted where the launch configuration
//! does not name its root.

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::EncodePrivateKey;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension, DnType,
    IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams,
    SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::collateral::Collateral;
use super::quote::{HEADER_LEN, Quote, TD10_BODY_LEN, TdReport};
use crate::error::AttestationError;

/// The real quote whose platform parts a simulated quote reuses.
const TEMPLATE_QUOTE: &[u8] = include_bytes!("vectors/tdx_quote");
/// Intel's collateral for it, whose TCB info and QE identity a simulated collateral re-signs.
const TEMPLATE_COLLATERAL: &[u8] = include_bytes!("vectors/tdx_quote_collateral.json");
/// Intel's SGX extension of PCK certificates (FMSPC, CPUSVN, PCESVN, ...).
const SGX_EXTENSION_OID: &[u64] = &[1, 2, 840, 113_741, 1, 13, 1];
/// Length of an SGX enclave report (the QE report).
const QE_REPORT_LEN: usize = 384;

fn issuer_err(what: &str) -> impl Fn(rcgen::Error) -> AttestationError + '_ {
    move |e| AttestationError::Issuer(format!("simulated TDX hierarchy: {what}: {e}"))
}

/// A key usable both by rcgen (certificates, CRLs) and for raw ECDSA P-256 signatures.
struct Key {
    signing: SigningKey,
    rcgen: KeyPair,
}

impl Key {
    fn generate() -> Result<Self, AttestationError> {
        let signing = SigningKey::random(&mut rand::rngs::OsRng);
        let der = signing
            .to_pkcs8_der()
            .map_err(|e| AttestationError::Issuer(format!("encoding a P-256 key: {e}")))?;
        let rcgen = KeyPair::try_from(der.as_bytes()).map_err(issuer_err("loading a P-256 key"))?;
        Ok(Self { signing, rcgen })
    }

    /// ECDSA P-256 with SHA-256, as r || s.
    fn sign(&self, message: &[u8]) -> [u8; 64] {
        let sig: Signature = self.signing.sign(message);
        sig.to_bytes().into()
    }

    /// The public key as x || y (Intel's attestation key layout).
    fn raw_public(&self) -> [u8; 64] {
        let point = VerifyingKey::from(&self.signing).to_encoded_point(false);
        let mut out = [0u8; 64];
        out.copy_from_slice(&point.as_bytes()[1..]);
        out
    }
}

fn ca_params(cn: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

fn leaf_params(
    cn: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::ContentCommitment,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

/// The template quote's signature data: the QE report and the QE authentication data.
struct TemplateSignatureData {
    qe_report: [u8; QE_REPORT_LEN],
    qe_auth_data: Vec<u8>,
    pck_leaf_der: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

/// Reads the template's signature data (v4: quote signature, attestation key, certification data
/// type 6 holding the QE report, its signature, the QE authentication data and type 5, the PCK chain).
fn template_signature_data() -> Option<TemplateSignatureData> {
    let q = TEMPLATE_QUOTE;
    let mut at = HEADER_LEN + TD10_BODY_LEN + 4 + 64 + 64;
    if u16_at(q, at)? != 6 {
        return None;
    }
    at += 6;
    let qe_report: [u8; QE_REPORT_LEN] = q.get(at..at + QE_REPORT_LEN)?.try_into().ok()?;
    at += QE_REPORT_LEN + 64;
    let auth_len = usize::from(u16_at(q, at)?);
    let qe_auth_data = q.get(at + 2..at + 2 + auth_len)?.to_vec();
    at += 2 + auth_len;
    if u16_at(q, at)? != 5 {
        return None;
    }
    let pem_len = u32_at(q, at + 2)?;
    let pem = q.get(at + 6..at + 6 + pem_len)?;
    let first = x509_parser::pem::Pem::iter_from_buffer(pem).next()?.ok()?;
    Some(TemplateSignatureData {
        qe_report,
        qe_auth_data,
        pck_leaf_der: first.contents,
    })
}

/// The SGX extension's content (DER) of the template's PCK certificate.
fn template_sgx_extension(pck_leaf_der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(pck_leaf_der).ok()?;
    let oid = x509_parser::oid_registry::Oid::from(&[1, 2, 840, 113_741, 1, 13, 1][..]).ok()?;
    cert.extensions()
        .iter()
        .find(|e| e.oid == oid)
        .map(|e| e.value.to_vec())
}

/// The quoting enclave's attestation key, as a real QE keeps it: made once, certified once by a QE
/// report the PCK signs, then used for every quote (one signature each, with ring's assembly
/// P-256, so that a replica's own simulated quotes cost what a real TD's do: nothing of its CPU
/// beyond the report call).
struct AttestationKey {
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
    /// x || y, Intel's layout.
    public: [u8; 64],
    /// Certification data type 6: the QE report binding `public`, its PCK signature, the QE
    /// authentication data, and type 5 with the PCK chain.
    cert6_body: Vec<u8>,
}

impl AttestationKey {
    fn generate(
        pck: &Key,
        template: &TemplateSignatureData,
        chain: &str,
    ) -> Result<Self, AttestationError> {
        let key = Key::generate()?;
        let rng = ring::rand::SystemRandom::new();
        let ring_key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            key.rcgen.serialized_der(),
            &rng,
        )
        .map_err(|e| AttestationError::Issuer(format!("loading the attestation key: {e}")))?;
        let public = key.raw_public();
        let mut qe_report = template.qe_report;
        let mut binding = Sha256::new();
        binding.update(public);
        binding.update(&template.qe_auth_data);
        // The QE report's REPORTDATA is at offset 320: SHA-256(attestation key || auth data), zeros.
        qe_report[320..352].copy_from_slice(&binding.finalize());
        qe_report[352..384].fill(0);
        let qe_report_sig = pck.sign(&qe_report);

        let auth_len = u16::try_from(template.qe_auth_data.len())
            .map_err(|_| AttestationError::Issuer("QE auth data too long".into()))?;
        let mut cert5 = Vec::new();
        cert5.extend_from_slice(&5u16.to_le_bytes());
        cert5.extend_from_slice(&(chain.len() as u32).to_le_bytes());
        cert5.extend_from_slice(chain.as_bytes());
        let mut cert6_body = Vec::new();
        cert6_body.extend_from_slice(&qe_report);
        cert6_body.extend_from_slice(&qe_report_sig);
        cert6_body.extend_from_slice(&auth_len.to_le_bytes());
        cert6_body.extend_from_slice(&template.qe_auth_data);
        cert6_body.extend_from_slice(&cert5);
        Ok(Self {
            key: ring_key,
            rng,
            public,
            cert6_body,
        })
    }

    /// ECDSA P-256 with SHA-256, as r || s.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AttestationError> {
        self.key
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| AttestationError::Issuer(format!("signing a simulated quote: {e}")))
    }
}

/// A simulated Intel hierarchy (INSECURE).
pub struct SimulatedTdx {
    root: Key,
    root_params: CertificateParams,
    root_der: Vec<u8>,
    root_pem: String,
    pck_ca: Key,
    pck_ca_params: CertificateParams,
    pck_ca_pem: String,
    pck_serial: Vec<u8>,
    tcb_signer: Key,
    tcb_signer_pem: String,
    attestation_key: AttestationKey,
    not_before: OffsetDateTime,
    endorsement_der: Option<Vec<u8>>,
}

impl std::fmt::Debug for SimulatedTdx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedTdx")
            .field("root", &hex::encode(Sha256::digest(&self.root_der)))
            .finish_non_exhaustive()
    }
}

impl SimulatedTdx {
    /// A fresh hierarchy whose certificates are valid from `not_before` to `not_after`.
    pub fn generate(
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Self, AttestationError> {
        let template = template_signature_data().ok_or_else(|| {
            AttestationError::Issuer(
                "the TDX template quote has no type-6 certification data".into(),
            )
        })?;
        let sgx_extension = template_sgx_extension(&template.pck_leaf_der).ok_or_else(|| {
            AttestationError::Issuer("the TDX template PCK certificate has no SGX extension".into())
        })?;

        let root = Key::generate()?;
        let root_params = ca_params("Concord INSECURE simulated TDX root", not_before, not_after);
        let root_cert = root_params
            .self_signed(&root.rcgen)
            .map_err(issuer_err("self-signing the root"))?;
        let root_issuer = Issuer::from_params(&root_params, &root.rcgen);

        let pck_ca = Key::generate()?;
        let pck_ca_params = ca_params(
            "Concord INSECURE simulated TDX PCK Platform CA",
            not_before,
            not_after,
        );
        let pck_ca_cert = pck_ca_params
            .signed_by(&pck_ca.rcgen, &root_issuer)
            .map_err(issuer_err("certifying the PCK CA"))?;
        let pck_ca_issuer = Issuer::from_params(&pck_ca_params, &pck_ca.rcgen);

        let pck = Key::generate()?;
        let mut pck_params = leaf_params(
            "Concord INSECURE simulated TDX PCK Certificate",
            not_before,
            not_after,
        );
        let pck_serial: Vec<u8> = {
            let mut s: [u8; 16] = rand::random();
            s[0] &= 0x7f;
            s[0] |= 0x01;
            s.to_vec()
        };
        pck_params.serial_number = Some(SerialNumber::from_slice(&pck_serial));
        pck_params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                SGX_EXTENSION_OID,
                sgx_extension,
            ));
        let pck_cert = pck_params
            .signed_by(&pck.rcgen, &pck_ca_issuer)
            .map_err(issuer_err("certifying the PCK"))?;

        let tcb_signer = Key::generate()?;
        let tcb_params = leaf_params(
            "Concord INSECURE simulated TDX TCB Signing",
            not_before,
            not_after,
        );
        let tcb_cert = tcb_params
            .signed_by(&tcb_signer.rcgen, &root_issuer)
            .map_err(issuer_err("certifying the TCB signer"))?;

        let chain = format!("{}{}{}", pck_cert.pem(), pck_ca_cert.pem(), root_cert.pem());
        let attestation_key = AttestationKey::generate(&pck, &template, &chain)?;

        Ok(Self {
            root_der: root_cert.der().to_vec(),
            root_pem: root_cert.pem(),
            root,
            root_params,
            pck_ca_pem: pck_ca_cert.pem(),
            pck_ca,
            pck_ca_params,
            pck_serial,
            tcb_signer_pem: tcb_cert.pem(),
            tcb_signer,
            attestation_key,
            not_before,
            endorsement_der: None,
        })
    }

    /// A hierarchy whose root is endorsed by the simulated root `sim_root`: a certificate of the
    /// same name and key, issued by `sim_root`, so that a verifier that trusts `sim_root` (and only
    /// then) takes this hierarchy's root as its TDX trust anchor. Valid from an hour ago to a day
    /// before `sim_root` expires.
    pub fn endorsed_by(
        sim_root: &crate::simulated::SimulatedRoot,
    ) -> Result<Self, AttestationError> {
        let (root_not_before, root_not_after) = sim_root.validity()?;
        let now = OffsetDateTime::now_utc();
        let not_after = root_not_after - time::Duration::days(1);
        if not_after <= now {
            return Err(AttestationError::Config(format!(
                "the simulated root expires at {root_not_after}; generate a new one"
            )));
        }
        let not_before = (now - time::Duration::hours(1)).max(root_not_before);
        let mut hierarchy = Self::generate(not_before, not_after)?;
        let endorsement = hierarchy
            .root_params
            .signed_by(&hierarchy.root.rcgen, &sim_root.issuer())
            .map_err(issuer_err("endorsing the TDX root with the simulated root"))?;
        hierarchy.endorsement_der = Some(endorsement.der().to_vec());
        Ok(hierarchy)
    }

    /// The endorsement of the root by the simulated root (DER), when made by [`Self::endorsed_by`].
    pub fn endorsement_der(&self) -> Option<&[u8]> {
        self.endorsement_der.as_deref()
    }

    /// The root certificate (DER): the trust anchor a verifier of these quotes pins.
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// The TD report body of the template quote: a real TDX module's fields (TEE TCB SVN, MRSEAM,
    /// MRSIGNERSEAM, SEAM attributes) and accepted TD attributes and XFAM, to build reports on.
    pub fn template_report() -> Result<TdReport, AttestationError> {
        Ok(Quote::parse(TEMPLATE_QUOTE)?.report)
    }

    /// A version 4 quote of `report`, signed by this hierarchy's attestation key, which the QE
    /// report certifies and the PCK signs.
    pub fn quote(&self, report: &TdReport) -> Result<Vec<u8>, AttestationError> {
        self.quote_of_version(report, 4)
    }

    /// A quote of `report` in version 4 or 5 (version 5: a TD 1.0 body descriptor, type 2, before
    /// the body, covered by the quote signature).
    pub fn quote_of_version(
        &self,
        report: &TdReport,
        version: u16,
    ) -> Result<Vec<u8>, AttestationError> {
        let mut signed = TEMPLATE_QUOTE[..HEADER_LEN].to_vec();
        match version {
            4 => {}
            5 => {
                signed[..2].copy_from_slice(&5u16.to_le_bytes());
                signed.extend_from_slice(&2u16.to_le_bytes());
                signed.extend_from_slice(&(TD10_BODY_LEN as u32).to_le_bytes());
            }
            other => {
                return Err(AttestationError::Issuer(format!(
                    "TDX quote version {other}: only 4 and 5 are made"
                )));
            }
        }
        signed.extend_from_slice(&report.to_bytes());

        let ak = &self.attestation_key;
        let mut sig_data = ak.sign(&signed)?;
        sig_data.extend_from_slice(&ak.public);
        sig_data.extend_from_slice(&6u16.to_le_bytes());
        sig_data.extend_from_slice(&(ak.cert6_body.len() as u32).to_le_bytes());
        sig_data.extend_from_slice(&ak.cert6_body);

        let mut quote = signed;
        quote.extend_from_slice(&(sig_data.len() as u32).to_le_bytes());
        quote.extend_from_slice(&sig_data);
        Ok(quote)
    }

    /// Collateral for this hierarchy's quotes: TCB info and QE identity (Intel's, for the template
    /// platform) issued at `issue` and stale after `next_update`, and CRLs of the same window; the
    /// PCK CRL lists the PCK certificate when `revoke_pck`.
    pub fn collateral(
        &self,
        issue: OffsetDateTime,
        next_update: OffsetDateTime,
        revoke_pck: bool,
    ) -> Result<Collateral, AttestationError> {
        let template = Collateral::from_json(TEMPLATE_COLLATERAL)?;
        let redate = |text: &str| -> Result<String, AttestationError> {
            let mut v: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| AttestationError::Issuer(format!("TDX template collateral: {e}")))?;
            let fmt = |t: OffsetDateTime| {
                t.replace_nanosecond(0)
                    .unwrap_or(t)
                    .format(&Rfc3339)
                    .map_err(|e| AttestationError::Issuer(format!("formatting a date: {e}")))
            };
            v["issueDate"] = fmt(issue)?.into();
            v["nextUpdate"] = fmt(next_update)?.into();
            serde_json::to_string(&v)
                .map_err(|e| AttestationError::Issuer(format!("TDX collateral: {e}")))
        };
        let tcb_info = redate(&template.tcb_info)?;
        let qe_identity = redate(&template.qe_identity)?;

        let crl = |issuer: &Issuer<'_, &KeyPair>, revoked: Vec<RevokedCertParams>| {
            CertificateRevocationListParams {
                this_update: issue,
                next_update,
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: revoked,
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(issuer)
            .map(|c| c.der().to_vec())
            .map_err(issuer_err("signing a CRL"))
        };
        let root_issuer = Issuer::from_params(&self.root_params, &self.root.rcgen);
        let pck_ca_issuer = Issuer::from_params(&self.pck_ca_params, &self.pck_ca.rcgen);
        let revoked = if revoke_pck {
            vec![RevokedCertParams {
                serial_number: SerialNumber::from_slice(&self.pck_serial),
                revocation_time: self.not_before.max(issue - time::Duration::hours(1)),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            }]
        } else {
            vec![]
        };
        let signer_chain = format!("{}{}", self.tcb_signer_pem, self.root_pem);
        Ok(Collateral {
            pck_crl_issuer_chain: format!("{}{}", self.pck_ca_pem, self.root_pem),
            root_ca_crl: hex::encode(crl(&root_issuer, vec![])?),
            pck_crl: hex::encode(crl(&pck_ca_issuer, revoked)?),
            tcb_info_issuer_chain: signer_chain.clone(),
            tcb_info_signature: hex::encode(self.tcb_signer.sign(tcb_info.as_bytes())),
            tcb_info,
            qe_identity_issuer_chain: signer_chain,
            qe_identity_signature: hex::encode(self.tcb_signer.sign(qe_identity.as_bytes())),
            qe_identity,
        })
    }
}
