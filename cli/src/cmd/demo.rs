//! `concord demo`: one command that runs Concord end to end on this machine, with the INSECURE simulated
//! platform, and leaves every artifact in a directory to look at.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::Args;
use concord_coordinator::Hash;

use crate::cmd::{attestation, history, recover, set, verify};
use crate::exit::{CliError, CliResult, write_file};
use crate::keys;
use crate::process::{CoordinatorProcess, SimulatedFlags, sibling_binary};

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

    s.step("start a coordinator (simulated platform), data in coordinator/, log in logs/coordinator.log");
    let coordinator_flags = SimulatedFlags {
        root_dir: root_dir.clone(),
        policy: coordinator_policy.clone(),
        measurement_hex: MEASUREMENT.into(),
    };
    let mut coordinator = CoordinatorProcess::start(
        &dir.join("coordinator"),
        &dir.join("logs/coordinator.log"),
        &coordinator_flags,
    )?;
    eprintln!(
        "    user API {}, mesh API {}, pid {}",
        coordinator.user_addr,
        coordinator.mesh_addr,
        coordinator.pid()
    );
    let result = scenario(
        &mut s,
        &dir,
        &coordinator,
        &root_dir,
        &web_policy,
        &manifest_v1,
        &coordinator_hash,
        &web_hash,
        &root_hex,
        &owner_hex,
        &share_keys,
    )
    .await;

    let result = match result {
        Ok(()) => outage_and_recovery(&mut s, &dir, &mut coordinator, &coordinator_flags).await,
        Err(e) => Err(e),
    };

    s.step("stop the coordinator");
    coordinator.stop();
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
        ("logs/", "the coordinator's and the initializer's logs"),
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

