//! How much of each measurement a run does: the full run, or the quick one CI can afford.

use std::time::Duration;

/// How much of each measurement to do.
#[derive(Debug, Clone)]
pub struct Mode {
    pub name: &'static str,
    /// Timed SetManifest calls (and etcd puts).
    pub writes: usize,
    /// Clients writing SetManifests at once, and the writes each one makes (issue 11.3), beside
    /// sequential calls made right before them on the same cluster.
    pub concurrent_clients: usize,
    pub concurrent_writes: usize,
    pub concurrent_reference_writes: usize,
    /// Appends timed for the raw cost of durability (fdatasync against sled's flush).
    pub durability_appends: usize,
    /// SetManifest rounds timed until every replica serves the new mesh CA.
    pub propagation_rounds: usize,
    /// Leader kills (each also restarts the killed replica: the peer recovery samples).
    pub failovers: usize,
    /// Leader kills under concurrent writers (issue 11.5; section `failover`).
    pub concurrent_failovers: usize,
    /// Whether to time etcd's failover also with Concord's election timeouts.
    pub etcd_like_concord: bool,
    pub idle: Duration,
    pub audit_sizes: &'static [usize],
    pub audit_runs: usize,
    pub mesh_clients: usize,
    /// Workloads of the second NewMeshCert run, which loads the replica fully: its certificates per
    /// CPU second are the ones judged against the floor.
    pub mesh_clients_saturating: usize,
    pub mesh_window: Duration,
    /// Workloads flooding the cluster leader's mesh port, and for how long (`steady.rs`).
    pub flood_clients: usize,
    pub flood_window: Duration,
    pub crypto_window: Duration,
    /// CPU time per operation measured for the crypto floor.
    pub floor_window: Duration,
    /// Initializers against the 20 ms issuer (issue 11 item 2), and the bound they must meet.
    pub evidence_initializers: usize,
    pub evidence_bound: Duration,
    /// Initializers of the pod-start storm (issue 11 item 6).
    pub storm_initializers: usize,
    /// The sections to run (`--only a,b` or `CONCORD_BENCH_ONLY=a,b`); `None`: all.
    pub only: Option<Vec<String>>,
}

impl Mode {
    fn full() -> Mode {
        Mode {
            name: "full",
            writes: 200,
            concurrent_clients: 3,
            // Enough for p99s that no single stall decides (of 150 writes and 200 sequential
            // calls, the p99 was about the second-largest sample; until the fifteenth pass).
            concurrent_writes: 200,
            concurrent_reference_writes: 600,
            durability_appends: 500,
            propagation_rounds: 20,
            failovers: 7,
            concurrent_failovers: 12,
            etcd_like_concord: true,
            idle: Duration::from_secs(5),
            audit_sizes: &[1_000, 5_000, 10_000],
            audit_runs: 3,
            mesh_clients: 8,
            mesh_clients_saturating: 32,
            mesh_window: Duration::from_secs(10),
            flood_clients: 32,
            flood_window: Duration::from_secs(10),
            crypto_window: Duration::from_secs(3),
            floor_window: Duration::from_secs(1),
            evidence_initializers: 500,
            evidence_bound: Duration::from_secs(10),
            storm_initializers: 1000,
            only: None,
        }
    }

    fn quick() -> Mode {
        Mode {
            name: "quick",
            writes: 30,
            concurrent_clients: 3,
            concurrent_writes: 10,
            concurrent_reference_writes: 30,
            durability_appends: 100,
            propagation_rounds: 5,
            failovers: 3,
            concurrent_failovers: 10,
            etcd_like_concord: false,
            idle: Duration::from_secs(2),
            audit_sizes: &[1_000, 5_000, 10_000],
            audit_runs: 1,
            mesh_clients: 8,
            mesh_clients_saturating: 32,
            mesh_window: Duration::from_secs(3),
            flood_clients: 32,
            flood_window: Duration::from_secs(3),
            crypto_window: Duration::from_secs(1),
            floor_window: Duration::from_millis(500),
            evidence_initializers: 500,
            evidence_bound: Duration::from_secs(10),
            storm_initializers: 1000,
            only: None,
        }
    }

    /// `--quick` among the arguments, or `CONCORD_BENCH_QUICK=1`; `--only SECTIONS` or
    /// `CONCORD_BENCH_ONLY=SECTIONS` (comma-separated, of [`SECTIONS`]).
    pub fn from_args(args: &[String]) -> Mode {
        let env = std::env::var("CONCORD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut mode = if env || args.iter().any(|a| a == "--quick") {
            Mode::quick()
        } else {
            Mode::full()
        };
        let only = args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1).cloned())
            .or_else(|| std::env::var("CONCORD_BENCH_ONLY").ok());
        mode.only = only.map(|o| o.split(',').map(|s| s.trim().to_string()).collect());
        mode
    }

    /// Whether the section `name` (one of [`SECTIONS`]) runs.
    pub fn runs(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == name))
    }
}

/// The sections `--only` can name: the Concord cluster's rows (commit, failover, propagation,
/// memory), etcd's, the failover under concurrent writers, the audit, NewMeshCert with its crypto
/// floor, and the initializer storms.
pub const SECTIONS: &[&str] = &[
    "cluster", "etcd", "failover", "audit", "mesh", "transit", "storm",
];

impl Mode {
    /// Section names of `--only` that do not exist.
    pub fn unknown_sections(&self) -> Vec<String> {
        self.only
            .iter()
            .flatten()
            .filter(|o| !SECTIONS.contains(&o.as_str()))
            .cloned()
            .collect()
    }
}
