//! `ReadRounds`: linearizable reads on the leader share leadership confirmations.
//!
//! A linearizable read needs a read index: the leader's commit index, confirmed by a heartbeat round that
//! a quorum answered after the read arrived (openraft's `ensure_linearizable`). Each read ran a round of
//! its own, so a burst of reads (writers that lost a race re-read the latest transition before they
//! retry: three or more per committed write in the concurrent-writers benchmark) sent a burst of
//! heartbeats, which the followers' Raft cores handled between the appends that the winner's commit
//! waits for.
//!
//! Here one round runs at a time, and a read uses the result of a round that started after it arrived:
//! the round it finds under way started before it, so it waits for that one to end and then joins the
//! next, which every read that arrived meanwhile shares. Confirmation after arrival is all a read index
//! needs, so a shared round is as linearizable as a round of one's own (the read-index batching of etcd
//! and of the Raft thesis, section 6.4). A burst costs at most two rounds. A failed round's error is
//! shared the same way: when the quorum is gone, the reads queued behind one round fail with it, rather
//! than each waiting out a round of its own.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::Status;

/// The leader's read rounds: how many were started, and the outcome of the last one to finish.
#[derive(Debug, Default)]
pub struct ReadRounds {
    started: AtomicU64,
    /// Held while a round runs: (sequence number, outcome) of the last round that finished.
    last: tokio::sync::Mutex<Option<(u64, Result<u64, Status>)>>,
}

impl ReadRounds {
    /// The read index for a read that arrives now: from a round that started after now, run by this
    /// caller with `round` if none is under way, else the next one.
    pub async fn read_index<F, Fut>(&self, round: F) -> Result<u64, Status>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<u64, Status>>,
    {
        // Rounds numbered up to `arrival` started before this read arrived; later ones after it.
        let arrival = self.started.load(Ordering::SeqCst);
        let mut last = self.last.lock().await;
        if let Some((seq, outcome)) = last.as_ref()
            && *seq > arrival
        {
            return outcome.clone();
        }
        let seq = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        // Should this caller stop waiting, the lock is released with `last` unchanged: the next
        // caller runs a round of its own.
        let outcome = round().await;
        *last = Some((seq, outcome.clone()));
        outcome
    }

    /// How many rounds were started (for tests).
    #[cfg(test)]
    fn rounds(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use super::*;

    /// A round that takes `ms` and confirms `index`'s current value as of its start.
    async fn round(index: Arc<AtomicU64>, ms: u64) -> Result<u64, Status> {
        let at_start = index.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(at_start)
    }

    /// A read on its own task whose round takes `ms` and confirms `index`.
    fn spawn_read(
        rounds: &Arc<ReadRounds>,
        index: &Arc<AtomicU64>,
        ms: u64,
    ) -> tokio::task::JoinHandle<Result<u64, Status>> {
        let (rounds, index) = (rounds.clone(), index.clone());
        tokio::spawn(async move { rounds.read_index(|| round(index, ms)).await })
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_reads_shares_at_most_two_rounds() {
        let rounds = Arc::new(ReadRounds::default());
        let index = Arc::new(AtomicU64::new(7));
        let reads: Vec<_> = (0..20).map(|_| spawn_read(&rounds, &index, 10)).collect();
        for r in reads {
            assert_eq!(r.await.unwrap().unwrap(), 7);
        }
        assert!(rounds.rounds() <= 2, "{} rounds", rounds.rounds());
    }

    /// A read never takes the outcome of a round that started before it arrived: that round's index
    /// may predate a write acknowledged before the read (the linearizability the read index is for).
    #[tokio::test(start_paused = true)]
    async fn a_read_never_uses_a_round_that_started_before_it_arrived() {
        let rounds = Arc::new(ReadRounds::default());
        let index = Arc::new(AtomicU64::new(1));
        // A round starts and confirms index 1...
        let early = spawn_read(&rounds, &index, 10);
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(rounds.rounds(), 1);
        // ...then a write commits at index 2 and a read arrives: it must see 2, not the round under way.
        index.store(2, Ordering::SeqCst);
        let late = spawn_read(&rounds, &index, 10);
        assert_eq!(early.await.unwrap().unwrap(), 1);
        assert_eq!(late.await.unwrap().unwrap(), 2);
        assert_eq!(rounds.rounds(), 2);
        // A read after both runs a round of its own.
        index.store(3, Ordering::SeqCst);
        assert_eq!(
            rounds.read_index(|| round(index.clone(), 1)).await.unwrap(),
            3
        );
        assert_eq!(rounds.rounds(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_round_fails_the_reads_that_waited_for_it_and_the_next_read_tries_again() {
        let rounds = Arc::new(ReadRounds::default());
        let failing = || async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err::<u64, _>(Status::unavailable("no quorum"))
        };
        let first = {
            let rounds = rounds.clone();
            tokio::spawn(async move { rounds.read_index(failing).await })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        let queued: Vec<_> = (0..5)
            .map(|_| {
                let rounds = rounds.clone();
                tokio::spawn(async move { rounds.read_index(failing).await })
            })
            .collect();
        assert!(first.await.unwrap().is_err());
        for q in queued {
            assert_eq!(
                q.await.unwrap().unwrap_err().code(),
                tonic::Code::Unavailable
            );
        }
        assert_eq!(rounds.rounds(), 2);
        let index = Arc::new(AtomicU64::new(5));
        assert_eq!(rounds.read_index(|| round(index, 1)).await.unwrap(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_stops_waiting_leaves_the_next_one_to_run_the_round() {
        let rounds = Arc::new(ReadRounds::default());
        let index = Arc::new(AtomicU64::new(4));
        let gone = spawn_read(&rounds, &index, 1_000);
        tokio::time::sleep(Duration::from_millis(5)).await;
        gone.abort();
        let _ = gone.await;
        assert_eq!(rounds.read_index(|| round(index, 1)).await.unwrap(), 4);
        assert_eq!(rounds.rounds(), 2);
    }
}
