//! `Gate`: who may start an aTLS handshake on a port, decided before a byte is read.
//!
//! Owns the counts that bound what an unauthenticated caller can hold: connections (handshaking or
//! established) per source and in total, handshakes in flight per source and in total, and handshakes
//! started per second per source and in total (each one makes the replica produce evidence, a device
//! call on SEV-SNP). Pure bookkeeping with the time as an argument: no sockets, no clocks, no logs.
//!
//! A source is an IPv4 address, or the /64 prefix of an IPv6 address (one host usually holds a whole
//! /64). When the handshakes in flight reach the total, the oldest handshake of the source holding the
//! most is evicted rather than the new one refused: the sources share the slots, so sockets that open
//! and say nothing (DESIGN's "availability only" adversary holding slots) from a few sources evict each
//! other, and a source with one handshake in flight keeps it.
//! Likewise, when the connections reach the total, the established connection that has been idle the
//! longest (at least [`MIN_IDLE_TO_EVICT`]) is closed for the new one: a flood of idle connections
//! from many sources cannot lock legitimate clients out until the idle timeout.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A token bucket's parameters: `per_second` tokens refill, up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// An established connection is closed for a new one only if it has been idle at least this long.
pub const MIN_IDLE_TO_EVICT: Duration = Duration::from_secs(1);

/// The activity of an established connection, shared by its stream and the gate: when it last moved
/// a byte, and whether the gate closed it to make room (then its stream fails at its next poll).
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    evicted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Activity {
    fn new(epoch: Instant, now: Instant) -> Activity {
        Activity {
            epoch,
            last_ms: AtomicU64::new(ms_since(epoch, now)),
            evicted: AtomicBool::new(false),
            waker: Mutex::new(None),
        }
    }

    /// The connection moved a byte at `now`.
    pub fn moved(&self, now: Instant) {
        self.last_ms
            .store(ms_since(self.epoch, now), Ordering::Relaxed);
    }

    /// Whether the gate closed this connection; otherwise remembers `waker` to wake it when it does.
    pub fn evicted(&self, waker: &Waker) -> bool {
        if self.evicted.load(Ordering::Acquire) {
            return true;
        }
        let mut w = self.waker.lock().unwrap_or_else(PoisonError::into_inner);
        if !w.as_ref().is_some_and(|old| old.will_wake(waker)) {
            *w = Some(waker.clone());
        }
        drop(w);
        // Evicted between the first check and storing the waker: nobody will wake us.
        self.evicted.load(Ordering::Acquire)
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

fn ms_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// The gate's limits (one set per port, from `ListenerLimits`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateLimits {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_source: usize,
    pub handshake_rate: Rate,
    pub handshake_rate_per_source: Rate,
}

/// Why a connection was closed at once. `label` names it in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections,
    TooManyConnectionsFromSource,
    TooManyHandshakesFromSource,
    HandshakeRate,
    HandshakeRateFromSource,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::TooManyConnections => "refused_connections_full",
            Refusal::TooManyConnectionsFromSource => "refused_source_connections_full",
            Refusal::TooManyHandshakesFromSource => "refused_source_handshakes_full",
            Refusal::HandshakeRate => "refused_handshake_rate",
            Refusal::HandshakeRateFromSource => "refused_source_handshake_rate",
        }
    }
}

/// The key per-source limits count under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6Prefix(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                None => Source::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.at = now;
    }
}

#[derive(Debug)]
struct SourceState {
    connections: usize,
    handshakes: usize,
    bucket: Bucket,
}

#[derive(Debug)]
struct State {
    connections: usize,
    bucket: Bucket,
    sources: HashMap<Source, SourceState>,
    /// Handshakes in flight, oldest first: admission order, the source, and how to evict it.
    handshakes: BTreeMap<u64, (Source, Arc<Notify>)>,
    /// Established connections, by connection id.
    established: HashMap<u64, (Source, Arc<Activity>)>,
    next: u64,
}

