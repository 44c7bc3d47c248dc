//! One HTTP/1.1 GET over TCP or TLS: all the KDS client needs, on hyper's client connection.
//!
//! Owns the base URL's parts ([`Endpoint`]), resolving its host ([`Resolve`], the system's resolver
//! by default, on a thread of its own so the caller's timeout bounds it), the connection (TCP, then
//! for `https` rustls with the ring provider and Mozilla's roots from `webpki-roots`), the request
//! and reading a bounded body.
//! It must never retry (`kds` decides that), never follow a redirect, and never send anything but
//! the path it is given: a KDS request carries no secret.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONNECTION, HOST, RETRY_AFTER, USER_AGENT};
use http::{Request, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A VCEK is about 1.4 kB; anything much larger is not one.
const MAX_BODY: usize = 64 * 1024;

/// Where the KDS is: scheme, host, port and an optional path prefix (for a mirror).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    https: bool,
    host: String,
    port: u16,
    prefix: String,
}

impl Endpoint {
    /// Parses `http[s]://host[:port][/prefix]`; a query, a fragment or user info are refused.
    pub(crate) fn parse(base: &str) -> Result<Self, String> {
        let uri: Uri = base
            .parse()
            .map_err(|e| format!("not a URL ({e}); expected e.g. https://kdsintf.amd.com"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the scheme must be http or https".into()),
        };
        let authority = uri.authority().ok_or("the URL names no host")?;
        if authority.as_str().contains('@') {
            return Err("user info in the URL is not supported".into());
        }
        if uri.query().is_some() || base.contains('#') {
            return Err("the base URL must have no query or fragment".into());
        }
        let host = authority.host().trim_matches(['[', ']']).to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Self {
            https,
            host,
            port,
            prefix,
        })
    }

    /// The full URL of `path`, for messages.
    pub(crate) fn url(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}{path}", self.authority(), self.prefix)
    }

    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.https, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }
}

/// What a GET returned.
#[derive(Debug)]
pub(crate) struct Response {
    /// The HTTP status code.
    pub(crate) status: u16,
    /// The Retry-After header, when it is a number of seconds.
    pub(crate) retry_after: Option<Duration>,
    /// The body (at most the client's bound, 64 KiB by default).
    pub(crate) body: Bytes,
    /// The response headers (Intel's PCS sends issuer chains in them).
    pub(crate) headers: http::HeaderMap,
}

/// Turns a host name into addresses: blocking, as the system's resolver (`getaddrinfo`) is.
pub trait Resolve: Send + Sync + std::fmt::Debug {
    /// The addresses of `host` at `port`.
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system's resolver.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        use std::net::ToSocketAddrs as _;
        Ok((host, port).to_socket_addrs()?.collect())
    }
}

/// Makes GET requests to one endpoint.
#[derive(Clone)]
pub(crate) struct HttpClient {
    endpoint: Endpoint,
    tls: Option<TlsConnector>,
    resolver: Arc<dyn Resolve>,
    max_body: usize,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client for `endpoint`; for `https`, TLS 1.2 or 1.3 to a server whose certificate chains
    /// to one of Mozilla's roots.
    pub(crate) fn new(endpoint: Endpoint, resolver: Arc<dyn Resolve>) -> Result<Self, String> {
        let tls = if endpoint.https {
            Some(tls_connector()?)
        } else {
            None
        };
        Ok(Self {
            endpoint,
            tls,
            resolver,
            max_body: MAX_BODY,
        })
    }

