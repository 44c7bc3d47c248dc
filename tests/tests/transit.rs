//! The transit API (port 8200) against the real binaries, with a real Vault client: `hvac` from PyPI
//! (tests/transit/hvac_client.py), the web workload's mesh certificate from the initializer as its
//! client certificate, and `curl` sending the requests of Vault's documentation.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use concord_cli::process::CoordinatorProcess;
use concord_tests::{Env, describe, have, stdout_line};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("transit/hvac_client.py")
}

/// Whether python3 with hvac is here; CI must have it (`scripts/test` installs it).
fn hvac_available() -> bool {
    let ok = have("python3")
        && Command::new("python3")
            .args(["-c", "import hvac, requests"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run the transit tests: install python3 and hvac (scripts/test python)"
        );
        eprintln!("skipped: python3 with the hvac package is not available");
    }
    ok
}

struct Client<'a> {
    env: &'a Env,
    config: PathBuf,
    state: PathBuf,
}

impl<'a> Client<'a> {
    fn new(
        env: &'a Env,
        replicas: &[&CoordinatorProcess],
        tls: &str,
        foreign: Option<&Path>,
    ) -> Client<'a> {
        let c = Client {
            env,
            config: env.path("hvac-config.json"),
            state: env.path("hvac-state.json"),
        };
        c.configure(replicas, tls, foreign, &[]);
        c
    }

    fn configure(
        &self,
        replicas: &[&CoordinatorProcess],
        tls: &str,
        foreign: Option<&Path>,
        captured: &[(u16, String)],
    ) {
        let cfg = serde_json::json!({
            "replicas": replicas.iter().map(|c| c.transit_addr.to_string()).collect::<Vec<_>>(),
            "tls": self.env.path(tls).join("tls-config"),
            "foreign_tls": foreign.map(|p| p.join("tls-config")),
            "captured": captured,
        });
        std::fs::write(&self.config, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    }

    fn run(&self, phase: &str) -> Output {
        Command::new("python3")
            .arg(script())
            .arg(phase)
            .arg(&self.config)
            .arg(&self.state)
            .output()
            .expect("run python3")
    }

    fn phase(&self, phase: &str) {
        let out = self.run(phase);
        assert!(out.status.success(), "phase {phase}: {}", describe(&out));
        // What a phase measured, shown with `--nocapture`.
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout_line(&out), format!("ok {phase}"));
    }
}

fn write(env: &Env, name: &str, bytes: Vec<u8>) {
    std::fs::write(env.path(name), bytes).unwrap();
}

fn initializer(env: &Env, c: &CoordinatorProcess, manifest: &str) {
    let init = env.initializer(c, "web.policy", "web", manifest, 60);
    assert!(init.status.success(), "{}", describe(&init));
}

/// Nothing secret in any replica's log: no plaintext the tests encrypted, no data key.
fn assert_logs_clean(cluster: &[&CoordinatorProcess], secrets: &[&str]) {
    for c in cluster {
        let log = std::fs::read_to_string(&c.log).unwrap_or_default();
        for s in secrets {
            assert!(!log.contains(s), "{} contains {s:?}", c.log.display());
        }
    }
}

