//! The certificates of the keys that sign this guest's reports, found once per chip, TCB and key
//! kind, in the background.
//!
//! Owns [`Signers`]: a small book of signing keys ([`SignerKey`]) and what is known of each
//! ([`Slot`]): the certificates, a lookup in progress, or a failure and when to try again. The
//! decisions are pure functions of the book and the time ([`Book::decide`], [`Book::finish`]), so
//! they are tested without threads. A lookup that may touch the disk or the network (the cache,
//! AMD's KDS, the operator's directory) runs on a thread of its own, one per key however many
//! handshakes ask (single-flight), never while a lock is held and never on an async runtime's
//! worker; the caller gets an answer at once. It must never block a caller on a lookup (except
//! [`Signers::wait`], for the launch) and never hold the book's lock while looking.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::report::{Report, Tcb};
use crate::snp::reported_product;
use crate::vcek::{HostCertificates, VcekResolver};

/// The most keys remembered: a host that cycles the reported TCB cannot grow the book.
const MAX_KEYS: usize = 8;

/// The key that signed a report, as far as its certificate depends on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SignerKey {
    signing_key: u8,
    chip_id: [u8; 64],
    reported_tcb: u64,
}

impl SignerKey {
    pub(super) fn of(report: &Report) -> Self {
        Self {
            signing_key: report.signing_key(),
            chip_id: *report.chip_id(),
            reported_tcb: report.reported_tcb(),
        }
    }
}

/// For messages: the chip's first bytes and the TCB (public values).
impl std::fmt::Display for SignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chip {}… at reported TCB {:#018x}",
            hex::encode(&self.chip_id[..8]),
            self.reported_tcb
        )
    }
}

/// What is known of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Slot {
    /// Its certificates, signer first.
    Known(Vec<Vec<u8>>),
    /// A lookup is running, since then, after this many failed ones in a row.
    Looking { since: Instant, failures: u32 },
    /// The last lookup failed; the next may start at `retry_at`.
    Failed {
        why: String,
        retry_at: Instant,
        failures: u32,
    },
}

/// What a caller gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    /// The certificates.
    Ready(Vec<Vec<u8>>),
    /// The caller starts the lookup (the slot now says so); until it ends, others wait or fail.
    Start,
    /// A lookup is running.
    Pending { since: Instant },
    /// The last lookup failed, and the next may not start before `retry_at`.
    Failed { why: String, retry_at: Instant },
    /// Every slot is busy looking: refuse rather than grow.
    Full,
}

/// How long a failed lookup is not repeated: `first` after the first failure, doubled after each
/// further one, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackoff {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for RetryBackoff {
    /// 15 s, doubling up to 10 min.
    fn default() -> Self {
        Self {
            first: Duration::from_secs(15),
            max: Duration::from_secs(600),
        }
    }
}

impl RetryBackoff {
    fn after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.first.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// The keys and their slots, oldest first.
#[derive(Debug, Default)]
pub(super) struct Book {
    slots: Vec<(SignerKey, Slot)>,
}

impl Book {
    /// What a caller for `key` gets at `now`; on [`Decision::Start`] the slot says `Looking`.
    pub(super) fn decide(&mut self, key: &SignerKey, now: Instant) -> Decision {
        let slot = self.slots.iter_mut().find(|(k, _)| k == key);
        match slot {
            Some((_, Slot::Known(certificates))) => Decision::Ready(certificates.clone()),
            Some((_, Slot::Looking { since, .. })) => Decision::Pending { since: *since },
            Some((_, Slot::Failed { why, retry_at, .. })) if now < *retry_at => Decision::Failed {
                why: why.clone(),
                retry_at: *retry_at,
            },
            Some((_, slot)) => {
                let failures = match slot {
                    Slot::Failed { failures, .. } => *failures,
                    _ => 0,
                };
                *slot = Slot::Looking {
                    since: now,
                    failures,
                };
                Decision::Start
            }
            None => {
                if self.slots.len() >= MAX_KEYS {
                    let Some(oldest) = self
                        .slots
                        .iter()
                        .position(|(_, s)| !matches!(s, Slot::Looking { .. }))
                    else {
                        return Decision::Full;
                    };
                    self.slots.remove(oldest);
                }
                self.slots.push((
                    key.clone(),
                    Slot::Looking {
                        since: now,
                        failures: 0,
                    },
                ));
                Decision::Start
            }
        }
    }