impl State {
    fn release_connection(&mut self, source: Source) {
        self.connections = self.connections.saturating_sub(1);
        if let Some(st) = self.sources.get_mut(&source) {
            st.connections = st.connections.saturating_sub(1);
        }
    }

    /// Drops the oldest handshake of the source holding the most: sources share the slots, so a few
    /// sources flooding them evict each other, not a source with one handshake in flight.
    fn evict_handshake(&mut self) {
        let busiest = self
            .sources
            .iter()
            .max_by_key(|(_, st)| st.handshakes)
            .map(|(source, _)| *source);
        let victim = self
            .handshakes
            .iter()
            .find(|(_, (source, _))| Some(*source) == busiest)
            .or_else(|| self.handshakes.iter().next())
            .map(|(id, _)| *id);
        if let Some((source, evicted)) = victim.and_then(|id| self.handshakes.remove(&id)) {
            if let Some(st) = self.sources.get_mut(&source) {
                st.handshakes = st.handshakes.saturating_sub(1);
            }
            evicted.notify_one();
        }
    }

    /// Closes the established connection idle the longest, if idle at least [`MIN_IDLE_TO_EVICT`].
    fn evict_idlest(&mut self, now: Instant, epoch: Instant) -> bool {
        let now_ms = ms_since(epoch, now);
        let idlest = self
            .established
            .iter()
            .map(|(id, (_, a))| (a.last_ms.load(Ordering::Relaxed), *id))
            .min();
        match idlest {
            Some((last, id))
                if now_ms.saturating_sub(last) >= MIN_IDLE_TO_EVICT.as_millis() as u64 =>
            {
                if let Some((source, activity)) = self.established.remove(&id) {
                    self.release_connection(source);
                    activity.evict();
                }
                true
            }
            _ => false,
        }
    }
}

/// The admission state of one port.
#[derive(Debug)]
pub struct Gate {
    limits: GateLimits,
    epoch: Instant,
    state: Mutex<State>,
}

/// Held for as long as the connection is open (handshake and after): it counts towards the limits.
#[derive(Debug)]
pub struct ConnectionTicket {
    gate: Arc<Gate>,
    source: Source,
    id: u64,
    established: bool,
}

impl ConnectionTicket {
    /// The handshake completed at `now`: from here the connection may be closed for a newer one
    /// when it has been idle the longest. Its stream reports activity through the result.
    pub fn established(&mut self, now: Instant) -> Arc<Activity> {
        let activity = Arc::new(Activity::new(self.gate.epoch, now));
        let mut s = self.gate.lock();
        s.established
            .insert(self.id, (self.source, activity.clone()));
        self.established = true;
        activity
    }
}

/// Held while the handshake runs. `evicted` fires if a newer connection took its place.
#[derive(Debug)]
pub struct HandshakeTicket {
    gate: Arc<Gate>,
    id: u64,
    evicted: Arc<Notify>,
}

