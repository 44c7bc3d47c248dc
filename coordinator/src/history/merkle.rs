//! `MerkleTree`: the RFC 9162 (RFC 6962) Merkle tree over the transition hashes, and the proof
//! verification algorithms of RFC 9162 section 2.1.3.2 and 2.1.4.2 (docs/PROTOCOL.md, "Transparency log").
//!
//! Leaf `i` is the transition hash of index `i`; `leaf_hash(h) = SHA-256(0x00 || h)`, an interior node
//! `SHA-256(0x01 || left || right)`. The tree keeps every node of every *perfect* subtree (level by level:
//! about two hashes per leaf), never the leaves' data, so a proof takes O(log n) stored nodes plus the
//! O(log n) right-edge subtrees it recomputes from them. It can always be rebuilt from the transition hashes
//! (it is derived data: never trusted from disk, never sent anywhere but as proofs). Pure: no I/O.

use sha2::{Digest, Sha256};

use crate::hash::Hash;

/// `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf.as_bytes());
    Hash(h.finalize().into())
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left.as_bytes());
    h.update(right.as_bytes());
    Hash(h.finalize().into())
}

/// The root of the empty tree: `SHA-256()` (RFC 9162 section 2.1.1).
pub fn empty_root() -> Hash {
    Hash::of(b"")
}

/// Why a proof request cannot be answered: the caller asked for sizes the tree does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofRequestError {
    #[error("index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {size} is larger than the log ({len} transitions)")]
    SizeTooLarge { size: u64, len: u64 },
    #[error("old size {old} is larger than new size {new}")]
    OldLargerThanNew { old: u64, new: u64 },
    #[error("a consistency proof from the empty tree is not defined (RFC 9162 section 2.1.4)")]
    EmptyOld,
}

/// The tree: `levels[0]` are the leaf hashes, `levels[k][j]` the root of the perfect subtree of leaves
/// `j·2^k .. (j+1)·2^k`. Appending updates O(log n) nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    pub fn new() -> MerkleTree {
        MerkleTree::default()
    }

    /// The tree over `leaves` (transition hashes, in index order).
    pub fn from_leaves<'a>(leaves: impl IntoIterator<Item = &'a Hash>) -> MerkleTree {
        let mut tree = MerkleTree::new();
        for leaf in leaves {
            tree.push(leaf);
        }
        tree
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The leaf hash (`SHA-256(0x00 || transition hash)`) of the last leaf.
    pub fn last_leaf(&self) -> Option<Hash> {
        self.levels.first().and_then(|l| l.last().copied())
    }

    /// Appends the next transition hash.
    pub fn push(&mut self, leaf: &Hash) {
        let mut node = leaf_hash(leaf);
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(node);
            let n = self.levels[level].len();
            if n % 2 == 1 {
                break;
            }
            node = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            level += 1;
        }
    }

    /// Removes the leaves from `size` on (a replica whose store went back; rebuilding is equivalent).
    pub fn truncate(&mut self, size: u64) {
        for (k, level) in self.levels.iter_mut().enumerate() {
            level.truncate((size >> k) as usize);
        }
        while self.levels.last().is_some_and(|l| l.is_empty()) {
            self.levels.pop();
        }
    }

    /// The root of the tree of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofRequestError> {
        self.check_size(size)?;
        if size == 0 {
            return Ok(empty_root());
        }
        Ok(self.subtree(0, size))
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        // `len()` is always a valid size.
        self.root_at(self.len()).unwrap_or_else(|_| empty_root())
    }

    /// `PATH(index, D[0:size])` of RFC 9162 section 2.1.3.1: sibling hashes, leaf side first.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofRequestError> {
        self.check_size(size)?;
        if index >= size {
            return Err(ProofRequestError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Ok(proof)
    }

    /// `PROOF(old, D[0:new])` of RFC 9162 section 2.1.4.1. Empty when `old == new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofRequestError> {
        self.check_size(new)?;
        if old > new {
            return Err(ProofRequestError::OldLargerThanNew { old, new });
        }
        if old == 0 {
            return Err(ProofRequestError::EmptyOld);
        }
        let mut proof = Vec::new();
        if old < new {
            self.subproof(old, 0, new, true, &mut proof);
        }
        Ok(proof)
    }

    fn check_size(&self, size: u64) -> Result<(), ProofRequestError> {
        if size > self.len() {
            return Err(ProofRequestError::SizeTooLarge {
                size,
                len: self.len(),
            });
        }
        Ok(())
    }

    /// MTH of leaves `start .. start + n` (`n ≥ 1`). A perfect, aligned subtree is read from `levels`;
    /// otherwise split at the largest power of two below `n`, as RFC 9162 does. Only the right edge is
    /// ever not perfect, so this costs O(log n) node reads and hashes.
    fn subtree(&self, start: u64, n: u64) -> Hash {
        if n.is_power_of_two() {
            let k = n.trailing_zeros() as usize;
            // Invariant: `start` is a multiple of `n` (every split point is), and `start + n ≤ len`, so the
            // perfect subtree is complete and stored.
            return self.levels[k][(start >> k) as usize];
        }
        let k = split(n);
        node_hash(&self.subtree(start, k), &self.subtree(start + k, n - k))
    }

    fn path(&self, m: u64, start: u64, n: u64, out: &mut Vec<Hash>) {
        if n == 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, k, out);
            out.push(self.subtree(start + k, n - k));
        } else {
            self.path(m - k, start + k, n - k, out);
            out.push(self.subtree(start, k));
        }
    }

    fn subproof(&self, m: u64, start: u64, n: u64, complete: bool, out: &mut Vec<Hash>) {
        if m == n {
            if !complete {
                out.push(self.subtree(start, n));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, k, complete, out);
            out.push(self.subtree(start + k, n - k));
        } else {
            self.subproof(m - k, start + k, n - k, false, out);
            out.push(self.subtree(start, k));
        }
    }
}