    /// Records the end of `key`'s lookup at `now`.
    pub(super) fn finish(
        &mut self,
        key: &SignerKey,
        outcome: Result<Vec<Vec<u8>>, String>,
        now: Instant,
        backoff: RetryBackoff,
    ) {
        let current = self.slots.iter_mut().find(|(k, _)| k == key);
        let before = match &current {
            Some((_, Slot::Looking { failures, .. })) => *failures,
            _ => 0,
        };
        let slot = match outcome {
            Ok(certificates) => Slot::Known(certificates),
            Err(why) => {
                let failures = before.saturating_add(1);
                Slot::Failed {
                    why,
                    retry_at: now + backoff.after(failures),
                    failures,
                }
            }
        };
        match current {
            Some((_, s)) => *s = slot,
            None => self.slots.push((key.clone(), slot)),
        }
    }

    /// Whether `key` is being looked up.
    fn looking(&self, key: &SignerKey) -> bool {
        self.slots
            .iter()
            .any(|(k, s)| k == key && matches!(s, Slot::Looking { .. }))
    }
}

/// Why no certificates can be given now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NotYet {
    /// A lookup is running; [`Signers::wait`] waits for it.
    Pending(String),
    /// Nothing to wait for.
    Failed(String),
}

/// The book, its lock, and the lookups it starts.
#[derive(Debug)]
pub(super) struct Signers {
    resolver: VcekResolver,
    backoff: RetryBackoff,
    book: Mutex<Book>,
    changed: Condvar,
}

impl Signers {
    pub(super) fn new(resolver: VcekResolver, backoff: RetryBackoff) -> Self {
        Self {
            resolver,
            backoff,
            book: Mutex::new(Book::default()),
            changed: Condvar::new(),
        }
    }

