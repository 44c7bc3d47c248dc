//! The reference: a 3-member etcd cluster (Debian's `etcd-server`) on loopback ports in a temporary
//! directory, started and killed by the benchmark like Concord's replicas. Every member process is
//! killed when the cluster is dropped, also on a panic; the directory goes with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use concord_cli::process::free_addr;
use tempfile::TempDir;

use crate::etcd_client::EtcdClient;

/// How long a member may take to serve, and the cluster to elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The etcd binary: `CONCORD_BENCH_ETCD` if set (a path; nothing there means no etcd), else on
/// PATH, else where Debian installs it.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CONCORD_BENCH_ETCD") {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("etcd"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let debian = PathBuf::from("/usr/bin/etcd");
        debian.is_file().then_some(debian)
    })
}

/// `etcd --version`'s first line.
pub fn version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "etcd (version unknown)".into())
}

/// Raft timing of the etcd cluster.
#[derive(Debug, Clone, Copy)]
pub enum Timing {
    /// etcd's defaults: heartbeat 100 ms, election timeout 1000 ms (randomized up to 2000 ms).
    Default,
    /// Concord's election timeout: 100 to 200 ms (etcd randomizes between the timeout and twice it;
    /// Concord's followers wait openraft's leader lease, 200 ms, on top); etcd wants the timeout at
    /// least 5 heartbeats, hence 20 ms heartbeats.
    LikeConcord,
}

/// One member: its addresses, directory and, while it runs, its process.
#[derive(Debug)]
struct Member {
    name: String,
    /// Plain HTTP: the JSON gateway client's, and the health checks'.
    client: SocketAddr,
    /// TLS with client certificates, in a cluster started with [`EtcdCluster::start_tls`].
    secure_client: Option<SocketAddr>,
    peer: SocketAddr,
    child: Option<Child>,
}

/// A cluster's TLS: one CA, one certificate for every member (server and client, 127.0.0.1), the
/// same one for the benchmark's client; as Kubernetes runs etcd, TLS on client and peer links both.
#[derive(Debug)]
struct Tls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client: std::sync::Arc<rustls::ClientConfig>,
}

impl Tls {
    fn make(dir: &Path) -> Result<Tls, String> {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            SanType,
        };
        let err = |e: rcgen::Error| format!("cannot make etcd's TLS certificates: {e}");
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
        let ca = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &ca).map_err(err)?;
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem)
                .map(|()| path)
                .map_err(|e| format!("cannot write {name}: {e}"))
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca_cert.der().clone())
            .map_err(|e| format!("cannot trust etcd's CA: {e}"))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .map_err(|e| format!("cannot use the client certificate: {e}"))?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Tls {
            ca: write("ca.pem", ca_cert.pem())?,
            cert: write("member.pem", cert.pem())?,
            key: write("member-key.pem", key.serialize_pem())?,
            client: std::sync::Arc::new(client),
        })
    }
}

/// A running 3-member cluster.
#[derive(Debug)]
pub struct EtcdCluster {
    binary: PathBuf,
    dir: TempDir,
    timing: Timing,
    token: String,
    members: Vec<Member>,
    tls: Option<Tls>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until they elected a leader.
    pub fn start(binary: &Path, n: usize, timing: Timing) -> Result<EtcdCluster, String> {
        Self::start_with(binary, n, timing, false)
    }

    /// Starts `n` members with TLS on their client and peer links (client certificates required),
    /// as Kubernetes runs etcd; each also serves plain HTTP on [`Member::client`] for the health
    /// checks. With etcd's default timing.
    pub fn start_tls(binary: &Path, n: usize) -> Result<EtcdCluster, String> {
        Self::start_with(binary, n, Timing::Default, true)
    }

