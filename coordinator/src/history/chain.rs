//! `verify_chain`: checks a whole line of transitions. Pure: the same function serves the replica at
//! start-up (over what it read from its untrusted store) and `concord history audit` (over a bundle).

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;

use super::batch::{self, SignatureCheck};
use super::{Transition, format};
use crate::hash::{Hash, Hashed};
use crate::manifest::Manifest;

/// A history whose every link, hash and signature was checked.
///
/// It keeps what the hot paths need and what is small: every transition and its hash, the first
/// manifest (its seed share owners and deployment id never change), the latest manifest (what the
/// mesh API admits against and the next transition is checked against), and the set of policy hashes
/// the history lists. The other manifests stay on the store, content-addressed under the hashes their
/// verified transitions name, and are read (and hash-checked) on demand: a long history costs a few
/// hundred bytes per transition in memory, not a parsed manifest each (issue 9, memory).
#[derive(Debug, Clone)]
pub struct VerifiedChain {
    signing_key: VerifyingKey,
    transitions: Vec<Transition>,
    hashes: Vec<Hash>,
    first: Option<Manifest>,
    latest: Option<Manifest>,
    /// Every policy hash a manifest of the history lists, with the index of the first that does.
    policies: BTreeMap<Hash, u64>,
}

/// What [`VerifiedChain::check_next`] verified: which transition, signatures included (its hash does
/// not cover them), after which chain end, under which signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedNext {
    after: Hash,
    signing_key: VerifyingKey,
    transition: Transition,
}

/// A transition whose coordinator signature verified under `signing_key`, and whose owner
/// authorization, if it carries one, verified under the owner key it names. Both signatures cover the
/// transition's hash alone, so these verdicts hold wherever the transition is offered: they can be
/// reached before its place in a history is known ([`VerifiedChain::check_next_with`] checks the
/// place, and whether the owner key may authorize it there). Only [`VerifiedSignatures::verify`]
/// makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSignatures {
    signing_key: VerifyingKey,
    transition: Transition,
}

impl VerifiedSignatures {
    /// Verifies both signatures of `transition`; `None` if either does not verify.
    pub fn verify(signing_key: &VerifyingKey, transition: &Transition) -> Option<Self> {
        let hash = transition.hash();
        let coordinator = format::verify_transition(signing_key, &hash, &transition.signature);
        let owner = transition
            .owner
            .as_ref()
            .is_none_or(|o| format::verify_owner(&o.key, &hash, &o.signature));
        (coordinator && owner).then(|| VerifiedSignatures {
            signing_key: *signing_key,
            transition: transition.clone(),
        })
    }
}

/// Why a history does not verify. `index` is the first transition at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("transition {index}: {reason}")]
pub struct ChainError {
    pub index: u64,
    pub reason: String,
}

impl VerifiedChain {
    pub fn signing_key(&self) -> &VerifyingKey {
        &self.signing_key
    }
    pub fn transitions(&self) -> &[Transition] {
        &self.transitions
    }
    /// Every policy hash a manifest of this history lists, with the index of the first transition
    /// whose manifest lists it.
    pub fn policy_hashes(&self) -> &BTreeMap<Hash, u64> {
        &self.policies
    }
    /// The first manifest (the chain is never empty).
    pub fn first_manifest(&self) -> &Manifest {
        // `verify_chain` and `first` refuse an empty history, so there is a first manifest.
        self.first.as_ref().unwrap_or_else(|| unreachable_empty())
    }
    pub fn hash_at(&self, index: usize) -> Option<Hash> {
        self.hashes.get(index).copied()
    }
    pub fn len(&self) -> usize {
        self.transitions.len()
    }
    pub fn is_empty(&self) -> bool {
        self.transitions.is_empty()
    }
    /// The latest transition's hash (the chain is never empty).
    pub fn latest_hash(&self) -> Hash {
        self.hashes.last().copied().unwrap_or(Hash::ZERO)
    }
    /// The deployment this history belongs to: its first manifest's id.
    pub fn deployment_id(&self) -> concord_attestation::DeploymentId {
        self.first
            .as_ref()
            .map_or(concord_attestation::DeploymentId::UNPINNED, |m| {
                m.deployment_id()
            })
    }

