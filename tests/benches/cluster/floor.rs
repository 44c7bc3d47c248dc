//! Issue 11 item 1: the crypto floor of one NewMeshCert, measured with the fastest implementation
//! here (ring's and AWS-LC's assembly, each measured, the faster taken for each operation),
//! `openssl speed` printed beside them, and the NewMeshCert crypto pipeline on SNP evidence (the real
//! vectors, at a pinned time) against it.
//!
//! What one NewMeshCert cannot do without, on the replica: verify the workload report's P-384
//! signature, verify the workload's TLS 1.3 CertificateVerify (P-256), sign the replica's own
//! CertificateVerify (P-256) and sign the workload's leaf (P-256). The VCEK's chain is verified once
//! per VCEK (remembered), the replica's own report once per batch (binding v3): neither is per
//! certificate. Each operation is timed on this thread's CPU time, so other programs do not skew it.

use std::process::Command;
use std::time::{Duration, SystemTime};

use concord_attestation::{
    Evidence, Measurement, MinimumTcb, Platform, PlatformTrust, Product, ReferenceValues, Report,
    SnpReference, Tcb, Verifier,
};
use concord_mesh_ca::{MeshCa, RootCa, SeedEngine};
use rcgen::PublicKeyData as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use time::OffsetDateTime;

use crate::mesh::cpu_time;
use crate::table::{Row, Verdict};

/// Operations per CPU second of one thread.
#[derive(Debug, Clone, Copy)]
pub struct Ops {
    pub p384_verify: f64,
    pub p256_verify: f64,
    pub p256_sign: f64,
    /// The server's side of one TLS 1.3 X25519 key exchange: an ephemeral key made, its public
    /// value computed, the shared secret agreed with the client's.
    pub x25519: f64,
}

/// Both implementations' rates, and the floor from the faster of each operation.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub ring: Ops,
    pub aws_lc: Ops,
}

impl Floor {
    /// The faster implementation's rate of each operation.
    pub fn fastest(&self) -> Ops {
        Ops {
            p384_verify: self.ring.p384_verify.max(self.aws_lc.p384_verify),
            p256_verify: self.ring.p256_verify.max(self.aws_lc.p256_verify),
            p256_sign: self.ring.p256_sign.max(self.aws_lc.p256_sign),
            x25519: self.ring.x25519.max(self.aws_lc.x25519),
        }
    }

    /// NewMeshCerts per CPU second if the replica did nothing but the public-key operations it
    /// needs, each with the faster implementation: the signatures, and the key exchange without
    /// which TLS 1.3 has no handshake (the workload's secrets travel on that connection).
    pub fn per_cpu_second(&self) -> f64 {
        let f = self.fastest();
        1.0 / (1.0 / self.signatures_per_cpu_second() + 1.0 / f.x25519)
    }

    /// The floor of the signatures alone (issue 11's first definition), printed beside the floor.
    pub fn signatures_per_cpu_second(&self) -> f64 {
        let f = self.fastest();
        1.0 / (1.0 / f.p384_verify + 1.0 / f.p256_verify + 2.0 / f.p256_sign)
    }
}

/// `op` per CPU second of this thread, run for about `window` of CPU time.
fn rate(window: Duration, mut op: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    let start = cpu_time("/proc/thread-self/stat")?;
    let mut done = 0u64;
    loop {
        for _ in 0..16 {
            op()?;
        }
        done += 16;
        let used = cpu_time("/proc/thread-self/stat")? - start;
        if used >= window {
            return Ok(done as f64 / used.as_secs_f64());
        }
    }
}

/// Ring's and AWS-LC's P-384 and P-256 ECDSA on one thread.
pub fn measure(window: Duration) -> Result<Floor, String> {
    Ok(Floor {
        ring: measure_ring(window)?,
        aws_lc: measure_aws_lc(window)?,
    })
}

/// A message the size of a report's signed part, give or take.
const MESSAGE: [u8; 512] = [0x5a; 512];

