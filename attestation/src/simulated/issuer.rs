//! The simulated issuer: a "VCEK" certified by the simulated root, signing SNP-layout reports.

use rand::RngCore as _;
use rcgen::{CertificateParams, DnType, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P384_SHA384};
use time::{Duration, OffsetDateTime};

use super::SimulatedRoot;
use crate::chain;
use crate::error::{AttestationError, CertRole};
use crate::evidence::{Evidence, Platform};
use crate::issuer::EvidenceIssuer;
use crate::report::{
    OFF_SIG_R, OFF_SIG_S, REPORT_LEN, ReportBuilder, SIG_COMPONENT_LEN, SIGNED_LEN, Tcb,
};

/// The TCB every simulated report claims (current and reported): bootloader 3, TEE 0, SNP 8,
/// microcode 115, a real Milan TCB.
pub const SIMULATED_TCB: Tcb = Tcb::new(3, 0, 8, 115);

const VCEK_CN: &str = "Concord INSECURE simulated VCEK";

/// Issues simulated evidence for one measurement and one policy hash (`host_data`).
pub struct SimulatedIssuer {
    /// The VCEK's key, in AWS-LC: its assembly P-384 signs about four times faster than ring's, ring's
    /// several times faster than `p384` (a replica signs its own reports: on SEV-SNP the secure
    /// processor does, so the simulated platform should cost the CPU little).
    signing_key: aws_lc_rs::signature::EcdsaKeyPair,
    rng: aws_lc_rs::rand::SystemRandom,
    vcek_der: Vec<u8>,
    root_der: Vec<u8>,
    measurement: [u8; 48],
    host_data: [u8; 32],
    chip_id: [u8; 64],
}

impl std::fmt::Debug for SimulatedIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedIssuer")
            .field("measurement", &hex::encode(self.measurement))
            .field("host_data", &hex::encode(self.host_data))
            .finish_non_exhaustive()
    }
}

impl SimulatedIssuer {
    /// Creates a fresh simulated VCEK (P-384) certified by `root`, and a random chip ID.
    pub fn new(
        root: &SimulatedRoot,
        measurement: [u8; 48],
        host_data: [u8; 32],
    ) -> Result<Self, AttestationError> {
        let issuer_err = |what: &str| {
            let what = what.to_owned();
            move |e: rcgen::Error| AttestationError::Issuer(format!("{what}: {e}"))
        };
        let vcek = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)
            .map_err(issuer_err("generating the simulated VCEK"))?;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signing_key = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            vcek.serialized_der(),
        )
        .map_err(|e| AttestationError::Issuer(format!("loading the simulated VCEK: {e}")))?;

        // Inside the root's validity, ending a day before it, so that the root outlives it.
        let (root_not_before, root_not_after) = root.validity()?;
        let now = OffsetDateTime::now_utc();
        let not_after = root_not_after - Duration::days(1);
        if not_after <= now {
            return Err(AttestationError::Config(format!(
                "the simulated root expires at {root_not_after}; generate a new one"
            )));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, VCEK_CN);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = (now - Duration::hours(1)).max(root_not_before);
        params.not_after = not_after;
        let cert = params
            .signed_by(&vcek, &root.issuer())
            .map_err(issuer_err("certifying the simulated VCEK"))?;
        let vcek_der = cert.der().to_vec();

        // Evidence this issuer produces must verify: check the chain link now, not at a peer.
        let root_cert = chain::parse_cert(root.cert_der(), CertRole::Root)?;
        let root_key = chain::p384_key(&root_cert, CertRole::Root)?;
        let vcek_cert = chain::parse_cert(&vcek_der, CertRole::Signer)?;
        chain::check_issued_by(&vcek_cert, CertRole::Signer, &root_cert, &root_key).map_err(
            |e| {
                AttestationError::Config(format!(
                    "the simulated VCEK does not chain to the root: {e}"
                ))
            },
        )?;

        tracing::warn!(
            simulated_root = %hex::encode(root.hash()),
            "INSECURE: simulated attestation: this process issues simulated evidence"
        );
        let mut chip_id = [0u8; 64];
        rand::rngs::OsRng
            .try_fill_bytes(&mut chip_id)
            .map_err(|e| {
                AttestationError::Issuer(format!("the OS random generator failed: {e}"))
            })?;
        Ok(Self {
            signing_key,
            rng,
            vcek_der,
            root_der: root.cert_der().to_vec(),
            measurement,
            host_data,
            chip_id,
        })
    }

    /// The simulated VCEK certificate, DER.
    pub fn vcek_der(&self) -> &[u8] {
        &self.vcek_der
    }

    /// The random chip ID every report of this issuer carries.
    pub fn chip_id(&self) -> &[u8; 64] {
        &self.chip_id
    }

    /// The measurement every report of this issuer carries.
    pub fn measurement(&self) -> &[u8; 48] {
        &self.measurement
    }

    /// The host data every report of this issuer carries.
    pub fn host_data(&self) -> &[u8; 32] {
        &self.host_data
    }

    fn sign(&self, raw: &mut [u8; REPORT_LEN]) -> Result<(), AttestationError> {
        let signature = self
            .signing_key
            .sign(&self.rng, &raw[..SIGNED_LEN])
            .map_err(|e| AttestationError::Issuer(format!("signing the simulated report: {e}")))?;
        let (r, s) = signature.as_ref().split_at(SIGNATURE_SCALAR_LEN);
        write_signature(raw, r, s);
        Ok(())
    }

    /// Re-signs a report after a test changed it, to test checks that come after the signature.
    #[cfg(any(test, feature = "testing"))]
    pub fn resign(&self, raw: &mut [u8; REPORT_LEN]) {
        // Invariant: ECDSA signing with a valid in-memory P-384 key cannot fail; and this is
        // test-only code (feature `testing`), where a panic is the right report anyway.
        #[allow(clippy::expect_used)]
        self.sign(raw).expect("signing with an in-memory P-384 key");
    }
}

