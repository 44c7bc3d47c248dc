//! Linearizability of the manifest history under faults.
//!
//! Three clients, one per replica, call SetManifest (a compare-and-swap on the latest transition) and
//! GetManifests concurrently while replicas are killed with SIGKILL, restarted, paused with SIGSTOP
//! and cut off from the others by the fault fixture's proxy mesh (clients still reach them).
//! Every call is recorded with its invocation and completion time on one monotonic clock. A Wing-Gong
//! checker (`todc-utils`, with Lowe's memoization) then looks for a sequential order of the recorded
//! calls that respects real time and a compare-and-swap register model; the test fails when there is
//! none. The checker's own tests below make sure it rejects non-linearizable histories. Afterwards every
//! replica must hold the same single line of transitions, with every acknowledged set in it.
//!
//! The model: a register holding the latest transition hash (`Hash::ZERO` before the first manifest).
//! `set(expected -> new)` succeeds iff the register holds `expected`, and then holds `new`, which the
//! client computes before the call (`transition_hash(manifest_hash, expected)`); a failed compare
//! ("previous transition mismatch") means the register did not hold `expected`. `get` returns the
//! register. Each client sets a manifest version no other call uses, so the "same manifest again is a
//! no-op" rule of SetManifest never applies.
//!
//! Outcomes: an answer is definite (ok, mismatch, or refused before anything was written: invalid
//! argument, permission denied, a recovering replica); Unavailable, a timeout or a broken connection is
//! indefinite: the set may have taken effect at any time after its invocation, so its completion is at
//! infinity. Refused calls and unanswered gets changed nothing and observed nothing: they are counted but
//! not checked.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use concord_attestation::PlatformTrust;
use concord_cli::process::CoordinatorProcess;
use concord_coordinator::history::format::transition_hash;
use concord_coordinator::manifest::Manifest;
use concord_proto::v1 as pb;
use concord_proto::v1::user_api_client::UserApiClient;
use concord_tests::fault::Mesh;
use concord_tests::{Env, Hash};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use todc_utils::{Action, History, Specification, WGLChecker};
use tonic::Code;
use tonic::transport::Channel;

/// A call without an answer by then is indefinite (a write waits up to 5 s for a leader server-side).
const OP_TIMEOUT: Duration = Duration::from_secs(4);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a killed replica stays down, and a paused one stopped.
const OUTAGE: Duration = Duration::from_secs(1);
/// How long the cluster has, once the last fault is healed, to acknowledge a new set (DESIGN.md's
/// failover target is under 1 s).
const PROGRESS_WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------------
// The recorded history.

/// One recorded call.
#[derive(Clone, Debug)]
struct Op {
    /// The client, which is also the replica it talks to.
    client: usize,
    call: Call,
    answer: Answer,
    /// Since the shared clock's start: taken before sending and after the answer arrived.
    invoked: Duration,
    completed: Duration,
}

#[derive(Clone, Copy, Debug)]
enum Call {
    /// SetManifest of manifest `version` after `expected`; `new` is the transition it makes.
    Set {
        version: u32,
        expected: Hash,
        new: Hash,
    },
    Get,
}

#[derive(Clone, Debug)]
enum Answer {
    /// A set: the transition answered; a get: the latest transition (`Hash::ZERO` when none).
    Ok(Hash),
    /// "previous transition mismatch": the compare failed and nothing was appended.
    Mismatch,
    /// Refused before anything was written, for a reason that says nothing about the latest transition.
    Refused(String),
    /// No definite answer: a set may or may not have taken effect.
    Indefinite(String),
}

// ---------------------------------------------------------------------------------------------------
// The model and the check.

/// A call as the checker sees it, its answer included.
#[derive(Clone, Copy, Debug)]
enum RegisterOp {
    Get(Hash),
    Set {
        expected: Hash,
        new: Hash,
        answer: SetAnswer,
    },
}

#[derive(Clone, Copy, Debug)]
enum SetAnswer {
    Ok(Hash),
    Mismatch,
    Unknown,
}

