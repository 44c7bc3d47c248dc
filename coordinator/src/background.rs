//! `background`: a few threads that run only when no other thread wants a core, for verification
//! that no caller is waiting on yet (issue 11.3).
//!
//! The early checks of a transition (`raft::early`) run while its entry is flushed and replicated, and
//! are needed only when the entry is applied. On the blocking pool they ran at the priority of the
//! work a commit waits for: the followers' appends and acknowledgements, the leader's apply and answer.
//! Here they take the cores only when those do not want them.
//!
//! On Linux the threads are `SCHED_IDLE`: a thread of normal priority that wakes on their core takes
//! it at once, and the scheduler counts a core running only them as idle when it places a woken
//! thread. At nice 10 (the first version) a check kept its core for up to a third of a millisecond
//! while a follower's thread, woken by the end of its log sync on that core, waited behind it and the
//! other core sat idle (seen in `perf sched` traces of the cluster benchmark). A `SCHED_IDLE` thread
//! can be starved for as long as the cores stay busy, so nobody waits for one for long: a check still
//! queued when its verdict is wanted is run by the one who wants it, at that one's priority, and one
//! already running is abandoned to finish unread (`raft::early`); a follower, whose apply no commit
//! waits for, gives the threads up to 10 ms first. Where `SCHED_IDLE` is refused, the threads run at
//! nice `NICE`.
//!
//! The queue is bounded; a job that does not fit is refused, not run ([`spawn`] says so), and its
//! owner does the work itself when it needs the result.
//!
//! [`run_within`] is for work that nobody waits for but that should not lag far behind either: a
//! replica's catch-up after it applied a transition (`server::keep_recovering`: the core's refresh and
//! the opening of the mesh CA key sealed to it). Right after a commit the followers' catch-up ran at
//! normal priority on the cores that the leader's answer, and the next request, were waiting for.
//! Here it runs when a core is free, and its caller does it itself, at its own priority, if no core
//! was free within the bound.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};

/// The nice value of the pool's threads where `SCHED_IDLE` is refused (0 is the default, 19 the lowest
/// priority). At 10 the scheduler gives a busy request thread about nine tenths of a contended core.
pub const NICE: i32 = 10;

/// Jobs queued and not yet taken by a thread.
pub const QUEUE: usize = 32;

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    tx: SyncSender<Job>,
}

fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        let mut started = 0;
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("concord-bg-{i}"))
                .spawn(move || serve(&rx));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a background verification thread")
                }
            }
        }
        (started > 0).then_some(Pool { tx })
    })
    .as_ref()
}

fn serve(rx: &Mutex<Receiver<Job>>) {
    if let Err(e) = lower_own_priority() {
        // Still useful at the default priority: the work is off the runtime's threads.
        tracing::debug!(error = %e, "cannot lower the priority of a background thread");
    }
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(job) = job else { return };
        // A job's panic is its owner's to notice (`raft::early` finds no verdict); the thread lives on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

#[cfg(target_os = "linux")]
fn lower_own_priority() -> std::io::Result<()> {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    // Lowering needs no privilege. Only this thread's policy changes (pthread_setschedparam).
    let idle = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
    match idle {
        Ok(()) => return Ok(()),
        Err(e) => {
            tracing::debug!(error = ?e, "SCHED_IDLE refused; lowering the nice value instead")
        }
    }
    lower_own_nice(NICE)
}

/// Lowers the calling thread's priority to nice value `nice` (on Linux the nice value belongs to the
/// thread, not the process). A thread already at `nice` or lower keeps its own: raising it back
/// would need a privilege.
#[cfg(target_os = "linux")]
pub fn lower_own_nice(nice: i32) -> std::io::Result<()> {
    let own = Some(rustix::thread::gettid());
    if rustix::process::getpriority_process(own)? >= nice {
        return Ok(());
    }
    rustix::process::setpriority_process(own, nice).map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
pub fn lower_own_nice(_nice: i32) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "per-thread priority is set on Linux only",
    ))
}

#[cfg(not(target_os = "linux"))]
fn lower_own_priority() -> std::io::Result<()> {
    Err(std::io::Error::other(
        "per-thread priority is set on Linux only",
    ))
}

/// Runs `job` on a background thread and waits up to `limit` for its result: `None` if it was not
/// queued or has not finished by then (it still runs when a core frees up, its result dropped).
pub async fn run_within<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
    limit: std::time::Duration,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if !spawn(move || {
        let _ = tx.send(job());
    }) {
        return None;
    }
    tokio::time::timeout(limit, rx).await.ok()?.ok()
}

/// Queues `job` for a background thread. False if it was not queued (the queue is full, or no thread
/// could be started): the caller then does without, or does the work itself.
pub fn spawn(job: impl FnOnce() + Send + 'static) -> bool {
    let Some(pool) = pool() else { return false };
    pool.tx.try_send(Box::new(job)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_job_runs_on_a_thread_that_takes_only_idle_cores() {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        let (tx, rx) = std::sync::mpsc::channel();
        assert!(spawn(move || {
            let policy = thread_priority::thread_schedule_policy();
            let name = std::thread::current().name().map(str::to_owned);
            let _ = tx.send((policy.ok(), name));
        }));
        let (policy, name) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the job ran");
        assert!(name.is_some_and(|n| n.starts_with("concord-bg-")));
        assert_eq!(
            policy,
            Some(ThreadSchedulePolicy::Normal(
                NormalThreadSchedulePolicy::Idle
            )),
            "the pool's threads are SCHED_IDLE"
        );
        // The test's own thread is not: only the pool's threads change.
        assert_ne!(
            thread_priority::thread_schedule_policy().ok(),
            Some(ThreadSchedulePolicy::Normal(
                NormalThreadSchedulePolicy::Idle
            )),
            "the caller's thread was made SCHED_IDLE too"
        );
    }

    #[tokio::test]
    async fn run_within_gives_the_result_from_a_pool_thread_or_nothing_after_the_limit() {
        let name = run_within(
            || std::thread::current().name().map(str::to_owned),
            std::time::Duration::from_secs(10),
        )
        .await;
        assert!(
            name.flatten().is_some_and(|n| n.starts_with("concord-bg-")),
            "the job ran on a background thread and its result came back"
        );
        let started = std::time::Instant::now();
        let late = run_within(
            || std::thread::sleep(std::time::Duration::from_millis(300)),
            std::time::Duration::from_millis(20),
        )
        .await;
        assert!(late.is_none(), "a job past the limit gives no result");
        assert!(
            started.elapsed() < std::time::Duration::from_millis(250),
            "the caller did not wait for the job beyond the limit"
        );
    }

    #[test]
    fn a_panicking_job_leaves_the_pool_serving() {
        for _ in 0..2 {
            assert!(spawn(|| panic!("a job's own failure")));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        assert!(spawn(move || {
            let _ = tx.send(());
        }));
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("a job after panicking ones still runs");
    }
}