/// The rates of one implementation's four operations, each timed on its own.
fn ops(
    window: Duration,
    p384_verify: impl FnMut() -> Result<(), String>,
    p256_verify: impl FnMut() -> Result<(), String>,
    p256_sign: impl FnMut() -> Result<(), String>,
    x25519: impl FnMut() -> Result<(), String>,
) -> Result<Ops, String> {
    Ok(Ops {
        p384_verify: rate(window, p384_verify)?,
        p256_verify: rate(window, p256_verify)?,
        p256_sign: rate(window, p256_sign)?,
        x25519: rate(window, x25519)?,
    })
}

fn measure_ring(window: Duration) -> Result<Ops, String> {
    let rng = SystemRandom::new();
    let pair = |alg| -> Result<EcdsaKeyPair, String> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|e| e.to_string())?;
        EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).map_err(|e| e.to_string())
    };
    let p384 = pair(&signature::ECDSA_P384_SHA384_FIXED_SIGNING)?;
    let p256 = pair(&signature::ECDSA_P256_SHA256_ASN1_SIGNING)?;
    let sig384 = p384.sign(&rng, &MESSAGE).map_err(|e| e.to_string())?;
    let sig256 = p256.sign(&rng, &MESSAGE).map_err(|e| e.to_string())?;
    let v384 = UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, p384.public_key());
    let v256 = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, p256.public_key());
    let bad = |e: ring::error::Unspecified| e.to_string();
    use ring::agreement::{self, EphemeralPrivateKey, X25519};
    let client = EphemeralPrivateKey::generate(&X25519, &rng).map_err(bad)?;
    let client = client.compute_public_key().map_err(bad)?;
    let client = agreement::UnparsedPublicKey::new(&X25519, client.as_ref().to_vec());
    ops(
        window,
        || v384.verify(&MESSAGE, sig384.as_ref()).map_err(bad),
        || v256.verify(&MESSAGE, sig256.as_ref()).map_err(bad),
        || p256.sign(&rng, &MESSAGE).map(drop).map_err(bad),
        || {
            let own = EphemeralPrivateKey::generate(&X25519, &rng).map_err(bad)?;
            std::hint::black_box(own.compute_public_key().map_err(bad)?);
            agreement::agree_ephemeral(own, &client, |secret| {
                std::hint::black_box(secret.first().copied());
            })
            .map_err(bad)
        },
    )
}

fn measure_aws_lc(window: Duration) -> Result<Ops, String> {
    use aws_lc_rs::signature::{self as lc, KeyPair as _};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pair = |alg| -> Result<lc::EcdsaKeyPair, String> {
        let pkcs8 = lc::EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|e| e.to_string())?;
        lc::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).map_err(|e| e.to_string())
    };
    let p384 = pair(&lc::ECDSA_P384_SHA384_FIXED_SIGNING)?;
    let p256 = pair(&lc::ECDSA_P256_SHA256_ASN1_SIGNING)?;
    let sig384 = p384.sign(&rng, &MESSAGE).map_err(|e| e.to_string())?;
    let sig256 = p256.sign(&rng, &MESSAGE).map_err(|e| e.to_string())?;
    let v384 = lc::UnparsedPublicKey::new(&lc::ECDSA_P384_SHA384_FIXED, p384.public_key());
    let v256 = lc::UnparsedPublicKey::new(&lc::ECDSA_P256_SHA256_ASN1, p256.public_key());
    let bad = |e: aws_lc_rs::error::Unspecified| e.to_string();
    use aws_lc_rs::agreement::{self, EphemeralPrivateKey, X25519};
    let client = EphemeralPrivateKey::generate(&X25519, &rng).map_err(bad)?;
    let client = client.compute_public_key().map_err(bad)?;
    let client = agreement::UnparsedPublicKey::new(&X25519, client.as_ref().to_vec());
    ops(
        window,
        || v384.verify(&MESSAGE, sig384.as_ref()).map_err(bad),
        || v256.verify(&MESSAGE, sig256.as_ref()).map_err(bad),
        || p256.sign(&rng, &MESSAGE).map(drop).map_err(bad),
        || {
            let own = EphemeralPrivateKey::generate(&X25519, &rng).map_err(bad)?;
            std::hint::black_box(own.compute_public_key().map_err(bad)?);
            agreement::agree_ephemeral(own, &client, bad(aws_lc_rs::error::Unspecified), |s| {
                std::hint::black_box(s.first().copied());
                Ok(())
            })
        },
    )
}

