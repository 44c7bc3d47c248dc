//! The CPU time a run of writes cost: each replica's process and the benchmark's clients, per write.
//! Context for the commit rows: on a machine where the replicas share the cores, a commit that
//! costs more CPU than its own wall time has the cores busy, and its tail is the machine's.

use std::time::Duration;

use crate::concord::Cluster;
use crate::mesh::cpu_time;
use crate::table::{Row, Verdict, ms};

/// The CPU times at the start of a run.
pub struct CpuMark {
    replicas: Vec<Duration>,
    clients: Duration,
}

/// What a run cost, per write.
pub struct CpuPerWrite {
    /// Each replica's process, highest first (the leader's, which prepares, comes first).
    pub replicas: Vec<Duration>,
    /// The benchmark's own process: its clients' signing, TLS and gRPC.
    pub clients: Duration,
}

fn now(cluster: &Cluster) -> Result<CpuMark, String> {
    Ok(CpuMark {
        replicas: cluster
            .nodes
            .iter()
            .map(|n| cpu_time(&format!("/proc/{}/stat", n.pid())))
            .collect::<Result<_, _>>()?,
        clients: cpu_time("/proc/self/stat")?,
    })
}

impl CpuMark {
    pub fn start(cluster: &Cluster) -> Result<CpuMark, String> {
        now(cluster)
    }

    /// The CPU used since the mark, per write of `writes`.
    pub fn per_write(&self, cluster: &Cluster, writes: usize) -> Result<CpuPerWrite, String> {
        let end = now(cluster)?;
        let per = |d: Duration| d / writes.max(1) as u32;
        let mut replicas: Vec<Duration> = end
            .replicas
            .iter()
            .zip(&self.replicas)
            .map(|(e, s)| per(e.saturating_sub(*s)))
            .collect();
        replicas.sort_by(|a, b| b.cmp(a));
        Ok(CpuPerWrite {
            replicas,
            clients: per(end.clients.saturating_sub(self.clients)),
        })
    }
}

/// The row: CPU per write beside the wall time per write, and the cores that kept busy.
pub fn row(what: &str, cpu: &Result<CpuPerWrite, String>, wall_per_write: Duration) -> Row {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    match cpu {
        Ok(c) => {
            let total: Duration = c.replicas.iter().sum::<Duration>() + c.clients;
            let parts: Vec<String> = c.replicas.iter().map(|d| ms(*d)).collect();
            Row::new(
                format!("{what}: CPU per write, replicas (highest first) + clients"),
                format!(
                    "{} + clients {} = {}",
                    parts.join(" + "),
                    ms(c.clients),
                    ms(total)
                ),
                format!(
                    "beside {} of wall time per write: {:.1} of the machine's {cores} cores busy (ticks of 10 ms: coarse)",
                    ms(wall_per_write),
                    total.as_secs_f64() / wall_per_write.as_secs_f64().max(1e-9),
                ),
                "-",
                Verdict::Info,
            )
        }
        Err(e) => Row::new(
            format!("{what}: CPU per write"),
            "-",
            format!("not measured: {e}"),
            "-",
            Verdict::Info,
        ),
    }
}
