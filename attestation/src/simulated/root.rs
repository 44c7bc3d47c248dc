//! The simulated root CA: generation, files, and the issuer handle that certifies simulated VCEKs.

use std::fs;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P384_SHA384,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::chain;
use crate::error::{AttestationError, CertRole};

/// File name of the root's private key (PKCS#8 PEM, mode 0600).
pub const ROOT_KEY_FILE: &str = "sim-root.key.pem";
/// File name of the root certificate (PEM).
pub const ROOT_CERT_FILE: &str = "sim-root.pem";

const ROOT_CN: &str = "Concord INSECURE simulated root";
const ROOT_VALIDITY_DAYS: i64 = 3650;

/// A simulated root CA: a P-384 key and its self-signed certificate.
pub struct SimulatedRoot {
    key: KeyPair,
    cert_der: Vec<u8>,
    cert_pem: String,
}

impl std::fmt::Debug for SimulatedRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedRoot")
            .field("hash", &hex::encode(self.hash()))
            .finish_non_exhaustive()
    }
}

/// The root's name and CA settings; the same for a generated and for a loaded root, so that the
/// issuer name of every simulated VCEK equals the root's subject.
fn root_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, ROOT_CN);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn config(what: &str) -> impl Fn(std::io::Error) -> AttestationError + '_ {
    move |e| AttestationError::Config(format!("{what}: {e}"))
}

impl SimulatedRoot {
    /// Generates a root: P-384 key, self-signed CA certificate valid for 10 years.
    pub fn generate() -> Result<Self, AttestationError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(|e| {
            AttestationError::Issuer(format!("generating the simulated root key: {e}"))
        })?;
        let now = OffsetDateTime::now_utc();
        let mut params = root_params();
        // A day of slack for clocks that disagree across the machines of a demo.
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(ROOT_VALIDITY_DAYS);
        let cert = params.self_signed(&key).map_err(|e| {
            AttestationError::Issuer(format!("self-signing the simulated root: {e}"))
        })?;
        Ok(Self {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key,
        })
    }

    /// Writes `sim-root.key.pem` (mode 0600) and `sim-root.pem` into `dir`, creating it.
    pub fn save(&self, dir: &Path) -> Result<(), AttestationError> {
        fs::create_dir_all(dir).map_err(config("creating the simulated root directory"))?;
        write_private(
            &dir.join(ROOT_KEY_FILE),
            self.key.serialize_pem().as_bytes(),
        )?;
        fs::write(dir.join(ROOT_CERT_FILE), &self.cert_pem)
            .map_err(config("writing the simulated root certificate"))
    }

    /// Reads a root written by [`save`](Self::save), checking that the key is P-384, that the
    /// certificate is self-signed by it, and that the key matches the certificate.
    pub fn load(dir: &Path) -> Result<Self, AttestationError> {
        let key_path = dir.join(ROOT_KEY_FILE);
        let key_pem =
            fs::read_to_string(&key_path).map_err(config("reading the simulated root key"))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            AttestationError::Config(format!(
                "{}: not a PEM private key: {e}",
                key_path.display()
            ))
        })?;
        if key.algorithm() != &PKCS_ECDSA_P384_SHA384 {
            return Err(AttestationError::Config(format!(
                "{}: the simulated root key must be ECDSA P-384",
                key_path.display()
            )));
        }
        let cert_pem = fs::read_to_string(dir.join(ROOT_CERT_FILE))
            .map_err(config("reading the simulated root certificate"))?;
        let cert_der = match x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) {
            Ok((_, pem)) if pem.label == "CERTIFICATE" => pem.contents,
            _ => {
                return Err(AttestationError::Config(format!(
                    "{}: not a PEM certificate",
                    dir.join(ROOT_CERT_FILE).display()
                )));
            }
        };
        let root = Self {
            key,
            cert_der,
            cert_pem,
        };
        root.self_check().map_err(|e| {
            AttestationError::Config(format!("the simulated root in {}: {e}", dir.display()))
        })?;
        Ok(root)
    }

    fn self_check(&self) -> Result<(), AttestationError> {
        let cert = chain::parse_cert(&self.cert_der, CertRole::Root)?;
        if cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&self.key) {
            return Err(AttestationError::Config(
                "the key does not match the certificate".into(),
            ));
        }
        let key = chain::p384_key(&cert, CertRole::Root)?;
        chain::check_issued_by(&cert, CertRole::Root, &cert, &key)
    }

    /// The root certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The root certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the certificate DER: the value for `insecure_simulated_root` and for
    /// `reference_values.simulated[].root`.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(&self.cert_der).into()
    }

    /// The validity period of the root certificate.
    pub(crate) fn validity(&self) -> Result<(OffsetDateTime, OffsetDateTime), AttestationError> {
        let cert = chain::parse_cert(&self.cert_der, CertRole::Root)?;
        let v = cert.validity();
        Ok((v.not_before.to_datetime(), v.not_after.to_datetime()))
    }

    /// An rcgen issuer that signs with the root key under the root's name.
    pub(crate) fn issuer(&self) -> Issuer<'static, &KeyPair> {
        Issuer::new(root_params(), &self.key)
    }
}

/// Writes a file only the owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AttestationError> {
    use std::io::Write as _;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(config("creating the simulated root key file"))?;
    // `mode` applies only to a new file: tighten an existing one too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(config("restricting the simulated root key file"))?;
    }
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(config("writing the simulated root key file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_save_load_round_trip() {
        let root = SimulatedRoot::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        root.save(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join(ROOT_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = SimulatedRoot::load(dir.path()).unwrap();
        assert_eq!(loaded.hash(), root.hash());
        assert_eq!(loaded.cert_der(), root.cert_der());

        let cert = chain::parse_cert(root.cert_der(), CertRole::Root).unwrap();
        assert!(cert.is_ca());
        assert_eq!(
            cert.subject().to_string(),
            "CN=Concord INSECURE simulated root"
        );
        let (nb, na) = root.validity().unwrap();
        assert!(na - nb > Duration::days(3650));
    }

    #[test]
    fn load_refuses_a_key_that_does_not_match() {
        let a = SimulatedRoot::generate().unwrap();
        let b = SimulatedRoot::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        a.save(dir.path()).unwrap();
        fs::write(dir.path().join(ROOT_CERT_FILE), b.cert_pem()).unwrap();
        let err = SimulatedRoot::load(dir.path()).unwrap_err();
        assert!(
            matches!(&err, AttestationError::Config(m) if m.contains("does not match")),
            "{err}"
        );
    }

    #[test]
    fn load_of_missing_files_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            SimulatedRoot::load(dir.path()),
            Err(AttestationError::Config(_))
        ));
    }
}
