//! `verify_chain`: checks a whole line of transitions. Pure: the same function serves the replica at
//! start-up (over what it read from its untrusted store) and `concord history audit` (over a bundle).

use ed25519_dalek::VerifyingKey;

use super::{Transition, format};
use crate::hash::Hash;
use crate::manifest::Manifest;

/// A history whose every link, hash and signature was checked.
#[derive(Debug, Clone)]
pub struct VerifiedChain {
    signing_key: VerifyingKey,
    transitions: Vec<Transition>,
    hashes: Vec<Hash>,
    manifests: Vec<Manifest>,
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
    pub fn manifests(&self) -> &[Manifest] {
        &self.manifests
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
    /// The latest manifest (the chain is never empty).
    /// The deployment this history belongs to: its first manifest's id.
    pub fn deployment_id(&self) -> concord_attestation::DeploymentId {
        self.manifests()
            .first()
            .map_or(concord_attestation::DeploymentId::UNPINNED, |m| {
                m.deployment_id()
            })
    }

    pub fn latest_manifest(&self) -> &Manifest {
        // `verify_chain` refuses an empty history, so there is a last manifest.
        &self.manifests[self.manifests.len() - 1]
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
        self.hashes.push(transition.hash());
        self.transitions.push(transition);
        self.manifests.push(manifest);
        Ok(())
    }

    /// Checks that `transition` with `manifest` may follow this chain, as [`push`](Self::push) would,
    /// without changing (or copying) the chain.
    pub fn check_next(
        &self,
        transition: &Transition,
        manifest: &Manifest,
    ) -> Result<(), ChainError> {
        check_one(self, transition, manifest, Signatures::Verify)
    }

    /// A chain of one: the first transition.
    pub fn first(
        signing_key: VerifyingKey,
        transition: Transition,
        manifest: Manifest,
    ) -> Result<VerifiedChain, ChainError> {
        let mut chain = VerifiedChain {
            signing_key,
            transitions: Vec::new(),
            hashes: Vec::new(),
            manifests: Vec::new(),
        };
        chain.push(transition, manifest)?;
        Ok(chain)
    }
}

/// Verifies `items` (transitions in order, each with its manifest bytes) under `signing_key`: indexes
/// count from 0, every `previous` names its predecessor (zero for the first), every manifest hashes to
/// what its transition says and parses strictly, every transition is signed by the coordinator, and every
/// transition after the first is authorized by an owner key of the previous manifest. The seed share
/// owners never change.
///
/// What each transition needs alone (parsing its manifest, checking its two signatures) runs on every
/// core first; the checks that link a transition to those before it then run in order, using those
/// results, so the error names the same first transition at fault, with the same reason, as a
/// one-by-one check would.
pub fn verify_chain(
    signing_key: VerifyingKey,
    items: Vec<(Transition, Vec<u8>)>,
) -> Result<VerifiedChain, ChainError> {
    if items.is_empty() {
        return Err(ChainError {
            index: 0,
            reason: "the history is empty".into(),
        });
    }
    let alone = par_map(&items, |i, (t, bytes)| {
        let hash = t.hash();
        let signatures = Signatures::Known {
            coordinator: format::verify_transition(&signing_key, &hash, &t.signature),
            owner: t
                .owner
                .as_ref()
                .is_none_or(|o| format::verify_owner(&o.key, &hash, &o.signature)),
        };
        parse_at(i as u64, bytes).map(|m| (m, signatures))
    });
    let mut chain = VerifiedChain {
        signing_key,
        transitions: Vec::with_capacity(items.len()),
        hashes: Vec::with_capacity(items.len()),
        manifests: Vec::with_capacity(items.len()),
    };
    for ((t, _), parsed) in items.into_iter().zip(alone) {
        let (manifest, signatures) = parsed?;
        chain.push_with(t, manifest, signatures)?;
    }
    Ok(chain)
}

/// `f` over `items` on up to every available core, results in order. Small inputs stay on this thread.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(usize, &T) -> R + Sync) -> Vec<R> {
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if cores < 2 || items.len() < 256 {
        return items.iter().enumerate().map(|(i, x)| f(i, x)).collect();
    }
    let chunk = items.len().div_ceil(cores);
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                scope.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(j, x)| f(c * chunk + j, x))
                        .collect::<Vec<R>>()
                })
            })
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
    let previous_manifest = chain.manifests.last();
    let first_manifest = chain.manifests.first();
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
    match (previous_manifest, &t.owner) {
        (None, None) => {}
        (None, Some(_)) => {
            return Err(fail(
                "the first transition carries an owner authorization".into(),
            ));
        }
        (Some(_), None) => {
            return Err(fail("no workload owner authorized this transition".into()));
        }
        (Some(prev), Some(owner)) => {
            if !prev.workload_owner_keys().contains(&owner.key) {
                return Err(fail(format!(
                    "owner key {} is not listed in the previous manifest",
                    hex::encode(owner.key.as_bytes())
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