    fn start_with(
        binary: &Path,
        n: usize,
        timing: Timing,
        tls: bool,
    ) -> Result<EtcdCluster, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temporary dir: {e}"))?;
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client: free_addr().map_err(|e| e.to_string())?,
                secure_client: if tls {
                    Some(free_addr().map_err(|e| e.to_string())?)
                } else {
                    None
                },
                peer: free_addr().map_err(|e| e.to_string())?,
                child: None,
            });
        }
        let mut cluster = EtcdCluster {
            binary: binary.to_path_buf(),
            dir,
            timing,
            token: format!(
                "concord-bench-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ),
            members,
            tls: None,
        };
        if tls {
            cluster.tls = Some(Tls::make(cluster.dir.path())?);
        }
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy()?;
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// A client of member `i`'s gRPC API over TLS, if the cluster was started with TLS.
    pub async fn grpc_client(&self, i: usize) -> Result<crate::etcd_grpc::EtcdGrpc, String> {
        match (&self.tls, self.members[i].secure_client) {
            (Some(tls), Some(addr)) => {
                crate::etcd_grpc::EtcdGrpc::connect(addr, tls.client.clone()).await
            }
            _ => Err("this etcd cluster was started without TLS".into()),
        }
    }

    /// A client of member `i`.
    pub fn client(&self, i: usize, timeout: Duration) -> EtcdClient {
        EtcdClient::new(self.members[i].client, timeout)
    }

    /// The pid of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// The member that leads now, waiting for an election if there is none.
    pub fn leader(&self) -> Result<usize, String> {
        let start = Instant::now();
        while start.elapsed() < START_TIMEOUT {
            for i in 0..self.len() {
                if self.members[i].child.is_some()
                    && self.client(i, Duration::from_secs(2)).is_leader() == Ok(true)
                {
                    return Ok(i);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("etcd elected no leader within {START_TIMEOUT:?}"))
    }

    /// SIGKILL member `i` (a crash), and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data and waits until every member is up with a leader.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_healthy()
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let initial_cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}://{}", m.name, self.scheme(), m.peer))
            .collect();
        let m = &self.members[i];
        let log_path = self.dir.path().join(format!("{}.log", m.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .arg("--listen-client-urls")
            .arg(match m.secure_client {
                Some(secure) => format!("https://{secure},http://{}", m.client),
                None => format!("http://{}", m.client),
            })
            .arg("--advertise-client-urls")
            .arg(match m.secure_client {
                Some(secure) => format!("https://{secure}"),
                None => format!("http://{}", m.client),
            })
            .arg("--listen-peer-urls")
            .arg(format!("{}://{}", self.scheme(), m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("{}://{}", self.scheme(), m.peer))
            // Read only on the first start; a restart finds the member in its data directory.
            .arg("--initial-cluster")
            .arg(initial_cluster.join(","))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--logger")
            .arg("zap");
        if let Some(tls) = &self.tls {
            for (flag, path) in [
                ("--cert-file", &tls.cert),
                ("--key-file", &tls.key),
                ("--trusted-ca-file", &tls.ca),
                ("--peer-cert-file", &tls.cert),
                ("--peer-key-file", &tls.key),
                ("--peer-trusted-ca-file", &tls.ca),
            ] {
                cmd.arg(flag).arg(path);
            }
            cmd.args(["--client-cert-auth", "--peer-client-cert-auth"]);
        }
        if let Timing::LikeConcord = self.timing {
            cmd.args(["--heartbeat-interval", "20", "--election-timeout", "100"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Waits until every running member answers and one of them leads.
    fn wait_healthy(&mut self) -> Result<(), String> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < START_TIMEOUT {
            self.check_alive()?;
            let mut leaders = 0;
            let mut up = 0;
            for i in 0..self.len() {
                match self.client(i, Duration::from_secs(2)).is_leader() {
                    Ok(leads) => {
                        up += 1;
                        leaders += usize::from(leads);
                    }
                    Err(e) => last = e,
                }
            }
            if up == self.len() && leaders == 1 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "the etcd cluster was not healthy within {START_TIMEOUT:?} ({last}); logs in {}",
            self.dir.path().display()
        ))
    }

    /// An error naming the member that exited, with the end of its log.
    fn check_alive(&mut self) -> Result<(), String> {
        for m in &mut self.members {
            if let Some(child) = &mut m.child
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = self.dir.path().join(format!("{}.log", m.name));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                return Err(format!(
                    "etcd member {} exited ({status}); its log ends with:\n{}",
                    m.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
