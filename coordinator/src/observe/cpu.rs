//! The CPU time the calling thread has used: what a phase costs, not how long it waited for a core.
//!
//! The `verify` phase is the reference of issue 11.3's commit target (the crypto every replica spends
//! on a SetManifest). The leader's early checks run on low-priority threads (`crate::background`) that
//! other work preempts; their wall time would count that waiting as crypto.

use std::time::Duration;

/// The calling thread's CPU time so far; zero where the platform has no per-thread clock.
pub fn thread_cpu_time() -> Duration {
    #[cfg(target_os = "linux")]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(
            t.tv_sec.max(0) as u64,
            t.tv_nsec.clamp(0, 999_999_999) as u32,
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_sleeps_uses_less_cpu_than_one_that_works() {
        let before = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_cpu_time() - before;
        let before = thread_cpu_time();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let worked = thread_cpu_time() - before;
        assert!(slept < Duration::from_millis(10), "slept {slept:?}");
        assert!(worked > Duration::from_millis(10), "worked {worked:?}");
    }
}