/// The latest transition hash, with a compare-and-swap write.
struct LatestTransition;

impl Specification for LatestTransition {
    type State = Hash;
    type Operation = RegisterOp;

    fn init() -> Hash {
        Hash::ZERO
    }

    fn apply(op: &RegisterOp, state: &Hash) -> (bool, Hash) {
        match *op {
            RegisterOp::Get(seen) => (seen == *state, *state),
            RegisterOp::Set {
                expected,
                new,
                answer,
            } => {
                let swaps = expected == *state;
                match answer {
                    SetAnswer::Ok(answered) if swaps && answered == new => (true, new),
                    SetAnswer::Ok(_) => (false, *state),
                    SetAnswer::Mismatch => (!swaps, *state),
                    // Placed anywhere after its invocation; "never applied" is the same as placed
                    // after every definite call, where nothing observes it.
                    SetAnswer::Unknown => (true, if swaps { new } else { *state }),
                }
            }
        }
    }
}

/// What the checker gets of `op`, and when it completed (`None`: at infinity); `None` when it neither
/// changed nor observed anything.
fn register_op(op: &Op) -> Option<(RegisterOp, Option<Duration>)> {
    match (op.call, &op.answer) {
        (Call::Get, Answer::Ok(seen)) => Some((RegisterOp::Get(*seen), Some(op.completed))),
        (Call::Get, _) | (Call::Set { .. }, Answer::Refused(_)) => None,
        (Call::Set { expected, new, .. }, answer) => {
            let (answer, completed) = match answer {
                Answer::Ok(h) => (SetAnswer::Ok(*h), Some(op.completed)),
                Answer::Mismatch => (SetAnswer::Mismatch, Some(op.completed)),
                _ => (SetAnswer::Unknown, None),
            };
            Some((
                RegisterOp::Set {
                    expected,
                    new,
                    answer,
                },
                completed,
            ))
        }
    }
}

/// Whether the recorded calls are linearizable with respect to [`LatestTransition`].
fn linearizable(ops: &[Op]) -> bool {
    // (time, is a response, process, op); every call is its own process, so the checker pairs each
    // invocation with its own completion even when one is at infinity.
    let mut events = Vec::new();
    let kept = ops
        .iter()
        .filter_map(|o| register_op(o).map(|r| (o.invoked, r)));
    for (process, (invoked, (op, completed))) in kept.enumerate() {
        events.push((invoked, false, process, op));
        events.push((completed.unwrap_or(Duration::MAX), true, process, op));
    }
    if events.is_empty() {
        return true;
    }
    // At equal times, invocations first: the two calls then count as concurrent (fewer constraints).
    events.sort_by_key(|(t, is_response, _, _)| (*t, *is_response));
    let actions = events
        .into_iter()
        .map(|(_, is_response, process, op)| {
            let action = if is_response {
                Action::Response(op)
            } else {
                Action::Call(op)
            };
            (process, action)
        })
        .collect();
    WGLChecker::<LatestTransition>::is_linearizable(History::from_actions(actions))
}