    /// The latest manifest (the chain is never empty).
    pub fn latest_manifest(&self) -> &Manifest {
        // `verify_chain` and `first` refuse an empty history, so there is a latest manifest.
        self.latest.as_ref().unwrap_or_else(|| unreachable_empty())
    }
    pub fn latest_transition(&self) -> &Transition {
        // As above: never empty.
        &self.transitions[self.transitions.len() - 1]
    }
    /// Position of a transition hash in the line, if it is part of it.
    pub fn position(&self, hash: &Hash) -> Option<usize> {
        self.hashes.iter().position(|h| h == hash)
    }

    /// Appends a transition that the caller built and checked against this chain's rules
    /// (the coordinator's `set` does; tests use it to build histories).
    pub fn push(&mut self, transition: Transition, manifest: Manifest) -> Result<(), ChainError> {
        self.push_with(transition, manifest, Signatures::Verify)
    }

    fn push_with(
        &mut self,
        transition: Transition,
        manifest: Manifest,
        signatures: Signatures,
    ) -> Result<(), ChainError> {
        check_one(self, &transition, &manifest, signatures)?;
        for hash in manifest.policies().keys() {
            self.policies.entry(*hash).or_insert(transition.index);
        }
        self.hashes.push(transition.hash());
        self.transitions.push(transition);
        if self.first.is_none() {
            self.first = Some(manifest.clone());
        }
        self.latest = Some(manifest);
        Ok(())
    }

    /// Checks that `transition` with `manifest` may follow this chain, as [`push`](Self::push) would,
    /// without changing (or copying) the chain. The answer lets [`push_checked`](Self::push_checked)
    /// append it later without verifying its signatures again.
    pub fn check_next(
        &self,
        transition: &Transition,
        manifest: &Manifest,
    ) -> Result<CheckedNext, ChainError> {
        check_one(self, transition, manifest, Signatures::Verify)?;
        Ok(CheckedNext {
            after: self.latest_hash(),
            signing_key: self.signing_key,
            transition: transition.clone(),
        })
    }

    /// Appends `transition`, whose signatures [`check_next`](Self::check_next) verified (the very
    /// same transition, signatures and all) under this chain's signing key against a chain that ended
    /// where this one ends: the transition hashes commit to the whole line of manifests, so the
    /// verdicts stand. The other checks run again (they are cheap). A `checked` for anything else is
    /// ignored: then everything is verified, as [`push`](Self::push) does.
    pub fn push_checked(
        &mut self,
        transition: Transition,
        manifest: Manifest,
        checked: &CheckedNext,
    ) -> Result<(), ChainError> {
        let signatures = if checked.after == self.latest_hash()
            && checked.signing_key == self.signing_key
            && checked.transition == transition
        {
            Signatures::Known {
                coordinator: true,
                owner: true,
            }
        } else {
            Signatures::Verify
        };
        self.push_with(transition, manifest, signatures)
    }

    /// [`check_next`](Self::check_next), with the signatures' verdicts taken from `verified` when it
    /// holds them for exactly `transition` (signatures included) under this chain's signing key;
    /// otherwise (or with `None`) they are verified here. Every other check runs as in `check_next`.
    pub fn check_next_with(
        &self,
        transition: &Transition,
        manifest: &Manifest,
        verified: Option<&VerifiedSignatures>,
    ) -> Result<CheckedNext, ChainError> {
        let signatures = match verified {
            Some(v) if v.signing_key == self.signing_key && v.transition == *transition => {
                Signatures::Known {
                    coordinator: true,
                    owner: true,
                }
            }
            _ => Signatures::Verify,
        };
        check_one(self, transition, manifest, signatures)?;
        Ok(CheckedNext {
            after: self.latest_hash(),
            signing_key: self.signing_key,
            transition: transition.clone(),
        })
    }

