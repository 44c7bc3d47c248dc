//! `concord demo`: one command that runs Concord end to end on this machine, with the INSECURE simulated
//! platform, and leaves every artifact in a directory to look at.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Args;
use concord_attestation::PlatformTrust;
use concord_coordinator::Hash;
use concord_proto::v1 as pb;

use crate::cmd::{attestation, history, recover, set, verify};
use crate::exit::{CliError, CliResult, write_file};
use crate::keys;
use crate::process::{Addrs, CoordinatorProcess, SimulatedFlags, sibling_binary};

/// Replicas in the demo cluster.
const REPLICAS: u64 = 3;

#[derive(Debug, Args)]
pub struct Demo {
    /// Where to put everything (default: a new temporary directory, kept).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The launch measurement every process of the demo claims (simulated).
const MEASUREMENT: &str = "c0ffee00000000000000000000000000000000000000000000000000000000000000000000000000000000000000c0de";

struct Steps {
    n: usize,
    start: Instant,
}

impl Steps {
    fn step(&mut self, what: &str) {
        self.n += 1;
        eprintln!(
            "\n[{}] {what}  (+{:.2}s)",
            self.n,
            self.start.elapsed().as_secs_f64()
        );
    }
}

fn manifest_json(
    d: &Path,
    coordinator: &Hash,
    web: &Hash,
    root: &str,
    owner: &str,
    shares: &[String],
    extra_san: Option<&str>,
) -> Vec<u8> {
    let mut sans = vec![
        "web",
        "web.default.svc.cluster.local",
        "127.0.0.1",
        "spiffe://concord.demo/web",
    ];
    if let Some(s) = extra_san {
        sans.push(s);
    }
    let _ = d;
    let json = serde_json::json!({
        "policies": {
            coordinator.to_hex(): { "name": "coordinator", "sans": ["coordinator"], "role": "coordinator" },
            web.to_hex(): { "name": "web", "sans": sans, "workload_secret_id": "default/web" }
        },
        "reference_values": {
            "simulated": [{ "root": root, "trusted_measurements": [MEASUREMENT] }]
        },
        "workload_owner_keys": [owner],
        "seed_share_owners": { "threshold": 2, "keys": shares }
    });
    let mut out = serde_json::to_vec_pretty(&json).unwrap_or_default();
    out.push(b'\n');
    out
}

pub async fn run(args: Demo) -> CliResult {
    let dir = match args.dir {
        Some(d) => d,
        None => tempfile::Builder::new()
            .prefix("concord-demo-")
            .tempdir()
            .map_err(|e| CliError::error(format!("cannot make a temporary directory: {e}")))?
            .keep(),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::error(format!("cannot create {}: {e}", dir.display())))?;
    let dir = dir.canonicalize().unwrap_or(dir);
    let mut s = Steps {
        n: 0,
        start: Instant::now(),
    };
    eprintln!("Concord demo in {}", dir.display());
    eprintln!("INSECURE: simulated attestation: this demo runs without SEV-SNP hardware");

    s.step("make the simulated platform root, the policies, the owner key and three seed share owner keys");
    let root_dir = dir.join("platform/sim-root");
    attestation::run(attestation::Attestation::SimRoot {
        out: root_dir.clone(),
    })?;
    let root = concord_attestation::SimulatedRoot::load(&root_dir)
        .map_err(|e| CliError::error(format!("cannot load {}: {e}", root_dir.display())))?;
    let coordinator_policy = dir.join("policies/coordinator.policy");
    let web_policy = dir.join("policies/web.policy");
    write_file(
        &coordinator_policy,
        b"# demo policy of the coordinator build\nimage: concord-coordinator:demo\n",
        false,
    )?;
    write_file(
        &web_policy,
        b"# demo policy of the web workload\nimage: web:demo\n",
        false,
    )?;
    let owner = keys::new_owner_key(&dir.join("keys/owner.pem"))?;
    let mut share_keys = Vec::new();
    for i in 0..3 {
        let k = keys::new_share_owner_key(&dir.join(format!("keys/share-owner-{i}.key")))?;
        share_keys.push(hex::encode(k.public_key()));
    }
    let coordinator_hash = Hash::of(&std::fs::read(&coordinator_policy).unwrap_or_default());
    let web_hash = Hash::of(&std::fs::read(&web_policy).unwrap_or_default());
    let root_hex = hex::encode(root.hash());
    let owner_hex = hex::encode(owner.verifying_key().as_bytes());
    let manifest_v1 = dir.join("manifest.json");
    write_file(
        &manifest_v1,
        &manifest_json(
            &dir,
            &coordinator_hash,
            &web_hash,
            &root_hex,
            &owner_hex,
            &share_keys,
            None,
        ),
        false,
    )?;
    eprintln!("    manifest: {}", manifest_v1.display());
    let deployment = hex::encode(
        crate::remote::read_manifest(&manifest_v1)?
            .deployment_id()
            .as_bytes(),
    );
    eprintln!(
        "    deployment id (`concord deployment-id -m manifest.json`: its seed share owners and owner keys): {deployment}"
    );

    s.step(
        "start three coordinator replicas (simulated platform): data in replicas/, logs in logs/",
    );
    // Every replica and the initializer are pinned to the deployment: a coordinator of another one
    // (the host can start one at will) gets nothing from them.
    let flags = SimulatedFlags {
        root_dir: root_dir.clone(),
        policy: coordinator_policy.clone(),
        measurement_hex: MEASUREMENT.into(),
        deployment_id: Some(deployment.clone()),
        extra: Vec::new(),
    };
    let mut cluster = Cluster::start(&dir, &flags, root.hash(), &manifest_v1)?;
    let result = async {
        cluster.show().await;
        let ctx = Ctx {
            dir: &dir,
            root_hex: &root_hex,
            web_policy: &web_policy,
            manifest_v1: &manifest_v1,
            manifest_v2: &dir.join("manifest-v2.json"),
            deployment: &deployment,
        };
        write_file(
            ctx.manifest_v2,
            &manifest_json(
                &dir,
                &coordinator_hash,
                &web_hash,
                &root_hex,
                &owner_hex,
                &share_keys,
                Some("web-v2.default.svc.cluster.local"),
            ),
            false,
        )?;
        scenario(&mut s, &ctx, &mut cluster).await
    }
    .await;

    s.step("stop the replicas");
    cluster.stop();
    result?;
    eprintln!(
        "\nDone in {:.1}s. Look around in {}:",
        s.start.elapsed().as_secs_f64(),
        dir.display()
    );
    for (path, what) in [
        ("manifest.json, manifest-v2.json", "the two manifests set"),
        (
            "seed-shares/",
            "the seed shares, each encrypted to one owner key in keys/",
        ),
        (
            "workload-web/tls-config/",
            "the web workload's key, certificate chain, mesh CA and root CA",
        ),
        (
            "workload-web/secrets/workload-secret-seed",
            "the web workload's secret",
        ),
        (
            "verify/history.json",
            "the audit bundle (audit it again with the command below)",
        ),
        ("logs/", "each replica's and the initializer's logs"),
    ] {
        eprintln!("    {path:<45} {what}");
    }
    eprintln!(
        "\n    concord history audit {} --insecure-simulated-root {}",
        dir.join("verify/history.json").display(),
        hex::encode(root.hash())
    );
    Ok(())
}

/// Paths every step uses.
struct Ctx<'a> {
    dir: &'a Path,
    root_hex: &'a str,
    web_policy: &'a Path,
    manifest_v1: &'a Path,
    manifest_v2: &'a Path,
    /// The deployment id (hex) every replica, the initializer and the CLI are pinned to.
    deployment: &'a str,
}