/// A small history that is still not linearizable, for the report. First the shortest prefix in time
/// that fails (calls answered after the cut become unanswered), then without each get and each
/// mismatched set that the violation does not need. Removing those is sound (they change nothing),
/// so the result is not linearizable only if `ops` is not either. Ok sets and unknown sets stay.
fn shrink(ops: &[Op]) -> Vec<Op> {
    let prefix = |cut: Duration| -> Vec<Op> {
        ops.iter()
            .filter(|o| o.invoked <= cut)
            .map(|o| {
                let mut o = o.clone();
                if o.completed > cut {
                    o.answer = Answer::Indefinite("answered after the cut".into());
                }
                o
            })
            .collect()
    };
    let mut cuts: Vec<Duration> = ops.iter().map(|o| o.completed).collect();
    cuts.sort();
    cuts.dedup();
    // Linearizable prefixes are closed under shortening: binary search the first failing cut.
    let (mut lo, mut hi) = (0, cuts.len().saturating_sub(1));
    while lo < hi {
        let mid = (lo + hi) / 2;
        if linearizable(&prefix(cuts[mid])) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let mut small = prefix(cuts.get(lo).copied().unwrap_or(Duration::MAX));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = small.len();
    while i > 0 && Instant::now() < deadline {
        i -= 1;
        let removable = matches!(
            (small[i].call, &small[i].answer),
            (Call::Get, _) | (Call::Set { .. }, Answer::Mismatch | Answer::Refused(_))
        );
        if removable {
            let mut without = small.clone();
            without.remove(i);
            if !linearizable(&without) {
                small = without;
            }
        }
    }
    small
}

// ---------------------------------------------------------------------------------------------------
// Printing.

/// Names hashes after the manifest version whose set makes them.
struct Labels(HashMap<Hash, u32>);

impl Labels {
    fn new(ops: &[Op]) -> Labels {
        Labels(
            ops.iter()
                .filter_map(|o| match o.call {
                    Call::Set { version, new, .. } => Some((new, version)),
                    Call::Get => None,
                })
                .collect(),
        )
    }

    fn of(&self, h: &Hash) -> String {
        if *h == Hash::ZERO {
            return "none".into();
        }
        match self.0.get(h) {
            Some(v) => format!("v{v}"),
            None => format!("?{}", &h.to_hex()[..8]),
        }
    }

    fn line(&self, o: &Op) -> String {
        let call = match o.call {
            Call::Get => "get".to_string(),
            Call::Set {
                version,
                expected,
                new,
            } => format!(
                "set v{version}: {} -> {}",
                self.of(&expected),
                self.of(&new)
            ),
        };
        let answer = match &o.answer {
            Answer::Ok(h) => format!("ok {}", self.of(h)),
            Answer::Mismatch => "mismatch".into(),
            Answer::Refused(why) => format!("refused ({})", short(why)),
            Answer::Indefinite(why) => format!("unknown ({})", short(why)),
        };
        format!(
            "{:>9.1} ms .. {:>9.1} ms  client {} @ node-{}  {call:<24} => {answer}",
            o.invoked.as_secs_f64() * 1e3,
            o.completed.as_secs_f64() * 1e3,
            o.client,
            o.client,
        )
    }

    fn history(&self, ops: &[Op]) -> String {
        let mut sorted: Vec<&Op> = ops.iter().collect();
        sorted.sort_by_key(|o| o.invoked);
        let mut out = String::new();
        for o in sorted {
            let _ = writeln!(out, "{}", self.line(o));
        }
        out
    }

    /// A shrunk history for a person: the ops before the last few summarized (what stays after
    /// shrinking there is the chain of ok sets that gives the values their meaning), the rest in full.
    fn violation(&self, small: &[Op]) -> String {
        let mut sorted = small.to_vec();
        sorted.sort_by_key(|o| o.invoked);
        let last = sorted.split_off(sorted.len().saturating_sub(8));
        let ok_sets = sorted
            .iter()
            .filter(|o| matches!((o.call, &o.answer), (Call::Set { .. }, Answer::Ok(_))))
            .count();
        let chain_end = sorted
            .iter()
            .rev()
            .find_map(|o| match (o.call, &o.answer) {
                (Call::Set { .. }, Answer::Ok(h)) => Some(self.of(h)),
                _ => None,
            })
            .unwrap_or_else(|| "none".into());
        format!(
            "A shrunk history that still is not: {} earlier ops ({ok_sets} ok sets making the chain none -> .. -> {chain_end}, {} others), then:\n{}",
            sorted.len(),
            sorted.len() - ok_sets,
            self.history(&last)
        )
    }
}

fn short(s: &str) -> String {
    s.chars().take(90).collect()
}

// ---------------------------------------------------------------------------------------------------
// Clients.

struct Shared {
    env: Env,
    manifest: Manifest,
    trust: PlatformTrust,
    clock: Instant,
    stop: AtomicBool,
    next_version: AtomicU32,
    /// Invocation time (µs) of the latest set answered ok.
    last_ok_set_us: AtomicU64,
}

async fn connect(shared: &Shared, addr: SocketAddr) -> Result<UserApiClient<Channel>, String> {
    let addr = addr.to_string();
    let dial = concord_cli::remote::user_api(
        &addr,
        &shared.manifest,
        shared.trust.clone(),
        concord_tests::pin(&shared.manifest),
    );
    match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
        Ok(Ok((client, _))) => Ok(client),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connecting timed out".into()),
    }
}