/// `openssl speed`'s ECDSA P-256 and P-384 lines (sign/s, verify/s), when openssl is installed.
pub fn openssl_speed() -> String {
    let Ok(out) = Command::new("openssl")
        .args(["speed", "-seconds", "1", "ecdsap256", "ecdsap384"])
        .output()
    else {
        return "openssl not on PATH".into();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let figures: Vec<String> = ["nistp256", "nistp384"]
        .iter()
        .filter_map(|curve| {
            let line = text
                .lines()
                .find(|l| l.contains("ecdsa") && l.contains(curve))?;
            let numbers: Vec<&str> = line.split_whitespace().rev().take(2).collect();
            Some(format!(
                "{curve} sign {} verify {} /s",
                numbers.get(1)?,
                numbers.first()?
            ))
        })
        .collect();
    if figures.is_empty() {
        "openssl speed printed no ECDSA lines".into()
    } else {
        format!("openssl speed (1 process): {}", figures.join("; "))
    }
}

/// The crypto of NewMeshCerts on SNP evidence: the real Milan report verified at a pinned time
/// (chain, report signature, every claim) and a leaf signed, per CPU second of this thread.
pub fn snp_pipeline(window: Duration) -> Result<f64, String> {
    let crypto = |e: concord_mesh_ca::MeshCaError| e.to_string();
    let now = OffsetDateTime::now_utc();
    let engine = SeedEngine::generate().map_err(crypto)?;
    let root_ca = RootCa::create(&engine.root_ca_key().map_err(crypto)?, now).map_err(crypto)?;
    let mesh_ca = MeshCa::generate(&root_ca, now).map_err(crypto)?;
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let spki = key.subject_public_key_info();
    let (evidence, reference, report_data) = milan_vector()?;
    // Within the VCEK's validity (issued 2023-04-03, for seven years).
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600); // 2025-01-01
    // The vectors hold no AMD CRL (an ARK-signed one cannot be made in a test), so revocation is not
    // checked here; the row says so. A CRL check adds one RSA-4096 verification per CRL.
    let verifier = Verifier::new(PlatformTrust::default())
        .with_snp_revocation(concord_attestation::snp::SnpRevocation::NotChecked);
    let sans = vec!["web.example".to_string()];
    rate(window, || {
        verifier
            .verify(&evidence, &reference, &report_data, &|_| true, at)
            .map_err(|e| e.to_string())?;
        mesh_ca
            .issue(&spki, "web", &sans, OffsetDateTime::now_utc())
            .map(drop)
            .map_err(crypto)
    })
}

/// The virtee Milan report (attestation/testdata, see its README), its VCEK, reference values that
/// accept exactly it, and its report data.
fn milan_vector() -> Result<(Evidence, ReferenceValues, [u8; 64]), String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../attestation/testdata/");
    let read = |f: &str| std::fs::read(format!("{dir}{f}")).map_err(|e| format!("{dir}{f}: {e}"));
    let raw = read("virtee-sev-report_milan.bin")?;
    let report = Report::parse(&raw).map_err(|e| e.to_string())?;
    let tcb = Tcb::decode(report.reported_tcb(), Product::Milan);
    let reference = ReferenceValues {
        snp: vec![SnpReference {
            product: Product::Milan,
            trusted_measurements: vec![Measurement(*report.measurement())],
            minimum_tcb: MinimumTcb {
                bootloader: tcb.bootloader,
                tee: tcb.tee,
                snp: tcb.snp,
                microcode: tcb.microcode,
                fmc: tcb.fmc,
            },
            allow_debug: false,
            allow_migration_agent: false,
            allowed_chip_ids: None,
        }],
        simulated: vec![],
        tdx: vec![],
    };
    let report_data = *report.report_data();
    let evidence = Evidence {
        platform: Platform::Snp,
        report: raw,
        certificates: vec![read("virtee-sev-vcek_milan.der")?],
        crls: vec![],
    };
    Ok((evidence, reference, report_data))
}

/// The reference of rows measured between two floor measurements, `before` and `after`: the mean
/// of the two (the machine's speed drifts; neither end is favoured), of the floor and of the
/// signatures alone.
pub fn bracketing(before: &Floor, after: &Floor) -> Reference {
    Reference {
        handshake: (before.per_cpu_second() + after.per_cpu_second()) / 2.0,
        signatures: (before.signatures_per_cpu_second() + after.signatures_per_cpu_second()) / 2.0,
    }
}

