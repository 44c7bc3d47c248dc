use std::time::Instant;

use super::*;
use crate::testing::kds::{KdsStub, StubMode};
use crate::testing::pcs;
use crate::testing::snp::time;

fn fresh() -> SystemTime {
    time("2025-07-01T00:00:00Z")
}

/// Past the PCK CRL's nextUpdate (2025-07-19T10:00:35Z), the earliest of the vector's.
fn due() -> SystemTime {
    time("2025-07-20T00:00:00Z")
}

fn fmspc() -> Fmspc {
    Fmspc::from_hex(pcs::FMSPC).unwrap()
}

fn config(stub: &KdsStub) -> PcsConfig {
    let mut config = PcsConfig::new(stub.base_url());
    config.timeout = Duration::from_secs(5);
    config.attempts = 2;
    config.backoff = Duration::from_millis(10);
    config
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn get(source: &CollateralSource, at: SystemTime) -> Result<Vec<u8>, PcsError> {
    runtime().block_on(source.collateral_at(fmspc(), Ca::Platform, at))
}

/// The signature the TDX verifier checks first: `signature_field` (r ‖ s, hex) over the text of
/// `field`, by the leaf key of `chain_field`'s PEM chain (ECDSA P-256, SHA-256).
fn signature_holds(
    doc: &serde_json::Value,
    field: &str,
    signature_field: &str,
    chain_field: &str,
) -> bool {
    use p256::ecdsa::signature::Verifier as _;
    let chain = doc[chain_field].as_str().unwrap();
    let leaf = x509_parser::pem::Pem::iter_from_buffer(chain.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let cert = leaf.parse_x509().unwrap();
    let key =
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&cert.public_key().subject_public_key.data)
            .unwrap();
    let signature = p256::ecdsa::Signature::from_slice(
        &hex::decode(doc[signature_field].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    key.verify(doc[field].as_str().unwrap().as_bytes(), &signature)
        .is_ok()
}

#[test]
fn the_pieces_are_put_back_together_into_the_vector_layout() {
    let stub = pcs::start(StubMode::Serve);
    let source = CollateralSource::new(Some(config(&stub)), None, None).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&get(&source, fresh()).unwrap()).unwrap();
    assert_eq!(doc, pcs::collateral());
    // Byte for byte what Intel signed: the signatures still hold.
    assert!(signature_holds(
        &doc,
        "tcb_info",
        "tcb_info_signature",
        "tcb_info_issuer_chain"
    ));
    assert!(signature_holds(
        &doc,
        "qe_identity",
        "qe_identity_signature",
        "qe_identity_issuer_chain"
    ));
    let mut paths = stub.paths();
    paths.sort();
    assert_eq!(
        paths,
        vec![
            "/sgx/certification/v4/pckcrl?ca=platform&encoding=der",
            "/sgx/certification/v4/rootcacrl",
            "/tdx/certification/v4/qe/identity",
            "/tdx/certification/v4/tcb?fmspc=B0C06F000000",
        ]
    );
}

#[test]
fn fetched_once_then_served_from_the_cache_until_next_update_then_refetched() {
    let stub = pcs::start(StubMode::Serve);
    let cache = tempfile::tempdir().unwrap();
    let source =
        CollateralSource::new(Some(config(&stub)), Some(cache.path().into()), None).unwrap();
    let first = get(&source, fresh()).unwrap();
    assert_eq!(stub.requests(), 4);
    // A restart: a new source on the same cache asks nothing.
    let again =
        CollateralSource::new(Some(config(&stub)), Some(cache.path().into()), None).unwrap();
    assert_eq!(get(&again, fresh()).unwrap(), first);
    assert_eq!(stub.requests(), 4);
    // Past the earliest nextUpdate: asked again.
    get(&again, due()).unwrap();
    assert_eq!(stub.requests(), 8);
    assert_eq!(next_update(&first), Some(time("2025-07-19T10:00:35Z")));
}

#[test]
fn the_operator_directory_wins_offline() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("{}-platform.json", pcs::FMSPC);
    std::fs::write(dir.path().join(&name), pcs::collateral_bytes()).unwrap();
    // PCS off.
    let off = CollateralSource::new(None, None, Some(dir.path().into())).unwrap();
    assert_eq!(get(&off, fresh()).unwrap(), pcs::collateral_bytes());
    // PCS unreachable (a port nobody listens on, once the stand-in is gone).
    let base = {
        let stub = pcs::start(StubMode::Serve);
        stub.base_url()
    };
    let mut unreachable = PcsConfig::new(base);
    unreachable.attempts = 1;
    let offline = CollateralSource::new(Some(unreachable), None, Some(dir.path().into())).unwrap();
    assert_eq!(get(&offline, fresh()).unwrap(), pcs::collateral_bytes());
    // Nothing anywhere: the error names each source.
    let nothing =
        CollateralSource::new(None, None, Some(tempfile::tempdir().unwrap().path().into()))
            .unwrap();
    let err = get(&nothing, fresh()).unwrap_err().to_string();
    assert!(
        err.contains("PCS: off") && err.contains("no B0C06F000000-platform.json"),
        "{err}"
    );
}

#[test]
fn a_server_that_hangs_is_timed_out() {
    let stub = pcs::start(StubMode::Silent);
    let mut config = config(&stub);
    config.timeout = Duration::from_millis(500);
    let source = CollateralSource::new(Some(config), None, None).unwrap();
    let started = Instant::now();
    let err = get(&source, fresh()).unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.contains("no response within 500 ms") && err.contains("2 attempt"),
        "{err}"
    );
}