/// The demo's replicas, and an attested view of their status.
struct Cluster {
    nodes: Vec<CoordinatorProcess>,
    flags: SimulatedFlags,
    manifest: concord_coordinator::manifest::Manifest,
    trust: PlatformTrust,
}

impl Cluster {
    fn start(
        dir: &Path,
        flags: &SimulatedFlags,
        root: [u8; 32],
        manifest: &Path,
    ) -> CliResult<Cluster> {
        let addrs: Vec<Addrs> = (0..REPLICAS)
            .map(|_| Addrs::free())
            .collect::<CliResult<_>>()?;
        let peers: Vec<(u64, std::net::SocketAddr)> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (i as u64, a.peer))
            .collect();
        let mut nodes = Vec::new();
        for (i, a) in addrs.iter().enumerate() {
            nodes.push(CoordinatorProcess::start_member(
                &dir.join(format!("replicas/node-{i}")),
                &dir.join(format!("logs/node-{i}.log")),
                flags,
                *a,
                i as u64,
                &peers,
            )?);
        }
        Ok(Cluster {
            nodes,
            flags: flags.clone(),
            manifest: crate::remote::read_manifest(manifest)?,
            trust: PlatformTrust {
                insecure_simulated_root: Some(root),
            },
        })
    }

    async fn status(&self, i: usize) -> Option<pb::GetStatusResponse> {
        let node = &self.nodes[i];
        let (mut client, _) = crate::remote::user_api(
            &node.user_addr.to_string(),
            &self.manifest,
            self.trust.clone(),
            concord_attestation::DeploymentPin::ThisOrUnpinned(self.manifest.deployment_id()),
        )
        .await
        .ok()?;
        client
            .get_status(pb::GetStatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    async fn show(&self) {
        for i in 0..self.nodes.len() {
            match self.status(i).await {
                Some(st) => eprintln!(
                    "    replica {}: {} {} (term {}), {} transitions",
                    st.node_id, st.state, st.role, st.term, st.transitions
                ),
                None => eprintln!("    replica {i}: down"),
            }
        }
    }

    /// Waits until some replica leads, and returns its index.
    async fn leader(&self) -> CliResult<usize> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            for i in 0..self.nodes.len() {
                if self.status(i).await.is_some_and(|st| st.role == "leader") {
                    return Ok(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(CliError::error(
            "no replica became the leader within 30 s; see logs/",
        ))
    }

    /// Waits until every running replica is ready with `transitions` transitions.
    async fn wait_ready(&mut self, transitions: u64) -> CliResult<Duration> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            let mut all = true;
            for i in 0..self.nodes.len() {
                if !self.nodes[i].is_running() {
                    continue;
                }
                let ok = self
                    .status(i)
                    .await
                    .is_some_and(|st| st.state == "ready" && st.transitions == transitions);
                all &= ok;
            }
            if all {
                return Ok(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(CliError::error(
            "the replicas did not all become ready within 30 s; see logs/",
        ))
    }

    fn user_addr(&self, i: usize) -> String {
        self.nodes[i].user_addr.to_string()
    }

    fn stop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }
}

async fn scenario(s: &mut Steps, ctx: &Ctx<'_>, cluster: &mut Cluster) -> CliResult {
    let leader = cluster.leader().await?;
    let follower = (leader + 1) % REPLICAS as usize;
    s.step(&format!(
        "set the manifest (owner-signed by a key it lists) through replica {follower}, a follower: it forwards the write to the leader (replica {leader}); the seed is made and the encrypted seed shares come back"
    ));
    let first = set_manifest(ctx, &cluster.user_addr(follower), ctx.manifest_v1, None).await?;
    let t = cluster.wait_ready(1).await?;
    eprintln!(
        "    every replica ready with the manifest's mesh CA {:.0} ms after the acknowledgement",
        t.as_secs_f64() * 1e3
    );
    cluster.show().await;

    let other = (leader + 2) % REPLICAS as usize;
    s.step(&format!(
        "run the initializer of the web workload against replica {other}'s mesh API"
    ));
    initializer(ctx, &cluster.nodes[other])?;

    s.step("verify the coordinator and audit its history (as a data owner would)");
    verify_and_audit(ctx, &cluster.user_addr(other), ctx.manifest_v1, None).await?;

    s.step(&format!("kill -9 the leader (replica {leader}) and update the manifest (owner-signed) through replica {follower}"));
    let killed = Instant::now();
    cluster.nodes[leader].kill();
    // The hash the owner's `concord set` prints: what the share owners expect after an outage.
    let second = set_manifest(
        ctx,
        &cluster.user_addr(follower),
        ctx.manifest_v2,
        Some(&first),
    )
    .await?;
    eprintln!(
        "    the write succeeded on the new leader {:.0} ms after the kill",
        killed.elapsed().as_secs_f64() * 1e3
    );
    cluster.wait_ready(2).await?;
    cluster.show().await;

    s.step(&format!("restart replica {leader}: it catches up through Raft and recovers its secrets from an attested peer"));
    let started = Instant::now();
    let flags = cluster.flags.clone();
    cluster.nodes[leader].restart(&flags)?;
    cluster.wait_ready(2).await?;
    eprintln!(
        "    ready {:.0} ms after its process started",
        started.elapsed().as_secs_f64() * 1e3
    );
    cluster.show().await;

    s.step("verify again: two transitions, and the first one is still an ancestor (no rollback)");
    verify_and_audit(
        ctx,
        &cluster.user_addr(leader),
        ctx.manifest_v2,
        Some(&first),
    )
    .await?;

    s.step(
        "tamper with a copy of the bundle (one digit of the first manifest): the audit catches it",
    );
    tamper_and_audit(ctx)?;

    s.step("full outage: kill every replica and start them again: they verify their stores and are recovering");
    for n in &mut cluster.nodes {
        n.kill();
    }
    for n in &mut cluster.nodes {
        n.restart(&flags)?;
    }
    cluster.show().await;

    s.step("user recovery: seed share owners 0 and 2 each decrypt their own share and submit it to replica 0, sealed with their own key (so no one else can pass a share off as theirs), only if its latest transition is the one the owner's last `concord set` printed (--expect-latest: restored old disks are refused)");
    for i in [0, 2] {
        recover::run(recover::Recover {
            share: ctx.dir.join(format!("seed-shares/seed-share-{i}.json")),
            key: ctx.dir.join(format!("keys/share-owner-{i}.key")),
            target: crate::remote::CoordinatorTarget {
                manifest: ctx.manifest_v2.to_path_buf(),
                coordinator: cluster.user_addr(0),
                insecure_simulated_attestation: true,
                deployment_id: None,
            },
            force: false,
            expect_latest: Some(second.to_hex()),
            since: None,
            accept_unverified_latest: false,
        })
        .await?;
    }
    let t = cluster.wait_ready(2).await?;
    eprintln!(
        "    every replica ready {:.0} ms later: the others recovered from replica 0",
        t.as_secs_f64() * 1e3
    );
    cluster.show().await;

    s.step("verify after recovery: the same history, a new mesh CA (the old key died with the processes)");
    verify_and_audit(ctx, &cluster.user_addr(1), ctx.manifest_v2, Some(&first)).await?;
    Ok(())
}

async fn set_manifest(
    ctx: &Ctx<'_>,
    addr: &str,
    manifest: &Path,
    previous: Option<&Hash>,
) -> CliResult<Hash> {
    set::run(set::Set {
        target: crate::remote::CoordinatorTarget {
            manifest: manifest.to_path_buf(),
            coordinator: addr.to_string(),
            insecure_simulated_attestation: true,
            deployment_id: None,
        },
        policies: vec![
            ctx.dir.join("policies/coordinator.policy"),
            ctx.web_policy.to_path_buf(),
        ],
        // Every set is owner-authorized, the first by a key the first manifest lists.
        owner_key: Some(ctx.dir.join("keys/owner.pem")),
        signature: None,
        owner_public_key: None,
        expect_latest: previous.map(|h| h.to_hex()),
        shares_dir: ctx.dir.join("seed-shares"),
    })
    .await
}

fn initializer(ctx: &Ctx<'_>, node: &CoordinatorProcess) -> CliResult {
    let flags = SimulatedFlags {
        root_dir: ctx.dir.join("platform/sim-root"),
        policy: ctx.web_policy.to_path_buf(),
        measurement_hex: MEASUREMENT.into(),
        deployment_id: Some(ctx.deployment.to_string()),
        extra: Vec::new(),
    };
    let log = ctx.dir.join("logs/initializer-web.log");
    let log_file = std::fs::File::create(&log)
        .map_err(|e| CliError::error(format!("cannot create {}: {e}", log.display())))?;
    let status = Command::new(sibling_binary("concord-initializer"))
        .arg("--coordinator")
        .arg(node.mesh_addr.to_string())
        .arg("--root")
        .arg(ctx.dir.join("workload-web"))
        .arg("--manifest")
        .arg(ctx.manifest_v1)
        .arg("--timeout")
        .arg("30")
        .args(flags.args())
        .stderr(log_file)
        .status()
        .map_err(|e| CliError::error(format!("cannot run concord-initializer: {e}")))?;
    if !status.success() {
        return Err(CliError::error(format!(
            "the initializer failed ({status}); see {}",
            log.display()
        )));
    }
    for f in [
        crate::initializer::CERT_CHAIN,
        crate::initializer::MESH_CA,
        crate::initializer::ROOT_CA,
        crate::initializer::KEY,
        crate::initializer::WORKLOAD_SECRET,
    ] {
        eprintln!("    {}", ctx.dir.join("workload-web").join(f).display());
    }
    Ok(())
}

async fn verify_and_audit(
    ctx: &Ctx<'_>,
    addr: &str,
    manifest: &Path,
    since: Option<&Hash>,
) -> CliResult {
    verify::run(verify::Verify {
        target: crate::remote::CoordinatorTarget {
            manifest: manifest.to_path_buf(),
            coordinator: addr.to_string(),
            insecure_simulated_attestation: true,
            deployment_id: None,
        },
        out: ctx.dir.join("verify"),
        since: since.map(|h| h.to_hex()),
        allow_stale: false,
        allow_newer: false,
    })
    .await?;
    history::run(history::History::Audit {
        file: ctx.dir.join("verify/history.json"),
        since: since.map(|h| h.to_hex()),
        insecure_simulated_root: Some(ctx.root_hex.to_string()),
        signing_key: None,
        deployment: None,
    })
}

fn tamper_and_audit(ctx: &Ctx<'_>) -> CliResult {
    let mut bundle: serde_json::Value = serde_json::from_slice(&crate::exit::read_file(
        &ctx.dir.join("verify/history.json"),
        crate::exit::Limit::BUNDLE,
    )?)
    .map_err(|e| CliError::error(format!("cannot read the bundle back: {e}")))?;
    let tampered = tamper_first_manifest(&mut bundle)?;
    let tampered_path = ctx.dir.join("verify/history-tampered.json");
    write_file(&tampered_path, &tampered, false)?;
    match history::run(history::History::Audit {
        file: tampered_path.clone(),
        since: None,
        insecure_simulated_root: Some(ctx.root_hex.to_string()),
        signing_key: None,
        deployment: None,
    }) {
        Err(e) if e.failure == crate::exit::Failure::Verification => {
            eprintln!("    caught, as it must be (exit code 3): {e}");
            Ok(())
        }
        Err(e) => Err(e),
        Ok(()) => Err(CliError::verification(format!(
            "the audit accepted the tampered bundle {}: this is a bug",
            tampered_path.display()
        ))),
    }
}

/// Flips one bit of the first manifest in a bundle, as a hostile host could.
fn tamper_first_manifest(bundle: &mut serde_json::Value) -> CliResult<Vec<u8>> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let field = &mut bundle["transitions"][0]["manifest"];
    let mut bytes = field
        .as_str()
        .and_then(|s| STANDARD.decode(s).ok())
        .ok_or_else(|| CliError::error("the bundle has no first manifest"))?;
    // One hex digit of the first policy hash: the manifest still parses, but no longer hashes to what
    // the transition says.
    let at = bytes
        .windows(65)
        .position(|w| w[0] == b'"' && w[1..].iter().all(u8::is_ascii_hexdigit))
        .map_or(20, |i| i + 1);
    if let Some(b) = bytes.get_mut(at) {
        *b = if *b == b'0' { b'1' } else { b'0' };
    }
    *field = serde_json::Value::String(STANDARD.encode(bytes));
    serde_json::to_vec_pretty(bundle).map_err(|e| CliError::error(e.to_string()))
}
