//! Batched evidence (binding v3, docs/PROTOCOL.md §8): one report for every handshake that waits
//! while the previous report is being made, its report data committing to all their bindings in a
//! Merkle tree, each certificate carrying the proof for its own binding ([`BATCH_OID`]).
//!
//! This module owns the tree's hashing and the proof's encoding (pure, no I/O), and the [`Batcher`]
//! that groups the server's requests so that the number of evidence-issuer calls (on SEV-SNP, calls
//! to the shared secure processor) no longer grows with the number of handshakes: at most one call
//! is in flight per batcher, and every binding that arrives meanwhile goes into the next one. It must
//! never let a proof stand for a binding other than the one it was computed for: the relying side
//! recomputes the root from the binding *it* expects (its own nonce), so a proof for another nonce,
//! a truncated or extended proof, or a root the report does not carry fails `ReportDataMismatch`.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha512};
use tokio::sync::oneshot;

use crate::error::AttestationError;
use crate::evidence::Evidence;
use crate::issuer::EvidenceIssuer;

/// OID of the certificate extension that carries a [`BatchProof`] (raw bytes, see
/// [`BatchProof::to_bytes`]). PROVISIONAL, like [`super::EVIDENCE_OID`].
pub const BATCH_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 58270, 1, 3];

/// The label before the tree's depth and root in the report data (binding v3).
pub const BATCH_LABEL: &[u8] = b"concord/v1/batch";

/// The deepest tree: 2^8 = 256 bindings per report.
pub const MAX_BATCH_DEPTH: usize = 8;

/// The most bindings one report commits to.
pub const MAX_BATCH: usize = 1 << MAX_BATCH_DEPTH;

/// How long a batcher that was idle waits for more handshakes before it asks for a report: what lets
/// handshakes that arrive within a few milliseconds of each other share one even when reports are
/// fast (the simulated platform's take about a millisecond of CPU each). Later batches need no
/// wait: the handshakes that arrived during the previous report are already there.
pub const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(2);

const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;
const PAD_PREFIX: u8 = 0x02;

/// `SHA-512(0x00 || binding)`: a leaf of the tree.
fn leaf(binding: &[u8; 64]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update([LEAF_PREFIX]);
    h.update(binding);
    h.finalize().into()
}

/// `SHA-512(0x01 || left || right)`: an inner node.
fn node(left: &[u8; 64], right: &[u8; 64]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// `SHA-512(0x02)`: the leaves that fill a tree up to a power of two; no binding hashes to it.
fn pad() -> [u8; 64] {
    Sha512::digest([PAD_PREFIX]).into()
}

/// The report data of a batch: `SHA-512("concord/v1/batch" || depth (one byte) || root)`.
pub fn batch_report_data(depth: usize, root: &[u8; 64]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(BATCH_LABEL);
    // At most MAX_BATCH_DEPTH (checked by whoever built the proof or the tree).
    h.update([depth as u8]);
    h.update(root);
    h.finalize().into()
}

/// Where one binding sits in a batch: its leaf's index and the siblings from the leaf up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchProof {
    index: u32,
    siblings: Vec<[u8; 64]>,
}

impl BatchProof {
    /// The encoding in the certificate: the index as 4 bytes big-endian, then the siblings (64 bytes
    /// each, from the leaf's up to the root's children). The depth is the number of siblings.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 64 * self.siblings.len());
        out.extend_from_slice(&self.index.to_be_bytes());
        for s in &self.siblings {
            out.extend_from_slice(s);
        }
        out
    }

    /// Parses [`Self::to_bytes`]: 4 + 64·d bytes with 1 <= d <= [`MAX_BATCH_DEPTH`] and an index
    /// below 2^d; anything else is `None`.
    pub fn from_bytes(bytes: &[u8]) -> Option<BatchProof> {
        let (index, rest) = bytes.split_first_chunk::<4>()?;
        let index = u32::from_be_bytes(*index);
        if rest.is_empty() || rest.len() % 64 != 0 || rest.len() / 64 > MAX_BATCH_DEPTH {
            return None;
        }
        let siblings: Vec<[u8; 64]> = rest
            .chunks_exact(64)
            .filter_map(|c| <[u8; 64]>::try_from(c).ok())
            .collect();
        if u64::from(index) >= 1u64 << siblings.len() {
            return None;
        }
        Some(BatchProof { index, siblings })
    }

    /// The report data a batch containing `binding` at this proof's place must carry.
    pub fn report_data(&self, binding: &[u8; 64]) -> [u8; 64] {
        let mut h = leaf(binding);
        for (level, sibling) in self.siblings.iter().enumerate() {
            h = if (self.index >> level) & 1 == 0 {
                node(&h, sibling)
            } else {
                node(sibling, &h)
            };
        }
        batch_report_data(self.siblings.len(), &h)
    }
}

