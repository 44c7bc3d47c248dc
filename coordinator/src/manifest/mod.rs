//! The manifest: which workloads may join, with which names, secrets and roles (DESIGN.md, Manifest).
//!
//! Parse, don't validate: a [`Manifest`] exists only once its bytes parsed strictly (unknown fields and
//! duplicate keys are errors) and every value was checked. The raw bytes are kept: the manifest hash is
//! over the bytes exactly as submitted, never over a re-serialization.

mod doc;
mod san;
mod transit;
mod witnesses;

use std::collections::BTreeMap;

use concord_attestation::{DeploymentId, ReferenceValues};
use ed25519_dalek::VerifyingKey;

use crate::hash::Hash;
pub use san::San;
pub use transit::{
    MAX_TRANSIT_KEYS, MAX_TRANSIT_VERSION, TransitKey, TransitOp,
    valid_name as transit_name_is_valid,
};
pub use witnesses::{MAX_WITNESSES, WitnessEntry, Witnesses};

/// The most bytes a manifest may have. Bounds the work of parsing one that nobody authorized yet (the
/// first manifest cannot be), and the size of a Raft entry. 100 KB manifests fit ten times over.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// The most policies a manifest may list.
pub const MAX_POLICIES: usize = 10_000;
/// The most workload owner keys a manifest may list (each is a point decompression to check).
pub const MAX_OWNER_KEYS: usize = 256;

/// A manifest that parsed and validated. Cheap to clone (shared): a replica's verified history holds
/// every manifest, and a reload after each transition must not copy them all.
#[derive(Debug, Clone)]
pub struct Manifest {
    inner: std::sync::Arc<Parsed>,
}

#[derive(Debug)]
struct Parsed {
    bytes: Vec<u8>,
    hash: Hash,
    policies: BTreeMap<Hash, Policy>,
    reference_values: ReferenceValues,
    workload_owner_keys: Vec<VerifyingKey>,
    seed_share_owners: SeedShareOwners,
    witnesses: Option<Witnesses>,
    transit_keys: BTreeMap<String, TransitKey>,
}

/// What a policy hash is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: Option<String>,
    pub sans: Vec<San>,
    pub workload_secret_id: Option<String>,
    pub role: Option<Role>,
}

/// The roles a policy can have. Only `coordinator` is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Coordinator,
}

/// Who holds the seed shares: fixed by the first manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedShareOwners {
    pub threshold: u8,
    pub keys: Vec<[u8; 32]>,
}

/// Why a manifest was refused. Always names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid manifest: {0}")]
pub struct ManifestError(pub String);

impl Manifest {
    /// Parses `bytes` strictly. The error names the field and says what is expected.
    /// Manifests larger than [`MAX_MANIFEST_BYTES`] are refused before they are read.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError(too_large(bytes.len())));
        }
        doc::parse(bytes, Hash::of(bytes))
    }

    /// [`parse`](Self::parse), with the hash [`Hashed`](crate::hash::Hashed) computed from the
    /// same bytes.
    pub fn parse_hashed(hashed: &crate::hash::Hashed) -> Result<Manifest, ManifestError> {
        let bytes = hashed.bytes();
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError(too_large(bytes.len())));
        }
        doc::parse(bytes, hashed.hash())
    }

    /// The manifest bytes exactly as submitted.
    /// The transparency-log witnesses, if the manifest lists any (PROTOCOL.md §15).
    pub fn witnesses(&self) -> Option<&Witnesses> {
        self.inner.witnesses.as_ref()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.inner.bytes
    }

    /// SHA-256 of [`Manifest::bytes`].
    pub fn hash(&self) -> Hash {
        self.inner.hash
    }

    pub fn policies(&self) -> &BTreeMap<Hash, Policy> {
        &self.inner.policies
    }

    pub fn policy(&self, policy_hash: &Hash) -> Option<&Policy> {
        self.inner.policies.get(policy_hash)
    }

    /// Policy hashes with the `coordinator` role: the builds allowed to run a coordinator.
    pub fn coordinator_policies(&self) -> Vec<Hash> {
        self.inner
            .policies
            .iter()
            .filter(|(_, p)| p.role == Some(Role::Coordinator))
            .map(|(h, _)| *h)
            .collect()
    }

    pub fn reference_values(&self) -> &ReferenceValues {
        &self.inner.reference_values
    }

    pub fn workload_owner_keys(&self) -> &[VerifyingKey] {
        &self.inner.workload_owner_keys
    }

    /// An empty owner key list makes the manifest final: no later update is accepted.
    pub fn is_final(&self) -> bool {
        self.inner.workload_owner_keys.is_empty()
    }

    pub fn seed_share_owners(&self) -> &SeedShareOwners {
        &self.inner.seed_share_owners
    }

    /// The transit API's keys by name (the optional `transit_keys` section).
    pub fn transit_keys(&self) -> &BTreeMap<String, TransitKey> {
        &self.inner.transit_keys
    }

    /// The id of the deployment whose FIRST manifest this is (docs/PROTOCOL.md, "Deployment id"):
    /// SHA-256 over the seed share owners and the workload owner keys, the parties the host is not,
    /// fixed before the first manifest exists.
    ///
    /// Only a first manifest defines its deployment: a later one may list other owner keys.
    ///
    /// A first manifest with no owner key (final from the start) has no owner to authorize it, so its
    /// id also binds the manifest's hash: the host cannot vary its policies without changing the id.
    pub fn deployment_id(&self) -> DeploymentId {
        deployment_id(
            self.seed_share_owners(),
            self.workload_owner_keys().iter().map(|k| k.to_bytes()),
            &self.hash(),
        )
    }
}

/// `SHA-256("concord/v1/deployment" || u8(threshold) || u32be(n) || share owner keys, sorted ||
/// u32be(m) || workload owner keys, sorted [|| manifest hash, only when m = 0])`; keys are 32 bytes
/// each and unique (the parser refuses a key listed twice), so sorting makes the encoding independent
/// of the order they were written in.
fn deployment_id(
    share_owners: &SeedShareOwners,
    owner_keys: impl Iterator<Item = [u8; 32]>,
    manifest_hash: &Hash,
) -> DeploymentId {
    use sha2::{Digest, Sha256};
    let mut shares = share_owners.keys.clone();
    shares.sort_unstable();
    let mut owners: Vec<[u8; 32]> = owner_keys.collect();
    owners.sort_unstable();
    let mut h = Sha256::new();
    h.update(concord_attestation::atls::DEPLOYMENT_LABEL);
    h.update([share_owners.threshold]);
    h.update(count(shares.len()));
    shares.iter().for_each(|k| h.update(k));
    h.update(count(owners.len()));
    owners.iter().for_each(|k| h.update(k));
    if owners.is_empty() {
        h.update(manifest_hash.as_bytes());
    }
    DeploymentId(h.finalize().into())
}

/// At most 255 share owners (the parser's limit) and as many owner keys as a manifest of bounded size
/// holds: always within u32.
fn count(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes()
}

/// Why a manifest of `len` bytes is refused.
pub fn too_large(len: usize) -> String {
    format!(
        "the manifest has {len} bytes, more than the {MAX_MANIFEST_BYTES} Concord accepts; \
         split what it lists across deployments, or shorten it"
    )
}

#[cfg(test)]
mod tests;