impl HandshakeTicket {
    /// Resolves when this handshake was evicted to make room for a newer one.
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

impl Gate {
    pub fn new(limits: GateLimits, now: Instant) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            epoch: now,
            state: Mutex::new(State {
                connections: 0,
                bucket: Bucket::full(limits.handshake_rate, now),
                sources: HashMap::new(),
                handshakes: BTreeMap::new(),
                established: HashMap::new(),
                next: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section below updates counts together before it can panic (it cannot):
        // a poisoned lock still holds consistent counts.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection from `ip` at `now`, or says why it must be closed at once.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<(ConnectionTicket, HandshakeTicket), Refusal> {
        let l = &self.limits;
        let source = Source::of(ip);
        let mut guard = self.lock();
        let s = &mut *guard;
        if s.connections >= l.max_connections && !s.evict_idlest(now, self.epoch) {
            return Err(Refusal::TooManyConnections);
        }
        // Forget idle sources whose buckets are full again: they carry no state worth keeping.
        // Bounded by the connections (each counted source holds one) plus what refills within a burst.
        if s.sources.len() >= 2 * l.max_connections {
            s.sources.retain(|_, st| {
                st.bucket.refill(l.handshake_rate_per_source, now);
                st.connections > 0 || st.bucket.tokens < l.handshake_rate_per_source.burst
            });
            if s.sources.len() >= 2 * l.max_connections {
                s.sources.retain(|_, st| st.connections > 0);
            }
        }
        s.bucket.refill(l.handshake_rate, now);
        let total_tokens = s.bucket.tokens;
        let st = s.sources.entry(source).or_insert(SourceState {
            connections: 0,
            handshakes: 0,
            bucket: Bucket::full(l.handshake_rate_per_source, now),
        });
        st.bucket.refill(l.handshake_rate_per_source, now);
        if st.connections >= l.max_connections_per_source {
            return Err(Refusal::TooManyConnectionsFromSource);
        }
        if st.handshakes >= l.max_handshakes_per_source {
            return Err(Refusal::TooManyHandshakesFromSource);
        }
        if st.bucket.tokens < 1.0 {
            return Err(Refusal::HandshakeRateFromSource);
        }
        if total_tokens < 1.0 {
            return Err(Refusal::HandshakeRate);
        }
        st.bucket.tokens -= 1.0;
        st.connections += 1;
        st.handshakes += 1;
        s.bucket.tokens -= 1.0;
        s.connections += 1;
        if s.handshakes.len() >= l.max_handshakes {
            s.evict_handshake();
        }
        let id = s.next;
        s.next += 1;
        let evicted = Arc::new(Notify::new());
        s.handshakes.insert(id, (source, evicted.clone()));
        drop(guard);
        Ok((
            ConnectionTicket {
                gate: self.clone(),
                source,
                id,
                established: false,
            },
            HandshakeTicket {
                gate: self.clone(),
                id,
                evicted,
            },
        ))
    }

    /// Connections open (handshaking or established) and handshakes in flight.
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        let s = self.lock();
        (s.connections, s.handshakes.len())
    }
}

impl Drop for HandshakeTicket {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        // Absent if it was evicted: the eviction already released its slot.
        if let Some((source, _)) = s.handshakes.remove(&self.id)
            && let Some(st) = s.sources.get_mut(&source)
        {
            st.handshakes = st.handshakes.saturating_sub(1);
        }
    }
}