/// The largest power of two smaller than `n` (`n ≥ 2`).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    #[error("index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("the proof has the wrong number of hashes for these sizes")]
    WrongLength,
    #[error("the proof leads to root {computed}, not to the expected {expected}")]
    RootMismatch { computed: Hash, expected: Hash },
    #[error("the old tree size {old} is larger than the new {new}")]
    OldLargerThanNew { old: u64, new: u64 },
    #[error(
        "equal sizes but different roots {old} and {new}: two different trees of one size (a fork)"
    )]
    SameSizeDifferentRoots { old: Hash, new: Hash },
    #[error("a consistency proof from the empty tree is not defined")]
    EmptyOld,
}

/// RFC 9162 section 2.1.3.2: verifies that `leaf` (a transition hash) is leaf `index` of the tree of
/// `size` leaves whose root is `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut f_n = index;
    let mut s_n = size - 1;
    let mut r = leaf_hash(leaf);
    for p in proof {
        if s_n == 0 {
            return Err(ProofError::WrongLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength);
    }
    if r != *root {
        return Err(ProofError::RootMismatch {
            computed: r,
            expected: *root,
        });
    }
    Ok(())
}

/// RFC 9162 section 2.1.4.2: verifies that the tree of `new_size` leaves with root `new_root` extends
/// the tree of `old_size` leaves with root `old_root`. Equal sizes need equal roots and an empty proof.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::OldLargerThanNew {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == 0 {
        return Err(ProofError::EmptyOld);
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        if old_root != new_root {
            return Err(ProofError::SameSizeDifferentRoots {
                old: *old_root,
                new: *new_root,
            });
        }
        return Ok(());
    }
    // Step 2: if old_size is a power of two, prepend old_root to the proof.
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let mut f_n = old_size - 1;
    let mut s_n = new_size - 1;
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let mut fr = *first;
    let mut sr = *first;
    for c in rest {
        if s_n == 0 {
            return Err(ProofError::WrongLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr != *old_root {
        return Err(ProofError::RootMismatch {
            computed: fr,
            expected: *old_root,
        });
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch {
            computed: sr,
            expected: *new_root,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Golden vectors: the RFC 9162 definitions (MTH, PATH, PROOF/SUBPROOF) written out as the RFC states
    //! them, over plain byte vectors and with their own SHA-256 calls, so they share no code with the
    //! tree above; every size from 1 to 64, every index and every old size.
    use super::*;

    fn sha(parts: &[&[u8]]) -> [u8; 32] {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    /// MTH(D[n]) straight from RFC 9162 section 2.1.1.
    fn mth(d: &[[u8; 32]]) -> [u8; 32] {
        match d.len() {
            0 => sha(&[]),
            1 => sha(&[&[0], &d[0]]),
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                sha(&[&[1], &mth(&d[..k]), &mth(&d[k..])])
            }
        }
    }

    /// PATH(m, D[n]) of section 2.1.3.1.
    fn rfc_path(m: usize, d: &[[u8; 32]]) -> Vec<[u8; 32]> {
        let n = d.len();
        if n == 1 {
            return vec![];
        }
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        if m < k {
            let mut p = rfc_path(m, &d[..k]);
            p.push(mth(&d[k..]));
            p
        } else {
            let mut p = rfc_path(m - k, &d[k..]);
            p.push(mth(&d[..k]));
            p
        }
    }

    /// SUBPROOF(m, D[n], b) of section 2.1.4.1.
    fn rfc_subproof(m: usize, d: &[[u8; 32]], b: bool) -> Vec<[u8; 32]> {
        let n = d.len();
        if m == n {
            return if b { vec![] } else { vec![mth(d)] };
        }
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        if m <= k {
            let mut p = rfc_subproof(m, &d[..k], b);
            p.push(mth(&d[k..]));
            p
        } else {
            let mut p = rfc_subproof(m - k, &d[k..], false);
            p.push(mth(&d[..k]));
            p
        }
    }

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n as u32)
            .map(|i| sha(&[b"transition", &i.to_be_bytes()]))
            .collect()
    }

    fn hs(v: Vec<[u8; 32]>) -> Vec<Hash> {
        v.into_iter().map(Hash).collect()
    }

    #[test]
    fn roots_and_proofs_for_sizes_1_to_64_match_the_rfc_definitions() {
        let all = leaves(64);
        let tree = MerkleTree::from_leaves(all.iter().map(|l| Hash(*l)).collect::<Vec<_>>().iter());
        for n in 1..=64usize {
            let d = &all[..n];
            let root = Hash(mth(d));
            assert_eq!(tree.root_at(n as u64).unwrap(), root, "root of size {n}");
            for m in 0..n {
                let proof = tree.inclusion_proof(m as u64, n as u64).unwrap();
                assert_eq!(proof, hs(rfc_path(m, d)), "PATH({m}, D[{n}])");
                verify_inclusion(&Hash(d[m]), m as u64, n as u64, &proof, &root).unwrap();
            }
            for m in 1..=n {
                let proof = tree.consistency_proof(m as u64, n as u64).unwrap();
                let expected = if m == n {
                    vec![]
                } else {
                    rfc_subproof(m, d, true)
                };
                assert_eq!(proof, hs(expected), "PROOF({m}, D[{n}])");
                let old_root = Hash(mth(&d[..m]));
                verify_consistency(m as u64, n as u64, &old_root, &root, &proof).unwrap();
            }
        }
    }

    #[test]
    fn known_roots_are_fixed() {
        // Written down once from the RFC definition above, so a change of leaf encoding shows here.
        let all = leaves(7);
        assert_eq!(
            MerkleTree::from_leaves(&[]).root().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let t = MerkleTree::from_leaves(all.iter().map(|l| Hash(*l)).collect::<Vec<_>>().iter());
        assert_eq!(t.root(), Hash(mth(&all)));
    }

    #[test]
    fn tampered_proofs_and_roots_are_refused() {
        let all: Vec<Hash> = leaves(23).into_iter().map(Hash).collect();
        let tree = MerkleTree::from_leaves(&all);
        let root = tree.root();
        for m in 0..23u64 {
            let proof = tree.inclusion_proof(m, 23).unwrap();
            // another leaf, a flipped proof byte, a shortened or lengthened proof, the wrong index
            let other = all[((m + 1) % 23) as usize];
            assert!(verify_inclusion(&other, m, 23, &proof, &root).is_err());
            for i in 0..proof.len() {
                let mut bad = proof.clone();
                bad[i].0[0] ^= 1;
                assert!(verify_inclusion(&all[m as usize], m, 23, &bad, &root).is_err());
            }
            let mut longer = proof.clone();
            longer.push(root);
            assert!(verify_inclusion(&all[m as usize], m, 23, &longer, &root).is_err());
            if !proof.is_empty() {
                let shorter = &proof[..proof.len() - 1];
                assert!(verify_inclusion(&all[m as usize], m, 23, shorter, &root).is_err());
            }
        }
        for old in 1..23u64 {
            let proof = tree.consistency_proof(old, 23).unwrap();
            let old_root = tree.root_at(old).unwrap();
            for i in 0..proof.len() {
                let mut bad = proof.clone();
                bad[i].0[31] ^= 0x80;
                assert!(verify_consistency(old, 23, &old_root, &root, &bad).is_err());
            }
            // a fork: another tree of the old size
            let mut forked = all[..old as usize].to_vec();
            forked[0].0[0] ^= 1;
            let forked_root = MerkleTree::from_leaves(&forked).root();
            assert!(verify_consistency(old, 23, &forked_root, &root, &proof).is_err());
            // a rollback presented as growth
            assert!(verify_consistency(23, old, &root, &old_root, &proof).is_err());
        }
        assert!(matches!(
            verify_consistency(5, 5, &tree.root_at(5).unwrap(), &root, &[]),
            Err(ProofError::SameSizeDifferentRoots { .. })
        ));
    }

    #[test]
    fn truncating_equals_rebuilding() {
        let all: Vec<Hash> = leaves(40).into_iter().map(Hash).collect();
        for size in 0..=40 {
            let mut t = MerkleTree::from_leaves(&all);
            t.truncate(size);
            assert_eq!(t, MerkleTree::from_leaves(&all[..size as usize]), "{size}");
        }
    }

    #[test]
    fn requests_beyond_the_tree_are_refused() {
        let all: Vec<Hash> = leaves(4).into_iter().map(Hash).collect();
        let t = MerkleTree::from_leaves(&all);
        assert!(t.inclusion_proof(4, 4).is_err());
        assert!(t.inclusion_proof(0, 5).is_err());
        assert!(t.consistency_proof(0, 4).is_err());
        assert!(t.consistency_proof(3, 2).is_err());
        assert!(t.consistency_proof(2, 5).is_err());
    }

    /// Numbers for the report (the benchmark, tests/benches/cluster/tlog.rs, measures them in release):
    /// `cargo test -p concord-coordinator --lib proof_sizes_and_times -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn proof_sizes_and_times() {
        let n_max = 100_000u64;
        let all: Vec<Hash> = (0..n_max).map(|i| Hash::of(&i.to_be_bytes())).collect();
        let start = std::time::Instant::now();
        let tree = MerkleTree::from_leaves(&all);
        eprintln!("tree of {n_max}: built in {:?}", start.elapsed());
        for n in [10u64, 1_000, 100_000] {
            let old = n / 2;
            let t = std::time::Instant::now();
            let c = tree.consistency_proof(old, n).unwrap();
            let i = tree.inclusion_proof(n - 1, n).unwrap();
            let prove = t.elapsed();
            let (old_root, root) = (tree.root_at(old).unwrap(), tree.root_at(n).unwrap());
            let t = std::time::Instant::now();
            for _ in 0..1000 {
                verify_consistency(old, n, &old_root, &root, &c).unwrap();
                verify_inclusion(&all[n as usize - 1], n - 1, n, &i, &root).unwrap();
            }
            let verify = t.elapsed() / 1000;
            eprintln!(
                "n = {n}: consistency {} hashes, inclusion {} hashes ({} bytes); prove {:?}, verify {:?} (mean of 1000)",
                c.len(),
                i.len(),
                32 * (c.len() + i.len()),
                prove,
                verify
            );
        }
    }
}
