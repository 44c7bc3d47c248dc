//! Metric 5: `concord history audit` of histories of growing length: under 1 s at 10,000
//! transitions, and linear (the time per transition does not grow with the length).
//!
//! The histories are built in memory with the library, signed as a coordinator signs them, not
//! through 10,000 RPCs or `Coordinator::set_manifest` (whose commit reloads and re-verifies the whole
//! history each time, so building that way is quadratic). The bundles are the exact `history.json` a
//! data owner gets from `concord verify`, with simulated evidence over the latest transition.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use concord_attestation::EvidenceIssuer;
use concord_cli::process::sibling_binary;
use concord_coordinator::history::audit::{AuditBundle, BundleEvidence};
use concord_coordinator::history::{
    MeshCerts, OwnerAuthorization, Transition, VerifiedChain, format,
};
use concord_coordinator::manifest::Manifest;
use concord_coordinator::store::{Key, SledStore, Store, Write};
use concord_mesh_ca::{MeshCa, RootCa, SeedEngine};
use concord_tests::{Env, Hash};
use time::OffsetDateTime;

use crate::table::{Row, Verdict, ms};

/// One history length and how long its audit took (the median of the runs), and how long a
/// replica with that history on its disk took from process start to passing its startup probe (the
/// stored history loaded and verified, every port listening).
pub struct Audited {
    pub transitions: usize,
    pub took: Duration,
    pub start_up: Duration,
}

/// Builds histories of each of `sizes` transitions (ascending) in one pass, writes each as a bundle
/// under `dir` and times `concord history audit` on it `runs` times.
pub fn run(env: &Env, dir: &Path, sizes: &[usize], runs: usize) -> Result<Vec<Audited>, String> {
    let mut out = Vec::new();
    for (size, bundle, store) in bundles(env, sizes)? {
        let path = dir.join(format!("history-{size}.json"));
        std::fs::write(&path, bundle.to_json())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| audit_once(env, &path))
            .collect::<Result<_, _>>()?;
        times.sort();
        let data = dir.join(format!("replica-{size}"));
        write_store(&data.join("store"), store)?;
        let mut starts: Vec<Duration> = (0..runs)
            .map(|i| start_once(env, &data, &dir.join(format!("replica-{size}-{i}.log"))))
            .collect::<Result<_, _>>()?;
        starts.sort();
        out.push(Audited {
            transitions: size,
            took: times[times.len() / 2],
            start_up: starts[starts.len() / 2],
        });
    }
    Ok(out)
}

/// Writes `writes` (a whole history, as `Ledger::append` writes it) into a new sled store, in one
/// batch: appending 10,000 transitions one flush at a time would take minutes.
fn write_store(dir: &Path, writes: Vec<Write>) -> Result<(), String> {
    let store = SledStore::open(dir).map_err(|e| e.to_string())?;
    store.apply(writes).map_err(|e| e.to_string())
}

/// Starts a lone `concord-coordinator` on `data` and times process start to its startup probe's 200
/// (the stored history loaded and verified, every port listening); then stops it.
fn start_once(env: &Env, data: &Path, log: &Path) -> Result<Duration, String> {
    use concord_cli::process::{Addrs, CoordinatorProcess};
    let addrs = Addrs::free().map_err(|e| e.to_string())?;
    let health = addrs.health;
    let probe = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            if let Ok((200, _)) = concord_tests::http_get(health, "/probe/startup") {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    });
    let start = Instant::now();
    let mut replica = CoordinatorProcess::start_member(
        data,
        log,
        &env.flags("coordinator.policy"),
        addrs,
        0,
        &[(0, addrs.peer)],
    )
    .map_err(|e| e.to_string())?;
    let passed = probe
        .join()
        .map_err(|_| "the probe thread panicked".to_string())?
        .ok_or("the startup probe did not pass within 120 s")?;
    replica.stop();
    Ok(passed.duration_since(start))
}

/// One run of the real CLI, as a data owner runs it.
fn audit_once(env: &Env, bundle: &Path) -> Result<Duration, String> {
    let root = hex::encode(env.d.root.hash());
    let start = Instant::now();
    let out = Command::new(sibling_binary("concord"))
        .arg("history")
        .arg("audit")
        .arg(bundle)
        .arg("--insecure-simulated-root")
        .arg(&root)
        .output()
        .map_err(|e| format!("cannot run concord: {e}"))?;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "concord history audit failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(took)
}

