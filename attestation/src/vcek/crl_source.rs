//! AMD's CRLs for the issuing side, so that evidence carries them and relying parties need no
//! network: `GET {kds}/vcek/v1/{product}/crl` (and `/vlek/v1/{product}/crl`), DER, signed by the
//! product's ARK.
//!
//! Owns [`CrlSource`]: the CRL held in memory per product and key kind; when none is held or the
//! held one is past its `nextUpdate`, a lookup in the background (one at a time, at most once a
//! minute): the on-disk cache, then the KDS (a fetched CRL is cached), then the operator's
//! directory (`*.crl` files). Only a CRL that names the pinned ARK as its issuer and carries its
//! signature is kept or sent; a fresh one is preferred, else the one with the latest `nextUpdate`
//! (a verifier may accept it for a while, `SnpRevocation::Required`). The host's disk, DNS and
//! network are untrusted: a planted or stale file is passed over (the ARK's signature and the
//! verifier's freshness check decide), and every verifier checks the CRL again. It must never
//! block evidence on a lookup: without a CRL, evidence goes out without one and verifiers that
//! require one refuse it.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::cache::VcekCache;
use super::kds::KdsClient;
use super::offline::OfflineDir;
use super::query::product_name;
use crate::reference::Product;
use crate::snp::{SignerKind, crl, roots};

/// The shortest time between two lookups of one CRL.
const RETRY: Duration = Duration::from_secs(60);

/// The ARK a CRL of a product must be signed by.
type ArkOf = fn(Product) -> Vec<u8>;

fn pinned_ark(product: Product) -> Vec<u8> {
    roots::pinned(product).ark.to_vec()
}

/// AMD's CRLs, held, cached and fetched.
#[derive(Clone)]
pub struct CrlSource {
    inner: Arc<Inner>,
}

struct Inner {
    kds: Option<KdsClient>,
    cache: Option<VcekCache>,
    offline: Option<OfflineDir>,
    ark_of: ArkOf,
    held: Mutex<HashMap<(Product, SignerKind), Held>>,
    /// Signalled when a lookup ends.
    looked: Condvar,
}

#[derive(Default)]
struct Held {
    crl: Option<Found>,
    looking: bool,
    last_lookup: Option<Instant>,
}

/// A CRL signed by the ARK, and its `nextUpdate`.
#[derive(Clone)]
struct Found {
    der: Vec<u8>,
    next_update: Option<SystemTime>,
}

impl Found {
    fn fresh_at(&self, now: SystemTime) -> bool {
        self.next_update.is_some_and(|next| now < next)
    }
}

impl std::fmt::Debug for CrlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlSource")
            .field("kds", &self.inner.kds.is_some())
            .field("cache", &self.inner.cache)
            .field("offline", &self.inner.offline)
            .finish_non_exhaustive()
    }
}

/// The KDS path of the CRL for `product` and `kind`.
pub fn crl_path(product: Product, kind: SignerKind) -> String {
    format!("/{}/v1/{}/crl", kind_path(kind), product_name(product))
}

fn kind_path(kind: SignerKind) -> &'static str {
    match kind {
        SignerKind::Vcek => "vcek",
        SignerKind::Vlek => "vlek",
    }
}

fn cache_name(product: Product, kind: SignerKind) -> String {
    format!("crl-{}-{}.der", kind_path(kind), product_name(product))
}

impl CrlSource {
    /// A source with these places to look; each may be absent.
    pub fn new(
        kds: Option<KdsClient>,
        cache: Option<VcekCache>,
        offline: Option<OfflineDir>,
    ) -> Self {
        Self::build(kds, cache, offline, pinned_ark)
    }

    /// [`new`](Self::new) trusting another ARK than the pinned one: for tests with a test hierarchy.
    #[cfg(test)]
    pub(crate) fn with_ark(
        kds: Option<KdsClient>,
        cache: Option<VcekCache>,
        offline: Option<OfflineDir>,
        ark_of: ArkOf,
    ) -> Self {
        Self::build(kds, cache, offline, ark_of)
    }

