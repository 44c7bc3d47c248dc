//! `in_place`: blocking work run on the calling thread, with the runtime worker's other tasks handed
//! to another thread meanwhile (`tokio::task::block_in_place`).
//!
//! `spawn_blocking` costs the caller two thread wake-ups, one to start the job and one to resume the
//! caller, and on the virtual machines the replicas run in a wake-up of an idle core is slow: the
//! commit of a SetManifest spent 0.3 ms in that round trip for 0.08 ms of work (issue 11.3). Running
//! the work in place costs the caller none; the hand-over of the worker's queue happens beside it.
//! It is for work that is short or that waits (a disk), on a path a caller waits for; long CPU work
//! that nobody waits for stays on the blocking pool or the background threads.

/// Runs `f` on this thread without holding up the other tasks of this runtime worker. On a
/// multi-threaded runtime (the coordinator's) the worker's queue moves to another thread while `f`
/// runs, its LIFO slot too, which no other worker steals from: a task woken just before (the liveness
/// sampler, whose ping the Raft core answered) would otherwise wait with it. Elsewhere (a
/// current-thread runtime in tests, no runtime) `f` simply runs.
pub fn off_the_workers<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