fn classify(status: &tonic::Status) -> Answer {
    let what = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::FailedPrecondition
            if status.message().starts_with("previous transition mismatch") =>
        {
            Answer::Mismatch
        }
        // Aborted: refused before queueing, as another write on the same predecessor was under way
        // (a write conflict); nothing was written.
        Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::InvalidArgument
        | Code::Aborted => Answer::Refused(what),
        _ => Answer::Indefinite(what),
    }
}

async fn set(api: &mut UserApiClient<Channel>, request: pb::SetManifestRequest) -> Answer {
    match tokio::time::timeout(OP_TIMEOUT, api.set_manifest(request)).await {
        Err(_) => Answer::Indefinite("no answer within the timeout".into()),
        Ok(Err(status)) => classify(&status),
        Ok(Ok(r)) => {
            let t = r.into_inner().transition;
            let hash = t.and_then(|t| Hash::from_slice(&t.hash).ok());
            Answer::Ok(hash.expect("an ok SetManifest answer carries the transition's hash"))
        }
    }
}

async fn get(api: &mut UserApiClient<Channel>) -> Answer {
    let request = pb::GetManifestsRequest::default();
    match tokio::time::timeout(OP_TIMEOUT, api.get_manifests(request)).await {
        Err(_) => Answer::Indefinite("no answer within the timeout".into()),
        Ok(Err(status)) => classify(&status),
        Ok(Ok(r)) => match r.into_inner().latest {
            None => Answer::Ok(Hash::ZERO),
            Some(t) => Answer::Ok(
                Hash::from_slice(&t.hash).expect("the latest transition's hash is 32 bytes"),
            ),
        },
    }
}

/// Half sets after the latest transition this client believes in, half gets; a get after every
/// set that did not succeed. Reconnects after an indefinite outcome.
async fn client(shared: Arc<Shared>, id: usize, addr: SocketAddr) -> Vec<Op> {
    let mut rng = StdRng::from_entropy();
    let mut connection = None;
    let mut believed = Hash::ZERO;
    let mut must_read = false;
    let mut ops = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let mut api = match connection.take() {
            Some(api) => api,
            None => match connect(&shared, addr).await {
                Ok(api) => api,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let is_set = !must_read && rng.gen_bool(0.5);
        let invoked = shared.clock.elapsed();
        let (call, answer) = if is_set {
            let version = shared.next_version.fetch_add(1, Ordering::SeqCst);
            let request = shared.env.set_manifest_request(version, believed);
            let new = transition_hash(&Hash::of(&request.manifest), &believed);
            let call = Call::Set {
                version,
                expected: believed,
                new,
            };
            (call, set(&mut api, request).await)
        } else {
            (Call::Get, get(&mut api).await)
        };
        let completed = shared.clock.elapsed();
        // After a get, whatever its answer, sets go on: a replica that cannot serve reads (recovering)
        // must not stop this client from testing writes through it.
        must_read = is_set && !matches!(answer, Answer::Ok(_));
        if let Answer::Ok(h) = answer {
            believed = h;
            if is_set {
                let us = u64::try_from(invoked.as_micros()).unwrap_or(u64::MAX);
                shared.last_ok_set_us.fetch_max(us, Ordering::SeqCst);
            }
        }
        if !matches!(answer, Answer::Indefinite(_)) {
            connection = Some(api);
        }
        ops.push(Op {
            client: id,
            call,
            answer,
            invoked,
            completed,
        });
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..5))).await;
    }
    ops
}

// ---------------------------------------------------------------------------------------------------
// Faults.

