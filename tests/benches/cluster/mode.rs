//! How much of each measurement a run does: the full run, or the quick one CI can afford.

use std::time::Duration;

/// How much of each measurement to do.
#[derive(Debug, Clone)]
pub struct Mode {
    pub name: &'static str,
    /// Timed SetManifest calls (and etcd puts).
    pub writes: usize,
    /// SetManifest rounds timed until every replica serves the new mesh CA.
    pub propagation_rounds: usize,
    /// Leader kills (each also restarts the killed replica: the peer recovery samples).
    pub failovers: usize,
    /// Whether to time etcd's failover also with Concord's election timeouts.
    pub etcd_like_concord: bool,
    pub idle: Duration,
    pub audit_sizes: &'static [usize],
    pub audit_runs: usize,
    pub mesh_clients: usize,
    pub mesh_window: Duration,
    pub crypto_window: Duration,
}

impl Mode {
    fn full() -> Mode {
        Mode {
            name: "full",
            writes: 200,
            propagation_rounds: 20,
            failovers: 7,
            etcd_like_concord: true,
            idle: Duration::from_secs(5),
            audit_sizes: &[1_000, 5_000, 10_000],
            audit_runs: 3,
            mesh_clients: 8,
            mesh_window: Duration::from_secs(10),
            crypto_window: Duration::from_secs(3),
        }
    }

    fn quick() -> Mode {
        Mode {
            name: "quick",
            writes: 30,
            propagation_rounds: 5,
            failovers: 3,
            etcd_like_concord: false,
            idle: Duration::from_secs(2),
            audit_sizes: &[1_000, 5_000, 10_000],
            audit_runs: 1,
            mesh_clients: 8,
            mesh_window: Duration::from_secs(3),
            crypto_window: Duration::from_secs(1),
        }
    }

    /// `--quick` among the arguments, or `CONCORD_BENCH_QUICK=1`.
    pub fn from_args(args: &[String]) -> Mode {
        let env = std::env::var("CONCORD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        if env || args.iter().any(|a| a == "--quick") {
            Mode::quick()
        } else {
            Mode::full()
        }
    }
}