/// Length of `r` and of `s` in a fixed-size P-384 signature.
const SIGNATURE_SCALAR_LEN: usize = 48;

/// Signs `raw[..0x2A0]` and writes `r` and `s`, little-endian and zero-padded, at 0x2A0/0x2E8.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn sign_report(
    key: &p384::ecdsa::SigningKey,
    raw: &mut [u8; REPORT_LEN],
) -> Result<(), AttestationError> {
    use p384::ecdsa::signature::Signer as _;
    let signature: p384::ecdsa::Signature = key
        .try_sign(&raw[..SIGNED_LEN])
        .map_err(|e| AttestationError::Issuer(format!("signing the simulated report: {e}")))?;
    let (r, s) = signature.split_bytes();
    write_signature(raw, &r, &s);
    Ok(())
}

/// Writes big-endian `r` and `s` little-endian and zero-padded at 0x2A0/0x2E8.
fn write_signature(raw: &mut [u8; REPORT_LEN], r: &[u8], s: &[u8]) {
    for (offset, be) in [(OFF_SIG_R, r), (OFF_SIG_S, s)] {
        let field = &mut raw[offset..offset + SIG_COMPONENT_LEN];
        field.fill(0);
        for (dst, src) in field.iter_mut().zip(be.iter().rev()) {
            *dst = *src;
        }
    }
}

impl EvidenceIssuer for SimulatedIssuer {
    fn platform(&self) -> Platform {
        Platform::Simulated
    }

    fn issue(&self, report_data: &[u8; 64]) -> Result<Evidence, AttestationError> {
        let mut raw = ReportBuilder::new()
            .report_data(report_data)
            .measurement(&self.measurement)
            .host_data(&self.host_data)
            .chip_id(&self.chip_id)
            .current_tcb(SIMULATED_TCB)
            .reported_tcb(SIMULATED_TCB)
            .build_unsigned();
        self.sign(&mut raw)?;
        Ok(Evidence {
            platform: Platform::Simulated,
            report: raw.to_vec(),
            certificates: vec![self.vcek_der.clone(), self.root_der.clone()],
            crls: vec![],
        })
    }
}
