//! AMD's Key Distribution Service: `GET {base}/vcek/v1/{product}/{hwID}?{TCB}` answers the VCEK, DER.
//!
//! Owns the request policy: a timeout per request, a bounded number of attempts with doubling
//! backoff, honouring a 429 or 503's Retry-After up to a limit, and errors that name the URL and
//! the status. It must never judge the certificate it receives (`VcekResolver` checks it against
//! the report and the pinned roots) and never be asked for anything but a VCEK: a VLEK is not
//! served to guests.

use std::time::Duration;

use super::error::VcekError;
use super::http::{Endpoint, HttpClient, Resolve, Response, SystemResolver};
use super::query::VcekQuery;

/// How the KDS is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdsConfig {
    /// `http[s]://host[:port][/prefix]`; [`KdsConfig::AMD`] by default.
    pub base_url: String,
    /// How long one request (name resolution, connect, TLS, response) may take.
    pub timeout: Duration,
    /// Requests in all, the first included.
    pub attempts: u32,
    /// The wait before the second request; doubled before each further one.
    pub backoff: Duration,
    /// The longest Retry-After honoured; a longer one ends the attempts at once.
    pub max_retry_after: Duration,
}

impl KdsConfig {
    /// AMD's KDS.
    pub const AMD: &'static str = "https://kdsintf.amd.com";

    /// The defaults for `base_url`: 10 s per request, 4 attempts, 1 s backoff, Retry-After up to 30 s.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            timeout: Duration::from_secs(10),
            attempts: 4,
            backoff: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

/// A client of one KDS.
#[derive(Debug, Clone)]
pub struct KdsClient {
    http: HttpClient,
    config: KdsConfig,
}

/// What one request leads to.
enum Outcome {
    /// A 200 with its body.
    Body(Vec<u8>),
    /// Another attempt may help, after this wait (`None`: the backoff).
    Retry { wait: Option<Duration>, why: String },
    /// Stop: another attempt would not help.
    Stop(VcekError),
}

impl KdsClient {
    /// A client for `config`, resolving names with the system's resolver; refuses a base URL it
    /// cannot use.
    pub fn new(config: KdsConfig) -> Result<Self, VcekError> {
        Self::with_resolver(config, std::sync::Arc::new(SystemResolver))
    }

    /// A client for `config` resolving names with `resolver`.
    pub fn with_resolver(
        config: KdsConfig,
        resolver: std::sync::Arc<dyn Resolve>,
    ) -> Result<Self, VcekError> {
        let bad_url = |what: String| VcekError::BadUrl {
            url: config.base_url.clone(),
            what,
        };
        let endpoint = Endpoint::parse(&config.base_url).map_err(bad_url)?;
        let http = HttpClient::new(endpoint, resolver).map_err(bad_url)?;
        Ok(Self { http, config })
    }

    /// The full URL of the VCEK for `query`.
    pub fn url(&self, query: &VcekQuery) -> String {
        self.http.endpoint().url(&query.kds_path())
    }

    /// Fetches the VCEK for `query` (DER, unchecked), trying as [`KdsConfig`] says.
    pub async fn fetch(&self, query: &VcekQuery) -> Result<Vec<u8>, VcekError> {
        self.fetch_path(&query.kds_path()).await
    }

    /// Fetches what the KDS serves at `path` (e.g. a CRL, `/vcek/v1/Milan/crl`), unchecked,
    /// trying as [`KdsConfig`] says.
    pub async fn fetch_path(&self, path: &str) -> Result<Vec<u8>, VcekError> {
        let path = path.to_string();
        let url = self.http.endpoint().url(&path);
        let attempts = self.config.attempts.max(1);
        let mut backoff = self.config.backoff;
        let mut last = String::new();
        for attempt in 1..=attempts {
            let result = tokio::time::timeout(self.config.timeout, self.http.get(&path)).await;
            let outcome = match result {
                Err(_) => Outcome::Retry {
                    wait: None,
                    why: format!("no response within {} ms", self.config.timeout.as_millis()),
                },
                Ok(Err(why)) => Outcome::Retry { wait: None, why },
                Ok(Ok(response)) => self.judge(&url, response),
            };
            match outcome {
                Outcome::Body(der) => return Ok(der),
                Outcome::Stop(error) => return Err(error),
                Outcome::Retry { wait, why } => {
                    tracing::debug!(%url, attempt, reason = %why, "AMD KDS request failed");
                    last = why;
                    if attempt < attempts {
                        tokio::time::sleep(wait.unwrap_or(backoff)).await;
                        backoff = backoff.saturating_mul(2);
                    }
                }
            }
        }
        Err(VcekError::Unavailable {
            url,
            attempts,
            last,
        })
    }

    /// [`fetch`](Self::fetch) for synchronous callers (the evidence issuer's background lookup),
    /// on a thread and a runtime of its own, so it works inside and outside an async runtime. It
    /// blocks the caller for as long as the attempts take, name resolution included: at most
    /// `attempts × timeout` plus the waits between them.
    pub fn fetch_blocking(&self, query: &VcekQuery) -> Result<Vec<u8>, VcekError> {
        self.fetch_path_blocking(&query.kds_path())
    }

    /// [`fetch_path`](Self::fetch_path) for synchronous callers, as
    /// [`fetch_blocking`](Self::fetch_blocking).
    pub fn fetch_path_blocking(&self, path: &str) -> Result<Vec<u8>, VcekError> {
        let unavailable = |last: String| VcekError::Unavailable {
            url: self.http.endpoint().url(path),
            attempts: 0,
            last,
        };
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| unavailable(format!("cannot start an I/O runtime: {e}")))?;
                    let result = runtime.block_on(self.fetch_path(path));
                    // Nothing of the fetch is left to wait for: do not wait for it.
                    runtime.shutdown_background();
                    result
                })
                .join()
                .unwrap_or_else(|_| Err(unavailable("the fetching thread panicked".into())))
        })
    }

    /// What a response means for the next step.
    fn judge(&self, url: &str, response: Response) -> Outcome {
        let status = response.status;
        match status {
            200 => Outcome::Body(response.body.to_vec()),
            429 | 503 => match response.retry_after {
                Some(wait) if wait > self.config.max_retry_after => {
                    Outcome::Stop(VcekError::Busy {
                        url: url.to_string(),
                        status,
                        seconds: wait.as_secs(),
                        max: self.config.max_retry_after.as_secs(),
                    })
                }
                wait => Outcome::Retry {
                    wait,
                    why: format!("status {status}"),
                },
            },
            500..=599 => Outcome::Retry {
                wait: None,
                why: format!("status {status}"),
            },
            _ => Outcome::Stop(VcekError::Refused {
                url: url.to_string(),
                status,
                hint: refusal_hint(status).to_string(),
            }),
        }
    }
}

fn refusal_hint(status: u16) -> &'static str {
    match status {
        404 => {
            "AMD has no VCEK for this product, chip and TCB (is the product right? a chip whose \
             TCB was just updated may not be listed yet); put the VCEK into the --vcek-dir directory"
        }
        400 => "the KDS refused the request as malformed; is --kds-url a KDS?",
        _ => "is --kds-url right? put the VCEK into the --vcek-dir directory instead",
    }
}