impl Drop for ConnectionTicket {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        // An established connection absent from the table was evicted, which released it already.
        if !self.established || s.established.remove(&self.id).is_some() {
            s.release_connection(self.source);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    fn limits() -> GateLimits {
        GateLimits {
            max_connections: 6,
            max_connections_per_source: 3,
            max_handshakes: 4,
            max_handshakes_per_source: 2,
            handshake_rate: Rate {
                per_second: 10.0,
                burst: 100.0,
            },
            handshake_rate_per_source: Rate {
                per_second: 1.0,
                burst: 4.0,
            },
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn a_source_gets_its_handshakes_and_connections_and_no_more() {
        let t0 = Instant::now();
        let g = Gate::new(limits(), t0);
        let (c1, h1) = g.admit(ip(1), t0).unwrap();
        let (_c2, _h2) = g.admit(ip(1), t0).unwrap();
        assert_eq!(
            g.admit(ip(1), t0).unwrap_err(),
            Refusal::TooManyHandshakesFromSource
        );
        // Another source is not affected.
        let (_c3, _h3) = g.admit(ip(2), t0).unwrap();
        // A finished handshake frees its slot; the connection still counts.
        drop(h1);
        let (_c4, h4) = g.admit(ip(1), t0).unwrap();
        drop(h4);
        assert_eq!(
            g.admit(ip(1), t0).unwrap_err(),
            Refusal::TooManyConnectionsFromSource
        );
        drop(c1);
        assert_eq!(g.counts(), (3, 2));
        let (_c6, h6) = g.admit(ip(1), t0).unwrap();
        drop(h6);
        drop(_c6);
        // The source spent its burst of 4 handshakes.
        assert_eq!(
            g.admit(ip(1), t0).unwrap_err(),
            Refusal::HandshakeRateFromSource
        );
        let (_c5, _h5) = g.admit(ip(1), t0 + Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn the_busiest_sources_oldest_handshake_is_evicted_when_all_are_taken() {
        let t0 = Instant::now();
        let g = Gate::new(limits(), t0);
        // Source 1 first, then two from source 2, then source 3 (4 in flight at most).
        let held: Vec<_> = [1, 2, 2, 3]
            .iter()
            .map(|i| g.admit(ip(*i), t0).unwrap())
            .collect();
        assert_eq!(g.counts(), (4, 4));
        let (_c, _h) = g.admit(ip(9), t0).unwrap();
        assert_eq!(g.counts(), (5, 4), "the newest got a slot");
        // The oldest of the busiest source (2) was told to go, not source 1's older one.
        let told: Vec<bool> = held.iter().map(|(_, h)| futures_now(h.evicted())).collect();
        assert_eq!(told, [false, true, false, false]);
        // Its drop does not release a second slot.
        drop(held);
        assert_eq!(g.counts(), (1, 1));
    }

    #[test]
    fn total_connections_and_the_total_rate_are_bounded() {
        let t0 = Instant::now();
        let mut l = limits();
        l.handshake_rate.burst = 7.0;
        let g = Gate::new(l, t0);
        let mut held = Vec::new();
        for i in 0..6 {
            let (c, h) = g.admit(ip(i), t0).unwrap();
            drop(h);
            held.push(c);
        }
        // Still handshaking (never established): none can be evicted.
        assert_eq!(g.admit(ip(7), t0).unwrap_err(), Refusal::TooManyConnections);
        held.pop();
        let (c, h) = g.admit(ip(8), t0).unwrap();
        drop((c, h));
        assert_eq!(g.admit(ip(9), t0).unwrap_err(), Refusal::HandshakeRate);
    }

    #[test]
    fn the_idlest_established_connection_makes_room_for_a_new_one() {
        let t0 = Instant::now();
        let g = Gate::new(limits(), t0);
        let mut held = Vec::new();
        for i in 0..6 {
            let (mut c, h) = g.admit(ip(i), t0).unwrap();
            drop(h);
            let activity = c.established(t0);
            held.push((c, activity));
        }
        let t1 = t0 + Duration::from_millis(500);
        // All are busy (active within MIN_IDLE_TO_EVICT): the new one is refused.
        assert_eq!(g.admit(ip(9), t1).unwrap_err(), Refusal::TooManyConnections);
        let t2 = t0 + Duration::from_secs(3);
        for (i, (_, a)) in held.iter().enumerate() {
            if i != 2 {
                a.moved(t2);
            }
        }
        let (_c, _h) = g.admit(ip(9), t2).unwrap();
        let waker = std::task::Waker::noop();
        let evicted: Vec<bool> = held.iter().map(|(_, a)| a.evicted(waker)).collect();
        assert_eq!(evicted, [false, false, true, false, false, false]);
        drop(held);
        assert_eq!(g.counts(), (1, 1), "the evicted one was not released twice");
    }

    #[test]
    fn ipv6_sources_count_by_64_prefix_and_mapped_ipv4_as_ipv4() {
        let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1));
        let b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0xffff, 1, 2, 3));
        let c = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(Source::of(mapped), Source::of(ip(1)));
    }

    #[test]
    fn forgotten_sources_keep_the_table_bounded() {
        let t0 = Instant::now();
        let g = Gate::new(limits(), t0);
        for i in 0..=255u8 {
            for j in 0..4u8 {
                let _ = g.admit(IpAddr::V4(Ipv4Addr::new(10, 1, i, j)), t0);
            }
        }
        assert!(g.lock().sources.len() <= 2 * limits().max_connections);
        assert_eq!(g.counts(), (0, 0));
    }

    /// Whether `f` is ready at once (a Notify with a stored permit is).
    fn futures_now(f: impl std::future::Future<Output = ()>) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(10), f)
                .await
                .is_ok()
        })
    }
}