/// The report data of a batch of `bindings` (1 to [`MAX_BATCH`]) and each one's proof, in order.
pub fn build_batch(bindings: &[[u8; 64]]) -> ([u8; 64], Vec<BatchProof>) {
    let depth = bindings.len().max(2).next_power_of_two().trailing_zeros() as usize;
    let mut level: Vec<[u8; 64]> = bindings.iter().map(leaf).collect();
    level.resize(1 << depth, pad());
    let mut proofs: Vec<BatchProof> = (0..bindings.len())
        .map(|i| BatchProof {
            index: i as u32,
            siblings: Vec::with_capacity(depth),
        })
        .collect();
    for _ in 0..depth {
        for (i, proof) in proofs.iter_mut().enumerate() {
            let position = i >> proof.siblings.len();
            proof.siblings.push(level[position ^ 1]);
        }
        level = level.chunks_exact(2).map(|p| node(&p[0], &p[1])).collect();
    }
    (batch_report_data(depth, &level[0]), proofs)
}

/// What a handshake gets: evidence, and the proof of its binding when the evidence is a batch's.
pub(crate) type Batched = (Evidence, Option<BatchProof>);

type Reply = oneshot::Sender<Result<Batched, AttestationError>>;

/// Groups the evidence requests of concurrent handshakes: one issuer call at a time, for every
/// binding that arrived since the previous one began (at most [`MAX_BATCH`]). A request alone gets
/// plain binding v2 evidence, which verifiers from before batching accept too.
#[derive(Debug)]
pub(crate) struct Batcher {
    issuer: Arc<dyn EvidenceIssuer>,
    /// `false`: one issuer call per handshake (binding v2 always), as before batching.
    batching: bool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    waiting: Vec<([u8; 64], Reply)>,
    /// Whether a blocking task is draining `waiting`.
    draining: bool,
}

impl Batcher {
    pub(crate) fn new(issuer: Arc<dyn EvidenceIssuer>, batching: bool) -> Batcher {
        Batcher {
            issuer,
            batching,
            state: Mutex::default(),
        }
    }

    /// The issuer this batcher calls.
    pub(crate) fn issuer(&self) -> Arc<dyn EvidenceIssuer> {
        self.issuer.clone()
    }

    /// Evidence for `binding`, from the next batch. The issuer runs off the runtime's workers.
    pub(crate) async fn evidence(
        self: &Arc<Self>,
        binding: [u8; 64],
    ) -> Result<Batched, AttestationError> {
        let failed = |e: String| AttestationError::Issuer(format!("the evidence task failed: {e}"));
        // Both modes queue: one issuer call at a time, and a request whose handshake gave up
        // (its deadline) while it waited costs no call (`drain`). Unbatched, each call serves one.
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.lock();
            state.waiting.push((binding, reply));
            !std::mem::replace(&mut state.draining, true)
        };
        if start {
            let this = self.clone();
            drop(tokio::task::spawn_blocking(move || this.drain()));
        }
        answer
            .await
            .map_err(|_| failed("it ended without an answer".into()))?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a queue and a flag, each updated in one step: nothing is half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Issues batches until nobody waits. Requests whose handshake gave up are dropped first: under
    /// a flood of handshakes that time out, the issuer (on SEV-SNP the secure processor, one call at
    /// a time) would otherwise spend itself on reports nobody waits for, and the handshakes that
    /// could still finish would time out behind them.
    fn drain(&self) {
        if self.batching {
            std::thread::sleep(BATCH_WINDOW);
        }
        let most = if self.batching { MAX_BATCH } else { 1 };
        loop {
            let batch: Vec<([u8; 64], Reply)> = {
                let mut state = self.lock();
                state.waiting.retain(|(_, reply)| !reply.is_closed());
                if state.waiting.is_empty() {
                    state.draining = false;
                    return;
                }
                let n = state.waiting.len().min(most);
                state.waiting.drain(..n).collect()
            };
            self.issue(batch);
        }
    }