    pub(super) fn resolver(&self) -> &VcekResolver {
        &self.resolver
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // The book is only ever changed by whole assignments: a panic elsewhere cannot leave it
        // half-written, so a poisoned lock's content is still sound.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The certificates for `report`'s signing key, or why not now. On a miss, the host's
    /// `table` is tried at once (no I/O); else a lookup of the other sources starts on a thread
    /// of its own and the caller is told to come back.
    pub(super) fn certificates(
        self: &Arc<Self>,
        report: &Report,
        table: Option<HostCertificates>,
        now: SystemTime,
    ) -> Result<Vec<Vec<u8>>, NotYet> {
        let key = SignerKey::of(report);
        let decision = self.book().decide(&key, Instant::now());
        match decision {
            Decision::Ready(certificates) => Ok(certificates),
            Decision::Pending { since } => Err(pending(&key, report, since)),
            Decision::Failed { why, retry_at } => Err(NotYet::Failed(format!(
                "{why} (the next lookup for {key} starts in {} s, on a handshake after that)",
                retry_at
                    .saturating_duration_since(Instant::now())
                    .as_secs()
                    .max(1)
            ))),
            Decision::Full => Err(NotYet::Failed(format!(
                "{MAX_KEYS} certificate lookups are running already (the host changes the reported \
                 TCB often?); no lookup for {key} starts now"
            ))),
            Decision::Start => {
                if let Some(table) = &table
                    && let Some(found) = self.resolver.from_table(report, table, now)
                {
                    self.finish(&key, Ok(found.certificates.clone()));
                    return Ok(found.certificates);
                }
                self.start_lookup(key.clone(), report.clone(), table, now);
                Err(pending(&key, report, Instant::now()))
            }
        }
    }

    fn start_lookup(
        self: &Arc<Self>,
        key: SignerKey,
        report: Report,
        table: Option<HostCertificates>,
        now: SystemTime,
    ) {
        let signers = Arc::clone(self);
        let thread_key = key.clone();
        let spawned = std::thread::Builder::new()
            .name("vcek-lookup".into())
            .spawn(move || {
                let outcome = signers
                    .resolver
                    .resolve(&report, table.as_ref(), now)
                    .map(|found| found.certificates)
                    .map_err(|e| e.to_string());
                if let Err(why) = &outcome {
                    tracing::warn!(key = %thread_key, %why, "no certificate for this guest's report signing key");
                }
                signers.finish(&thread_key, outcome);
            });
        if let Err(e) = spawned {
            self.finish(
                &key,
                Err(format!("cannot start the certificate lookup thread: {e}")),
            );
        }
    }

    fn finish(&self, key: &SignerKey, outcome: Result<Vec<Vec<u8>>, String>) {
        self.book()
            .finish(key, outcome, Instant::now(), self.backoff);
        self.changed.notify_all();
    }

    /// Waits until `report`'s key is no longer being looked up, or until `deadline`; whether it
    /// ended in time.
    pub(super) fn wait(&self, report: &Report, deadline: Instant) -> bool {
        let key = SignerKey::of(report);
        let mut book = self.book();
        while book.looking(&key) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            book = match self.changed.wait_timeout(book, left) {
                Ok((book, _)) => book,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

fn pending(key: &SignerKey, report: &Report, since: Instant) -> NotYet {
    let tcb = match reported_product(report) {
        Ok(Some(product)) => format!("{:?}", Tcb::decode(report.reported_tcb(), product)),
        _ => format!("{:#018x}", report.reported_tcb()),
    };
    NotYet::Pending(format!(
        "no evidence yet: the certificate of the key that signs this guest's reports ({key}, \
         TCB {tcb}) is being looked up in the background (for {} s so far; the reported TCB \
         changed, or the process just started); this request is refused at once rather than held; \
         retry shortly",
        since.elapsed().as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tcb: u64) -> SignerKey {
        SignerKey {
            signing_key: 0,
            chip_id: [7; 64],
            reported_tcb: tcb,
        }
    }

    const BACKOFF: RetryBackoff = RetryBackoff {
        first: Duration::from_secs(10),
        max: Duration::from_secs(40),
    };

    #[test]
    fn one_lookup_per_key_however_many_ask() {
        let mut book = Book::default();
        let t0 = Instant::now();
        assert_eq!(book.decide(&key(1), t0), Decision::Start);
        for _ in 0..50 {
            assert_eq!(book.decide(&key(1), t0), Decision::Pending { since: t0 });
        }
        assert_eq!(book.decide(&key(2), t0), Decision::Start, "another TCB");
        book.finish(&key(1), Ok(vec![b"vcek".to_vec()]), t0, BACKOFF);
        assert_eq!(
            book.decide(&key(1), t0),
            Decision::Ready(vec![b"vcek".to_vec()])
        );
    }

    #[test]
    fn a_failure_is_remembered_and_retried_with_a_doubling_backoff() {
        let mut book = Book::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let retry_at = |book: &mut Book, at| match book.decide(&key(1), at) {
            Decision::Failed { why, retry_at } => {
                assert_eq!(why, "KDS down");
                retry_at
            }
            other => panic!("{other:?}"),
        };
        // Fails at 0, 10 and 30: waits of 10, 20, then 40 s (the cap), twice.
        let mut at = t0;
        for wait in [10, 20, 40, 40] {
            assert_eq!(book.decide(&key(1), at), Decision::Start);
            book.finish(&key(1), Err("KDS down".into()), at, BACKOFF);
            assert_eq!(retry_at(&mut book, at + s(wait - 1)), at + s(wait));
            at += s(wait);
        }
        // A success ends the failures.
        assert_eq!(book.decide(&key(1), at), Decision::Start);
        book.finish(&key(1), Ok(vec![]), at, BACKOFF);
        assert_eq!(book.decide(&key(1), at), Decision::Ready(vec![]));
    }

    #[test]
    fn the_book_stays_small_and_refuses_when_every_slot_is_looking() {
        let mut book = Book::default();
        let t0 = Instant::now();
        for tcb in 0..MAX_KEYS as u64 {
            assert_eq!(book.decide(&key(tcb), t0), Decision::Start);
        }
        assert_eq!(book.decide(&key(100), t0), Decision::Full);
        book.finish(&key(0), Ok(vec![]), t0, BACKOFF);
        assert_eq!(
            book.decide(&key(100), t0),
            Decision::Start,
            "the oldest finished slot makes room"
        );
        assert_eq!(book.slots.len(), MAX_KEYS);
        // Key 0 was forgotten: it needs a slot again, and every slot is looking.
        assert_eq!(book.decide(&key(0), t0), Decision::Full);
        book.finish(&key(1), Err("down".into()), t0, BACKOFF);
        assert_eq!(book.decide(&key(0), t0), Decision::Start);
    }
}