    /// A chain of one: the first transition.
    pub fn first(
        signing_key: VerifyingKey,
        transition: Transition,
        manifest: Manifest,
    ) -> Result<VerifiedChain, ChainError> {
        let mut chain = VerifiedChain::empty(signing_key, 1);
        chain.push(transition, manifest)?;
        Ok(chain)
    }

    fn empty(signing_key: VerifyingKey, capacity: usize) -> VerifiedChain {
        VerifiedChain {
            signing_key,
            transitions: Vec::with_capacity(capacity),
            hashes: Vec::with_capacity(capacity),
            first: None,
            latest: None,
            policies: BTreeMap::new(),
        }
    }
}

/// What the accessors of a never-empty chain do if it were empty: no constructor makes one.
#[cold]
fn unreachable_empty() -> ! {
    unreachable!(
        "a VerifiedChain is never empty: verify_chain and VerifiedChain::first refuse that"
    )
}

/// Verifies `items` (transitions in order, each with its manifest bytes) under `signing_key`: indexes
/// count from 0, every `previous` names its predecessor (zero for the first), every manifest hashes to
/// what its transition says and parses strictly, every transition is signed by the coordinator, and every
/// transition is authorized by an owner key of the previous manifest (the first: of its own manifest,
/// unless that lists no owner key). The seed share owners never change.
///
/// What each transition needs alone (parsing its manifest, checking its two signatures) runs on every
/// core first; the checks that link a transition to those before it then run in order, using those
/// results, so the error names the same first transition at fault, with the same reason, as a
/// one-by-one check would.
pub fn verify_chain(
    signing_key: VerifyingKey,
    items: Vec<(Transition, Vec<u8>)>,
) -> Result<VerifiedChain, ChainError> {
    let mut verifier = ChainVerifier::new(signing_key, items.len());
    verifier.extend(items)?;
    verifier.finish()
}

/// The most transitions [`ChainVerifier::extend`] parses before it links them (on two cores, 512 per
/// core: two batches of 1024 signatures each, as [`batch::verify_strict_all`] makes them).
pub const ROUND: usize = 1024;

/// [`verify_chain`] fed in batches, so that a caller reading a long history from a store holds one
/// batch of manifest bytes at a time, never the whole history (each batch is checked on every core,
/// then linked in order; the result is the same as one call with every item).
#[derive(Debug)]
pub struct ChainVerifier {
    chain: VerifiedChain,
    /// [`ROUND`], smaller in tests.
    round: usize,
}

impl ChainVerifier {
    /// A verifier expecting about `capacity` transitions.
    pub fn new(signing_key: VerifyingKey, capacity: usize) -> ChainVerifier {
        ChainVerifier {
            chain: VerifiedChain::empty(signing_key, capacity),
            round: ROUND,
        }
    }

    /// A verifier that parses at most `round` transitions before it links them.
    #[cfg(test)]
    pub(crate) fn with_round(mut self, round: usize) -> ChainVerifier {
        self.round = round.max(1);
        self
    }

    /// Verifies the next transitions, in order, after those already given.
    ///
    /// In rounds of at most [`ROUND`] transitions: a round's parsed manifests are dropped (all but
    /// the latest) before the next round is parsed, so the worker threads' heaps reuse that memory
    /// instead of growing by a parsed manifest per transition. Growing them was a third of the
    /// workers' time in a 10,000-transition audit (page faults and `mprotect` in `malloc`).
    pub fn extend(&mut self, items: Vec<(Transition, Vec<u8>)>) -> Result<(), ChainError> {
        let mut items = items.into_iter();
        loop {
            let round: Vec<_> = items.by_ref().take(self.round).collect();
            if round.is_empty() {
                return Ok(());
            }
            self.extend_round(round)?;
        }
    }

    fn extend_round(&mut self, items: Vec<(Transition, Vec<u8>)>) -> Result<(), ChainError> {
        let signing_key = *self.chain.signing_key();
        let offset = self.chain.len();
        let alone = par_chunks(&items, |first, part| {
            let verdicts = signature_verdicts(&signing_key, part.iter().map(|(t, _)| t));
            part.iter()
                .zip(verdicts)
                .enumerate()
                .map(|(j, ((_, bytes), signatures))| {
                    parse_at((offset + first + j) as u64, bytes).map(|m| (m, signatures))
                })
                .collect()
        });
        for ((t, _), parsed) in items.into_iter().zip(alone) {
            let (manifest, signatures) = parsed?;
            self.chain.push_with(t, manifest, signatures)?;
        }
        Ok(())
    }