async fn status(env: &Env, c: &CoordinatorProcess) -> Option<pb::GetStatusResponse> {
    match tokio::time::timeout(CONNECT_TIMEOUT, env.status(c)).await {
        Ok(Ok(s)) => Some(s),
        _ => None,
    }
}

async fn leader(env: &Env, cluster: &[CoordinatorProcess]) -> usize {
    env.leader_index(cluster, Duration::from_secs(15)).await
}

/// Waits (without asserting: liveness is checked by the progress at the end) until `c` is ready.
async fn settle(env: &Env, c: &CoordinatorProcess) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        if status(env, c).await.is_some_and(|s| s.state == "ready") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(c: &CoordinatorProcess, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(c.pid().to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {} failed", c.pid());
}

struct Faults {
    log: Vec<String>,
    clock: Instant,
}

impl Faults {
    fn note(&mut self, what: String) {
        let at = self.clock.elapsed().as_secs_f64() * 1e3;
        self.log.push(format!("{at:.0} ms: {what}"));
    }

    async fn kill_and_restart(&mut self, env: &Env, cluster: &mut [CoordinatorProcess], i: usize) {
        let role = if leader(env, cluster).await == i {
            "leader"
        } else {
            "follower"
        };
        cluster[i].kill();
        self.note(format!("kill -9 node-{i} ({role})"));
        tokio::time::sleep(OUTAGE).await;
        cluster[i]
            .restart(&env.flags("coordinator.policy"))
            .expect("the killed replica restarts");
        settle(env, &cluster[i]).await;
        self.note(format!("node-{i} restarted"));
    }

    async fn pause(&mut self, env: &Env, cluster: &[CoordinatorProcess], i: usize) {
        let role = if leader(env, cluster).await == i {
            "leader"
        } else {
            "follower"
        };
        signal(&cluster[i], "STOP");
        self.note(format!("SIGSTOP node-{i} ({role})"));
        tokio::time::sleep(OUTAGE).await;
        signal(&cluster[i], "CONT");
        self.note(format!("SIGCONT node-{i}"));
    }

    async fn isolate(&mut self, env: &Env, cluster: &[CoordinatorProcess], mesh: &Mesh, i: usize) {
        let role = if leader(env, cluster).await == i {
            "leader"
        } else {
            "follower"
        };
        let others: Vec<usize> = (0..cluster.len()).filter(|&j| j != i).collect();
        mesh.partition(&[i], &others);
        self.note(format!("partition node-{i} ({role}) from the others"));
        tokio::time::sleep(OUTAGE).await;
        mesh.heal_all();
        self.note("partition healed".into());
    }
}

// ---------------------------------------------------------------------------------------------------
// The test.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sets_and_gets_under_faults_are_linearizable() {
    let env = Env::new();
    let (mut cluster, mesh) = env.start_meshed_cluster(3);
    let manifest = Manifest::parse(&env.d.manifest(1)).expect("manifest v1 parses");
    let trust = concord_cli::remote::trust_for(&manifest, true).expect("simulated trust");
    let addrs: Vec<SocketAddr> = cluster.iter().map(|c| c.user_addr).collect();
    let shared = Arc::new(Shared {
        env,
        manifest,
        trust,
        clock: Instant::now(),
        stop: AtomicBool::new(false),
        next_version: AtomicU32::new(1),
        last_ok_set_us: AtomicU64::new(0),
    });
    let env = &shared.env;
    leader(env, &cluster).await;
    let clients: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| tokio::spawn(client(shared.clone(), i, *addr)))
        .collect();

    // One fault at a time, each healed before the next: at least two replicas are up throughout.
    let mut faults = Faults {
        log: Vec::new(),
        clock: shared.clock,
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let l = leader(env, &cluster).await;
    faults.kill_and_restart(env, &mut cluster, l).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let l = leader(env, &cluster).await;
    faults.pause(env, &cluster, l).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let l = leader(env, &cluster).await;
    faults
        .kill_and_restart(env, &mut cluster, (l + 1) % 3)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let l = leader(env, &cluster).await;
    faults.isolate(env, &cluster, &mesh, l).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let l = leader(env, &cluster).await;
    faults.pause(env, &cluster, (l + 2) % 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let l = leader(env, &cluster).await;
    faults.isolate(env, &cluster, &mesh, (l + 1) % 3).await;

    // Progress once healed: a set invoked after the last fault succeeds.
    let healed = shared.clock.elapsed();
    let deadline = Instant::now() + PROGRESS_WAIT;
    while Instant::now() < deadline
        && Duration::from_micros(shared.last_ok_set_us.load(Ordering::SeqCst)) <= healed
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    shared.stop.store(true, Ordering::SeqCst);
    let mut ops = Vec::new();
    for c in clients {
        ops.extend(c.await.expect("a client task panicked"));
    }

    let mut states = Vec::new();
    for c in &cluster {
        states.push(match status(env, c).await {
            Some(s) => format!(
                "node-{} {} {} ({} transitions)",
                c.node_id, s.state, s.role, s.transitions
            ),
            None => format!("node-{} did not answer GetStatus", c.node_id),
        });
    }
    println!("replicas at the end: {}", states.join("; "));

    let labels = Labels::new(&ops);
    let dump =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("linearizability-history.txt");
    let _ = std::fs::write(&dump, labels.history(&ops));
    let count = |f: &dyn Fn(&Op) -> bool| ops.iter().filter(|o| f(o)).count();
    let ok = count(&|o| matches!(o.answer, Answer::Ok(_)));
    let failed = count(&|o| matches!(o.answer, Answer::Mismatch | Answer::Refused(_)));
    let indefinite = count(&|o| matches!(o.answer, Answer::Indefinite(_)));
    let ok_sets = count(&|o| matches!((o.call, &o.answer), (Call::Set { .. }, Answer::Ok(_))));
    let after_heal = count(&|o| {
        matches!((o.call, &o.answer), (Call::Set { .. }, Answer::Ok(_))) && o.invoked > healed
    });
    let checked_at = Instant::now();
    let verdict = linearizable(&ops);
    let check_time = checked_at.elapsed();
    println!(
        "linearizability: {} ops ({ok_sets} sets ok, {after_heal} after healing), {ok} ok, {failed} failed, {indefinite} indefinite; {} faults injected [{}]; checked in {:.0} ms: {}; history in {}",
        ops.len(),
        count_faults(&faults.log),
        faults.log.join(", "),
        check_time.as_secs_f64() * 1e3,
        if verdict {
            "linearizable"
        } else {
            "NOT linearizable"
        },
        dump.display(),
    );
    if !verdict {
        panic!(
            "the history is not linearizable (faults: {}). {}",
            faults.log.join(", "),
            labels.violation(&shrink(&ops))
        );
    }

    // The check is not vacuous: the same history plus a get that returns a superseded transition
    // after a later set completed is rejected.
    let later = ops
        .iter()
        .filter(|o| matches!(o.answer, Answer::Ok(_)))
        .filter_map(|o| match o.call {
            Call::Set { expected, .. } if expected != Hash::ZERO => Some((o.completed, expected)),
            _ => None,
        })
        .min();
    if let Some((completed, expected)) = later {
        let mut stale = ops.clone();
        stale.push(Op {
            client: 0,
            call: Call::Get,
            answer: Answer::Ok(expected),
            invoked: completed + Duration::from_micros(1),
            completed: completed + Duration::from_micros(2),
        });
        assert!(
            !linearizable(&stale),
            "the checker accepted the recorded history with a stale get added"
        );
    }

    // Nothing acknowledged was lost, and every replica holds the same single line.
    let lines = settled_histories(env, &cluster).await;
    assert!(
        lines.windows(2).all(|w| w[0] == w[1]),
        "the replicas' histories differ after the faults: {lines:?}"
    );
    for o in &ops {
        if let (Call::Set { new, version, .. }, Answer::Ok(_)) = (o.call, &o.answer) {
            assert!(
                lines[0].contains(&new.to_string()),
                "the acknowledged set of v{version} ({new}) is missing from the history"
            );
        }
    }

    assert!(ok_sets > 0, "no set succeeded during the run");
    assert!(
        after_heal > 0,
        "no set invoked after the last fault was healed succeeded within {PROGRESS_WAIT:?}; replicas: {}",
        states.join("; ")
    );
}

/// Each replica's history (transition hashes, oldest first), once every replica is ready at the same
/// latest transition (for at most 15 s; then whatever they hold).
async fn settled_histories(env: &Env, cluster: &[CoordinatorProcess]) -> Vec<Vec<String>> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        let mut latest = Vec::new();
        for c in cluster {
            latest.push(status(env, c).await.map(|s| (s.state, s.latest)));
        }
        let first = latest[0].clone();
        if first.as_ref().is_some_and(|(state, _)| state == "ready")
            && latest.iter().all(|l| *l == first)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut lines = Vec::new();
    for c in cluster {
        let mut api = env.user_client(c).await;
        let bundle = api
            .get_history(pb::GetHistoryRequest {
                nonce: vec![1; 32],
                allow_stale: true,
            })
            .await
            .expect("the history")
            .into_inner()
            .bundle;
        let bundle: serde_json::Value = serde_json::from_slice(&bundle).expect("JSON");
        lines.push(
            bundle["transitions"]
                .as_array()
                .expect("transitions")
                .iter()
                .map(|t| t["hash"].as_str().expect("hash").to_owned())
                .collect(),
        );
    }
    lines
}

