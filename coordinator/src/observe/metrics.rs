//! `Metrics`: the process's counters (attestation failures by reason, certificates issued) and request
//! latency histograms, and [`render`], which turns them and a [`Sample`] into the `/metrics` document.
//!
//! Owns the metric names, their HELP text and their labels. Must never take a label value from a
//! client without a bound on the number of values (a scanner must not grow memory: RPC methods are
//! capped at [`MAX_METHODS`]), and never put a secret, a key or a nonce in a label.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use concord_attestation::AttestationError;

use super::exposition::{Exposition, Kind};
use super::histogram::{Histogram, LATENCY_BOUNDS};
use super::sample::Sample;
use crate::state::ReplicaState;

/// Distinct RPC method labels kept; later ones are counted under `other`.
pub const MAX_METHODS: usize = 64;

/// The label of RPCs that no service implements (a scanner's paths), so they cannot add labels.
pub const UNIMPLEMENTED_METHOD: &str = "unimplemented";

/// The phases of `concord_set_manifest_phase_seconds`.
pub const COMMIT_PHASES: &[&str] = &[
    "queue",
    "prepare",
    "ahead",
    "raft_write",
    "commit",
    "log_append",
    "log_sync",
    "replicate",
    "peer_append",
    "apply",
    "verify",
    "verify_wait",
    "store_write",
    "applied_write",
];

/// The process's counters and histograms. One per process ([`global`]): the metrics of a process, as
/// Prometheus scrapes it.
#[derive(Debug, Default)]
pub struct Metrics {
    /// By (api, reason).
    attestation_failures: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    certificates_issued: AtomicU64,
    rpc_latency: Mutex<BTreeMap<String, Histogram>>,
    /// Transit API requests by (operation, key name, HTTP status).
    transit_requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    /// Where a SetManifest's (and a Raft write's) time goes, by phase (a fixed set of names).
    commit_phases: Mutex<BTreeMap<&'static str, Histogram>>,
    /// How this replica got the mesh CA key of a transition it did not make, by how (a fixed set).
    mesh_ca_handoffs: Mutex<BTreeMap<&'static str, u64>>,
    /// Transitions applied, by what became of their early checks (a fixed set, `raft::early`).
    early_checks: Mutex<BTreeMap<&'static str, u64>>,
    /// Records offered to the history's objects file, by (path, what became of them): fixed sets.
    history_records: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Other members whose seal key this replica holds on a live attested link.
    peer_seal_keys: AtomicU64,
    /// Reports made to answer `PeerApi.SealKey` with evidence.
    seal_key_reports: AtomicU64,
}

/// A copy of the counters, for rendering.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub attestation_failures: BTreeMap<(&'static str, &'static str), u64>,
    pub certificates_issued: u64,
    pub rpc_latency: BTreeMap<String, Histogram>,
    pub transit_requests: BTreeMap<(&'static str, String, u16), u64>,
    pub commit_phases: BTreeMap<&'static str, Histogram>,
    pub mesh_ca_handoffs: BTreeMap<&'static str, u64>,
    pub early_checks: BTreeMap<&'static str, u64>,
    pub history_records: BTreeMap<(&'static str, &'static str), u64>,
    pub peer_seal_keys: u64,
    pub seal_key_reports: u64,
}