#[test]
fn a_huge_response_is_refused() {
    let mut routes = pcs::routes();
    routes[0].1 = vec![b'A'; MAX_RESPONSE + 1];
    let stub = KdsStub::start_with_headers(routes, StubMode::Serve);
    let source = CollateralSource::new(Some(config(&stub)), None, None).unwrap();
    let err = get(&source, fresh()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("at most {MAX_RESPONSE} bytes")),
        "{err}"
    );
}

#[test]
fn a_missing_issuer_chain_or_a_body_that_is_not_pcs_json_is_malformed() {
    let mut routes = pcs::routes();
    routes[1].2.clear();
    let stub = KdsStub::start_with_headers(routes, StubMode::Serve);
    let source = CollateralSource::new(Some(config(&stub)), None, None).unwrap();
    let err = get(&source, fresh()).unwrap_err().to_string();
    assert!(err.contains("no TCB-Info-Issuer-Chain"), "{err}");
    let mut routes = pcs::routes();
    routes[2].1 = b"<html>maintenance</html>".to_vec();
    let stub = KdsStub::start_with_headers(routes, StubMode::Serve);
    let source = CollateralSource::new(Some(config(&stub)), None, None).unwrap();
    let err = get(&source, fresh()).unwrap_err().to_string();
    assert!(err.contains("not JSON"), "{err}");
}

#[test]
fn the_untrusted_cache_cannot_make_stale_or_forged_collateral_pass() {
    let stub = pcs::start(StubMode::Serve);
    let cache = tempfile::tempdir().unwrap();
    let name = format!("{}-platform.json", pcs::FMSPC);
    let source =
        CollateralSource::new(Some(config(&stub)), Some(cache.path().into()), None).unwrap();

    // A stale copy is not served: past its nextUpdate, the PCS is asked.
    std::fs::write(cache.path().join(&name), pcs::collateral_bytes()).unwrap();
    get(&source, due()).unwrap();
    assert_eq!(stub.requests(), 4);

    // A forged copy that claims a later nextUpdate is served (the cache is a saving, not a
    // judge), and fails the first check the TDX verifier makes of it: Intel's signature.
    let mut forged = pcs::collateral();
    let tcb_info = forged["tcb_info"].as_str().unwrap().replace(
        "\"nextUpdate\":\"2025-07-19T10:16:03Z\"",
        "\"nextUpdate\":\"2035-07-19T10:16:03Z\"",
    );
    forged["tcb_info"] = tcb_info.into();
    std::fs::write(
        cache.path().join(&name),
        serde_json::to_vec(&forged).unwrap(),
    )
    .unwrap();
    let served: serde_json::Value =
        serde_json::from_slice(&get(&source, fresh()).unwrap()).unwrap();
    assert!(!signature_holds(
        &served,
        "tcb_info",
        "tcb_info_signature",
        "tcb_info_issuer_chain"
    ));

    // A link, a FIFO or an oversized file is not read: the PCS is asked.
    std::fs::remove_file(cache.path().join(&name)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", cache.path().join(&name)).unwrap();
    let before = stub.requests();
    let doc = get(&source, fresh()).unwrap();
    assert_eq!(stub.requests(), before + 4);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&doc).unwrap(),
        pcs::collateral()
    );
}

#[test]
fn fmspcs_are_twelve_hex_digits() {
    assert_eq!(
        Fmspc::from_hex("b0c06f000000").unwrap().to_string(),
        "B0C06F000000"
    );
    assert!(Fmspc::from_hex("B0C06F").is_err());
    assert!(Fmspc::from_hex("B0C06F00000G").is_err());
}

#[test]
fn intels_pcs_gets_the_root_ca_crl_from_intels_certificate_site() {
    assert_eq!(PcsConfig::new(INTEL_PCS).root_ca_crl_url, INTEL_ROOT_CA_CRL);
    assert_eq!(
        PcsConfig::new("https://pccs.local:8081").root_ca_crl_url,
        "https://pccs.local:8081"
    );
    assert_eq!(percent_decode("a%20b%0A").unwrap(), "a b\n");
    assert!(percent_decode("%G0").is_err());
    assert_eq!(der_or_text(b"0a0B\n"), vec![0x0a, 0x0b]);
    assert_eq!(der_or_text(&[0x30, 0x01]), vec![0x30, 0x01]);
}