    fn issue(&self, batch: Vec<([u8; 64], Reply)>) {
        let (bindings, replies): (Vec<[u8; 64]>, Vec<Reply>) = batch.into_iter().unzip();
        let (report_data, proofs) = match bindings.as_slice() {
            [one] => (*one, vec![None]),
            _ => {
                let (report_data, proofs) = build_batch(&bindings);
                (report_data, proofs.into_iter().map(Some).collect())
            }
        };
        // A panicking issuer must not leave the batcher draining forever: it fails this batch.
        let evidence =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.issuer.issue(&report_data)))
                .unwrap_or_else(|_| {
                    Err(AttestationError::Issuer(
                        "the evidence issuer panicked".into(),
                    ))
                });
        for (reply, proof) in replies.into_iter().zip(proofs) {
            // A handshake that gave up (its deadline) no longer listens: nothing to do.
            let _ = reply.send(evidence.clone().map(|e| (e, proof)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bindings(n: usize) -> Vec<[u8; 64]> {
        (0..n).map(|i| [i as u8; 64]).collect()
    }

    #[test]
    fn every_proof_leads_to_the_batch_report_data_and_only_for_its_binding() {
        for n in [2, 3, 4, 5, 8, 17, MAX_BATCH] {
            let b = bindings(n);
            let (report_data, proofs) = build_batch(&b);
            assert_eq!(proofs.len(), n);
            for (i, proof) in proofs.iter().enumerate() {
                assert_eq!(proof.report_data(&b[i]), report_data, "n={n} i={i}");
                let again = BatchProof::from_bytes(&proof.to_bytes()).unwrap();
                assert_eq!(&again, proof);
                // Another binding (another nonce), with this proof: another root.
                assert_ne!(proof.report_data(&b[(i + 1) % n]), report_data);
                let mut outsider = [0xEE; 64];
                outsider[0] = 0;
                assert_ne!(proof.report_data(&outsider), report_data);
            }
        }
    }

    #[test]
    fn truncated_extended_or_moved_proofs_do_not_lead_to_the_report_data() {
        let b = bindings(5);
        let (report_data, proofs) = build_batch(&b);
        let proof = &proofs[3];
        let mut truncated = proof.clone();
        truncated.siblings.pop();
        assert_ne!(truncated.report_data(&b[3]), report_data);
        let mut extended = proof.clone();
        extended.siblings.push([0; 64]);
        assert_ne!(extended.report_data(&b[3]), report_data);
        let mut moved = proof.clone();
        moved.index ^= 1;
        assert_ne!(moved.report_data(&b[3]), report_data);
        // An inner node presented as a binding: the leaf prefix differs.
        let mut from_inner = proof.clone();
        from_inner.siblings.remove(0);
        from_inner.index >>= 1;
        assert_ne!(from_inner.report_data(&leaf(&b[3])), report_data);
    }

    #[test]
    fn the_encoding_is_strict() {
        let (_, proofs) = build_batch(&bindings(3));
        let bytes = proofs[2].to_bytes();
        assert_eq!(bytes.len(), 4 + 2 * 64);
        assert_eq!(&bytes[..4], &[0, 0, 0, 2]);
        assert!(BatchProof::from_bytes(&bytes[..bytes.len() - 1]).is_none());
        assert!(BatchProof::from_bytes(&bytes[..4]).is_none(), "depth 0");
        assert!(BatchProof::from_bytes(&[]).is_none());
        let mut big_index = bytes.clone();
        big_index[3] = 4;
        assert!(BatchProof::from_bytes(&big_index).is_none());
        let too_deep = [vec![0; 4], vec![0; 64 * (MAX_BATCH_DEPTH + 1)]].concat();
        assert!(BatchProof::from_bytes(&too_deep).is_none());
        let deepest = [vec![0; 4], vec![0; 64 * MAX_BATCH_DEPTH]].concat();
        assert!(BatchProof::from_bytes(&deepest).is_some());
    }

    /// Golden value for third-party implementations (docs/PROTOCOL.md §8).
    #[test]
    fn golden_batch_of_three() {
        let (report_data, proofs) = build_batch(&[[0x11; 64], [0x22; 64], [0x33; 64]]);
        assert_eq!(proofs[2].report_data(&[0x33; 64]), report_data);
        assert_eq!(hex::encode(report_data), GOLDEN);
    }

    const GOLDEN: &str = "4058a8d0b7582640f89f230dae1106d087e643972e2e43441d9403c0db7062751a47d4c291cde855a17c89c1eb576aeb8bef20a89023e9126d2dea78b569ffc5";

    #[derive(Debug)]
    struct Counting(std::sync::atomic::AtomicUsize);

    impl EvidenceIssuer for Counting {
        fn platform(&self) -> crate::evidence::Platform {
            crate::evidence::Platform::Simulated
        }
        fn issue(&self, report_data: &[u8; 64]) -> Result<Evidence, AttestationError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(50));
            Ok(Evidence {
                platform: crate::evidence::Platform::Simulated,
                report: report_data.to_vec(),
                certificates: vec![],
                crls: vec![],
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_reports_each_bound_to_its_binding() {
        let issuer = Arc::new(Counting(Default::default()));
        let batcher = Arc::new(Batcher::new(issuer.clone(), true));
        let tasks: Vec<_> = bindings(100)
            .into_iter()
            .map(|b| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (b, batcher.evidence(b).await.unwrap()) })
            })
            .collect();
        for task in tasks {
            let (binding, (evidence, proof)) = task.await.unwrap();
            let expected = match proof {
                Some(p) => p.report_data(&binding),
                None => binding,
            };
            assert_eq!(evidence.report, expected.to_vec());
        }
        let calls = issuer.0.load(std::sync::atomic::Ordering::SeqCst);
        // One report at a time, 50 ms each, for requests that all arrive at once: a few reports,
        // not one per request (a loaded machine may spread the arrivals over a few of them).
        assert!(calls <= 10, "{calls} issuer calls for 100 handshakes");

        let unbatched = Arc::new(Batcher::new(issuer.clone(), false));
        let (evidence, proof) = unbatched.evidence([7; 64]).await.unwrap();
        assert_eq!((evidence.report, proof), ([7; 64].to_vec(), None));
    }

    /// A flood of handshakes that give up before their evidence comes (their deadline) must not keep
    /// the issuer busy with reports nobody waits for, in either mode. Before, one report per handshake
    /// ran one issuer call for every abandoned handshake (40 calls, 2 s of a one-at-a-time device).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_requests_cost_no_issuer_calls() {
        for batching in [false, true] {
            let issuer = Arc::new(Counting(Default::default()));
            let batcher = Arc::new(Batcher::new(issuer.clone(), batching));
            let tasks: Vec<_> = bindings(40)
                .into_iter()
                .map(|b| {
                    let batcher = batcher.clone();
                    tokio::spawn(async move {
                        // Each call takes 50 ms: all but the first few give up while waiting.
                        tokio::time::timeout(
                            std::time::Duration::from_millis(60),
                            batcher.evidence(b),
                        )
                        .await
                    })
                })
                .collect();
            for task in tasks {
                let _ = task.await.unwrap();
            }
            // Let the queue run dry, then a request that waits gets its evidence.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let calls = issuer.0.load(std::sync::atomic::Ordering::SeqCst);
            assert!(
                calls <= 6,
                "batching {batching}: {calls} issuer calls for 40 handshakes that gave up after 60 ms"
            );
            let (evidence, _) = batcher.evidence([9; 64]).await.unwrap();
            assert_eq!(evidence.report, [9; 64].to_vec());
        }
    }
}