    /// The verified chain; refuses an empty history.
    /// Links a round that [`parse_round`] parsed, in order, with the signature verdicts its
    /// transitions carry, so the first transition at fault is named as [`extend`](Self::extend)
    /// names it. The round must start where this chain ends (a caller may parse the next round
    /// while this one is linked).
    pub fn link_round(&mut self, round: ParsedRound) -> Result<(), ChainError> {
        if round.offset != self.chain.len() {
            return Err(ChainError {
                index: self.chain.len() as u64,
                reason: format!(
                    "a round parsed for index {} was offered at index {}",
                    round.offset,
                    self.chain.len()
                ),
            });
        }
        let signing_key = *self.chain.signing_key();
        for (signed, manifest) in round.items {
            let signatures = signed.signatures_under(&signing_key);
            self.chain
                .push_with(signed.transition, manifest?, signatures)?;
        }
        Ok(())
    }

    pub fn finish(self) -> Result<VerifiedChain, ChainError> {
        if self.chain.is_empty() {
            return Err(ChainError {
                index: 0,
                reason: "the history is empty".into(),
            });
        }
        Ok(self.chain)
    }
}

/// The verdicts on each transition's coordinator signature (under `signing_key`) and owner
/// authorization (true when it carries none), all checked together ([`batch::verify_strict_all`]:
/// the same verdicts as `format::verify_transition` and `format::verify_owner` one by one).
fn signature_verdicts<'a>(
    signing_key: &VerifyingKey,
    part: impl Iterator<Item = &'a Transition> + Clone,
) -> Vec<Signatures> {
    let mut checks = Vec::with_capacity(part.size_hint().0 * 2);
    for t in part.clone() {
        let hash = t.hash();
        checks.push(SignatureCheck {
            key: *signing_key,
            message: format::coordinator_message(&hash),
            signature: t.signature,
        });
        if let Some(owner) = &t.owner {
            checks.push(SignatureCheck {
                key: owner.key,
                message: format::owner_message(&hash),
                signature: owner.signature,
            });
        }
    }
    let mut verdicts = batch::verify_strict_all(&checks).into_iter();
    part.map(|t| {
        // One verdict per check pushed above, in the same order.
        let coordinator = verdicts.next().unwrap_or(false);
        let owner = match t.owner {
            Some(_) => verdicts.next().unwrap_or(false),
            None => true,
        };
        Signatures::Known { coordinator, owner }
    })
    .collect()
}

/// A transition with the verdicts of its two signatures under one signing key, reached before its
/// place in a history is known: both signatures cover the transition's hash alone, so the verdicts
/// hold wherever it is linked. Made only by [`check_all`](Self::check_all) and
/// [`check_all_on_every_core`](Self::check_all_on_every_core), which check them, or
/// [`unchecked`](Self::unchecked), which leaves them to [`ChainVerifier::link_round`]. A `false`
/// verdict is kept, not reported: the transition may be off the line, and on it, it is reported where
/// it is linked.
#[derive(Debug)]
pub struct SignedTransition {
    transition: Transition,
    verdicts: Option<(VerifyingKey, Signatures)>,
}

impl SignedTransition {
    /// Checks the signatures of every transition under `signing_key` (the coordinator's) and the
    /// owner key each names, in batches on this thread (`batch::verify_strict_all`: the verdicts of
    /// `verify_strict`).
    pub fn check_all(
        signing_key: &VerifyingKey,
        transitions: Vec<Transition>,
    ) -> Vec<SignedTransition> {
        let verdicts = signature_verdicts(signing_key, transitions.iter());
        Self::with_verdicts(signing_key, transitions, verdicts)
    }

