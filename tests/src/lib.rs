//! The fixture every integration test uses: a deployment directory with a simulated root, policies,
//! keys and manifests; coordinators started as real processes on loopback; the real `concord` CLI.
#![forbid(unsafe_code)]

pub mod fault;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_attestation::{AtlsClient, ClientIdentity};
use concord_cli::process::{Addrs, CoordinatorProcess, SimulatedFlags, sibling_binary};
use concord_coordinator::testing::TestDeployment;
use concord_coordinator::transport::connect_from;
use concord_proto::v1::mesh_api_client::MeshApiClient;
use concord_proto::v1::user_api_client::UserApiClient;
use tempfile::TempDir;

pub use concord_coordinator::Hash;

pub const MEASUREMENT_HEX: &str = "4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d";

/// A deployment on disk: everything the binaries read, in one temporary directory.
pub struct Env {
    pub dir: TempDir,
    pub d: TestDeployment,
    /// Processes attest with simulated Intel TDX quotes (`--platform simulated-tdx`).
    pub tdx: bool,
}

impl Env {
    pub fn new() -> Env {
        let d = TestDeployment::new();
        assert_eq!(hex::encode(d.measurement), MEASUREMENT_HEX);
        let mut dir = tempfile::tempdir().expect("tempdir");
        // CONCORD_KEEP_TEST_DIRS=1 keeps every test's directory (logs, stores) for a post-mortem.
        if std::env::var_os("CONCORD_KEEP_TEST_DIRS").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping the test directory {}", dir.path().display());
        }
        let env = Env { dir, d, tdx: false };
        env.d.root.save(&env.path("sim-root")).expect("save root");
        std::fs::write(env.path("coordinator.policy"), &env.d.coordinator_policy).unwrap();
        std::fs::write(env.path("web.policy"), &env.d.workload_policy).unwrap();
        std::fs::write(env.path("stranger.policy"), b"a policy no manifest lists").unwrap();
        let pem = concord_cli::keys::owner_key_pem(&env.d.owner);
        std::fs::write(env.path("owner.pem"), pem.as_bytes()).unwrap();
        for (i, k) in env.d.share_owners.iter().enumerate() {
            std::fs::write(
                env.path(&format!("share-owner-{i}.key")),
                hex::encode(k.secret_bytes().as_slice()),
            )
            .unwrap();
        }
        env.write_manifest("manifest-v1.json", 1);
        env.write_manifest("manifest-v2.json", 2);
        env.write_manifest("manifest-v3.json", 3);
        env
    }

    /// [`Env::new`] whose coordinators and initializers attest with simulated Intel TDX quotes.
    pub fn new_tdx() -> Env {
        Env {
            tdx: true,
            ..Env::new()
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write_manifest(&self, name: &str, version: u32) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, self.d.manifest(version)).unwrap();
        p
    }

    /// Simulated-platform flags for a process whose policy document is `policy_file`.
    pub fn flags(&self, policy_file: &str) -> SimulatedFlags {
        SimulatedFlags {
            root_dir: self.path("sim-root"),
            policy: self.path(policy_file),
            measurement_hex: MEASUREMENT_HEX.into(),
            deployment_id: None,
            tdx: self.tdx,
            extra: Vec::new(),
        }
    }

    /// Starts a coordinator with its data in `data` (under the deployment directory).
    pub fn start_coordinator(&self, data: &str) -> CoordinatorProcess {
        CoordinatorProcess::start(
            &self.path(data),
            &self.path(&format!("{data}.log")),
            &self.flags("coordinator.policy"),
        )
        .expect("coordinator starts")
    }

    /// Starts an `n`-replica cluster on loopback (data in `node-I/`, logs in `node-I.log`).
    /// Five replicas on loopback: 0 to 2 form the cluster, 3 and 4 know everyone and wait for an
    /// owner's `set-members` to add them. Returns the processes and every member's (id, peer address).
    pub fn start_three_and_two_waiting(
        &self,
    ) -> (Vec<CoordinatorProcess>, Vec<(u64, std::net::SocketAddr)>) {
        let addrs: Vec<Addrs> = (0..5).map(|_| Addrs::free().expect("free ports")).collect();
        let all: Vec<(u64, std::net::SocketAddr)> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (i as u64, a.peer))
            .collect();
        let nodes = (0..5)
            .map(|i| {
                let peers = if i < 3 { &all[..3] } else { &all[..] };
                CoordinatorProcess::start_member(
                    &self.path(&format!("node-{i}")),
                    &self.path(&format!("node-{i}.log")),
                    &self.flags("coordinator.policy"),
                    addrs[i],
                    i as u64,
                    peers,
                )
                .expect("start a coordinator")
            })
            .collect();
        (nodes, all)
    }

    pub fn start_cluster(&self, n: u64) -> Vec<CoordinatorProcess> {
        let addrs: Vec<Addrs> = (0..n).map(|_| Addrs::free().expect("free ports")).collect();
        let peers: Vec<(u64, std::net::SocketAddr)> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (i as u64, a.peer))
            .collect();
        (0..n)
            .map(|i| {
                CoordinatorProcess::start_member(
                    &self.path(&format!("node-{i}")),
                    &self.path(&format!("node-{i}.log")),
                    &self.flags("coordinator.policy"),
                    addrs[i as usize],
                    i,
                    &peers,
                )
                .expect("replica starts")
            })
            .collect()
    }

    /// Starts an `n`-replica cluster whose replicas reach each other only through a
    /// [`Mesh`](fault::Mesh) of proxies: node `i` lists node `j` at `mesh.addr_for(i, j)`, so a test
    /// can cut, delay or blackhole each direction of each link.
    pub fn start_meshed_cluster(&self, n: u64) -> (Vec<CoordinatorProcess>, fault::Mesh) {
        self.start_meshed_cluster_with(n, &[])
    }

    /// [`Env::start_meshed_cluster`] with `extra` arguments for every replica.
    pub fn start_meshed_cluster_with(
        &self,
        n: u64,
        extra: &[&str],
    ) -> (Vec<CoordinatorProcess>, fault::Mesh) {
        let mut flags = self.flags("coordinator.policy");
        flags.extra.extend(extra.iter().map(|a| a.to_string()));
        let addrs: Vec<Addrs> = (0..n).map(|_| Addrs::free().expect("free ports")).collect();
        let upstreams: Vec<_> = addrs.iter().map(|a| a.peer).collect();
        let mesh = fault::Mesh::new(&upstreams).expect("the proxy mesh starts");
        let cluster = (0..n as usize)
            .map(|i| {
                let peers: Vec<(u64, std::net::SocketAddr)> = (0..n as usize)
                    .map(|j| {
                        let addr = if i == j {
                            addrs[i].peer
                        } else {
                            mesh.addr_for(i, j)
                        };
                        (j as u64, addr)
                    })
                    .collect();
                CoordinatorProcess::start_member(
                    &self.path(&format!("node-{i}")),
                    &self.path(&format!("node-{i}.log")),
                    &flags,
                    addrs[i],
                    i as u64,
                    &peers,
                )
                .expect("replica starts")
            })
            .collect();
        (cluster, mesh)
    }

    /// A replica's status, or the error it answered.
    /// The index in `cluster` of the replica that says it leads; panics after `within`.
    pub async fn leader_index(&self, cluster: &[CoordinatorProcess], within: Duration) -> usize {
        let start = Instant::now();
        loop {
            for (i, c) in cluster.iter().enumerate() {
                if self.status(c).await.is_ok_and(|s| s.role == "leader") {
                    return i;
                }
            }
            assert!(
                start.elapsed() < within,
                "no replica became leader within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn status(
        &self,
        c: &CoordinatorProcess,
    ) -> Result<concord_proto::v1::GetStatusResponse, String> {
        let manifest = concord_coordinator::manifest::Manifest::parse(&self.d.manifest(1)).unwrap();
        let trust = concord_cli::remote::trust_for(&manifest, true).unwrap();
        let (mut client, _) = concord_cli::remote::user_api(
            &c.user_addr.to_string(),
            &manifest,
            trust,
            pin(&manifest),
        )
        .await
        .map_err(|e| e.to_string())?;
        client
            .get_status(concord_proto::v1::GetStatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string())
    }

    /// Runs `concord ARGS` and returns its output.
    pub fn concord(&self, args: &[&str]) -> Output {
        Command::new(sibling_binary("concord"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run concord")
    }

    /// `concord set` of a manifest file, first or owner-signed.
    pub fn set(&self, c: &CoordinatorProcess, manifest: &str, extra: &[&str]) -> Output {
        let addr = c.user_addr.to_string();
        let mut args = vec![
            "set",
            "-m",
            manifest,
            "-c",
            &addr,
            "--insecure-simulated-attestation",
            "--shares-dir",
            "shares",
            "-p",
            "coordinator.policy",
            "-p",
            "web.policy",
        ];
        args.extend_from_slice(extra);
        self.concord(&args)
    }

    /// `concord cluster set-members` through the user API at `via`, authorized by the owner key file `key`.
    pub fn set_members(
        &self,
        via: std::net::SocketAddr,
        members: &[(u64, std::net::SocketAddr)],
        key: &str,
    ) -> Output {
        let addr = via.to_string();
        let mut args: Vec<String> = [
            "cluster",
            "set-members",
            "-m",
            "manifest-v1.json",
            "-c",
            &addr,
            "--insecure-simulated-attestation",
            "--owner-key",
            key,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (id, a) in members {
            args.push("--member".into());
            args.push(format!("{id}={a}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.concord(&args)
    }

    /// `concord verify` against a manifest, writing to `out`.
    pub fn verify(
        &self,
        c: &CoordinatorProcess,
        manifest: &str,
        out: &str,
        extra: &[&str],
    ) -> Output {
        let addr = c.user_addr.to_string();
        let mut args = vec![
            "verify",
            "-m",
            manifest,
            "-c",
            &addr,
            "--out",
            out,
            "--insecure-simulated-attestation",
        ];
        args.extend_from_slice(extra);
        self.concord(&args)
    }

    /// Runs the initializer for `policy_file` into `root`.
    pub fn initializer(
        &self,
        c: &CoordinatorProcess,
        policy_file: &str,
        root: &str,
        manifest: &str,
        timeout_s: u32,
    ) -> Output {
        Command::new(sibling_binary("concord-initializer"))
            .arg("--coordinator")
            .arg(c.mesh_addr.to_string())
            .arg("--root")
            .arg(self.path(root))
            .arg("--manifest")
            .arg(self.path(manifest))
            .arg("--timeout")
            .arg(timeout_s.to_string())
            .args(self.flags(policy_file).args())
            .output()
            .expect("run concord-initializer")
    }

    /// Runs `concord recover` as seed share owner `i` (their share from the first `concord set`,
    /// their key) against `c`, checking the coordinator against manifest v1, plus `extra` arguments.
    pub fn recover(&self, c: &CoordinatorProcess, i: usize, extra: &[&str]) -> Output {
        let addr = c.user_addr.to_string();
        let share = format!("shares/seed-share-{i}.json");
        let key = format!("share-owner-{i}.key");
        let mut args = vec![
            "recover",
            "--share",
            &share,
            "--key",
            &key,
            "-m",
            "manifest-v1.json",
            "-c",
            &addr,
            "--insecure-simulated-attestation",
        ];
        args.extend_from_slice(extra);
        self.concord(&args)
    }

    /// The `SetManifest` request for manifest `version` after `previous`, authorized by the owner
    /// (the first manifest too: by a key it lists itself).
    pub fn set_manifest_request(
        &self,
        version: u32,
        previous: Hash,
    ) -> concord_proto::v1::SetManifestRequest {
        self.set_manifest_request_for(self.d.manifest(version), &[], previous)
    }

    /// The `SetManifest` request for `manifest` after `previous`, authorized by the owner, with
    /// `extra_policies` (documents) beside the deployment's coordinator and workload policies.
    pub fn set_manifest_request_for(
        &self,
        manifest: Vec<u8>,
        extra_policies: &[Vec<u8>],
        previous: Hash,
    ) -> concord_proto::v1::SetManifestRequest {
        let mut req = self.d.set_request(manifest, previous);
        req.policies.extend_from_slice(extra_policies);
        let (owner_key, owner_signature) = req
            .owner
            .map(|(k, s)| (k.to_bytes().to_vec(), s.to_bytes().to_vec()))
            .unwrap_or_default();
        concord_proto::v1::SetManifestRequest {
            manifest: req.manifest,
            policies: req.policies,
            expected_previous: previous.as_bytes().to_vec(),
            owner_key,
            owner_signature,
        }
    }

    /// A user API client that verified the coordinator against manifest v1.
    pub async fn user_client(
        &self,
        c: &CoordinatorProcess,
    ) -> UserApiClient<tonic::transport::Channel> {
        let manifest = concord_coordinator::manifest::Manifest::parse(&self.d.manifest(1)).unwrap();
        let trust = concord_cli::remote::trust_for(&manifest, true).unwrap();
        concord_cli::remote::user_api(&c.user_addr.to_string(), &manifest, trust, pin(&manifest))
            .await
            .unwrap()
            .0
    }

    /// A user API client like [`Env::user_client`], dialing from the local address `local` (such as
    /// 127.0.0.2: another host, as far as the coordinator can tell).
    pub async fn user_client_from(
        &self,
        c: &CoordinatorProcess,
        local: std::net::IpAddr,
    ) -> UserApiClient<tonic::transport::Channel> {
        let manifest = concord_coordinator::manifest::Manifest::parse(&self.d.manifest(1)).unwrap();
        let trust = concord_cli::remote::trust_for(&manifest, true).unwrap();
        let policy = concord_cli::remote::coordinator_policy(&manifest, trust).unwrap();
        let client = Arc::new(AtlsClient::new(Arc::new(policy), None).unwrap());
        let (channel, _) = concord_coordinator::transport::connect_from(
            &c.user_addr.to_string(),
            Some(local),
            client,
        )
        .await
        .unwrap();
        UserApiClient::new(channel)
    }

    /// A mesh API client attesting as `policy` (the given document), verifying the coordinator.
    pub async fn mesh_client(
        &self,
        c: &CoordinatorProcess,
        policy: &[u8],
    ) -> Result<MeshApiClient<tonic::transport::Channel>, String> {
        self.mesh_client_from(c, policy, None).await
    }

    /// [`Env::mesh_client`] from the local address `local` (a pod of its own on loopback: the mesh
    /// port limits handshakes per source address).
    pub async fn mesh_client_from(
        &self,
        c: &CoordinatorProcess,
        policy: &[u8],
        local: Option<std::net::IpAddr>,
    ) -> Result<MeshApiClient<tonic::transport::Channel>, String> {
        let manifest = concord_coordinator::manifest::Manifest::parse(&self.d.manifest(1)).unwrap();
        let trust = concord_cli::remote::trust_for(&manifest, true).unwrap();
        let policy_check = concord_cli::remote::coordinator_policy(&manifest, trust).unwrap();
        let identity = ClientIdentity {
            issuer: Arc::new(self.d.issuer(policy)),
            key: Arc::new(rcgen::KeyPair::generate().unwrap()),
            deployment: Arc::new(manifest.deployment_id()),
        };
        let client = Arc::new(
            AtlsClient::new(Arc::new(policy_check), Some(identity)).map_err(|e| e.to_string())?,
        );
        connect_from(&c.mesh_addr.to_string(), local, client)
            .await
            .map(|(ch, _)| {
                MeshApiClient::new(ch)
                    .max_decoding_message_size(concord_proto::limits::MESH_API_MESSAGE_BYTES)
                    .max_encoding_message_size(concord_proto::limits::MESH_API_MESSAGE_BYTES)
            })
            .map_err(|e| e.to_string())
    }
}

/// What the fixture's own clients accept: the deployment `manifest` makes, or a coordinator that has
/// none yet (tests set first manifests and ask fresh replicas for their status).
pub fn pin(
    manifest: &concord_coordinator::manifest::Manifest,
) -> concord_attestation::DeploymentPin {
    concord_attestation::DeploymentPin::ThisOrUnpinned(manifest.deployment_id())
}

impl Default for Env {
    fn default() -> Env {
        Env::new()
    }
}

/// Exit code, stdout and stderr, for assertion messages.
pub fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The first line of stdout: commands print their one result there (a hash).
pub fn stdout_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// GETs `path` over plain HTTP (the probes and metrics port): the status code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(5);
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    tcp.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer)
        .map_err(|e| format!("cannot read from {addr}: {e}"))?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {answer:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}