/// The bundle of the first `size` transitions, for each of `sizes`.
fn bundles(env: &Env, sizes: &[usize]) -> Result<Vec<(usize, AuditBundle, Vec<Write>)>, String> {
    let crypto = |e: concord_mesh_ca::MeshCaError| e.to_string();
    let now = OffsetDateTime::now_utc();
    let engine = SeedEngine::generate().map_err(crypto)?;
    let signer = Signer {
        env,
        key: engine.transition_signing_key(),
    };
    let root_ca = RootCa::create(&engine.root_ca_key().map_err(crypto)?, now).map_err(crypto)?;
    let mesh_ca = MeshCa::generate(&root_ca, now).map_err(crypto)?;
    let policies: BTreeMap<Hash, Vec<u8>> = [&env.d.coordinator_policy, &env.d.workload_policy]
        .into_iter()
        .map(|doc| (Hash::of(doc), doc.clone()))
        .collect();
    let bundle = |chain: &VerifiedChain, manifests: &[Vec<u8>]| -> Result<AuditBundle, String> {
        let nonce = [7u8; 32];
        let report_data = format::audit_report_data(
            &nonce,
            chain.signing_key(),
            &chain.latest_hash(),
            root_ca.cert_der(),
            mesh_ca.mesh_ca_der(),
        );
        let evidence = env
            .d
            .issuer(&env.d.coordinator_policy)
            .issue(&report_data)
            .map_err(|e| e.to_string())?;
        Ok(AuditBundle::new(
            chain,
            manifests.iter().cloned(),
            &policies,
            root_ca.cert_der(),
            mesh_ca.mesh_ca_der(),
            BundleEvidence::new(&evidence, &nonce),
        ))
    };

    // The store of a replica with the same history: what `Ledger::append` writes for each transition.
    let mesh_certs = serde_json::to_vec(&MeshCerts {
        mesh_ca_der: mesh_ca.mesh_ca_der().to_vec(),
        intermediate_der: mesh_ca.intermediate_der().to_vec(),
    })
    .map_err(|e| e.to_string())?;
    let store = |chain: &VerifiedChain, manifests: &[Vec<u8>]| -> Vec<Write> {
        let mut w = vec![
            Write::Put(Key::SigningKey, chain.signing_key().as_bytes().to_vec()),
            Write::Put(Key::RootCa, root_ca.cert_der().to_vec()),
            Write::Put(Key::Latest, chain.latest_hash().as_bytes().to_vec()),
        ];
        for doc in policies.values() {
            w.push(Write::Put(Key::Object(Hash::of(doc)), doc.clone()));
        }
        for (t, m) in chain.transitions().iter().zip(manifests) {
            w.push(Write::Put(Key::Object(t.manifest_hash), m.clone()));
            w.push(Write::Put(Key::Transition(t.hash()), t.encode()));
            w.push(Write::Put(Key::MeshCerts(t.hash()), mesh_certs.clone()));
        }
        w
    };
    let (first, manifest) = signer.transition(0, Hash::ZERO)?;
    let mut manifests = vec![manifest.bytes().to_vec()];
    let mut chain = VerifiedChain::first(signer.key.verifying_key(), first, manifest)
        .map_err(|e| e.to_string())?;
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let mut out = Vec::new();
    loop {
        if sizes.contains(&chain.len()) {
            out.push((
                chain.len(),
                bundle(&chain, &manifests)?,
                store(&chain, &manifests),
            ));
        }
        if chain.len() >= largest {
            return Ok(out);
        }
        let (t, manifest) = signer.transition(chain.len() as u64, chain.latest_hash())?;
        manifests.push(manifest.bytes().to_vec());
        chain.push(t, manifest).map_err(|e| e.to_string())?;
    }
}

/// Signs transitions as the coordinator does, each authorized by the deployment's owner.
struct Signer<'a> {
    env: &'a Env,
    key: ed25519_dalek::SigningKey,
}

impl Signer<'_> {
    /// Transition `index` after `previous`, setting manifest version `index + 1`.
    fn transition(&self, index: u64, previous: Hash) -> Result<(Transition, Manifest), String> {
        let manifest =
            Manifest::parse(&self.env.d.manifest(index as u32 + 1)).map_err(|e| e.to_string())?;
        let hash = format::transition_hash(&manifest.hash(), &previous);
        let owner = &self.env.d.owner;
        let transition = Transition {
            index,
            manifest_hash: manifest.hash(),
            previous,
            signature: format::sign_transition(&self.key, &hash),
            // Every transition, the first included, is authorized by an owner key.
            owner: Some(OwnerAuthorization {
                key: owner.verifying_key(),
                signature: format::sign_owner(owner, &hash),
            }),
        };
        Ok((transition, manifest))
    }
}

/// One row per length, and the linearity row: the time per transition of the longest history is
/// at most 1.5 times that of the shortest (process start and evidence count against the shortest).
pub fn rows(audited: &[Audited]) -> Vec<Row> {
    let mut rows: Vec<Row> = audited
        .iter()
        .map(|a| {
            let (target, verdict) = if a.transitions >= 10_000 {
                ("< 500 ms", Verdict::of(a.took < Duration::from_millis(500)))
            } else {
                ("-", Verdict::Info)
            };
            Row::new(
                format!("concord history audit, {} transitions", a.transitions),
                ms(a.took),
                "-",
                target,
                verdict,
            )
        })
        .collect();
    for a in audited {
        let (target, verdict) = if a.transitions >= 10_000 {
            (
                "< 500 ms",
                Verdict::of(a.start_up < Duration::from_millis(500)),
            )
        } else {
            ("-", Verdict::Info)
        };
        rows.push(Row::new(
            format!(
                "replica start to startup probe, {} transitions on disk",
                a.transitions
            ),
            ms(a.start_up),
            "-",
            target,
            verdict,
        ));
    }
    let per = |a: &Audited| a.took.as_secs_f64() * 1e6 / a.transitions as f64;
    if let (Some(first), Some(last)) = (audited.first(), audited.last())
        && audited.len() > 1
    {
        rows.push(Row::new(
            format!(
                "audit time per transition, {} vs {}",
                first.transitions, last.transitions
            ),
            format!("{:.0} us vs {:.0} us", per(first), per(last)),
            "-",
            "linear (ratio <= 1.5)",
            Verdict::of(per(last) <= 1.5 * per(first)),
        ));
    }
    rows
}