#[test]
fn t_hvac_across_replicas_rotation_datakeys_and_refusals() {
    if !hvac_available() {
        return;
    }
    let env = Env::new();
    write(&env, "transit-v1.json", env.d.transit_manifest(1, 1));
    write(&env, "transit-v2.json", env.d.transit_manifest(2, 1));
    write(&env, "transit-v3.json", env.d.transit_manifest(2, 2));
    let cluster = env.start_cluster(3);
    let all: Vec<&CoordinatorProcess> = cluster.iter().collect();
    let set = env.set(
        &cluster[0],
        "transit-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(set.status.success(), "{}", describe(&set));
    initializer(&env, &cluster[0], "transit-v1.json");

    // A genuine coordinator of another deployment issues the same workload a certificate: refused.
    let other = Env::new();
    let oc = other.start_coordinator("o1");
    let oset = other.set(&oc, "manifest-v1.json", &["--owner-key", "owner.pem"]);
    assert!(oset.status.success(), "{}", describe(&oset));
    let oinit = other.initializer(&oc, "web.policy", "web", "manifest-v1.json", 60);
    assert!(oinit.status.success(), "{}", describe(&oinit));

    let hvac = Client::new(&env, &all, "web", Some(&other.path("web")));
    hvac.phase("basic");
    // Bodies over the limit, sent as Vault's clients send them: 413, never a reset.
    hvac.phase("too_large");

    // Rotation: a new manifest, authorized by the owner, raises latest_version. The workload keeps
    // its certificate from the previous mesh CA (within the grace period).
    let set = env.set(
        &cluster[1],
        "transit-v2.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(set.status.success(), "{}", describe(&set));
    hvac.phase("rotated");

    // min_decryption_version passes version 1. The workload renews its certificate (two mesh CAs
    // later the first one is no longer accepted).
    let set = env.set(
        &cluster[2],
        "transit-v3.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(set.status.success(), "{}", describe(&set));
    hvac.phase("stale_refused");
    initializer(&env, &cluster[2], "transit-v3.json");
    hvac.phase("min_decryption");

    // The history shows the rotations as owner-authorized transitions.
    let v = env.verify(&cluster[0], "transit-v3.json", "verify", &[]);
    assert!(v.status.success(), "{}", describe(&v));
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("verify/history.json")).unwrap()).unwrap();
    let transitions = bundle["transitions"].as_array().unwrap();
    assert_eq!(transitions.len(), 3);
    assert!(transitions[1]["owner_signature"].is_string());

    // Vault's documented requests, sent with curl: the answers are what hvac accepts.
    let captured = curl_requests(&env, &cluster[0]);
    hvac.configure(&all, "web", None, &captured);
    hvac.phase("hvac_accepts");

    let metrics = concord_tests::http_get(cluster[0].health_addr, "/metrics")
        .unwrap()
        .1;
    assert!(
        metrics.contains(r#"concord_transit_requests_total{op="encrypt",key="orders",code="200"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"concord_transit_requests_total{op="encrypt",key="ledger",code="403"}"#),
        "{metrics}"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&hvac.state).unwrap()).unwrap();
    let secret = state["secret"].as_str().unwrap();
    assert_logs_clean(&all, &[secret, "order 66", "item 1"]);
}

/// The requests of Vault's transit documentation (`curl --header "X-Vault-Token: ..." --request POST
/// --data @payload.json`), with the workload's mesh certificate; returns (status, body) of each.
fn curl_requests(env: &Env, c: &CoordinatorProcess) -> Vec<(u16, String)> {
    let tls = env.path("web/tls-config");
    let base = format!("https://{}", c.transit_addr);
    let call = |method: &str, path: &str, payload: Option<&str>| -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["--silent", "--show-error", "--write-out", "\n%{http_code}"])
            .arg("--cert")
            .arg(tls.join("certChain.pem"))
            .arg("--key")
            .arg(tls.join("key.pem"))
            .arg("--cacert")
            .arg(tls.join("coordinator-root-ca.pem"))
            .args(["--header", "X-Vault-Token: ignored", "--request", method]);
        if let Some(p) = payload {
            cmd.args(["--data", p]);
        }
        let out = cmd.arg(format!("{base}{path}")).output().expect("run curl");
        assert!(out.status.success(), "curl {path}: {}", describe(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_string())
    };
    let enc = call(
        "POST",
        "/v1/transit/encrypt/orders",
        Some(r#"{"plaintext": "dGhlIHF1aWNrIGJyb3duIGZveAo="}"#),
    );
    assert_eq!(enc.0, 200, "{}", enc.1);
    let ct: serde_json::Value = serde_json::from_str(&enc.1).unwrap();
    let ct = ct["data"]["ciphertext"].as_str().unwrap().to_string();
    let dec = call(
        "POST",
        "/v1/transit/decrypt/orders",
        Some(&format!(r#"{{"ciphertext": "{ct}"}}"#)),
    );
    assert!(dec.1.contains("dGhlIHF1aWNrIGJyb3duIGZveAo="), "{}", dec.1);
    let out = vec![
        enc,
        dec,
        call(
            "POST",
            "/v1/transit/rewrap/orders",
            Some(&format!(r#"{{"ciphertext": "{ct}"}}"#)),
        ),
        call("POST", "/v1/transit/datakey/plaintext/orders", Some("{}")),
        call(
            "POST",
            "/v1/transit/datakey/wrapped/orders",
            Some(r#"{"bits": 256}"#),
        ),
        call("GET", "/v1/transit/keys/orders", None),
        call("GET", "/v1/sys/health", None),
        call(
            "POST",
            "/v1/transit/encrypt/ledger",
            Some(r#"{"plaintext": "eA=="}"#),
        ),
        call(
            "POST",
            "/v1/transit/encrypt/missing",
            Some(r#"{"plaintext": "eA=="}"#),
        ),
        call(
            "POST",
            "/v1/transit/hmac/orders",
            Some(r#"{"input": "eA=="}"#),
        ),
    ];
    let codes: Vec<u16> = out.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        codes,
        [200, 200, 200, 200, 200, 200, 200, 403, 400, 404],
        "{out:?}"
    );
    out
}

#[test]
fn t_full_outage_then_share_recovery_decrypts_what_was_encrypted_before() {
    if !hvac_available() {
        return;
    }
    let env = Env::new();
    write(&env, "transit-v1.json", env.d.transit_manifest(1, 1));
    let mut cluster = env.start_cluster(3);
    let set = env.set(
        &cluster[0],
        "transit-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(set.status.success(), "{}", describe(&set));
    let latest = stdout_line(&set);
    initializer(&env, &cluster[0], "transit-v1.json");
    let hvac = Client::new(&env, &cluster.iter().collect::<Vec<_>>(), "web", None);
    hvac.phase("encrypt_many");

    // Full outage: every replica restarts without its secrets.
    for c in &mut cluster {
        c.kill();
    }
    for c in &mut cluster {
        c.restart(&env.flags("coordinator.policy"))
            .expect("restart");
    }
    // Recovering, never ready since they started: they have no certificate a workload trusts, so the
    // transit port closes connections (the client sees Vault as unreachable, and retries).
    hvac.phase("unreachable");

    for i in 0..2 {
        let r = env.recover(&cluster[0], i, &["--expect-latest", &latest]);
        assert!(r.status.success(), "{}", describe(&r));
    }
    // User recovery makes a new mesh CA: the workload renews its certificate, as a restarted pod's
    // initializer does. The other replicas recover from the first; every one decrypts.
    let started = Instant::now();
    loop {
        let init = env.initializer(&cluster[0], "web.policy", "web", "transit-v1.json", 60);
        if init.status.success() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            describe(&init)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    hvac.phase("decrypt_many");
    assert_logs_clean(&cluster.iter().collect::<Vec<_>>(), &["before the outage"]);
}

/// The transit port has the limits of every port: silent sockets from one source are closed at once
/// beyond 16 handshakes in flight and by the 5 s handshake deadline otherwise; a body over 4 MiB is
/// refused (413) without being kept; a workload is served while the attacker holds its sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t_transit_port_bounds_silent_sockets_and_large_bodies() {
    use tokio::io::AsyncReadExt as _;
    let env = Env::new();
    write(&env, "transit-v1.json", env.d.transit_manifest(1, 1));
    let c = env.start_coordinator("c1");
    let set = env.set(&c, "transit-v1.json", &["--owner-key", "owner.pem"]);
    assert!(set.status.success(), "{}", describe(&set));
    initializer(&env, &c, "transit-v1.json");

    let attacker = std::net::SocketAddr::from(([127, 0, 0, 22], 0));
    let mut socks = Vec::new();
    for _ in 0..300 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(attacker).unwrap();
        socks.push(s.connect(c.transit_addr).await.unwrap());
    }
    let start = Instant::now();
    let mut closed_at = vec![None; socks.len()];
    while start.elapsed() < Duration::from_secs(8) && closed_at.iter().any(Option::is_none) {
        for (i, s) in socks.iter_mut().enumerate() {
            let mut b = [0u8; 1];
            if closed_at[i].is_none()
                && let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await
            {
                closed_at[i] = Some(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let within = |d: Duration| {
        closed_at
            .iter()
            .filter(|t| t.is_some_and(|t| t <= d))
            .count()
    };
    let (fast, all) = (
        within(Duration::from_secs(1)),
        within(Duration::from_secs(8)),
    );
    eprintln!(
        "transit: of 300 silent sockets from one source, {fast} closed within 1 s, {all} within 8 s"
    );
    assert!(fast >= 300 - 16, "{fast} closed at once");
    assert_eq!(
        all, 300,
        "every silent socket is closed by the handshake deadline"
    );

    // Another 300 held open while a workload makes a request, and a 5 MiB body.
    let mut held = Vec::new();
    for i in 0..300usize {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(std::net::SocketAddr::from((
            [127, 0, 0, 30 + (i % 6) as u8],
            0,
        )))
        .unwrap();
        held.push(s.connect(c.transit_addr).await.unwrap());
    }
    let big = env.path("big.json");
    let mut body = String::from(r#"{"plaintext":""#);
    body.push_str(&"A".repeat(5 << 20));
    body.push_str(r#""}"#);
    std::fs::write(&big, body).unwrap();
    let tls = env.path("web/tls-config");
    let started = Instant::now();
    let curl = |data: &str| {
        let out = Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--write-out",
                "\n%{size_upload} %{http_code}",
                "--max-time",
                "20",
            ])
            .arg("--cert")
            .arg(tls.join("certChain.pem"))
            .arg("--key")
            .arg(tls.join("key.pem"))
            .arg("--cacert")
            .arg(tls.join("coordinator-root-ca.pem"))
            .args(["--data-binary", data])
            .arg(format!(
                "https://{}/v1/transit/encrypt/orders",
                c.transit_addr
            ))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (sent, code) = text
            .rsplit_once('\n')
            .and_then(|(_, last)| last.split_once(' '))
            .map(|(sent, code)| (sent.parse::<u64>().unwrap_or(u64::MAX), code.to_string()))
            .unwrap_or_default();
        (code, sent, text)
    };
    let (code, sent, text) = curl(&format!("@{}", big.display()));
    assert_eq!(code, "413", "{text}");
    assert!(text.contains("\"errors\""), "{text}");
    // Refused on its declared length: curl waits for `100 Continue` before a large body and is never
    // told to send it (a body read up to the limit and then dropped could reset the connection before
    // the answer arrived).
    assert!(
        sent < 64 * 1024,
        "curl sent {sent} bytes of a body refused on its length"
    );
    let (code, _, text) = curl(r#"{"plaintext":"eA=="}"#);
    assert_eq!(code, "200", "{text}");
    let took = started.elapsed();
    eprintln!("a 5 MiB body refused and an encrypt served with 300 sockets held: {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    drop(held);
}

/// A replica started with `--transit-mesh-ca-grace SECONDS`, killed on drop (the fixture's processes
/// take no extra flags).
struct GraceReplica {
    child: std::process::Child,
    addrs: concord_cli::process::Addrs,
}

impl Drop for GraceReplica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn t_the_previous_mesh_ca_is_refused_once_the_grace_period_ends() {
    if !hvac_available() {
        return;
    }
    let env = Env::new();
    write(&env, "transit-v1.json", env.d.transit_manifest(1, 1));
    write(&env, "transit-v2.json", env.d.transit_manifest(2, 1));
    let addrs = concord_cli::process::Addrs::free().unwrap();
    let log = std::fs::File::create(env.path("grace.log")).unwrap();
    let child = Command::new(concord_cli::process::sibling_binary("concord-coordinator"))
        .arg("--data-dir")
        .arg(env.path("grace-data"))
        .args(["--user-listen", &addrs.user.to_string()])
        .args(["--mesh-listen", &addrs.mesh.to_string()])
        .args(["--peer-listen", &addrs.peer.to_string()])
        .args(["--health-listen", &addrs.health.to_string()])
        .args(["--transit-listen", &addrs.transit.to_string()])
        .args(["--transit-mesh-ca-grace", "3"])
        .args(["--node-id", "0"])
        .args(env.flags("coordinator.policy").args())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start concord-coordinator");
    let r = GraceReplica { child, addrs };
    let started = Instant::now();
    while std::net::TcpStream::connect(r.addrs.user).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the replica did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let set = |manifest: &str| {
        let out = env.concord(&[
            "set",
            "-m",
            manifest,
            "-c",
            &r.addrs.user.to_string(),
            "--insecure-simulated-attestation",
            "--shares-dir",
            "shares",
            "-p",
            "coordinator.policy",
            "-p",
            "web.policy",
            "--owner-key",
            "owner.pem",
        ]);
        assert!(out.status.success(), "{}", describe(&out));
    };
    set("transit-v1.json");
    let init = Command::new(concord_cli::process::sibling_binary("concord-initializer"))
        .args(["--coordinator", &r.addrs.mesh.to_string()])
        .arg("--root")
        .arg(env.path("web"))
        .arg("--manifest")
        .arg(env.path("transit-v1.json"))
        .args(["--timeout", "60"])
        .args(env.flags("web.policy").args())
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", describe(&init));
    set("transit-v2.json");
    let cfg = serde_json::json!({
        "replicas": [r.addrs.transit.to_string()],
        "tls": env.path("web/tls-config"),
        "grace": 3,
    });
    std::fs::write(env.path("grace.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let out = Command::new("python3")
        .arg(script())
        .arg("grace_expires")
        .arg(env.path("grace.json"))
        .arg(env.path("grace-state.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
}

/// A replica that was ready and lacks the latest manifest's secrets (it receives the Raft log but cannot
/// reach a peer to recover from) answers 503 in Vault's shapes, and serves again once it recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t_a_replica_that_is_recovering_answers_503_then_serves_again() {
    if !hvac_available() {
        return;
    }
    let env = Env::new();
    write(&env, "transit-v1.json", env.d.transit_manifest(1, 1));
    write(&env, "transit-v2.json", env.d.transit_manifest(2, 1));
    // No sealed mesh CA keys (PROTOCOL.md §7.1): with them the cut-off follower would open the new
    // key from the leader's Raft entry and never be left recovering.
    let (cluster, mesh) = env.start_meshed_cluster_with(3, &["--insecure-test-no-sealed-mesh-ca"]);
    let set = env.set(
        &cluster[0],
        "transit-v1.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(set.status.success(), "{}", describe(&set));
    initializer(&env, &cluster[0], "transit-v1.json");
    let all: Vec<&CoordinatorProcess> = cluster.iter().collect();
    let hvac = Client::new(&env, &all, "web", None);
    hvac.phase("serve_all");

    let leader = env.leader_index(&cluster, Duration::from_secs(10)).await;
    let sealed = (leader + 1) % 3;
    // The follower keeps receiving the leader's Raft traffic, but cannot dial anyone: no peer recovery.
    for j in (0..3).filter(|j| *j != sealed) {
        mesh.proxy(sealed, j).cut();
    }
    let set = env.set(
        &cluster[leader],
        "transit-v2.json",
        &["--owner-key", "owner.pem"],
    );
    assert!(set.status.success(), "{}", describe(&set));
    let cfg = serde_json::json!({
        "replicas": all.iter().map(|c| c.transit_addr.to_string()).collect::<Vec<_>>(),
        "tls": env.path("web/tls-config"),
        "sealed": sealed,
    });
    std::fs::write(&hvac.config, serde_json::to_vec(&cfg).unwrap()).unwrap();
    hvac.phase("sealed");
    mesh.heal_all();
    // Recovered from a peer: every replica serves the rotated key (the certificate is from the
    // previous mesh CA, within the grace).
    hvac.configure(&all, "web", None, &[]);
    hvac.phase("rotated");
}
