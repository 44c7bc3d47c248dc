//! `workload_lane`: the runtime of the ports that face workloads (mesh and transit), apart from the
//! one that runs Raft, the peer API and the user API, and at a lower CPU priority.
//!
//! Every handshake on the mesh port costs a P-384 verification of the workload's evidence, inside
//! rustls's certificate check on a runtime worker. On one runtime, 32 attested workloads dialing the
//! leader as fast as a 2-core machine drives them kept both workers busy with handshakes, and the
//! owner's SetManifest waited behind them in the same run queues: 24 to 26 ms at p50 against about
//! 3 ms without the flood (the cluster benchmark's flood rows, twenty-second pass on issue 11). Here
//! the workload ports' tasks, and the blocking threads they start, run on threads at nice
//! [`NICE`]: when a Raft, peer or user task wakes, the kernel gives its thread the core, and the
//! workloads take what is left. Nothing is starved: at nice 10 a busy workload thread still gets
//! about a tenth of a contended core, and all of an idle one.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The nice value of the workload lane's threads (0 is the default, 19 the lowest priority).
pub const NICE: i32 = 10;

/// The workload ports' runtime. Shut down without waiting when dropped (a runtime cannot be dropped
/// from async code otherwise); the servers on it have stopped by then, or are abandoned with the
/// process.
pub struct WorkloadLane(Option<tokio::runtime::Runtime>);

impl WorkloadLane {
    /// A multi-threaded runtime with one worker per core, its threads at [`NICE`].
    pub fn start() -> std::io::Result<WorkloadLane> {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name_fn(|| {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                format!("concord-wl-{}", NEXT.fetch_add(1, Ordering::Relaxed))
            })
            .on_thread_start(|| {
                if let Err(e) = crate::background::lower_own_nice(NICE) {
                    // Still correct at the default priority; only the owner's calls lose their lead.
                    tracing::debug!(error = %e, "cannot lower the priority of a workload thread");
                }
            })
            .enable_all()
            .build()?;
        Ok(WorkloadLane(Some(runtime)))
    }

    /// Where to spawn the workload ports' listeners and servers.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        match &self.0 {
            Some(runtime) => runtime.handle(),
            // Taken only in `drop`.
            None => unreachable!("the workload lane is used after it was dropped"),
        }
    }
}

impl Drop for WorkloadLane {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_lanes_threads_run_at_a_lower_priority_and_it_drops_from_async_code() {
        let lane = WorkloadLane::start().unwrap();
        let (nice, name) = lane
            .handle()
            .block_on(async {
                tokio::spawn(async {
                    (
                        rustix::process::getpriority_process(Some(rustix::thread::gettid())),
                        std::thread::current().name().map(str::to_owned),
                    )
                })
                .await
            })
            .unwrap();
        assert!(nice.unwrap() >= NICE);
        assert!(name.is_some_and(|n| n.starts_with("concord-wl-")));
        // Dropped inside another runtime's task, as `server::run` drops it: no panic.
        let main = tokio::runtime::Runtime::new().unwrap();
        main.block_on(async move { drop(lane) });
    }
}
