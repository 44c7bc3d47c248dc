//! The transit API's throughput: encrypt and decrypt operations per second of one replica, from
//! workloads on kept connections (HTTP/1.1 keep-alive over mutual TLS, as Vault clients keep theirs),
//! beside AES-256-GCM alone on one thread of this process (ring, the TLS stack's AES-GCM, not
//! Concord's code), for the same 32-byte plaintext.
//!
//! Each workload sends one request at a time on its own connection; they run in this process, on the
//! same cores as the replica. Both sides are also counted per second of CPU time, as for NewMeshCert.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use concord_tests::Env;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::mesh::cpu_time;
use crate::table::{Row, Verdict};

const WARMUP: Duration = Duration::from_millis(500);
const PLAINTEXT: &[u8; 32] = b"a 32-byte record of application.";

/// What the replica did for one operation.
pub struct Ops {
    pub per_second: f64,
    /// The replica's CPU time per second of the window.
    pub cores: f64,
}

/// Encrypt, then decrypt, operations per second of one replica.
pub async fn replica(env: &Env, clients: usize, window: Duration) -> Result<(Ops, Ops), String> {
    std::fs::write(env.path("transit.json"), env.d.transit_manifest(1, 1))
        .map_err(|e| e.to_string())?;
    let node = env.start_coordinator("transit-replica");
    let set = env.set(&node, "transit.json", &["--owner-key", "owner.pem"]);
    if !set.status.success() {
        return Err(concord_tests::describe(&set));
    }
    let init = env.initializer(&node, "web.policy", "web", "transit.json", 60);
    if !init.status.success() {
        return Err(concord_tests::describe(&init));
    }
    let connector = connector(&env.path("web/tls-config"))?;
    let addr = node.transit_addr;
    let mut probe = connect(&connector, addr).await?;
    let body = format!(r#"{{"plaintext":"{}"}}"#, STANDARD.encode(PLAINTEXT));
    let (status, answer) = call(&mut probe, "/v1/transit/encrypt/orders", &body).await?;
    if status != 200 {
        return Err(format!(
            "encrypt answered {status}: {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    let answer: serde_json::Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
    let ciphertext = answer["data"]["ciphertext"].as_str().unwrap_or_default();
    let decrypt_body = format!(r#"{{"ciphertext":"{ciphertext}"}}"#);
    let stat = format!("/proc/{}/stat", node.pid());
    let mut results = Vec::new();
    for (path, body) in [
        ("/v1/transit/encrypt/orders", body.clone()),
        ("/v1/transit/decrypt/orders", decrypt_body),
    ] {
        let start = Instant::now();
        let (open, close) = (start + WARMUP, start + WARMUP + window);
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let stream = connect(&connector, addr).await?;
            let body = body.clone();
            tasks.push(tokio::spawn(workload(stream, path, body, open, close)));
        }
        tokio::time::sleep_until(open.into()).await;
        let at_open = cpu_time(&stat)?;
        tokio::time::sleep_until(close.into()).await;
        let at_close = cpu_time(&stat)?;
        let mut done = 0;
        for t in tasks {
            done += t.await.map_err(|e| e.to_string())??;
        }
        results.push(Ops {
            per_second: done as f64 / window.as_secs_f64(),
            cores: (at_close - at_open).as_secs_f64() / window.as_secs_f64(),
        });
    }
    let decrypt = results.pop().ok_or("no decrypt result")?;
    let encrypt = results.pop().ok_or("no encrypt result")?;
    Ok((encrypt, decrypt))
}

fn connector(tls: &std::path::Path) -> Result<TlsConnector, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let mut roots = rustls::RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(tls.join("coordinator-root-ca.pem")).map_err(|x| e(&x))?
    {
        roots.add(c.map_err(|x| e(&x))?).map_err(|x| e(&x))?;
    }
    let chain = CertificateDer::pem_file_iter(tls.join("certChain.pem"))
        .map_err(|x| e(&x))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|x| e(&x))?;
    let key = PrivateKeyDer::from_pem_file(tls.join("key.pem")).map_err(|x| e(&x))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|x| e(&x))?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(|x| e(&x))?;
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn connect(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(addr.ip().into());
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS to the transit API: {e}"))
}

/// One HTTP/1.1 request on a kept connection; the answer's status and body.
async fn call(
    stream: &mut TlsStream<TcpStream>,
    path: &str,
    body: &str,
) -> Result<(u16, Vec<u8>), String> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: concord\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or("no HTTP status")?;
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or("no content-length")?;
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("closed mid-answer".into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok((status, buf[end + 4..end + 4 + length].to_vec()));
        }
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn workload(
    mut stream: TlsStream<TcpStream>,
    path: &'static str,
    body: String,
    open: Instant,
    close: Instant,
) -> Result<u64, String> {
    let mut counted = 0;
    while Instant::now() < close {
        let (status, answer) = call(&mut stream, path, &body).await?;
        if status != 200 {
            return Err(format!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&answer)
            ));
        }
        let now = Instant::now();
        if now >= open && now < close {
            counted += 1;
        }
    }
    Ok(counted)
}

