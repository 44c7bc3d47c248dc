//! `RefusalLimiter`: a budget of refused requests per source address, for the user API's `Recover`.
//!
//! Seed share submissions are authenticated to their owner (a forgery never changes what a replica
//! holds), but each refused one still costs a decode, an HPKE open and a log line. A source address
//! gets [`RefusalLimiter::CAPACITY`] refusals, refilled at one per [`RefusalLimiter::REFILL`]; once
//! they are used up, its submissions are refused at once, before any decoding or cryptography, until
//! the budget refills. Owners on other addresses are never affected; an owner that shares an address
//! with a flood (a NAT) waits for the refill. At most [`RefusalLimiter::MAX_SOURCES`] addresses are
//! remembered, so a flood from many addresses cannot grow it without bound.
//!
//! Pure: the time is an argument. This module must never decide whether a share is valid.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Refused requests allowed per source address, refilled over time.
#[derive(Debug)]
pub struct RefusalLimiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// A source's remaining refusals (fractional while refilling) as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant) -> f64 {
        let earned = now.saturating_duration_since(self.at).as_secs_f64()
            / RefusalLimiter::REFILL.as_secs_f64();
        (self.tokens + earned).min(f64::from(RefusalLimiter::CAPACITY))
    }
}

impl Default for RefusalLimiter {
    fn default() -> Self {
        RefusalLimiter::new()
    }
}

impl RefusalLimiter {
    /// Refusals a source may collect before it is throttled: more than an owner who mistyped a
    /// path or used the wrong key a few times needs.
    pub const CAPACITY: u32 = 10;
    /// One refusal is forgiven per this interval.
    pub const REFILL: Duration = Duration::from_secs(1);
    /// Addresses remembered at most (about 100 bytes each).
    pub const MAX_SOURCES: usize = 4096;

    pub fn new() -> RefusalLimiter {
        RefusalLimiter {
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok` if `source` may be served now; else how long until it may.
    pub fn admits(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        let Ok(buckets) = self.buckets.lock() else {
            // A panic while holding the lock poisoned it; serving is safer than refusing everyone.
            return Ok(());
        };
        match buckets.get(&source).map(|b| b.refilled(now)) {
            Some(tokens) if tokens < 1.0 => {
                Err(RefusalLimiter::REFILL.mul_f64((1.0 - tokens).max(0.0)))
            }
            _ => Ok(()),
        }
    }

    /// Charges one refusal to `source`.
    pub fn charge(&self, source: IpAddr, now: Instant) {
        let Ok(mut buckets) = self.buckets.lock() else {
            return;
        };
        if !buckets.contains_key(&source) && buckets.len() >= RefusalLimiter::MAX_SOURCES {
            // Forget the sources whose budget is whole again; if none, any one (the limit per
            // address means little against a flood from thousands of addresses anyway).
            let full = f64::from(RefusalLimiter::CAPACITY);
            buckets.retain(|_, b| b.refilled(now) < full);
            if buckets.len() >= RefusalLimiter::MAX_SOURCES
                && let Some(victim) = buckets.keys().next().copied()
            {
                buckets.remove(&victim);
            }
        }
        let tokens = buckets
            .get(&source)
            .map_or(f64::from(RefusalLimiter::CAPACITY), |b| b.refilled(now));
        buckets.insert(
            source,
            Bucket {
                tokens: (tokens - 1.0).max(0.0),
                at: now,
            },
        );
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_source_is_throttled_after_its_budget_and_others_are_not() {
        let l = RefusalLimiter::new();
        let t0 = Instant::now();
        for _ in 0..RefusalLimiter::CAPACITY {
            assert!(l.admits(ip(1), t0).is_ok());
            l.charge(ip(1), t0);
        }
        let wait = l.admits(ip(1), t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= RefusalLimiter::REFILL);
        assert!(
            l.admits(ip(2), t0).is_ok(),
            "another address is not affected"
        );
        // One refill later it may try once more.
        let t1 = t0 + RefusalLimiter::REFILL;
        assert!(l.admits(ip(1), t1).is_ok());
        l.charge(ip(1), t1);
        assert!(l.admits(ip(1), t1).is_err());
        // A long pause forgives everything.
        let t2 = t1 + RefusalLimiter::REFILL * (RefusalLimiter::CAPACITY + 1);
        for _ in 0..RefusalLimiter::CAPACITY {
            assert!(l.admits(ip(1), t2).is_ok());
            l.charge(ip(1), t2);
        }
        assert!(l.admits(ip(1), t2).is_err());
    }

    #[test]
    fn the_table_stays_bounded() {
        let l = RefusalLimiter::new();
        let t0 = Instant::now();
        for i in 0..(RefusalLimiter::MAX_SOURCES as u32 + 100) {
            l.charge(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(l.sources() <= RefusalLimiter::MAX_SOURCES);
    }
}
