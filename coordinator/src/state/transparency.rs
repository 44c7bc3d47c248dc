//! The transparency log of a replica: its latest checkpoint and the RFC 9162 proofs over its verified
//! history (docs/PROTOCOL.md §15).
//!
//! The Merkle tree is derived data: it is synced from the verified chain's transition hashes whenever it
//! is read (only the new ones are appended; a chain that went back or changed rebuilds it), so it can
//! never disagree with the history the replica serves. Checkpoints are signed on demand with the key
//! derived from the seed: Ed25519 is deterministic, so every replica that holds the seed signs the same
//! bytes for the same size. Only a replica that holds the seed serves them.

use std::sync::MutexGuard;

use ed25519_dalek::VerifyingKey;

use super::coordinator::{Coordinator, ReplicaState};
use crate::error::CoordinatorError;
use crate::hash::Hash;
use crate::history::VerifiedChain;
use crate::history::merkle::{self, MerkleTree};
use crate::history::note::{self, Checkpoint, SignedNote};
use crate::store::Store;

/// GetCheckpoint's answer.
#[derive(Debug, Clone)]
pub struct CheckpointView {
    pub checkpoint: Checkpoint,
    pub note: SignedNote,
    pub key: VerifyingKey,
    /// The latest manifest's witnesses, whose cosignatures the API layer collects.
    pub witnesses: Option<crate::manifest::Witnesses>,
}

impl<S: Store> Coordinator<S> {
    /// The chain a replica that holds the seed serves proofs from.
    fn proof_chain(&self) -> Result<&VerifiedChain, CoordinatorError> {
        match (self.state(), self.chain()) {
            (ReplicaState::Fresh, _) | (_, None) => Err(CoordinatorError::NoManifest),
            (_, Some(_)) if !self.holds_seed() => Err(CoordinatorError::Recovering),
            (_, Some(chain)) => Ok(chain),
        }
    }

    /// The tree, synced with `chain`.
    fn synced_tree(&self, chain: &VerifiedChain) -> MutexGuard<'_, MerkleTree> {
        // A poisoned lock only means a panic while appending: the sync below repairs any state.
        let mut tree = self.tree.lock().unwrap_or_else(|p| p.into_inner());
        sync_tree(&mut tree, chain);
        tree
    }

    /// The latest checkpoint, signed with the checkpoint key.
    /// Whether the latest manifest names at least one witness.
    pub fn names_witnesses(&self) -> bool {
        self.chain()
            .and_then(|c| c.latest_manifest().witnesses())
            .is_some_and(|w| !w.list.is_empty())
    }

    pub fn checkpoint(&self) -> Result<CheckpointView, CoordinatorError> {
        let chain = self.proof_chain()?;
        let secrets = self.secrets.as_ref().ok_or(CoordinatorError::Recovering)?;
        let root = self.synced_tree(chain).root();
        let checkpoint = Checkpoint {
            origin: note::origin_for(chain.deployment_id().as_bytes()),
            size: chain.len() as u64,
            root,
        };
        let key = secrets.engine.checkpoint_signing_key();
        let note = checkpoint.sign(&key);
        Ok(CheckpointView {
            checkpoint,
            note,
            key: key.verifying_key(),
            witnesses: chain.latest_manifest().witnesses().cloned(),
        })
    }

    /// The inclusion proof of transition `index` in the tree of `size` transitions, and its hash.
    pub fn inclusion_proof(
        &self,
        index: u64,
        size: u64,
    ) -> Result<(Hash, Vec<Hash>), CoordinatorError> {
        let chain = self.proof_chain()?;
        let proof = self
            .synced_tree(chain)
            .inclusion_proof(index, size)
            .map_err(|e| CoordinatorError::InvalidInput(e.to_string()))?;
        let leaf = chain
            .hash_at(index as usize)
            .ok_or_else(|| CoordinatorError::InvalidInput(format!("no transition {index}")))?;
        Ok((leaf, proof))
    }

    /// The consistency proof from the tree of `old` transitions to the tree of `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, CoordinatorError> {
        let chain = self.proof_chain()?;
        self.synced_tree(chain)
            .consistency_proof(old, new)
            .map_err(|e| CoordinatorError::InvalidInput(e.to_string()))
    }
}

/// Appends the hashes `tree` lacks; rebuilds it when the chain is shorter or its last shared leaf
/// differs (the chain was replaced, e.g. after recovery).
fn sync_tree(tree: &mut MerkleTree, chain: &VerifiedChain) {
    let n = tree.len();
    let agrees = n <= chain.len() as u64
        && (n == 0
            || chain
                .hash_at(n as usize - 1)
                .is_some_and(|h| tree.last_leaf() == Some(merkle::leaf_hash(&h))));
    if !agrees {
        *tree = MerkleTree::new();
    }
    for i in tree.len() as usize..chain.len() {
        if let Some(h) = chain.hash_at(i) {
            tree.push(&h);
        }
    }
}