    /// This client reading bodies of at most `max_body` bytes (a longer one fails the request).
    pub(crate) fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    /// The endpoint.
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// GET `path` (with its query) on a new connection. The error says which step failed.
    pub(crate) async fn get(&self, path: &str) -> Result<Response, String> {
        let e = &self.endpoint;
        let addrs = self.addresses().await?;
        let tcp = TcpStream::connect(&addrs[..])
            .await
            .map_err(|err| format!("cannot connect to {}:{}: {err}", e.host, e.port))?;
        let request = Request::get(format!("{}{path}", e.prefix))
            .header(HOST, e.authority())
            .header(USER_AGENT, concat!("concord/", env!("CARGO_PKG_VERSION")))
            .header(ACCEPT, "application/octet-stream")
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|err| format!("cannot build the request: {err}"))?;
        match &self.tls {
            None => exchange(tcp, request, self.max_body).await,
            Some(tls) => {
                let name = ServerName::try_from(e.host.clone())
                    .map_err(|err| format!("{:?} is not a TLS server name: {err}", e.host))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|err| format!("TLS handshake with {}: {err}", e.host))?;
                exchange(stream, request, self.max_body).await
            }
        }
    }
}

impl HttpClient {
    /// The endpoint's addresses: its IP address as written, or what the resolver answers.
    async fn addresses(&self) -> Result<Vec<SocketAddr>, String> {
        let e = &self.endpoint;
        if let Ok(ip) = e.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, e.port)]);
        }
        let (resolver, host, port) = (self.resolver.clone(), e.host.clone(), e.port);
        // Not on the runtime's blocking pool, as tokio's own connect does: dropping a runtime
        // waits for its blocking tasks, so a resolver that hangs would outlive every timeout. On
        // a thread of its own, abandoned if the caller's timeout fires first; the thread ends
        // when the system resolver gives up. Lookups are single-flight with a backoff
        // (`sev_guest`), so such threads stay few.
        let (answered, answer) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("kds-resolve".into())
            .spawn(move || {
                let _ = answered.send(resolver.resolve(&host, port));
            })
            .map_err(|err| format!("cannot start a thread to resolve {}: {err}", e.host))?;
        let answer = answer
            .await
            .map_err(|_| format!("resolving {}: the resolver thread ended", e.host))?;
        match answer {
            Ok(addrs) if !addrs.is_empty() => Ok(addrs),
            Ok(_) => Err(format!("{} resolves to no address", e.host)),
            Err(err) => Err(format!("cannot resolve {}: {err}", e.host)),
        }
    }
}

/// Sends `request` on `io` and reads the response.
async fn exchange<T>(
    io: T,
    request: Request<Empty<Bytes>>,
    max_body: usize,
) -> Result<Response, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    // The connection is driven beside the request and dropped with it.
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("no HTTP response: {e}"))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let headers = response.headers().clone();
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| format!("reading the response body (at most {max_body} bytes): {e}"))?
            .to_bytes();
        Ok(Response {
            status,
            retry_after,
            body,
            headers,
        })
    }
    .await;
    driver.abort();
    result
}

fn tls_connector() -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut config = rustls::ClientConfig::builder_with_provider(crate::atls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(std::sync::Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_parse_into_their_parts() {
        let e = Endpoint::parse("https://kdsintf.amd.com").unwrap();
        assert_eq!(
            (e.https, e.host.as_str(), e.port),
            (true, "kdsintf.amd.com", 443)
        );
        assert_eq!(e.url("/vcek/v1/x"), "https://kdsintf.amd.com/vcek/v1/x");
        let e = Endpoint::parse("http://127.0.0.1:8080/mirror/kds/").unwrap();
        assert_eq!(
            (e.https, e.port, e.prefix.as_str()),
            (false, 8080, "/mirror/kds")
        );
        assert_eq!(e.url("/vcek"), "http://127.0.0.1:8080/mirror/kds/vcek");
        let e = Endpoint::parse("http://[::1]:9/").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.url("/v"), "http://[::1]:9/v");
    }

    #[test]
    fn unusable_base_urls_are_refused_with_a_reason() {
        for (url, says) in [
            ("kdsintf.amd.com", "scheme"),
            ("ftp://kdsintf.amd.com", "scheme"),
            ("https://kdsintf.amd.com/?a=b", "query"),
            ("https://user@kdsintf.amd.com", "user info"),
            ("not a url", "not a URL"),
        ] {
            let err = Endpoint::parse(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn mozillas_roots_load_into_a_tls_client() {
        assert!(!webpki_roots::TLS_SERVER_ROOTS.is_empty());
        tls_connector().unwrap();
    }
}