    /// [`check_all`](Self::check_all), on every core.
    pub fn check_all_on_every_core(
        signing_key: &VerifyingKey,
        transitions: Vec<Transition>,
    ) -> Vec<SignedTransition> {
        let verdicts = par_chunks(&transitions, |_, part| {
            signature_verdicts(signing_key, part.iter())
        });
        Self::with_verdicts(signing_key, transitions, verdicts)
    }

    fn with_verdicts(
        signing_key: &VerifyingKey,
        transitions: Vec<Transition>,
        verdicts: Vec<Signatures>,
    ) -> Vec<SignedTransition> {
        transitions
            .into_iter()
            .zip(verdicts)
            .map(|(transition, verdicts)| SignedTransition {
                transition,
                verdicts: Some((*signing_key, verdicts)),
            })
            .collect()
    }

    /// `transition`, its signatures not checked yet.
    pub fn unchecked(transition: Transition) -> SignedTransition {
        SignedTransition {
            transition,
            verdicts: None,
        }
    }

    pub fn transition(&self) -> &Transition {
        &self.transition
    }

    pub fn into_transition(self) -> Transition {
        self.transition
    }

    /// The verdicts, if they were reached under `signing_key`; otherwise they are to be reached.
    fn signatures_under(&self, signing_key: &VerifyingKey) -> Signatures {
        match self.verdicts {
            Some((key, verdicts)) if key == *signing_key => verdicts,
            _ => Signatures::Verify,
        }
    }
}

/// Transitions whose manifests [`parse_round`] parsed, to be linked by
/// [`ChainVerifier::link_round`] at index `offset`.
#[derive(Debug)]
pub struct ParsedRound {
    offset: usize,
    items: Vec<(SignedTransition, Result<Manifest, ChainError>)>,
}

/// Parses the manifests of transitions `offset..` (each with its manifest bytes and their hash), on
/// every core, handed out a few at a time to whichever thread is free. A manifest that does not parse
/// is kept as its error, reported where it is linked. The caller holds the round's parsed manifests
/// until it is linked: rounds of at most [`ROUND`] keep that bounded.
pub fn parse_round(offset: usize, items: Vec<(SignedTransition, Hashed)>) -> ParsedRound {
    let parsed = par_map(&items, PARSE_CHUNK, |i, (_, manifest)| {
        Manifest::parse_hashed(manifest).map_err(|e| ChainError {
            index: (offset + i) as u64,
            reason: e.to_string(),
        })
    });
    ParsedRound {
        offset,
        items: items
            .into_iter()
            .map(|(signed, _)| signed)
            .zip(parsed)
            .collect(),
    }
}

/// Manifests a thread of [`parse_round`] takes at a time: small, so that a thread
/// slowed by another (the store's reader shares the cores) leaves the rest to the others.
const PARSE_CHUNK: usize = 32;

/// `f` over every item (with its index), on every available core, results in order. The items are
/// handed out `chunk` at a time to whichever thread asks next, this one included, so the threads end
/// together however the cores are shared. Small inputs stay on this thread.
pub(super) fn par_map<T: Sync, R: Send>(
    items: &[T],
    chunk: usize,
    f: impl Fn(usize, &T) -> R + Sync,
) -> Vec<R> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let chunk = chunk.max(1);
    if cores < 2 || items.len() <= chunk {
        return items.iter().enumerate().map(|(i, t)| f(i, t)).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let start = next.fetch_add(chunk, Ordering::Relaxed);
            if start >= items.len() {
                return done;
            }
            let end = (start + chunk).min(items.len());
            let results: Vec<R> = (start..end).map(|i| f(i, &items[i])).collect();
            done.push((start, results));
        }
    };
    let mut done = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..cores.min(items.len().div_ceil(chunk)))
            .map(|_| scope.spawn(work))
            .collect();
        let mut done = work();
        for h in handles {
            done.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        done
    });
    done.sort_unstable_by_key(|(start, _)| *start);
    done.into_iter().flat_map(|(_, results)| results).collect()
}

