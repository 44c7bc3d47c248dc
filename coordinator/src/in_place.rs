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

/// Runs `f` right here, on this runtime worker, when `brief`; else as [`off_the_workers`]. For work
/// whose size the caller knows before it starts, on a path a caller waits for, that never waits
/// itself (no disk, no lock another task holds across long work): tens of microseconds of it cost
/// less in place than handing the worker's queue to another thread, which wakes a thread on every
/// call and leaves the runtime's threads swapping roles. With three replicas on two cores, a
/// SetManifest refused as a conflict spent most of its time in that hand-over: run in place, its
/// p99 fell by 0.3 to 3.5 ms in 11 of 11 alternating pairs, its p50 by up to 0.37 ms in 10 of them
/// (issue 11.3).
pub fn brief_or_off<T>(brief: bool, f: impl FnOnce() -> T) -> T {
    if brief { f() } else { off_the_workers(f) }
}