fn count_faults(log: &[String]) -> usize {
    log.iter()
        .filter(|l| l.contains("kill -9") || l.contains("SIGSTOP") || l.contains("partition node"))
        .count()
}

// ---------------------------------------------------------------------------------------------------
// The checker on small histories with a known answer.

fn h(n: u8) -> Hash {
    Hash([n; 32])
}

fn op(call: Call, answer: Answer, invoked_ms: u64, completed_ms: u64) -> Op {
    Op {
        client: 0,
        call,
        answer,
        invoked: Duration::from_millis(invoked_ms),
        completed: Duration::from_millis(completed_ms),
    }
}

fn set_op(expected: Hash, new: Hash) -> Call {
    Call::Set {
        version: u32::from(new.0[0]),
        expected,
        new,
    }
}

fn unknown() -> Answer {
    Answer::Indefinite("Unavailable".into())
}

#[test]
fn checker_accepts_a_sequential_history() {
    let ops = [
        op(Call::Get, Answer::Ok(Hash::ZERO), 0, 1),
        op(set_op(Hash::ZERO, h(1)), Answer::Ok(h(1)), 2, 3),
        op(Call::Get, Answer::Ok(h(1)), 4, 5),
        op(set_op(Hash::ZERO, h(2)), Answer::Mismatch, 6, 7),
        op(set_op(h(1), h(3)), Answer::Ok(h(3)), 8, 9),
        op(Call::Get, Answer::Ok(h(3)), 10, 11),
    ];
    assert!(linearizable(&ops));
}