/// `f` over consecutive chunks of `items`, one chunk per available core (`f` is given the index of
/// its chunk's first item), results in order. Small inputs stay on this thread.
pub(super) fn par_chunks<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(usize, &[T]) -> Vec<R> + Sync,
) -> Vec<R> {
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if cores < 2 || items.len() < 16 {
        return f(0, items);
    }
    let chunk = items.len().div_ceil(cores);
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| scope.spawn(move || f(c * chunk, part)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

fn parse_at(index: u64, bytes: &[u8]) -> Result<Manifest, ChainError> {
    Manifest::parse(bytes).map_err(|e| ChainError {
        index,
        reason: e.to_string(),
    })
}

/// What a history written before the first transition needed an owner authorization fails with.
pub const GENESIS_UNAUTHORIZED: &str = "the first transition carries no owner authorization, but its \
     manifest lists workload owner keys and one of them must sign it; histories written by builds from \
     before first transitions were owner-authorized do not verify and must be set up again on empty disks \
     with `concord set --owner-key` (docs/OPERATIONS.md, \"Histories with an unsigned first transition\")";

/// Whether [`check_one`] verifies the signatures itself or was told their verdicts.
#[derive(Debug, Clone, Copy)]
enum Signatures {
    Verify,
    Known { coordinator: bool, owner: bool },
}

/// Whether `t` with `manifest` may follow `chain`.
fn check_one(
    chain: &VerifiedChain,
    t: &Transition,
    manifest: &Manifest,
    signatures: Signatures,
) -> Result<(), ChainError> {
    let signing_key = &chain.signing_key;
    let index = chain.transitions.len();
    let previous_hash = chain.hashes.last().copied();
    let previous_manifest = chain.latest.as_ref();
    let first_manifest = chain.first.as_ref();
    let fail = |reason: String| ChainError {
        index: index as u64,
        reason,
    };
    if t.index != index as u64 {
        return Err(fail(format!("says it is index {}", t.index)));
    }
    let expected_previous = previous_hash.unwrap_or(Hash::ZERO);
    if t.previous != expected_previous {
        return Err(fail(format!(
            "previous is {}, but the transition before it is {}",
            t.previous, expected_previous
        )));
    }
    if manifest.hash() != t.manifest_hash {
        return Err(fail(format!(
            "the manifest hashes to {}, the transition says {}",
            manifest.hash(),
            t.manifest_hash
        )));
    }
    let hash = t.hash();
    let coordinator_ok = match signatures {
        Signatures::Verify => format::verify_transition(signing_key, &hash, &t.signature),
        Signatures::Known { coordinator, .. } => coordinator,
    };
    if !coordinator_ok {
        return Err(fail(
            "the coordinator signature does not verify with the signing key".into(),
        ));
    }
    // The manifest whose owner keys may authorize this transition: the previous one, or for the first
    // transition the first manifest itself (so nobody but its owners can start a deployment that names
    // them: docs/THREAT_MODEL.md, issue 9.1).
    let authorizer = previous_manifest.unwrap_or(manifest);
    match &t.owner {
        None if previous_manifest.is_none() && manifest.is_final() => {}
        None if previous_manifest.is_none() => {
            return Err(fail(GENESIS_UNAUTHORIZED.into()));
        }
        None => {
            return Err(fail("no workload owner authorized this transition".into()));
        }
        Some(owner) => {
            if !authorizer.workload_owner_keys().contains(&owner.key) {
                return Err(fail(format!(
                    "owner key {} is not listed in the {} manifest",
                    hex::encode(owner.key.as_bytes()),
                    if previous_manifest.is_some() {
                        "previous"
                    } else {
                        "first transition's own"
                    }
                )));
            }
            let owner_ok = match signatures {
                Signatures::Verify => format::verify_owner(&owner.key, &hash, &owner.signature),
                Signatures::Known { owner, .. } => owner,
            };
            if !owner_ok {
                return Err(fail("the owner authorization does not verify".into()));
            }
        }
    }
    if let Some(first) = first_manifest
        && first.seed_share_owners() != manifest.seed_share_owners()
    {
        return Err(fail(
            "changes the seed share owners, which the first manifest fixed".into(),
        ));
    }
    Ok(())
}