/// A row's reference, per CPU second: the floor of a NewMeshCert over its TLS 1.3 handshake
/// (`handshake`: the signatures and the key exchange), what the replica rows are judged against,
/// and the signatures alone (issue 11's first definition), what the crypto pipelines (no TLS) are
/// judged against and what the replica rows print beside.
#[derive(Debug, Clone, Copy)]
pub struct Reference {
    pub handshake: f64,
    pub signatures: f64,
}

/// The floor measured again during the replica rows: right before the judged (32-workload) row and
/// right after it.
pub struct Again {
    pub between: Floor,
    pub after: Floor,
}

/// The replica rows' references: the 8-workload row and the crypto pipeline's (run before the first
/// measurement again) against the mean of the first two measurements, the judged row against the
/// mean of the two right around it.
#[derive(Debug, Clone, Copy)]
pub struct References {
    pub light: Reference,
    pub judged: Reference,
}

impl Again {
    pub fn references(&self, first: &Floor) -> References {
        References {
            light: bracketing(first, &self.between),
            judged: bracketing(&self.between, &self.after),
        }
    }
}

/// The floor rows (the floor measured again after the replica rows, when it was), and the SNP
/// pipeline against the first measurement, which it follows.
pub fn rows(
    floor: &Floor,
    again: Option<&Again>,
    openssl: &str,
    snp: Result<f64, String>,
) -> Vec<Row> {
    let per_cpu = floor.per_cpu_second();
    let ops = |name: &str, o: &Ops| {
        Row::new(
            format!("ECDSA and X25519 with {name}, 1 thread, per CPU second"),
            format!(
                "P-384 verify {:.0}, P-256 verify {:.0}, P-256 sign {:.0}, X25519 exchange {:.0}",
                o.p384_verify, o.p256_verify, o.p256_sign, o.x25519
            ),
            openssl.to_string(),
            "-",
            Verdict::Info,
        )
    };
    let mut rows = vec![
        ops("ring", &floor.ring),
        ops("AWS-LC (aws-lc-rs)", &floor.aws_lc),
        Row::new(
            "NewMeshCert crypto floor (P-384 verify + P-256 verify + 2 P-256 sign + X25519 exchange)",
            format!("{per_cpu:.0} per CPU second"),
            format!(
                "the faster of the two rows above, for each operation; the signatures alone: {:.0}",
                floor.signatures_per_cpu_second()
            ),
            "-",
            Verdict::Info,
        ),
    ];
    if let Some(again) = again {
        let references = again.references(floor);
        rows.push(Row::new(
            "NewMeshCert crypto floor, measured again right before the 32-workload row",
            format!("{:.0} per CPU second", again.between.per_cpu_second()),
            format!(
                "the 8-workload and pipeline rows' reference: the mean with the first, {:.0} (signatures alone {:.0})",
                references.light.handshake, references.light.signatures
            ),
            "-",
            Verdict::Info,
        ));
        rows.push(Row::new(
            "NewMeshCert crypto floor, measured again right after the 32-workload row",
            format!("{:.0} per CPU second", again.after.per_cpu_second()),
            format!(
                "the 32-workload row's reference: the mean with the one before, {:.0} (signatures alone {:.0})",
                references.judged.handshake, references.judged.signatures
            ),
            "-",
            Verdict::Info,
        ));
    }
    // The pipeline makes no TLS handshake: judged against the signatures alone.
    let signatures = floor.signatures_per_cpu_second();
    rows.push(match snp {
        Ok(snp) => Row::new(
            "NewMeshCert crypto, SNP evidence (real Milan report, pinned time, no CRL)",
            format!("{snp:.0} per CPU second ({:.0}%)", 100.0 * snp / signatures),
            format!("floor of the signatures alone: {signatures:.0} per CPU second"),
            ">= 50% of the floor",
            Verdict::of(snp >= signatures / 2.0),
        ),
        Err(e) => Row::error("NewMeshCert crypto, SNP evidence", &e),
    });
    rows
}
