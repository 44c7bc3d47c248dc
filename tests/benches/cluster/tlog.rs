//! The transparency log (issue 13): proof sizes and verification times for histories of 10, 1,000 and
//! 100,000 transitions, beside the full audit of the same history. Proofs grow with log2(n); the full
//! audit grows with n.
//!
//! The trees are built with the library over transition hashes (a replica builds the same tree from its
//! verified history); the proofs are what GetConsistencyProof and GetInclusionProof answer, and the
//! verification is what `concord verify --checkpoint-only` does: one checkpoint signature, one
//! consistency proof, one inclusion proof. The full audit time is the audit rows' measured time per
//! transition times n, so the comparison is labelled as such for lengths the audit rows did not run.

use std::time::{Duration, Instant};

use concord_coordinator::history::merkle::{MerkleTree, verify_consistency, verify_inclusion};
use concord_coordinator::history::note::{Checkpoint, SignedNote, origin_for};
use concord_tests::Hash;

use crate::audit::Audited;
use crate::table::{Row, Verdict};

pub struct Measured {
    pub transitions: u64,
    pub consistency_hashes: usize,
    pub inclusion_hashes: usize,
    /// Checkpoint signature + consistency proof (from n/2) + inclusion proof (of the last transition).
    pub verify: Duration,
    /// The replica's work for the two proofs (tree already built).
    pub prove: Duration,
}

pub fn run(sizes: &[u64], runs: u32) -> Vec<Measured> {
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let origin = origin_for(&[1; 32]);
    let leaves: Vec<Hash> = (0..sizes.iter().copied().max().unwrap_or(0))
        .map(|i| Hash::of(&i.to_be_bytes()))
        .collect();
    let tree = MerkleTree::from_leaves(&leaves);
    sizes
        .iter()
        .map(|&n| {
            let old = (n / 2).max(1);
            let note = Checkpoint {
                origin: origin.clone(),
                size: n,
                root: tree.root_at(n).unwrap_or_default(),
            }
            .sign(&key)
            .encode();
            let old_root = tree.root_at(old).unwrap_or_default();
            let start = Instant::now();
            let mut proofs = (Vec::new(), Vec::new());
            for _ in 0..runs {
                proofs = (
                    tree.consistency_proof(old, n).unwrap_or_default(),
                    tree.inclusion_proof(n - 1, n).unwrap_or_default(),
                );
            }
            let prove = start.elapsed() / runs;
            let start = Instant::now();
            for _ in 0..runs {
                let cp = SignedNote::parse(&note)
                    .and_then(|s| s.verify_checkpoint(&origin, &key.verifying_key()))
                    .expect("checkpoint verifies");
                verify_consistency(old, n, &old_root, &cp.root, &proofs.0).expect("consistent");
                verify_inclusion(&leaves[n as usize - 1], n - 1, n, &proofs.1, &cp.root)
                    .expect("included");
            }
            Measured {
                transitions: n,
                consistency_hashes: proofs.0.len(),
                inclusion_hashes: proofs.1.len(),
                verify: start.elapsed() / runs,
                prove,
            }
        })
        .collect()
}

fn us(d: Duration) -> String {
    format!("{:.0} us", d.as_secs_f64() * 1e6)
}

pub fn rows(measured: &[Measured], audited: Option<&[Audited]>) -> Vec<Row> {
    // The full audit's cost per transition, from the longest history the audit rows measured.
    let per = audited
        .and_then(|a| a.last())
        .map(|a| (a.took.as_secs_f64() / a.transitions as f64, a.transitions));
    let mut rows: Vec<Row> = measured
        .iter()
        .map(|m| {
            let audit = match per {
                Some((s, from)) => format!(
                    "full audit ~{:.1} ms (n x {:.0} us, measured at {from})",
                    s * m.transitions as f64 * 1e3,
                    s * 1e6
                ),
                None => "full audit: not measured".into(),
            };
            Row::new(
                format!(
                    "log proofs, {} transitions: consistency + inclusion hashes, verify (prove)",
                    m.transitions
                ),
                format!(
                    "{} + {} ({} B), {} ({})",
                    m.consistency_hashes,
                    m.inclusion_hashes,
                    32 * (m.consistency_hashes + m.inclusion_hashes),
                    us(m.verify),
                    us(m.prove)
                ),
                audit,
                "O(log n) hashes",
                Verdict::of(
                    (m.consistency_hashes + m.inclusion_hashes) as f64
                        <= 2.0 * ((m.transitions as f64).log2().ceil() + 1.0),
                ),
            )
        })
        .collect();
    if let (Some(first), Some(last)) = (measured.first(), measured.last()) {
        rows.push(Row::new(
            format!(
                "log proof verify time, {} vs {} transitions",
                first.transitions, last.transitions
            ),
            format!("{} vs {}", us(first.verify), us(last.verify)),
            "-",
            "< 1 ms at 100,000",
            Verdict::of(last.verify < Duration::from_millis(1)),
        ));
    }
    rows
}