/// AES-256-GCM alone, ring, one thread: seals then opens of the same plaintext, per second of wall
/// time and of the thread's CPU time.
pub fn aes_alone(window: Duration) -> Result<(f64, f64, f64, f64), String> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).map_err(|e| e.to_string())?);
    let measure = |open: bool| -> Result<(f64, f64), String> {
        let mut sealed = PLAINTEXT.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key([1; 12]),
            Aad::empty(),
            &mut sealed,
        )
        .map_err(|e| e.to_string())?;
        let start = Instant::now();
        let cpu_at_start = cpu_time("/proc/thread-self/stat")?;
        let mut done = 0u64;
        while start.elapsed() < window {
            for _ in 0..1000 {
                if open {
                    let mut buf = sealed.clone();
                    key.open_in_place(
                        Nonce::assume_unique_for_key([1; 12]),
                        Aad::empty(),
                        &mut buf,
                    )
                    .map_err(|e| e.to_string())?;
                } else {
                    let mut buf = PLAINTEXT.to_vec();
                    key.seal_in_place_append_tag(
                        Nonce::assume_unique_for_key([1; 12]),
                        Aad::empty(),
                        &mut buf,
                    )
                    .map_err(|e| e.to_string())?;
                }
            }
            done += 1000;
        }
        let wall = start.elapsed().as_secs_f64();
        let cpu = (cpu_time("/proc/thread-self/stat")? - cpu_at_start).as_secs_f64();
        Ok((done as f64 / wall, done as f64 / cpu.max(0.01)))
    };
    let (seal, seal_cpu) = measure(false)?;
    let (open, open_cpu) = measure(true)?;
    Ok((seal, seal_cpu, open, open_cpu))
}

/// The rows: each operation per wall second and per CPU second of the replica, beside AES-GCM alone.
pub fn rows(encrypt: &Ops, decrypt: &Ops, aes: (f64, f64, f64, f64), clients: usize) -> Vec<Row> {
    let (seal, seal_cpu, open, open_cpu) = aes;
    let mut rows = Vec::new();
    for (name, ops, alone, alone_cpu) in [
        ("encrypt", encrypt, seal, seal_cpu),
        ("decrypt", decrypt, open, open_cpu),
    ] {
        rows.push(Row::new(
            format!(
                "transit {name}, 1 replica, {clients} kept connections (replica {:.2} cores)",
                ops.cores
            ),
            format!(
                "{:.0} /s, {:.0} per CPU second",
                ops.per_second,
                ops.per_second / ops.cores.max(0.01)
            ),
            format!(
                "AES-256-GCM alone (ring), 1 thread: {alone:.0} /s, {alone_cpu:.0} per CPU second"
            ),
            "-",
            Verdict::Info,
        ));
    }
    rows
}