#[test]
fn checker_rejects_a_stale_get_after_a_later_set_completed() {
    let ops = [
        op(set_op(Hash::ZERO, h(1)), Answer::Ok(h(1)), 0, 1),
        op(set_op(h(1), h(2)), Answer::Ok(h(2)), 2, 3),
        op(Call::Get, Answer::Ok(h(1)), 4, 5),
    ];
    assert!(!linearizable(&ops));
    // The same get, concurrent with the second set, may see either value.
    let ops = [
        op(set_op(Hash::ZERO, h(1)), Answer::Ok(h(1)), 0, 1),
        op(set_op(h(1), h(2)), Answer::Ok(h(2)), 2, 6),
        op(Call::Get, Answer::Ok(h(1)), 4, 5),
    ];
    assert!(linearizable(&ops));
}

#[test]
fn checker_rejects_a_new_then_old_read_during_one_set() {
    let ops = [
        op(set_op(Hash::ZERO, h(1)), Answer::Ok(h(1)), 0, 1),
        op(set_op(h(1), h(2)), Answer::Ok(h(2)), 2, 20),
        op(Call::Get, Answer::Ok(h(2)), 3, 4),
        op(Call::Get, Answer::Ok(h(1)), 5, 6),
    ];
    assert!(!linearizable(&ops));
}