    fn build(
        kds: Option<KdsClient>,
        cache: Option<VcekCache>,
        offline: Option<OfflineDir>,
        ark_of: ArkOf,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                kds,
                cache,
                offline,
                ark_of,
                held: Mutex::default(),
                looked: Condvar::new(),
            }),
        }
    }

    /// The CRL to send with evidence for `product` and `kind` now, from memory, without I/O:
    /// when none is held or the held one is past its `nextUpdate` at `now`, a lookup starts in the
    /// background (unless one runs or ran less than a minute ago), and the held one, stale or
    /// none, is returned meanwhile.
    pub fn current(&self, product: Product, kind: SignerKind, now: SystemTime) -> Option<Vec<u8>> {
        let mut held = self.inner.held.lock().ok()?;
        let entry = held.entry((product, kind)).or_default();
        let due = !entry.crl.as_ref().is_some_and(|c| c.fresh_at(now));
        let may_look = !entry.looking && entry.last_lookup.is_none_or(|at| at.elapsed() >= RETRY);
        if due && may_look {
            entry.looking = true;
            entry.last_lookup = Some(Instant::now());
            let source = self.clone();
            std::thread::spawn(move || {
                let _ = source.refresh(product, kind, now);
            });
        }
        entry.crl.as_ref().map(|c| c.der.clone())
    }

    /// The CRL for `product` and `kind`, waiting for it: a fresh one held is returned at once; a
    /// lookup in the background is waited for (at most `wait`), not repeated; otherwise one is made
    /// now ([`refresh`](Self::refresh)). For launch, where nothing else waits on this thread.
    pub fn wait_for(
        &self,
        product: Product,
        kind: SignerKind,
        now: SystemTime,
        wait: Duration,
    ) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + wait;
        let mut held = self
            .inner
            .held
            .lock()
            .map_err(|_| "the CRL table's lock is poisoned".to_string())?;
        loop {
            let entry = held.entry((product, kind)).or_default();
            if let Some(crl) = entry.crl.as_ref().filter(|c| c.fresh_at(now)) {
                return Ok(crl.der.clone());
            }
            if !entry.looking {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("AMD's CRL is still being looked up".into());
            }
            held = self
                .inner
                .looked
                .wait_timeout(held, left)
                .map_err(|_| "the CRL table's lock is poisoned".to_string())?
                .0;
        }
        if let Some(entry) = held.get_mut(&(product, kind)) {
            entry.looking = true;
        }
        drop(held);
        self.refresh(product, kind, now)
    }

    /// Looks the CRL up now (cache, KDS, directory), blocking for as long as that takes, and
    /// keeps what it finds: for launch, where nothing waits on this thread, and for tests.
    pub fn refresh(
        &self,
        product: Product,
        kind: SignerKind,
        now: SystemTime,
    ) -> Result<Vec<u8>, String> {
        let result = self.look_up(product, kind, now);
        if let Ok(mut held) = self.inner.held.lock() {
            let entry = held.entry((product, kind)).or_default();
            entry.looking = false;
            entry.last_lookup = Some(Instant::now());
            match &result {
                Ok(found) => entry.crl = Some(found.clone()),
                Err(why) => {
                    tracing::warn!(%why, ?product, key = %kind, "no fresh AMD CRL: verifiers that require one refuse this guest's evidence");
                }
            }
        }
        self.inner.looked.notify_all();
        result.map(|found| found.der)
    }

    fn look_up(
        &self,
        product: Product,
        kind: SignerKind,
        now: SystemTime,
    ) -> Result<Found, String> {
        let ark = (self.inner.ark_of)(product);
        let mut tried = Vec::new();
        let mut best: Option<Found> = None;
        let consider =
            |der: Vec<u8>, from: &str, best: &mut Option<Found>, tried: &mut Vec<String>| {
                consider(der, from, &ark, product, now, best, tried)
            };
        let name = cache_name(product, kind);
        if let Some(cache) = &self.inner.cache {
            match cache.get_named(&name) {
                Ok(Some(der)) => {
                    if consider(der, "cache", &mut best, &mut tried) {
                        return best.ok_or_default();
                    }
                }
                Ok(None) => tried.push("cache: none".into()),
                Err(why) => tried.push(why),
            }
        }
        if let Some(kds) = &self.inner.kds {
            match kds.fetch_path_blocking(&crl_path(product, kind)) {
                Ok(der) => {
                    let usable = crl::issued_by(&der, &ark).is_ok();
                    let fresh = consider(der.clone(), "AMD KDS", &mut best, &mut tried);
                    if usable
                        && let Some(cache) = &self.inner.cache
                        && let Err(why) = cache.put_named(&name, &der)
                    {
                        tracing::warn!(%why, "cannot cache AMD's CRL");
                    }
                    if fresh {
                        return best.ok_or_default();
                    }
                }
                Err(e) => tried.push(e.to_string()),
            }
        }
        if let Some(dir) = &self.inner.offline {
            match dir.crls() {
                Ok(files) => {
                    for file in files {
                        let from = format!("{}", file.file.display());
                        if consider(file.der, &from, &mut best, &mut tried) {
                            return best.ok_or_default();
                        }
                    }
                }
                Err(e) => tried.push(e.to_string()),
            }
        }
        match best {
            Some(stale) => {
                tracing::warn!(?product, key = %kind, tried = %tried.join("; "), "only a stale AMD CRL was found; sending it (verifiers accept it only within their grace)");
                Ok(stale)
            }
            None => Err(format!(
                "no CRL of the {product:?} ARK for {kind} keys: {}",
                if tried.is_empty() {
                    "no KDS, cache or directory configured".to_string()
                } else {
                    tried.join("; ")
                }
            )),
        }
    }
}

