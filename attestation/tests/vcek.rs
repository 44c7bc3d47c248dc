//! Finding the VCEK of a real report: the host's table, AMD's KDS (a stand-in on loopback serving
//! the real VCEKs of `testdata/` at the KDS paths), the cache, the operator's directory. Nothing
//! leaves 127.0.0.1.

use std::time::{Duration, Instant};

use concord_attestation::testing::kds::{KdsStub, StubMode};
use concord_attestation::testing::snp::{self as vectors, Vector};
use concord_attestation::vcek::{
    Guid, HostCertificates, KdsClient, KdsConfig, OfflineDir, Resolve, VcekCache, VcekError,
    VcekQuery, VcekResolver, VcekSource, encode_cert_table,
};
use concord_attestation::{Product, Report, ReportBuilder, Tcb};

/// Quick settings for tests: short timeout and backoff.
fn config(base_url: String) -> KdsConfig {
    KdsConfig {
        base_url,
        timeout: Duration::from_millis(300),
        attempts: 3,
        backoff: Duration::from_millis(10),
        max_retry_after: Duration::from_secs(2),
    }
}

fn client(base_url: String) -> KdsClient {
    KdsClient::new(config(base_url)).unwrap()
}

/// The KDS path of a Milan or Genoa vector, written out as AMD documents it.
fn kds_path(v: &Vector) -> String {
    let report = v.report();
    let tcb = v.reported_tcb();
    format!(
        "/vcek/v1/{:?}/{}?blSPL={:02}&teeSPL={:02}&snpSPL={:02}&ucodeSPL={:02}",
        v.product,
        hex::encode(report.chip_id()),
        tcb.bootloader,
        tcb.tee,
        tcb.snp,
        tcb.microcode
    )
}

fn serving(v: &Vector, mode: StubMode) -> KdsStub {
    KdsStub::start(vec![(kds_path(v), v.cert.clone())], mode)
}

fn kds_resolver(stub: &KdsStub, cache: Option<&std::path::Path>) -> VcekResolver {
    VcekResolver::new(
        Some(client(stub.base_url())),
        cache.map(VcekCache::new),
        None,
    )
}

#[test]
fn the_vcek_is_fetched_from_the_kds_path_of_the_reports_chip_and_tcb() {
    let v = vectors::trustee_genoa_e2e();
    let stub = serving(&v, StubMode::Serve);
    let found = kds_resolver(&stub, None)
        .resolve(&v.report(), None, v.at)
        .unwrap();
    assert_eq!(found.source, VcekSource::Kds);
    assert_eq!(found.product, Product::Genoa);
    assert_eq!(found.certificates, vec![v.cert.clone()]);
    assert_eq!(stub.paths(), vec![kds_path(&v)]);
    assert!(
        stub.paths()[0].ends_with("?blSPL=10&teeSPL=00&snpSPL=23&ucodeSPL=25"),
        "{:?}",
        stub.paths()
    );
}

#[test]
fn a_version_2_report_is_looked_up_as_milan_then_genoa() {
    let v = vectors::virtee_milan();
    let stub = serving(&v, StubMode::Serve);
    let found = kds_resolver(&stub, None)
        .resolve(&v.report(), None, v.at)
        .unwrap();
    assert_eq!(found.product, Product::Milan);
    assert_eq!(stub.requests(), 1, "Milan answered: Genoa is not asked");
}

#[test]
fn a_cached_vcek_is_used_without_a_request() {
    let v = vectors::virtee_milan();
    let cache = tempfile::tempdir().unwrap();
    let stub = serving(&v, StubMode::Serve);
    let resolver = kds_resolver(&stub, Some(cache.path()));
    assert_eq!(
        resolver.resolve(&v.report(), None, v.at).unwrap().source,
        VcekSource::Kds
    );
    let query = VcekQuery::for_report(&v.report(), Product::Milan);
    assert_eq!(
        std::fs::read(cache.path().join(query.cache_file_name())).unwrap(),
        v.cert
    );
    let again = resolver.resolve(&v.report(), None, v.at).unwrap();
    assert_eq!(again.source, VcekSource::Cache);
    assert_eq!(again.certificates, vec![v.cert.clone()]);
    assert_eq!(stub.requests(), 1, "the cache hit made no request");

    // After a restart the cache serves even when the KDS is unreachable.
    drop(stub);
    let offline = VcekResolver::new(
        Some(client("http://127.0.0.1:9".into())),
        Some(VcekCache::new(cache.path())),
        None,
    );
    assert_eq!(
        offline.resolve(&v.report(), None, v.at).unwrap().source,
        VcekSource::Cache
    );
}