#[test]
fn checker_rejects_two_successful_sets_after_the_same_transition() {
    let ops = [
        op(set_op(Hash::ZERO, h(1)), Answer::Ok(h(1)), 0, 10),
        op(set_op(Hash::ZERO, h(2)), Answer::Ok(h(2)), 1, 11),
    ];
    assert!(!linearizable(&ops));
    let ops = [
        op(set_op(Hash::ZERO, h(1)), Answer::Ok(h(1)), 0, 10),
        op(set_op(Hash::ZERO, h(2)), Answer::Mismatch, 1, 11),
    ];
    assert!(linearizable(&ops));
}

#[test]
fn checker_rejects_a_mismatch_when_nothing_changed_the_latest() {
    let ops = [
        op(set_op(Hash::ZERO, h(1)), Answer::Ok(h(1)), 0, 1),
        op(set_op(h(1), h(2)), Answer::Mismatch, 2, 3),
        op(Call::Get, Answer::Ok(h(1)), 4, 5),
    ];
    assert!(!linearizable(&ops));
}

#[test]
fn checker_lets_an_unknown_set_take_effect_later_or_never() {
    // Observed long after its call returned Unavailable.
    let ops = [
        op(set_op(Hash::ZERO, h(1)), unknown(), 0, 1),
        op(Call::Get, Answer::Ok(Hash::ZERO), 2, 3),
        op(Call::Get, Answer::Ok(h(1)), 4, 5),
        op(set_op(h(1), h(2)), Answer::Ok(h(2)), 6, 7),
    ];
    assert!(linearizable(&ops));
    // Never observed.
    let ops = [
        op(set_op(Hash::ZERO, h(1)), unknown(), 0, 1),
        op(Call::Get, Answer::Ok(Hash::ZERO), 2, 3),
    ];
    assert!(linearizable(&ops));
    // But not before it was invoked.
    let ops = [
        op(Call::Get, Answer::Ok(h(1)), 0, 1),
        op(set_op(Hash::ZERO, h(1)), unknown(), 2, 3),
    ];
    assert!(!linearizable(&ops));
}

#[test]
fn checker_ignores_refused_sets_and_unanswered_gets() {
    let ops = [
        op(
            set_op(Hash::ZERO, h(1)),
            Answer::Refused("PermissionDenied".into()),
            0,
            1,
        ),
        op(Call::Get, unknown(), 2, 3),
        op(Call::Get, Answer::Ok(Hash::ZERO), 4, 5),
    ];
    assert!(linearizable(&ops));
}

#[test]
fn shrinking_keeps_the_violation_and_drops_what_it_does_not_need() {
    let ops = [
        op(set_op(Hash::ZERO, h(1)), Answer::Ok(h(1)), 0, 1),
        op(Call::Get, Answer::Ok(h(1)), 2, 3),
        op(set_op(h(1), h(2)), Answer::Ok(h(2)), 4, 5),
        op(Call::Get, Answer::Ok(h(2)), 6, 7),
        op(Call::Get, Answer::Ok(h(1)), 8, 9),
        op(set_op(h(2), h(3)), Answer::Ok(h(3)), 10, 11),
        op(Call::Get, Answer::Ok(h(3)), 12, 13),
    ];
    assert!(!linearizable(&ops));
    let small = shrink(&ops);
    assert!(!linearizable(&small));
    let shape: Vec<(u64, bool)> = small
        .iter()
        .map(|o| (o.invoked.as_millis() as u64, matches!(o.call, Call::Get)))
        .collect();
    assert_eq!(shape, [(0, false), (4, false), (8, true)]);
}
