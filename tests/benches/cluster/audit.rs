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
    /// Where the replica's history load went (its log's breakdown line), of the median start.
    pub load: String,
    /// The replica's resident memory once started and idle, of each run in the order they ran.
    pub rss: Vec<u64>,
    /// The raw Ed25519 rates of this run, for the floor row beside each length.
    pub floor: Ed25519Floor,
}

/// Ed25519 verification on this machine, measured in the same run: one core, one by one
/// (`verify_strict`) and batched (`verify_batch`), and the cores the verification spreads over.
#[derive(Debug, Clone, Copy)]
pub struct Ed25519Floor {
    pub strict_per_sec: f64,
    pub batch_per_sec: f64,
    /// Concord's own batch (`history::verify_strict_all`: the same equation with each distinct key's
    /// terms added up, batches of 1024, the pre-checks of `verify_strict`'s verdicts included).
    pub concord_per_sec: f64,
    pub cores: usize,
}

impl Ed25519Floor {
    /// Measures both rates over a few thousand signatures (a second or two).
    pub fn measure() -> Ed25519Floor {
        use ed25519_dalek::{Signer, SigningKey};
        let key = SigningKey::from_bytes(&[5; 32]);
        let messages: Vec<Vec<u8>> = (0..2048u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let signatures: Vec<_> = messages.iter().map(|m| key.sign(m)).collect();
        let public = key.verifying_key();
        let start = Instant::now();
        let strict_ok = messages
            .iter()
            .zip(&signatures)
            .all(|(m, s)| public.verify_strict(m, s).is_ok());
        let strict = start.elapsed();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        // Batches of 256, as `coordinator/src/history/batch.rs` makes them.
        let keys = vec![public; 256];
        let start = Instant::now();
        let batch_ok = refs
            .chunks(256)
            .zip(signatures.chunks(256))
            .all(|(m, s)| ed25519_dalek::verify_batch(m, s, &keys[..m.len()]).is_ok());
        let batch = start.elapsed();
        let checks: Vec<concord_coordinator::history::SignatureCheck> = messages
            .iter()
            .zip(&signatures)
            .map(|(m, s)| concord_coordinator::history::SignatureCheck {
                key: public,
                message: m.clone(),
                signature: *s,
            })
            .collect();
        let start = Instant::now();
        let concord_ok = concord_coordinator::history::verify_strict_all(&checks)
            .iter()
            .all(|&ok| ok);
        let concord = start.elapsed();
        assert!(
            strict_ok && batch_ok && concord_ok,
            "the floor's own signatures verify"
        );
        Ed25519Floor {
            strict_per_sec: messages.len() as f64 / strict.as_secs_f64(),
            batch_per_sec: messages.len() as f64 / batch.as_secs_f64(),
            concord_per_sec: messages.len() as f64 / concord.as_secs_f64(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// The time `signatures` take batched on every core, at the faster of the two batch rates:
    /// what no verifier of them built on these batches can beat.
    fn all_cores(&self, signatures: usize) -> Duration {
        let rate = self.batch_per_sec.max(self.concord_per_sec);
        Duration::from_secs_f64(signatures as f64 / (rate * self.cores as f64))
    }
}

/// Builds histories of each of `sizes` transitions (ascending) in one pass, writes each as a bundle
/// under `dir` and times `concord history audit` on it `runs` times.
pub fn run(env: &Env, dir: &Path, sizes: &[usize], runs: usize) -> Result<Vec<Audited>, String> {
    let floor = Ed25519Floor::measure();
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
        let mut starts: Vec<(Duration, u64, String)> = (0..runs)
            .map(|i| {
                let log = dir.join(format!("replica-{size}-{i}.log"));
                start_once(env, &data, &log).map(|(took, rss)| (took, rss, load_breakdown(&log)))
            })
            .collect::<Result<_, _>>()?;
        let rss = starts.iter().map(|(_, rss, _)| *rss).collect();
        starts.sort_by_key(|(took, _, _)| *took);
        let (start_up, _, load) = starts.swap_remove(starts.len() / 2);
        out.push(Audited {
            transitions: size,
            took: times[times.len() / 2],
            start_up,
            load,
            rss,
            floor,
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

/// How long a started replica is left idle before its memory is read.
const IDLE_BEFORE_RSS: Duration = Duration::from_secs(1);

/// Starts a lone `concord-coordinator` on `data` and times process start to its startup probe's 200
/// (the stored history loaded and verified, every port listening); then, after it idled a moment,
/// reads its resident memory, and stops it.
fn start_once(env: &Env, data: &Path, log: &Path) -> Result<(Duration, u64), String> {
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
    std::thread::sleep(IDLE_BEFORE_RSS);
    let rss = crate::memory::rss(replica.pid());
    replica.stop();
    Ok((passed.duration_since(start), rss?))
}

/// The replica's own account of its start (its log lines): the store's open (`SledStore::open`:
/// sled, then the objects file's scan), then the history load (`Ledger::load`): total, the line
/// (transitions read and their signatures checked, then walked), of which the records (before the
/// walk), waiting for manifests read on another thread, verification (parsing, links) and the rest,
/// in ms.
fn load_breakdown(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let fields = |says: &str, keys: &[&str]| -> Option<Vec<String>> {
        let line = text.lines().find(|l| l.contains(says))?;
        Some(
            keys.iter()
                .map(|key| {
                    let value = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix(&format!("{key}=")))
                        .unwrap_or("?");
                    format!("{} {value}", key.trim_end_matches("_ms"))
                })
                .collect(),
        )
    };
    let open = fields("opened the store", &["sled_ms", "objects_ms"]);
    let load = fields(
        "read and verified the stored history",
        &[
            "total_ms",
            "line_ms",
            "records_ms",
            "manifests_wait_ms",
            "verify_ms",
            "rest_ms",
        ],
    );
    match (open, load) {
        (Some(open), Some(load)) => format!("open: {}; load: {}", open.join(", "), load.join(", ")),
        _ => "no breakdown in the log".into(),
    }
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
fn bundles(
    env: &Env,
    sizes: &[usize],
) -> Result<Vec<(usize, AuditBundle<'static>, Vec<Write>)>, String> {
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
    let bundle =
        |chain: &VerifiedChain, manifests: &[Vec<u8>]| -> Result<AuditBundle<'static>, String> {
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
                format!("Ed25519 {}", ms(a.floor.all_cores(2 * a.transitions))),
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
            format!("Ed25519 {}", ms(a.floor.all_cores(2 * a.transitions))),
            target,
            verdict,
        ));
    }
    for a in audited {
        let mut sorted = a.rss.clone();
        sorted.sort_unstable();
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
        let (target, verdict) = if a.transitions >= 10_000 {
            ("< 50 MB", Verdict::of(median < 50_000_000))
        } else {
            ("-", Verdict::Info)
        };
        let mb = |b: &u64| format!("{:.1} MB", *b as f64 / 1e6);
        rows.push(Row::new(
            format!(
                "idle replica RSS after that start, {} transitions on disk, median of {} ({}; idle {} s)",
                a.transitions,
                a.rss.len(),
                a.rss.iter().map(mb).collect::<Vec<_>>().join(", "),
                IDLE_BEFORE_RSS.as_secs()
            ),
            mb(&median),
            "-",
            target,
            verdict,
        ));
    }
    for a in audited {
        rows.push(Row::new(
            format!("  where the start went, {}", a.transitions),
            a.load.clone(),
            "-",
            "ms",
            Verdict::Info,
        ));
    }
    if let Some(a) = audited.first() {
        rows.push(Row::new(
            format!(
                "  Ed25519 verifications per second, one core (the reference: 2 per transition, \
                 batched, on {} cores)",
                a.floor.cores
            ),
            format!(
                "{:.0} one by one, {:.0} batched (verify_batch), {:.0} Concord's batch",
                a.floor.strict_per_sec, a.floor.batch_per_sec, a.floor.concord_per_sec
            ),
            "-",
            "-",
            Verdict::Info,
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