#[test]
fn a_cache_file_that_does_not_fit_is_fetched_again_and_replaced() {
    let v = vectors::virtee_milan();
    let cache = tempfile::tempdir().unwrap();
    let query = VcekQuery::for_report(&v.report(), Product::Milan);
    let file = cache.path().join(query.cache_file_name());
    // The host wrote another chip's VCEK under this chip's name.
    std::fs::write(&file, vectors::trustee_milan().cert).unwrap();
    let stub = serving(&v, StubMode::Serve);
    let found = kds_resolver(&stub, Some(cache.path()))
        .resolve(&v.report(), None, v.at)
        .unwrap();
    assert_eq!(found.source, VcekSource::Kds);
    assert_eq!(std::fs::read(&file).unwrap(), v.cert);
}

#[test]
fn a_503_is_retried_after_its_retry_after() {
    let v = vectors::virtee_milan();
    let stub = serving(
        &v,
        StubMode::FailFirst {
            count: 2,
            status: 503,
            retry_after: Some(0),
        },
    );
    let query = VcekQuery::for_report(&v.report(), Product::Milan);
    let der = client(stub.base_url()).fetch_blocking(&query).unwrap();
    assert_eq!(der, v.cert);
    assert_eq!(stub.requests(), 3);
}

#[test]
fn too_many_failures_give_up_naming_the_url_and_the_last_status() {
    let v = vectors::virtee_milan();
    let stub = serving(
        &v,
        StubMode::FailFirst {
            count: 10,
            status: 500,
            retry_after: None,
        },
    );
    let query = VcekQuery::for_report(&v.report(), Product::Milan);
    let kds = client(stub.base_url());
    let err = kds.fetch_blocking(&query).unwrap_err();
    assert_eq!(
        err,
        VcekError::Unavailable {
            url: kds.url(&query),
            attempts: 3,
            last: "status 500".into()
        }
    );
    assert_eq!(stub.requests(), 3, "bounded attempts");
    assert!(err.to_string().contains(&stub.base_url()), "{err}");
}

