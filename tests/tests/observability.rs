//! The probes and metrics port (9102) of the real binary, in each replica state: fresh, ready,
//! recovering (a lone replica restarted after a manifest was set), and ready without quorum (two of
//! three replicas killed). `/metrics` is parsed by Prometheus' own Python parser.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use concord_cli::process::CoordinatorProcess;
use concord_tests::{Env, describe, have, http_get};

/// Polls `path` until it answers `status` (the replica samples its state every 500 ms); returns the body.
fn wait_for(c: &CoordinatorProcess, path: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = http_get(c.health_addr, path);
        match &answer {
            Ok((s, body)) if *s == status => return body.clone(),
            _ if Instant::now() > deadline => {
                panic!(
                    "{path} of replica {} never answered {status}: last {answer:?}",
                    c.node_id
                )
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `/health` once `pred` holds for it.
fn health_when(
    c: &CoordinatorProcess,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = wait_for(c, "/health", 200);
        let json: serde_json::Value = serde_json::from_str(&body).expect("/health is JSON");
        if pred(&json) {
            return json;
        }
        assert!(Instant::now() < deadline, "/health never matched: {json}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_probe(c: &CoordinatorProcess, path: &str, status: u16, says: &str) {
    let (s, body) = http_get(c.health_addr, path).expect("the health port answers");
    assert_eq!(s, status, "{path}: {body}");
    assert!(body.contains(says), "{path} should say {says:?}: {body}");
    assert_eq!(body.trim_end().lines().count(), 1, "one line: {body:?}");
}

#[test]
fn probes_follow_a_replica_from_fresh_to_ready_and_recovering_after_a_restart() {
    let env = Env::new();
    let mut c = env.start_coordinator("c1");

    // Fresh: started and alive, not ready.
    wait_for(&c, "/probe/startup", 200);
    assert_probe(&c, "/probe/liveness", 200, "alive");
    assert_probe(&c, "/probe/readiness", 503, "fresh");
    let h = health_when(&c, |h| h["state"] == "fresh");
    assert_eq!(h["manifest_generation"], 0, "{h}");
    assert_eq!(h["node_id"], 0, "{h}");

    // Ready once a manifest is set.
    let set = env.set(&c, "manifest-v1.json", &["--owner-key", "owner.pem"]);
    assert!(set.status.success(), "{}", describe(&set));
    let body = wait_for(&c, "/probe/readiness", 200);
    assert!(body.starts_with("ready"), "{body}");
    let h = health_when(&c, |h| h["state"] == "ready");
    assert_eq!(h["manifest_generation"], 1, "{h}");
    assert_eq!(h["role"], "leader", "{h}");
    assert_eq!(h["leader_id"], 0, "{h}");
    assert!(h["commit_index"].as_u64().unwrap() >= 1, "{h}");
    assert!(h["term"].as_u64().unwrap() >= 1, "{h}");

    // Restarted alone after a manifest was set: recovering (its secrets died with the process, and no
    // peer is ready), yet started and alive.
    c.kill();
    let c = env.start_coordinator("c1");
    wait_for(&c, "/probe/startup", 200);
    assert_probe(&c, "/probe/liveness", 200, "alive");
    assert_probe(&c, "/probe/readiness", 503, "recovering");
    let h = health_when(&c, |h| h["state"] == "recovering");
    assert_eq!(h["manifest_generation"], 1, "{h}");
}

#[test]
fn without_quorum_a_ready_replica_stays_alive_and_ready() {
    let env = Env::new();
    let mut cluster = env.start_cluster(3);
    let set = env.set(
        &cluster[0],
        "manifest-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(set.status.success(), "{}", describe(&set));
    for c in &cluster {
        wait_for(c, "/probe/readiness", 200);
        health_when(c, |h| h["quorum"] == true && h["manifest_generation"] == 1);
    }

    cluster[1].kill();
    cluster[2].kill();
    let survivor = &cluster[0];
    let h = health_when(survivor, |h| h["quorum"] == false);
    assert_eq!(h["state"], "ready", "{h}");
    assert_probe(survivor, "/probe/startup", 200, "started");
    assert_probe(survivor, "/probe/liveness", 200, "alive");
    assert_probe(survivor, "/probe/readiness", 200, "no quorum");
    // And it still serves what readiness promises: a workload gets its certificate.
    let init = env.initializer(survivor, "web.policy", "web", "manifest-v1.json", 30);
    assert!(init.status.success(), "{}", describe(&init));
}

/// Parses an exposition with `prometheus_client.parser.text_string_to_metric_families` and returns,
/// per family, its type, its HELP and its samples as `[name, labels, value]`. None without python3.
fn parse_with_prometheus_client(text: &str) -> Option<serde_json::Value> {
    if !have("python3") {
        eprintln!(
            "SKIPPED: python3 is not installed; the exposition was not checked by prometheus_client"
        );
        return None;
    }
    const SCRIPT: &str = r#"
import json, sys
try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    sys.exit("prometheus_client is missing: pip install prometheus-client (.ci/run does)")
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "help": f.documentation,
                   "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The value of the sample `name` whose labels include every pair of `labels`.
fn value(families: &serde_json::Value, family: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = families[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family}"));
    samples
        .iter()
        .find(|s| s[0] == name && labels.iter().all(|(k, v)| s[1][k] == *v))
        .and_then(|s| s[2].as_f64())
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {family}: {samples:?}"))
}

#[test]
fn metrics_parse_with_prometheus_client_and_count_what_happened() {
    let env = Env::new();
    let c = env.start_coordinator("c1");
    let set = env.set(&c, "manifest-v1.json", &["--owner-key", "owner.pem"]);
    assert!(set.status.success(), "{}", describe(&set));
    wait_for(&c, "/probe/readiness", 200);
    let ok = env.initializer(&c, "web.policy", "web", "manifest-v1.json", 30);
    assert!(ok.status.success(), "{}", describe(&ok));
    // A workload whose policy the manifest does not list: refused at the handshake, and counted.
    let refused = env.initializer(&c, "stranger.policy", "stranger", "manifest-v1.json", 1);
    assert!(!refused.status.success(), "{}", describe(&refused));

    let text = wait_for(&c, "/metrics", 200);
    let Some(families) = parse_with_prometheus_client(&text) else {
        return;
    };
    for (name, f) in families.as_object().unwrap() {
        assert!(name.starts_with("concord_"), "{name}");
        assert!(
            !f["help"].as_str().unwrap_or_default().is_empty(),
            "{name} has no HELP"
        );
        assert_ne!(f["type"], "unknown", "{name} has no TYPE");
    }
    let gauge = |f: &str, labels: &[(&str, &str)]| value(&families, f, f, labels);
    assert_eq!(gauge("concord_manifest_generation", &[]), 1.0);
    assert_eq!(gauge("concord_replica_state", &[("state", "ready")]), 1.0);
    assert_eq!(gauge("concord_replica_state", &[("state", "fresh")]), 0.0);
    assert_eq!(gauge("concord_raft_is_leader", &[]), 1.0);
    assert_eq!(gauge("concord_raft_leader_id", &[]), 0.0);
    assert!(gauge("concord_raft_term", &[]) >= 1.0);
    assert!(gauge("concord_raft_commit_index", &[]) >= 1.0);

    // The SetManifest's records (its manifest and transition record at least) were offered ahead
    // by the leader beside its Raft write (`ObjectsAhead`), so its apply syncs nothing; whichever
    // came first wrote them, and the other found them held.
    // Written or held, summed over both (either may be absent).
    let records = |path: &str| -> f64 {
        families["concord_history_records"]["samples"]
            .as_array()
            .expect("the concord_history_records family")
            .iter()
            .filter(|s| s[0] == "concord_history_records_total" && s[1]["path"] == path)
            .filter_map(|s| s[2].as_f64())
            .sum()
    };
    assert!(records("ahead") >= 2.0, "{}", records("ahead"));
    assert!(records("store") >= 2.0, "the apply offers them too");

    assert_eq!(families["concord_certificates_issued"]["type"], "counter");
    assert_eq!(
        value(
            &families,
            "concord_certificates_issued",
            "concord_certificates_issued_total",
            &[]
        ),
        1.0
    );
    assert!(
        value(
            &families,
            "concord_attestation_failures",
            "concord_attestation_failures_total",
            &[("api", "mesh"), ("reason", "host_data_not_accepted")]
        ) >= 1.0
    );
    assert_eq!(
        families["concord_rpc_duration_seconds"]["type"],
        "histogram"
    );
    for method in [
        "concord.v1.UserApi/SetManifest",
        "concord.v1.MeshApi/NewMeshCert",
    ] {
        let n = value(
            &families,
            "concord_rpc_duration_seconds",
            "concord_rpc_duration_seconds_count",
            &[("method", method)],
        );
        assert!(n >= 1.0, "{method}: {n}");
    }
}
