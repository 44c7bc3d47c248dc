//! Starting and stopping Concord's binaries as child processes on loopback: used by `concord demo` and
//! by the integration tests, so both run the real binaries the same way.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::exit::{CliError, CliResult};

/// A binary that sits next to the running one (`target/debug/` in development, `bin/` when installed).
/// `CONCORD_BIN_DIR` overrides the directory.
pub fn sibling_binary(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("CONCORD_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Test binaries live in target/debug/deps; the binaries one level up.
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// Ports handed to child processes come from below Linux's ephemeral range (32768-60999): a port the
/// kernel picked (port 0) and we released could be given to some process's outgoing connection before
/// the child binds it. Each process walks its own sequence from a random start.
const PORTS: std::ops::Range<u16> = 20000..32000;

/// A free loopback address for a child process to listen on.
pub fn free_addr() -> CliResult<SocketAddr> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(PORTS.end - PORTS.start);
    if NEXT.load(Ordering::Relaxed) == 0 {
        let seed = std::process::id().wrapping_mul(7919) ^ rand::random::<u32>();
        let _ = NEXT.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // `n % span` is below `span`, which fits a u16.
        let port = PORTS.start + (n % span) as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    Err(CliError::error(format!(
        "no free loopback port between {} and {}",
        PORTS.start, PORTS.end
    )))
}

/// The flags of the INSECURE simulated platform for one process, and the deployment it belongs to.
#[derive(Debug, Clone)]
pub struct SimulatedFlags {
    pub root_dir: PathBuf,
    pub policy: PathBuf,
    pub measurement_hex: String,
    /// `--deployment-id` (hex), for coordinators and initializers; `None`: not given.
    pub deployment_id: Option<String>,
    /// Simulated Intel TDX quotes (`--platform simulated-tdx`) instead of SNP-shaped reports.
    pub tdx: bool,
    /// More coordinator flags, after the platform's (tests: `--snapshot-after-entries`; benchmarks:
    /// `--evidence`, the simulated issuer's delay).
    pub extra: Vec<String>,
}

impl SimulatedFlags {
    pub fn args(&self) -> Vec<String> {
        let deployment = self
            .deployment_id
            .iter()
            .flat_map(|id| ["--deployment-id".to_string(), id.clone()]);
        deployment
            .chain([
                "--platform".into(),
                if self.tdx {
                    "simulated-tdx"
                } else {
                    "simulated"
                }
                .into(),
                "--insecure-simulated-attestation".into(),
                "--simulated-root".into(),
                self.root_dir.display().to_string(),
                "--simulated-policy".into(),
                self.policy.display().to_string(),
                "--simulated-measurement".into(),
                self.measurement_hex.clone(),
            ])
            .chain(self.extra.iter().cloned())
            .collect()
    }
}

/// The listen addresses of one coordinator: its three APIs and its probes and metrics.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub user: SocketAddr,
    pub mesh: SocketAddr,
    pub peer: SocketAddr,
    pub health: SocketAddr,
    /// The transit API (Vault's transit paths over mutual TLS).
    pub transit: SocketAddr,
}

impl Addrs {
    /// Five free loopback addresses.
    pub fn free() -> CliResult<Addrs> {
        Ok(Addrs {
            user: free_addr()?,
            mesh: free_addr()?,
            peer: free_addr()?,
            health: free_addr()?,
            transit: free_addr()?,
        })
    }
}

/// A running `concord-coordinator`.
#[derive(Debug)]
pub struct CoordinatorProcess {
    child: Child,
    pub user_addr: SocketAddr,
    pub mesh_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// Plain HTTP: `/probe/*`, `/health`, `/metrics`.
    pub health_addr: SocketAddr,
    /// The transit API (HTTPS, mutual TLS with mesh certificates).
    pub transit_addr: SocketAddr,
    pub node_id: u64,
    /// The cluster's members (id, peer API address), this one included; empty for a lone replica.
    pub peers: Vec<(u64, SocketAddr)>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl CoordinatorProcess {
    /// Starts a coordinator with its data in `data_dir` and its log in `log`, on free loopback ports,
    /// and waits until every port accepts connections.
    pub fn start(
        data_dir: &Path,
        log: &Path,
        platform: &SimulatedFlags,
    ) -> CliResult<CoordinatorProcess> {
        Self::start_member(data_dir, log, platform, Addrs::free()?, 0, &[])
    }

    /// Starts member `node_id` of a cluster whose members are `peers` (id, peer API address); with no
    /// peers, a lone replica.
    pub fn start_member(
        data_dir: &Path,
        log: &Path,
        platform: &SimulatedFlags,
        addrs: Addrs,
        node_id: u64,
        peers: &[(u64, SocketAddr)],
    ) -> CliResult<CoordinatorProcess> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::error(format!("cannot create {}: {e}", dir.display())))?;
        }
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| CliError::error(format!("cannot open {}: {e}", log.display())))?;
        let err_file = log_file
            .try_clone()
            .map_err(|e| CliError::error(e.to_string()))?;
        let bin = sibling_binary("concord-coordinator");
        let mut cmd = Command::new(&bin);
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("--user-listen")
            .arg(addrs.user.to_string())
            .arg("--mesh-listen")
            .arg(addrs.mesh.to_string())
            .arg("--peer-listen")
            .arg(addrs.peer.to_string())
            .arg("--health-listen")
            .arg(addrs.health.to_string())
            .arg("--transit-listen")
            .arg(addrs.transit.to_string())
            .arg("--node-id")
            .arg(node_id.to_string());
        for (id, addr) in peers {
            cmd.arg("--peer").arg(format!("{id}={addr}"));
        }
        let child = cmd
            .args(platform.args())
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|e| {
                CliError::error(format!(
                    "cannot start {}: {e} (build it with `cargo build`)",
                    bin.display()
                ))
            })?;
        let mut p = CoordinatorProcess {
            child,
            user_addr: addrs.user,
            mesh_addr: addrs.mesh,
            peer_addr: addrs.peer,
            health_addr: addrs.health,
            transit_addr: addrs.transit,
            node_id,
            peers: peers.to_vec(),
            data_dir: data_dir.to_path_buf(),
            log: log.to_path_buf(),
        };
        p.wait_listening(Duration::from_secs(30))?;
        Ok(p)
    }

    fn wait_listening(&mut self, timeout: Duration) -> CliResult {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                return Err(CliError::error(format!(
                    "the coordinator exited ({status}) before it served; its log ({}) ends with:\n{}",
                    self.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
            let up =
                |a: &SocketAddr| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok();
            if [
                self.user_addr,
                self.mesh_addr,
                self.peer_addr,
                self.health_addr,
                self.transit_addr,
            ]
            .iter()
            .all(up)
            {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(CliError::error(format!(
                    "the coordinator did not listen within {timeout:?}; see {}",
                    self.log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The same member again (after `kill` or `stop`), on the same addresses and data.
    pub fn restart(&mut self, platform: &SimulatedFlags) -> CliResult {
        if self.is_running() {
            self.kill();
        }
        let addrs = Addrs {
            user: self.user_addr,
            mesh: self.mesh_addr,
            peer: self.peer_addr,
            health: self.health_addr,
            transit: self.transit_addr,
        };
        let again = Self::start_member(
            &self.data_dir.clone(),
            &self.log.clone(),
            platform,
            addrs,
            self.node_id,
            &self.peers.clone(),
        )?;
        *self = again;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL if it does not stop within 5 s.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill();
        }
    }
}