#[test]
fn a_retry_after_beyond_the_limit_stops_at_once() {
    let v = vectors::virtee_milan();
    let stub = serving(
        &v,
        StubMode::FailFirst {
            count: 10,
            status: 429,
            retry_after: Some(3600),
        },
    );
    let query = VcekQuery::for_report(&v.report(), Product::Milan);
    let err = client(stub.base_url()).fetch_blocking(&query).unwrap_err();
    assert!(
        matches!(
            &err,
            VcekError::Busy {
                status: 429,
                seconds: 3600,
                max: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(stub.requests(), 1);
}

#[test]
fn a_server_that_never_answers_times_out_per_request() {
    let v = vectors::virtee_milan();
    let stub = KdsStub::start(vec![], StubMode::Silent);
    let query = VcekQuery::for_report(&v.report(), Product::Milan);
    let kds = client(stub.base_url());
    let start = Instant::now();
    let err = kds.fetch_blocking(&query).unwrap_err();
    let took = start.elapsed();
    let VcekError::Unavailable {
        url,
        attempts,
        last,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!((url.as_str(), *attempts), (kds.url(&query).as_str(), 3));
    assert_eq!(last, "no response within 300 ms");
    // 3 x 300 ms plus 10 + 20 ms of backoff, with room for a slow machine.
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(stub.requests(), 3, "one connection per attempt");
}

/// A resolver that never answers until the test ends (the sender is dropped), like a DNS server
/// that swallows queries while the system resolver retries.
#[derive(Debug)]
struct StuckResolver {
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    asked: std::sync::atomic::AtomicUsize,
}

impl Resolve for StuckResolver {
    fn resolve(&self, _: &str, _: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = self.release.lock().unwrap().recv();
        Err(std::io::Error::other("released"))
    }
}

#[test]
fn a_resolver_that_never_answers_is_bounded_by_the_request_timeout() {
    let (_release, stuck) = std::sync::mpsc::channel();
    let resolver = std::sync::Arc::new(StuckResolver {
        release: std::sync::Mutex::new(stuck),
        asked: Default::default(),
    });
    let v = vectors::trustee_genoa_e2e();
    let query = VcekQuery::for_report(&v.report(), Product::Genoa);
    for attempts in [1, 2] {
        let kds = KdsClient::with_resolver(
            KdsConfig {
                attempts,
                ..config("https://kds.example.invalid".into())
            },
            resolver.clone(),
        )
        .unwrap();
        let start = Instant::now();
        let err = kds.fetch_blocking(&query).unwrap_err();
        let took = start.elapsed();
        // The bound: attempts × 300 ms, 10 ms of backoff, and a margin for a loaded machine.
        let bound = Duration::from_millis(300) * attempts + Duration::from_secs(2);
        eprintln!("{attempts} attempt(s) with a stuck resolver: {took:?}");
        assert!(took < bound, "{attempts} attempt(s) took {took:?}");
        assert!(
            matches!(&err, VcekError::Unavailable { attempts: a, last, .. }
                if *a == attempts && last.contains("no response within 300 ms")),
            "{err}"
        );
    }
    assert_eq!(resolver.asked.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[test]
fn a_404_is_a_clear_error_and_is_not_retried() {
    let v = vectors::virtee_milan();
    let stub = KdsStub::start(vec![], StubMode::Serve);
    let query = VcekQuery::for_report(&v.report(), Product::Milan);
    let kds = client(stub.base_url());
    let err = kds.fetch_blocking(&query).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(&err, VcekError::Refused { status: 404, url, .. } if *url == kds.url(&query)),
        "{err:?}"
    );
    assert!(
        message.contains("answered 404 to GET http://127.0.0.1:"),
        "{message}"
    );
    assert!(message.contains("--vcek-dir"), "{message}");
    assert_eq!(stub.requests(), 1);

    // Through the resolver, the final error lists each product's 404.
    let err = kds_resolver(&stub, None)
        .resolve(&v.report(), None, v.at)
        .unwrap_err();
    let VcekError::NotFound { tried, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(tried.len(), 4, "{tried:?}");
    assert!(tried[1].contains("/vcek/v1/Milan/"), "{tried:?}");
    assert!(tried[2].contains("/vcek/v1/Genoa/"), "{tried:?}");
}

#[test]
fn a_kds_answer_that_does_not_fit_is_neither_used_nor_cached() {
    let v = vectors::virtee_milan();
    // The KDS (or whoever answers in its place) serves another chip's VCEK.
    let stub = KdsStub::start(
        vec![(kds_path(&v), vectors::trustee_milan().cert)],
        StubMode::Serve,
    );
    let cache = tempfile::tempdir().unwrap();
    let err = kds_resolver(&stub, Some(cache.path()))
        .resolve(&v.report(), None, v.at)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("a certificate that does not fit the report"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
}

#[test]
fn the_operator_directory_is_searched_by_content_when_the_kds_is_off() {
    let v = vectors::azure_genoa();
    let dir = tempfile::tempdir().unwrap();
    // Free names; another chip's VCEK, a PEM chain, junk and a file of another kind beside it.
    std::fs::write(
        dir.path().join("a-other.der"),
        vectors::trustee_milan().cert,
    )
    .unwrap();
    std::fs::write(dir.path().join("b-junk.pem"), b"not a certificate").unwrap();
    std::fs::write(dir.path().join("c-readme.txt"), b"the VCEKs of our hosts").unwrap();
    std::fs::copy(
        vectors::path("trustee-az-vcek-genoa.pem"),
        dir.path().join("host-7.pem"),
    )
    .unwrap();
    let resolver = VcekResolver::new(None, None, Some(OfflineDir::new(dir.path())));
    let found = resolver.resolve(&v.report(), None, v.at).unwrap();
    assert_eq!(found.source, VcekSource::OfflineDir);
    assert_eq!(found.certificates, vec![v.cert.clone()]);

    // A report of a chip the directory does not hold: the error says what was searched.
    let other = vectors::trustee_genoa_e2e();
    let err = resolver
        .resolve(&other.report(), None, other.at)
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("none of its 2 certificate(s) fits"),
        "{message}"
    );
    assert!(message.contains("AMD KDS: off"), "{message}");

    // A directory that does not exist is named.
    let missing = VcekResolver::new(None, None, Some(OfflineDir::new("/nonexistent/vceks")));
    let message = missing
        .resolve(&v.report(), None, v.at)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("cannot read the VCEK directory /nonexistent/vceks"),
        "{message}"
    );
}

#[test]
fn the_kds_is_asked_before_the_operator_directory() {
    let v = vectors::virtee_milan();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vcek.der"), &v.cert).unwrap();
    let stub = serving(&v, StubMode::Serve);
    let resolver = VcekResolver::new(
        Some(client(stub.base_url())),
        None,
        Some(OfflineDir::new(dir.path())),
    );
    assert_eq!(
        resolver.resolve(&v.report(), None, v.at).unwrap().source,
        VcekSource::Kds
    );
    // With the KDS down, the directory serves.
    drop(stub);
    assert_eq!(
        resolver.resolve(&v.report(), None, v.at).unwrap().source,
        VcekSource::OfflineDir
    );
}

/// A host table in the host's raw layout, read back as the issuer reads it.
fn table(entries: Vec<(Guid, Vec<u8>)>) -> HostCertificates {
    let entries: Vec<(Guid, &[u8])> = entries.iter().map(|(g, d)| (*g, d.as_slice())).collect();
    HostCertificates::parse(&encode_cert_table(&entries)).unwrap()
}

#[test]
fn the_host_table_comes_first_and_only_pinned_amd_certificates_follow_the_vcek() {
    let v = vectors::virtee_milan();
    let [ask, ark] = <[Vec<u8>; 2]>::try_from(vectors::azure_milan().chain).unwrap();
    let stub = serving(&v, StubMode::Serve);
    let resolver = kds_resolver(&stub, None);

    let full = table(vec![
        (Guid::VCEK, v.cert.clone()),
        (Guid::ASK, ask.clone()),
        (Guid::ARK, ark.clone()),
    ]);
    let found = resolver.resolve(&v.report(), Some(&full), v.at).unwrap();
    assert_eq!(found.source, VcekSource::HostTable);
    assert_eq!(found.certificates, vec![v.cert.clone(), ask.clone(), ark]);
    assert_eq!(stub.requests(), 0, "the table made the KDS unnecessary");

    // An ASK that is not Milan's pinned one (here Genoa's VCEK in its place) is left out, and with
    // it the ARK after it: a verifier would reject the evidence for it.
    let odd = table(vec![
        (Guid::VCEK, v.cert.clone()),
        (Guid::ASK, vectors::trustee_genoa_e2e().cert),
        (Guid::ARK, ask),
    ]);
    let found = resolver.resolve(&v.report(), Some(&odd), v.at).unwrap();
    assert_eq!(found.certificates, vec![v.cert.clone()]);
}

#[test]
fn a_stale_vcek_in_the_host_table_is_passed_over_for_the_kds() {
    let v = vectors::virtee_milan();
    let stub = serving(&v, StubMode::Serve);
    let stale = table(vec![(Guid::VCEK, vectors::trustee_milan().cert)]);
    let found = kds_resolver(&stub, None)
        .resolve(&v.report(), Some(&stale), v.at)
        .unwrap();
    assert_eq!(found.source, VcekSource::Kds);
    assert_eq!(found.certificates, vec![v.cert.clone()]);
}

#[test]
fn a_vlek_comes_only_from_the_host_table() {
    let v = vectors::trustee_vlek();
    let stub = KdsStub::start(vec![], StubMode::Serve);
    let resolver = kds_resolver(&stub, None);
    let with_vlek = table(vec![(Guid::VLEK, v.cert.clone())]);
    let found = resolver
        .resolve(&v.report(), Some(&with_vlek), v.at)
        .unwrap();
    assert_eq!(found.source, VcekSource::HostTable);
    assert_eq!(found.certificates, vec![v.cert.clone()]);

    let err = resolver.resolve(&v.report(), None, v.at).unwrap_err();
    let message = err.to_string();
    assert!(message.starts_with("no VLEK found"), "{message}");
    assert!(message.contains("ask the provider"), "{message}");
    assert_eq!(stub.requests(), 0, "the KDS serves no VLEK to guests");
}

#[test]
fn a_turin_vcek_is_fetched_with_its_8_byte_hw_id_and_fmc() {
    // No Turin report is published; a report carrying the Turin VCEK's hwID and TCB stands in (the
    // resolver checks the certificate against those fields and the pinned Turin chain, not the
    // report's signature).
    let cert = vectors::read("virtee-sev-vcek_turin.der");
    let mut chip_id = [0u8; 64];
    chip_id[..8].copy_from_slice(&hex::decode("1e550a8ee5cf9f4d").unwrap());
    let raw = ReportBuilder::new()
        .version(3)
        .cpuid(0x1A, 0x02, 0)
        .chip_id(&chip_id)
        .reported_tcb_raw(Tcb::turin(0, 0, 0, 0, 9).to_turin())
        .build_unsigned();
    let report = Report::parse(&raw).unwrap();
    let path = "/vcek/v1/Turin/1e550a8ee5cf9f4d?fmcSPL=00&blSPL=00&teeSPL=00&snpSPL=00&ucodeSPL=09";
    let stub = KdsStub::start(vec![(path.into(), cert.clone())], StubMode::Serve);
    let found = kds_resolver(&stub, None)
        .resolve(&report, None, vectors::time(vectors::AT))
        .unwrap();
    assert_eq!(found.product, Product::Turin);
    assert_eq!(found.certificates, vec![cert]);
    assert_eq!(stub.paths(), vec![path.to_string()]);
}
