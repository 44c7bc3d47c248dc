//! `FailureLog`: the log lines that failed handshakes and refused connections may write.
//!
//! One bad connection costs the attacker a few bytes; one WARN line per connection would let them fill
//! the replica's disk and bury the lines an operator needs. So each port writes the first
//! [`FIRST_PER_WINDOW`] failures of every [`WINDOW`] in full, then counts the rest by reason and writes
//! one summary line when the window ends: at most `FIRST_PER_WINDOW + 1` lines per window and port,
//! whatever the flood. `Window` is the pure core (time is an argument); `FailureLog` adds the clock
//! and `tracing`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::warn;

/// How long a window lasts.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Failures written in full per window and port.
pub const FIRST_PER_WINDOW: u32 = 5;

/// What a window decided for one failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write this failure in full.
    Write,
    /// Count it; it appears in the window's summary.
    Suppress,
}

/// The failures of one summary: how many were not written, by reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub suppressed: u64,
    pub by_reason: BTreeMap<&'static str, u64>,
}

/// The counting core, free of clocks and I/O.
#[derive(Debug)]
pub struct Window {
    started: Instant,
    written: u32,
    suppressed: BTreeMap<&'static str, u64>,
}

impl Window {
    pub fn new(now: Instant) -> Window {
        Window {
            started: now,
            written: 0,
            suppressed: BTreeMap::new(),
        }
    }

    /// Ends the window if it is over: returns the summary to write, if anything was suppressed.
    pub fn roll(&mut self, now: Instant) -> Option<Summary> {
        if now.saturating_duration_since(self.started) < WINDOW {
            return None;
        }
        self.started = now;
        self.written = 0;
        let by_reason = std::mem::take(&mut self.suppressed);
        let suppressed: u64 = by_reason.values().sum();
        (suppressed > 0).then_some(Summary {
            suppressed,
            by_reason,
        })
    }

    /// Decides about one failure with reason `reason` at `now` (after [`Self::roll`]).
    pub fn record(&mut self, reason: &'static str) -> Decision {
        if self.written < FIRST_PER_WINDOW {
            self.written += 1;
            Decision::Write
        } else {
            *self.suppressed.entry(reason).or_insert(0) += 1;
            Decision::Suppress
        }
    }
}

/// The throttled log of one port's failed handshakes and refused connections.
#[derive(Debug, Clone)]
pub struct FailureLog {
    api: &'static str,
    window: Arc<Mutex<Window>>,
}

impl FailureLog {
    /// A log for port `api`, with a task (on `on`) that writes each window's summary when the window
    /// ends, even if no failure comes after it.
    pub fn start(api: &'static str, on: &tokio::runtime::Handle) -> FailureLog {
        let log = FailureLog {
            api,
            window: Arc::new(Mutex::new(Window::new(Instant::now()))),
        };
        let flusher = log.clone();
        on.spawn(async move {
            let mut tick = tokio::time::interval(WINDOW);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                flusher.roll();
            }
        });
        log
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // Counters only: a poisoned lock still holds usable counts.
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn roll(&self) {
        let summary = self.lock().roll(Instant::now());
        if let Some(s) = summary {
            let by_reason = s
                .by_reason
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect::<Vec<_>>()
                .join(" ");
            warn!(
                api = self.api,
                suppressed = s.suppressed,
                %by_reason,
                "suppressed {} failed handshakes and refused connections in the last {} s (counted by reason; \
                 the first {} of each window are logged in full)",
                s.suppressed,
                WINDOW.as_secs(),
                FIRST_PER_WINDOW
            );
        }
    }

    /// Records a failure from `remote` with `reason` (a label) and `detail`; writes it if the window
    /// allows.
    pub fn failure(
        &self,
        remote: SocketAddr,
        reason: &'static str,
        detail: &dyn std::fmt::Display,
    ) {
        self.roll();
        if self.lock().record(reason) == Decision::Write {
            warn!(api = self.api, %remote, reason, error = %detail, "aTLS handshake failed");
        }
    }

    /// Records a connection closed at once by a limit.
    pub fn refused(&self, remote: SocketAddr, reason: &'static str) {
        self.roll();
        if self.lock().record(reason) == Decision::Write {
            warn!(
                api = self.api,
                %remote,
                reason,
                "connection refused: over a limit of this port (docs/THREAT_MODEL.md, \"What an unauthenticated caller can cost\")"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_the_first_few_then_one_summary_per_window() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        let mut written = 0;
        for i in 0..1000 {
            assert_eq!(w.roll(t0), None);
            let reason = if i % 2 == 0 { "tls" } else { "io" };
            if w.record(reason) == Decision::Write {
                written += 1;
            }
        }
        assert_eq!(written, FIRST_PER_WINDOW);
        let s = w.roll(t0 + WINDOW).expect("a summary after the window");
        assert_eq!(s.suppressed, 1000 - u64::from(FIRST_PER_WINDOW));
        assert_eq!(s.by_reason["tls"] + s.by_reason["io"], s.suppressed);
        // A new window writes again; a quiet window writes no summary.
        assert_eq!(w.record("tls"), Decision::Write);
        assert_eq!(w.roll(t0 + 2 * WINDOW), None);
    }
}