/// Keeps `der` in `best` if the ARK signed it and its `nextUpdate` is the latest so far; whether
/// it is fresh at `now`.
fn consider(
    der: Vec<u8>,
    from: &str,
    ark: &[u8],
    product: Product,
    now: SystemTime,
    best: &mut Option<Found>,
    tried: &mut Vec<String>,
) -> bool {
    match crl::issued_by(&der, ark) {
        Ok(next_update) => {
            let found = Found { der, next_update };
            let fresh = found.fresh_at(now);
            if !fresh {
                tried.push(format!("{from}: a CRL past its nextUpdate"));
            }
            if best
                .as_ref()
                .is_none_or(|b| b.next_update < found.next_update)
            {
                *best = Some(found);
            }
            fresh
        }
        Err(e) => {
            tried.push(format!(
                "{from}: not a CRL of the pinned {product:?} ARK ({e})"
            ));
            false
        }
    }
}

/// `best` was just set when a source said "fresh".
trait OkOrDefault {
    fn ok_or_default(self) -> Result<Found, String>;
}

impl OkOrDefault for Option<Found> {
    fn ok_or_default(self) -> Result<Found, String> {
        self.ok_or_else(|| "internal: a fresh CRL was not kept".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::amd;
    use crate::testing::kds::{KdsStub, StubMode};
    use crate::vcek::KdsConfig;

    fn test_ark(_: Product) -> Vec<u8> {
        amd::milan().ark
    }

    fn client(stub: &KdsStub) -> KdsClient {
        let mut config = KdsConfig::new(stub.base_url());
        config.timeout = Duration::from_secs(5);
        config.attempts = 1;
        KdsClient::new(config).unwrap()
    }

    fn source(
        kds: Option<KdsClient>,
        cache: &std::path::Path,
        dir: Option<&std::path::Path>,
    ) -> CrlSource {
        CrlSource::with_ark(
            kds,
            Some(VcekCache::new(cache)),
            dir.map(OfflineDir::new),
            test_ark,
        )
    }

    #[test]
    fn paths_are_amds() {
        assert_eq!(
            crl_path(Product::Milan, SignerKind::Vcek),
            "/vcek/v1/Milan/crl"
        );
        assert_eq!(
            crl_path(Product::Turin, SignerKind::Vlek),
            "/vlek/v1/Turin/crl"
        );
    }

    #[test]
    fn fetched_once_then_served_from_the_cache_until_next_update() {
        let test = amd::milan();
        let crl = test.crl(&[]);
        let stub = KdsStub::start(
            vec![("/vcek/v1/Milan/crl".into(), crl.clone())],
            StubMode::Serve,
        );
        let cache = tempfile::tempdir().unwrap();
        let first = source(Some(client(&stub)), cache.path(), None);
        assert_eq!(
            first
                .refresh(Product::Milan, SignerKind::Vcek, amd::now())
                .unwrap(),
            crl
        );
        assert_eq!(stub.requests(), 1);
        // A restart: the cache serves, the KDS is not asked.
        let again = source(Some(client(&stub)), cache.path(), None);
        assert_eq!(
            again
                .refresh(Product::Milan, SignerKind::Vcek, amd::now())
                .unwrap(),
            crl
        );
        assert_eq!(stub.requests(), 1);
        // Past nextUpdate the KDS is asked again.
        let later = amd::next_update() + Duration::from_secs(1);
        again
            .refresh(Product::Milan, SignerKind::Vcek, later)
            .unwrap();
        assert_eq!(stub.requests(), 2);
    }

    #[test]
    fn a_forged_crl_planted_in_the_cache_is_passed_over() {
        let test = amd::milan();
        let cache = tempfile::tempdir().unwrap();
        std::fs::write(
            cache
                .path()
                .join(cache_name(Product::Milan, SignerKind::Vcek)),
            test.crl_signed_by_ask(&[]),
        )
        .unwrap();
        let genuine = test.crl(&[]);
        let stub = KdsStub::start(
            vec![("/vcek/v1/Milan/crl".into(), genuine.clone())],
            StubMode::Serve,
        );
        let s = source(Some(client(&stub)), cache.path(), None);
        assert_eq!(
            s.refresh(Product::Milan, SignerKind::Vcek, amd::now())
                .unwrap(),
            genuine
        );
        assert_eq!(stub.requests(), 1, "the forged file did not stop the fetch");
    }

    #[test]
    fn the_operator_directory_serves_offline() {
        let test = amd::milan();
        let dir = tempfile::tempdir().unwrap();
        let crl = test.crl(&[]);
        std::fs::write(dir.path().join("milan.crl"), &crl).unwrap();
        std::fs::write(dir.path().join("forged.crl"), test.crl_signed_by_ask(&[])).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let s = source(None, cache.path(), Some(dir.path()));
        assert_eq!(
            s.refresh(Product::Milan, SignerKind::Vcek, amd::now())
                .unwrap(),
            crl
        );
    }

    #[test]
    fn nothing_found_is_an_error_that_says_where_it_looked() {
        let cache = tempfile::tempdir().unwrap();
        let s = source(None, cache.path(), None);
        let err = s
            .refresh(Product::Milan, SignerKind::Vcek, amd::now())
            .unwrap_err();
        assert!(err.contains("cache: none"), "{err}");
    }

    #[test]
    fn current_never_blocks_and_fills_in_the_background() {
        let test = amd::milan();
        let crl = test.crl(&[]);
        let stub = KdsStub::start(
            vec![("/vcek/v1/Milan/crl".into(), crl.clone())],
            StubMode::Serve,
        );
        let cache = tempfile::tempdir().unwrap();
        let s = source(Some(client(&stub)), cache.path(), None);
        assert_eq!(
            s.current(Product::Milan, SignerKind::Vcek, amd::now()),
            None
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(got) = s.current(Product::Milan, SignerKind::Vcek, amd::now()) {
                assert_eq!(got, crl);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the background lookup never finished"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(stub.requests(), 1);
    }
}