#[allow(clippy::too_many_arguments)]
async fn scenario(
    s: &mut Steps,
    dir: &Path,
    coordinator: &CoordinatorProcess,
    root_dir: &Path,
    web_policy: &Path,
    manifest_v1: &Path,
    coordinator_hash: &Hash,
    web_hash: &Hash,
    root_hex: &str,
    owner_hex: &str,
    share_keys: &[String],
) -> CliResult {
    let addr = coordinator.user_addr.to_string();
    s.step("set the manifest (the first: the coordinator makes the seed and returns the encrypted seed shares)");
    set::run(set::Set {
        manifest: manifest_v1.to_path_buf(),
        policies: vec![
            dir.join("policies/coordinator.policy"),
            web_policy.to_path_buf(),
        ],
        coordinator: addr.clone(),
        owner_key: None,
        signature: None,
        owner_public_key: None,
        expect_latest: None,
        shares_dir: dir.join("seed-shares"),
        insecure_simulated_attestation: true,
    })
    .await?;

    s.step("run the initializer of the web workload: it attests to the mesh API and gets its certificate and secret");
    let web_flags = SimulatedFlags {
        root_dir: root_dir.to_path_buf(),
        policy: web_policy.to_path_buf(),
        measurement_hex: MEASUREMENT.into(),
    };
    let log = dir.join("logs/initializer-web.log");
    let log_file = std::fs::File::create(&log)
        .map_err(|e| CliError::error(format!("cannot create {}: {e}", log.display())))?;
    let status = Command::new(sibling_binary("concord-initializer"))
        .arg("--coordinator")
        .arg(coordinator.mesh_addr.to_string())
        .arg("--root")
        .arg(dir.join("workload-web"))
        .arg("--manifest")
        .arg(manifest_v1)
        .arg("--timeout")
        .arg("30")
        .args(web_flags.args())
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
        eprintln!("    {}", dir.join("workload-web").join(f).display());
    }

    s.step("verify the coordinator and audit its history (as a data owner would)");
    let first = verify::run(verify::Verify {
        manifest: manifest_v1.to_path_buf(),
        coordinator: addr.clone(),
        out: dir.join("verify"),
        since: None,
        insecure_simulated_attestation: true,
        allow_stale: false,
    })
    .await?;
    let first_hash = first.chain.latest_hash();
    history::run(history::History::Audit {
        file: dir.join("verify/history.json"),
        since: None,
        insecure_simulated_root: Some(root_hex.to_string()),
    })?;

    s.step("update the manifest (add a name for web), authorized with the owner key");
    let manifest_v2 = dir.join("manifest-v2.json");
    write_file(
        &manifest_v2,
        &manifest_json(
            dir,
            coordinator_hash,
            web_hash,
            root_hex,
            owner_hex,
            share_keys,
            Some("web-v2.default.svc.cluster.local"),
        ),
        false,
    )?;
    set::run(set::Set {
        manifest: manifest_v2.clone(),
        policies: vec![],
        coordinator: addr.clone(),
        owner_key: Some(dir.join("keys/owner.pem")),
        signature: None,
        owner_public_key: None,
        expect_latest: Some(first_hash.to_hex()),
        shares_dir: dir.join("seed-shares"),
        insecure_simulated_attestation: true,
    })
    .await?;

    s.step("verify again: the history now has two transitions and still contains the first one (no rollback)");
    verify::run(verify::Verify {
        manifest: manifest_v2,
        coordinator: addr,
        out: dir.join("verify"),
        since: Some(first_hash.to_hex()),
        insecure_simulated_attestation: true,
        allow_stale: false,
    })
    .await?;
    history::run(history::History::Audit {
        file: dir.join("verify/history.json"),
        since: Some(first_hash.to_hex()),
        insecure_simulated_root: Some(root_hex.to_string()),
    })?;

    s.step(
        "tamper with a copy of the bundle (one bit of the first manifest): the audit catches it",
    );
    let mut bundle: serde_json::Value =
        serde_json::from_slice(&crate::exit::read_file(&dir.join("verify/history.json"))?)
            .map_err(|e| CliError::error(format!("cannot read the bundle back: {e}")))?;
    let tampered = tamper_first_manifest(&mut bundle)?;
    let tampered_path = dir.join("verify/history-tampered.json");
    write_file(&tampered_path, &tampered, false)?;
    match history::run(history::History::Audit {
        file: tampered_path.clone(),
        since: None,
        insecure_simulated_root: Some(root_hex.to_string()),
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

/// Kills the coordinator (a full outage: the secrets were only in its memory), restarts it on its
/// store, and has two of the three seed share owners recover it.
async fn outage_and_recovery(
    s: &mut Steps,
    dir: &Path,
    coordinator: &mut CoordinatorProcess,
    flags: &SimulatedFlags,
) -> CliResult {
    s.step("full outage: kill the coordinator, start it again on its store: it verifies the store and is recovering");
    coordinator.kill();
    coordinator.restart(flags)?;
    let manifest = dir.join("manifest-v2.json");
    let verify_now = verify::Verify {
        manifest: manifest.clone(),
        coordinator: coordinator.user_addr.to_string(),
        out: dir.join("verify-during-outage"),
        since: None,
        insecure_simulated_attestation: true,
        allow_stale: false,
    };
    match verify::run(verify_now).await {
        Err(e) => eprintln!("    as expected, it serves nothing yet: {e}"),
        Ok(_) => {
            return Err(CliError::error(
                "a restarted coordinator served without recovery: this is a bug",
            ));
        }
    }

    s.step("user recovery: seed share owners 0 and 2 each decrypt their own share and submit it");
    for i in [0, 2] {
        recover::run(recover::Recover {
            share: dir.join(format!("seed-shares/seed-share-{i}.json")),
            key: dir.join(format!("keys/share-owner-{i}.key")),
            manifest: manifest.clone(),
            coordinator: coordinator.user_addr.to_string(),
            force: false,
            insecure_simulated_attestation: true,
        })
        .await?;
    }

    s.step("verify after recovery: the same history, a new mesh CA (its old key died with the process)");
    verify::run(verify::Verify {
        manifest,
        coordinator: coordinator.user_addr.to_string(),
        out: dir.join("verify"),
        since: None,
        insecure_simulated_attestation: true,
        allow_stale: false,
    })
    .await?;
    Ok(())
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
    if let Some(b) = bytes.get_mut(20) {
        *b ^= 0x01;
    }
    *field = serde_json::Value::String(STANDARD.encode(bytes));
    serde_json::to_vec_pretty(bundle).map_err(|e| CliError::error(e.to_string()))
}
