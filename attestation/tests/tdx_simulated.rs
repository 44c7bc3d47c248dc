//! Simulated TDX evidence (quotes in Intel's layout from a hierarchy the simulated root endorses)
//! through the same verifier and aTLS as SNP: accepted when the launch configuration and the
//! reference values name the simulated root and a `tdx` entry accepts the quote; each trust check
//! refuses with its own reason; a reference with both an SNP-shaped and a TDX entry accepts both.

use std::sync::Arc;

use concord_attestation::atls::{AtlsAcceptor, AtlsClient, ClientAuth, ClientIdentity};
use concord_attestation::testing::{DEPLOYMENT, HOST_DATA, MEASUREMENT, SimFixture, tls_key};
use concord_attestation::{
    AttestationError, CertRole, DeploymentId, DeploymentPin, Evidence, EvidenceIssuer, Measurement,
    Platform, PlatformTrust, ReferenceValues, RejectReason, StaticPolicy, TdxReference,
    TdxTcbStatus, VerifiedReport, Verifier, simulated::SimulatedTdxIssuer,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const REPORT_DATA: [u8; 64] = [0x44; 64];

fn tdx_entry(mrtd: [u8; 48]) -> TdxReference {
    TdxReference {
        trusted_mrtd: vec![Measurement(mrtd)],
        rtmr: None,
        trusted_mrseam: None,
        minimum_tee_tcb_svn: None,
        allowed_tcb_statuses: vec![TdxTcbStatus::UpToDate],
        allow_debug: false,
    }
}

/// The fixture's simulated reference values plus a TDX entry for MEASUREMENT.
fn reference(f: &SimFixture) -> ReferenceValues {
    let mut r = f.reference();
    r.tdx = vec![tdx_entry(MEASUREMENT)];
    r
}

fn tdx_issuer(f: &SimFixture) -> SimulatedTdxIssuer {
    SimulatedTdxIssuer::new(&f.root, MEASUREMENT, HOST_DATA).unwrap()
}

fn verify_with(
    verifier: &Verifier,
    evidence: &Evidence,
    reference: &ReferenceValues,
) -> Result<VerifiedReport, AttestationError> {
    verifier.verify(
        evidence,
        reference,
        &REPORT_DATA,
        &|h| h == &HOST_DATA,
        std::time::SystemTime::now(),
    )
}

fn rejected(result: Result<VerifiedReport, AttestationError>) -> RejectReason {
    match result {
        Err(AttestationError::Rejected(reason)) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn simulated_tdx_evidence_verifies_after_a_wire_round_trip() {
    let f = SimFixture::new();
    let issuer = tdx_issuer(&f);
    assert_eq!(issuer.platform(), Platform::Tdx);
    let evidence = Evidence::from_bytes(&issuer.issue(&REPORT_DATA).unwrap().to_bytes()).unwrap();
    assert_eq!(evidence.platform, Platform::Tdx);
    assert_eq!(evidence.certificates.len(), 4);
    let verified = verify_with(&f.verifier(), &evidence, &reference(&f)).unwrap();
    assert_eq!(verified.platform(), Platform::Tdx);
    assert_eq!(verified.measurement(), &MEASUREMENT);
    assert_eq!(verified.host_data(), &HOST_DATA);
    assert_eq!(verified.report_data(), &REPORT_DATA);
    let claims = verified.tdx_claims().unwrap();
    assert_eq!(claims.mrtd, hex::encode(MEASUREMENT));
    assert_eq!(claims.tcb_status.as_deref(), Some("UpToDate"));
}

#[test]
fn each_trust_check_refuses_with_its_own_reason() {
    let f = SimFixture::new();
    let evidence = tdx_issuer(&f).issue(&REPORT_DATA).unwrap();
    // Not enabled at launch; another root at launch; the reference values do not name the root.
    let off = Verifier::new(PlatformTrust::default());
    assert_eq!(
        rejected(verify_with(&off, &evidence, &reference(&f))),
        RejectReason::SimulatedNotEnabled
    );
    let other = SimFixture::new();
    assert_eq!(
        rejected(verify_with(&other.verifier(), &evidence, &reference(&f))),
        RejectReason::SimulatedRootNotTrusted
    );
    let mut unnamed = reference(&f);
    unnamed.simulated.clear();
    assert_eq!(
        rejected(verify_with(&f.verifier(), &evidence, &unnamed)),
        RejectReason::SimulatedRootNotInReferenceValues
    );
    // No tdx entry; an MRTD not trusted; a policy hash not accepted.
    let mut no_tdx = reference(&f);
    no_tdx.tdx.clear();
    assert_eq!(
        rejected(verify_with(&f.verifier(), &evidence, &no_tdx)),
        RejectReason::NoTdxReferenceValues
    );
    let mut other_mrtd = reference(&f);
    other_mrtd.tdx = vec![tdx_entry([0x77; 48])];
    assert_eq!(
        rejected(verify_with(&f.verifier(), &evidence, &other_mrtd)),
        RejectReason::TdxMrtdNotTrusted
    );
    let foreign_policy = SimulatedTdxIssuer::new(&f.root, MEASUREMENT, [0x99; 32])
        .unwrap()
        .issue(&REPORT_DATA)
        .unwrap();
    assert_eq!(
        rejected(verify_with(&f.verifier(), &foreign_policy, &reference(&f))),
        RejectReason::TdxMrConfigIdNotAccepted
    );
    // A hierarchy endorsed by another simulated root, presented with the trusted root.
    let mut forged = SimulatedTdxIssuer::new(&other.root, MEASUREMENT, HOST_DATA)
        .unwrap()
        .issue(&REPORT_DATA)
        .unwrap();
    forged.certificates[3] = f.root.cert_der().to_vec();
    assert!(matches!(
        rejected(verify_with(&f.verifier(), &forged, &reference(&f))),
        RejectReason::CertificateChain {
            role: CertRole::Intermediate
        } | RejectReason::CertificateSignature {
            role: CertRole::Intermediate
        }
    ));
    // Another hierarchy's root in place of the endorsed one.
    let mut swapped = evidence.clone();
    swapped.certificates[1] = SimulatedTdxIssuer::new(&f.root, MEASUREMENT, HOST_DATA)
        .unwrap()
        .issue(&REPORT_DATA)
        .unwrap()
        .certificates[1]
        .clone();
    assert_eq!(
        rejected(verify_with(&f.verifier(), &swapped, &reference(&f))),
        RejectReason::CertificateChain {
            role: CertRole::Intermediate
        }
    );
    // Other report data.
    assert_eq!(
        rejected(f.verifier().verify(
            &evidence,
            &reference(&f),
            &[0; 64],
            &|h| h == &HOST_DATA,
            std::time::SystemTime::now()
        )),
        RejectReason::ReportDataMismatch
    );
    // A simulated root the launch does not trust cannot vouch for a real-looking quote either:
    // one certificate (real TDX) means Intel's pinned root.
    let mut as_real = evidence.clone();
    as_real.certificates.truncate(1);
    assert!(matches!(
        rejected(verify_with(&f.verifier(), &as_real, &reference(&f))),
        // The root CA CRL is the first thing Intel's root must have signed.
        RejectReason::TdxCrl(_) | RejectReason::TdxCertificateChain(_)
    ));
}

#[test]
fn one_reference_with_snp_shaped_and_tdx_entries_accepts_both() {
    let f = SimFixture::new();
    let reference = reference(&f);
    let snp_shaped = f.issuer.issue(&REPORT_DATA).unwrap();
    let tdx = tdx_issuer(&f).issue(&REPORT_DATA).unwrap();
    assert_eq!(
        verify_with(&f.verifier(), &snp_shaped, &reference)
            .unwrap()
            .platform(),
        Platform::Simulated
    );
    assert_eq!(
        verify_with(&f.verifier(), &tdx, &reference)
            .unwrap()
            .platform(),
        Platform::Tdx
    );
}

/// aTLS: a server attesting with simulated TDX evidence, a client with SNP-shaped evidence, both
/// verified by the same policy.
#[tokio::test]
async fn mutual_atls_between_a_tdx_server_and_an_snp_client() {
    let f = SimFixture::new();
    let policy = Arc::new(StaticPolicy {
        verifier: f.verifier(),
        reference: reference(&f),
        host_data: vec![HOST_DATA],
        deployment: DeploymentPin::Any,
    });
    let acceptor = AtlsAcceptor::new(
        Arc::new(tdx_issuer(&f)),
        tls_key(),
        Arc::new(DEPLOYMENT),
        ClientAuth::Required(policy.clone()),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut tls, peer) = acceptor.accept(tcp).await.unwrap();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(&buf).await.unwrap();
        tls.flush().await.unwrap();
        peer
    });
    let client = AtlsClient::new(
        policy,
        Some(ClientIdentity {
            issuer: f.issuer.clone(),
            key: tls_key(),
            deployment: Arc::new(DeploymentId::UNPINNED),
        }),
    )
    .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tls, server_peer) = client
        .connect(tcp, ServerName::try_from("coordinator").unwrap())
        .await
        .unwrap();
    tls.write_all(b"ping").await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(server_peer.report().platform(), Platform::Tdx);
    assert_eq!(server_peer.report().measurement(), &MEASUREMENT);
    assert_eq!(server_peer.deployment(), DEPLOYMENT);
    let client_peer = server
        .await
        .unwrap()
        .expect("client authentication was required");
    assert_eq!(client_peer.report().platform(), Platform::Simulated);
}