/// Distinct (operation, key, status) series of transit requests kept; later ones count under key
/// `other`. Key names come from the manifest only, so this bounds what many keys could add.
pub const MAX_TRANSIT_SERIES: usize = 1024;

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// This process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// Locks a map of counters. Counters hold no invariant across entries, so a poisoned lock (a panic
/// elsewhere mid-update) still holds usable counts.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    /// Counts a failed aTLS handshake on `api` if the evidence was rejected (by its reason); other
    /// failures (a closed connection, a timeout) are not attestation failures.
    pub fn attestation_failed(&self, api: &'static str, error: &AttestationError) {
        if let Some(reason) = error.reject_reason() {
            *lock(&self.attestation_failures)
                .entry((api, reason.metric_label()))
                .or_insert(0) += 1;
        }
    }

    pub fn certificate_issued(&self) {
        self.certificates_issued.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one RPC's latency under `method` (`package.Service/Method`).
    pub fn rpc_finished(&self, method: &str, elapsed: Duration) {
        let mut map = lock(&self.rpc_latency);
        let key = if map.contains_key(method) || map.len() < MAX_METHODS {
            method
        } else {
            "other"
        };
        map.entry(key.to_string())
            .or_insert_with(|| Histogram::new(LATENCY_BOUNDS))
            .observe(elapsed.as_secs_f64());
    }

    /// Records the time one phase of a commit took (`phase` is one of a fixed set of names, see
    /// [`COMMIT_PHASES`]), for `concord_set_manifest_phase_seconds`.
    pub fn commit_phase(&self, phase: &'static str, elapsed: Duration) {
        lock(&self.commit_phases)
            .entry(phase)
            .or_insert_with(|| Histogram::new(LATENCY_BOUNDS))
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one transit API request: its operation, its key (`-` when none or not in the manifest)
    /// and its HTTP status.
    pub fn transit_request(&self, op: &'static str, key: Option<&str>, status: u16) {
        let mut map = lock(&self.transit_requests);
        let mut entry = (op, key.unwrap_or("-").to_string(), status);
        if !map.contains_key(&entry) && map.len() >= MAX_TRANSIT_SERIES {
            entry.1 = "other".into();
        }
        *map.entry(entry).or_insert(0) += 1;
    }

    /// Counts one mesh CA key this replica got for a transition it did not make: `sealed` (opened
    /// from the Raft entry), `peer` (peer recovery) or `rotated` (lost with its maker: a new one).
    pub fn mesh_ca_handoff(&self, how: &'static str) {
        *lock(&self.mesh_ca_handoffs).entry(how).or_insert(0) += 1;
    }

    /// Counts one transition applied, by what became of its early checks: `used` (their verdict
    /// spared the state machine the signatures and certificates), `running` (still under way on a
    /// background thread, so verified in full instead of waited for) or `none` (never started, failed,
    /// or reached for another command).
    pub fn early_check(&self, outcome: &'static str) {
        *lock(&self.early_checks).entry(outcome).or_insert(0) += 1;
    }

    /// Counts `n` records of the history offered to the objects file on `path` (`ahead` of their
    /// apply, or `store`: any other write) that were `written` to it or already `held` there.
    pub fn history_records(&self, path: &'static str, how: &'static str, n: u64) {
        if n > 0 {
            *lock(&self.history_records).entry((path, how)).or_insert(0) += n;
        }
    }

    /// Counts one report made to answer `PeerApi.SealKey` (evidence binding the seal key).
    pub fn seal_key_report(&self) {
        self.seal_key_reports.fetch_add(1, Ordering::Relaxed);
    }

    /// How many other members' seal keys this replica holds.
    pub fn set_peer_seal_keys(&self, n: u64) {
        self.peer_seal_keys.store(n, Ordering::Relaxed);
    }

    pub fn counters(&self) -> Counters {
        Counters {
            mesh_ca_handoffs: lock(&self.mesh_ca_handoffs).clone(),
            early_checks: lock(&self.early_checks).clone(),
            history_records: lock(&self.history_records).clone(),
            peer_seal_keys: self.peer_seal_keys.load(Ordering::Relaxed),
            seal_key_reports: self.seal_key_reports.load(Ordering::Relaxed),
            transit_requests: lock(&self.transit_requests).clone(),
            attestation_failures: lock(&self.attestation_failures).clone(),
            certificates_issued: self.certificates_issued.load(Ordering::Relaxed),
            rpc_latency: lock(&self.rpc_latency).clone(),
            commit_phases: lock(&self.commit_phases).clone(),
        }
    }
}

/// The `/metrics` document: the replica's state from `sample` (absent while starting) and the counters.
pub fn render(sample: Option<&Sample>, counters: &Counters) -> String {
    let mut e = Exposition::new();
    info(&mut e, sample);
    if let Some(s) = sample {
        replica_gauges(&mut e, s);
        raft_gauges(&mut e, s);
    }
    counter_families(&mut e, counters);
    e.finish()
}

fn gauge(e: &mut Exposition, name: &str, help: &str, value: f64) {
    e.family(name, help, Kind::Gauge);
    e.sample(name, &[], value);
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

fn info(e: &mut Exposition, sample: Option<&Sample>) {
    e.family(
        "concord_build_info",
        "The coordinator build: always 1, labelled with its version and the replica's node id.",
        Kind::Gauge,
    );
    let node = sample.map(|s| s.node_id.to_string()).unwrap_or_default();
    e.sample(
        "concord_build_info",
        &[("version", env!("CARGO_PKG_VERSION")), ("node_id", &node)],
        1.0,
    );
}

fn replica_gauges(e: &mut Exposition, s: &Sample) {
    gauge(
        e,
        "concord_manifest_generation",
        "Transitions in this replica's verified history (the latest transition's index + 1); 0 before the first manifest.",
        s.manifest_generation as f64,
    );
    e.family(
        "concord_replica_state",
        "1 for the replica's current state (fresh: no manifest; recovering: lacks the latest secrets; ready: serving), 0 for the others.",
        Kind::Gauge,
    );
    for state in [
        ReplicaState::Fresh,
        ReplicaState::Recovering,
        ReplicaState::Ready,
    ] {
        e.sample(
            "concord_replica_state",
            &[("state", state.as_str())],
            flag(s.state == state),
        );
    }
}

fn raft_gauges(e: &mut Exposition, s: &Sample) {
    gauge(
        e,
        "concord_raft_term",
        "The Raft term this replica is in.",
        s.term as f64,
    );
    gauge(
        e,
        "concord_raft_is_leader",
        "1 if this replica is the Raft leader.",
        flag(s.role == "leader"),
    );
    e.family(
        "concord_raft_leader_id",
        "The node id of the leader this replica knows; no sample while it knows none.",
        Kind::Gauge,
    );
    if let Some(l) = s.leader_id {
        e.sample("concord_raft_leader_id", &[], l as f64);
    }
    gauge(
        e,
        "concord_raft_has_quorum",
        "1 if this replica sees a leader acknowledged by a majority (writes can commit).",
        flag(s.quorum),
    );
    gauge(
        e,
        "concord_raft_commit_index",
        "The last Raft log index this replica knows to be committed.",
        s.commit_index as f64,
    );
    gauge(
        e,
        "concord_raft_last_applied_index",
        "The last Raft log index this replica's state machine applied.",
        s.last_applied as f64,
    );
}

fn counter_families(e: &mut Exposition, c: &Counters) {
    e.family(
        "concord_mesh_ca_handoffs_total",
        "Mesh CA keys this replica got for a transition another replica made, by how: sealed (opened from the Raft entry with this process's seal key), peer (peer recovery), rotated (the key was lost with its maker and this replica made a new one).",
        Kind::Counter,
    );
    for (how, n) in &c.mesh_ca_handoffs {
        e.sample("concord_mesh_ca_handoffs_total", &[("how", how)], *n as f64);
    }
    e.family(
        "concord_history_records_total",
        "Records of the history (manifests, policy documents, transition records) offered to the objects file, by path: ahead (the leader writes a SetManifest's records beside its Raft write, and a catching-up replica those of the entries it applies together, so that the applies find them held and sync nothing) or store (every other write, the applies' included); and by what became of them: written, or held (already there with the same value).",
        Kind::Counter,
    );
    for ((path, how), n) in &c.history_records {
        e.sample(
            "concord_history_records_total",
            &[("path", path), ("how", how)],
            *n as f64,
        );
    }
    e.family(
        "concord_early_checks_total",
        "Transitions applied, by what became of the checks started for them (by the leader when it appended their entry, by a follower when it applies one another replica led): used (the verdict spared the apply its signature and certificate checks), running (still under way on a background thread, so the apply verified in full rather than wait, or wait longer than 10 ms on a follower), none (not started, failed, or for another command).",
        Kind::Counter,
    );
    for (outcome, n) in &c.early_checks {
        e.sample(
            "concord_early_checks_total",
            &[("outcome", outcome)],
            *n as f64,
        );
    }
    gauge(
        e,
        "concord_peer_seal_keys",
        "Other members whose per-process seal key this replica holds on a live attested link (a leader seals new mesh CA keys to them).",
        c.peer_seal_keys as f64,
    );
    e.family(
        "concord_seal_key_reports_total",
        "Reports (evidence) this replica made to answer PeerApi.SealKey: each binds its seal key to a peer's nonce. Peers ask once per link and when a key changed; a steady climb means a peer keeps redialing.",
        Kind::Counter,
    );
    e.sample(
        "concord_seal_key_reports_total",
        &[],
        c.seal_key_reports as f64,
    );
    e.family(
        "concord_attestation_failures_total",
        "aTLS handshakes refused because the other side's evidence failed a check, by API (user, mesh, peer: inbound; dial: a server this replica dialed) and reason.",
        Kind::Counter,
    );
    for ((api, reason), n) in &c.attestation_failures {
        e.sample(
            "concord_attestation_failures_total",
            &[("api", api), ("reason", reason)],
            *n as f64,
        );
    }
    e.family(
        "concord_certificates_issued_total",
        "Mesh certificates issued to attested workloads by this replica.",
        Kind::Counter,
    );
    e.sample(
        "concord_certificates_issued_total",
        &[],
        c.certificates_issued as f64,
    );
    e.family(
        "concord_rpc_duration_seconds",
        "gRPC request latency on the user, mesh and peer APIs, from the request to the response headers, by method.",
        Kind::Histogram,
    );
    for (method, h) in &c.rpc_latency {
        e.histogram("concord_rpc_duration_seconds", &[("method", method)], h);
    }
    e.family(
        "concord_set_manifest_phase_seconds",
        "Where a SetManifest's time goes, by phase: on the leader `queue` (waiting for earlier writes and \
         the applied log), `prepare`, `ahead` (making the next update's mesh CA and its seal encapsulations \
         on the background threads, in their CPU time), `raft_write` (append, replication, commit and apply), `commit` \
         (adopting the new secrets); on every replica `log_append` (encode, write and fdatasync log entries in the Raft log's file), `log_sync` (its fdatasync alone; also the rare synced vote, truncation and purge), \
         `apply` (the state machine), `verify` (the part of `apply` that decodes and verifies an appended \
         transition), `store_write` (the part of `apply` that writes it to the history) and, on the leader, `replicate` (one AppendEntries round trip to a follower).",
        Kind::Histogram,
    );
    for (phase, h) in &c.commit_phases {
        e.histogram("concord_set_manifest_phase_seconds", &[("phase", phase)], h);
    }
    e.family(
        "concord_transit_requests_total",
        "Requests to the transit API (port 8200), by operation, key name (`-`: none, or not in the manifest) and HTTP status.",
        Kind::Counter,
    );
    for ((op, key, status), n) in &c.transit_requests {
        e.sample(
            "concord_transit_requests_total",
            &[("op", op), ("key", key), ("code", &status.to_string())],
            *n as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::sample::tests::sample;
    use concord_attestation::RejectReason;

    fn families(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (n, k) = l.split_once(' ').unwrap();
                (n.to_string(), k.to_string())
            })
            .collect()
    }

    #[test]
    fn every_family_has_help_and_type_and_the_concord_prefix() {
        let m = Metrics::default();
        m.certificate_issued();
        m.rpc_finished("concord.v1.UserApi/GetStatus", Duration::from_millis(3));
        let text = render(Some(&sample(ReplicaState::Ready)), &m.counters());
        let fams = families(&text);
        assert!(fams.len() >= 12, "{text}");
        for (name, _) in &fams {
            assert!(name.starts_with("concord_"), "{name}");
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
        }
        // Each sample belongs to the family declared before it.
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&current), "{line} outside {current}");
            }
        }
    }

    #[test]
    fn state_is_one_gauge_per_state() {
        let text = render(
            Some(&sample(ReplicaState::Recovering)),
            &Counters::default(),
        );
        assert!(text.contains("concord_replica_state{state=\"fresh\"} 0\n"));
        assert!(text.contains("concord_replica_state{state=\"recovering\"} 1\n"));
        assert!(text.contains("concord_replica_state{state=\"ready\"} 0\n"));
        assert!(text.contains("concord_manifest_generation 2\n"));
        assert!(text.contains("concord_raft_leader_id 1\n"));
        assert!(text.contains("concord_raft_is_leader 0\n"));
    }

    #[test]
    fn attestation_failures_are_counted_by_reason_only_when_evidence_was_rejected() {
        let m = Metrics::default();
        m.attestation_failed("mesh", &RejectReason::HostDataNotAccepted.into());
        m.attestation_failed("mesh", &RejectReason::HostDataNotAccepted.into());
        m.attestation_failed("peer", &RejectReason::MeasurementNotTrusted.into());
        m.attestation_failed("mesh", &AttestationError::ClosedBeforeHandshake);
        m.attestation_failed("mesh", &AttestationError::Handshake("timeout".into()));
        let text = render(None, &m.counters());
        assert!(text.contains(
            "concord_attestation_failures_total{api=\"mesh\",reason=\"host_data_not_accepted\"} 2\n"
        ));
        assert!(text.contains(
            "concord_attestation_failures_total{api=\"peer\",reason=\"measurement_not_trusted\"} 1\n"
        ));
        assert_eq!(
            text.matches("concord_attestation_failures_total{").count(),
            2
        );
    }

    #[test]
    fn method_labels_are_capped() {
        let m = Metrics::default();
        for i in 0..(MAX_METHODS + 10) {
            m.rpc_finished(&format!("x.Y/M{i}"), Duration::from_millis(1));
        }
        m.rpc_finished("x.Y/M0", Duration::from_millis(1));
        let c = m.counters();
        assert_eq!(c.rpc_latency.len(), MAX_METHODS + 1);
        assert_eq!(c.rpc_latency["other"].count(), 10);
        assert_eq!(c.rpc_latency["x.Y/M0"].count(), 2);
    }

    #[test]
    fn while_starting_only_counters_and_build_info_are_exposed() {
        let text = render(None, &Counters::default());
        assert!(text.contains("concord_build_info{"));
        assert!(text.contains("concord_certificates_issued_total 0\n"));
        assert!(!text.contains("concord_replica_state"));
    }
}
