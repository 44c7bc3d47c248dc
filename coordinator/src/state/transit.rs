//! What the transit API (`crate::transit`) needs from the core: the latest manifest with the seed engine
//! its keys are derived from, and a server certificate from the current mesh CA. Only on a ready
//! replica; nothing here writes or returns a key.

use concord_mesh_ca::SeedEngine;
use time::OffsetDateTime;

use super::{Coordinator, ReplicaState};
use crate::error::CoordinatorError;
use crate::history::MeshCerts;
use crate::manifest::Manifest;
use crate::store::{Key, Store};

/// The current manifest and the engine that derives its transit keys. The engine is a copy of the
/// seed and salt, wiped when dropped: held for one request, outside the replica's lock.
pub struct TransitMaterial {
    pub manifest: Manifest,
    pub engine: SeedEngine,
}

impl std::fmt::Debug for TransitMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransitMaterial(redacted)")
    }
}

/// A server certificate issued by the current mesh CA, with what chains it.
#[derive(Debug, Clone)]
pub struct ServiceCert {
    pub leaf_der: Vec<u8>,
    /// The mesh CA signed by the root CA: a client that pins the root CA (stable across manifests)
    /// chains the leaf through it.
    pub intermediate_der: Vec<u8>,
    /// The self-signed mesh CA: the trust anchor for workload client certificates.
    pub mesh_ca_der: Vec<u8>,
}

impl<S: Store> Coordinator<S> {
    fn not_ready(&self) -> CoordinatorError {
        match self.state() {
            ReplicaState::Recovering => CoordinatorError::Recovering,
            _ => CoordinatorError::NoManifest,
        }
    }

    /// The latest manifest and a copy of the seed engine, on a ready replica only.
    pub fn transit_material(&self) -> Result<TransitMaterial, CoordinatorError> {
        match (self.state(), &self.history, &self.secrets) {
            (ReplicaState::Ready, Some(h), Some(s)) => Ok(TransitMaterial {
                manifest: h.chain.latest_manifest().clone(),
                engine: s.engine.clone(),
            }),
            _ => Err(self.not_ready()),
        }
    }

    /// The DER of the current mesh CA of a ready replica.
    pub fn current_mesh_ca_der(&self) -> Option<Vec<u8>> {
        match (self.state(), &self.secrets) {
            (ReplicaState::Ready, Some(s)) => Some(s.mesh_ca.mesh_ca_der().to_vec()),
            _ => None,
        }
    }

    /// The mesh CA of the transition before the latest, on a ready replica: the transit API accepts
    /// workload certificates from it for a grace period, so workloads are not cut off by a manifest
    /// update while they renew. Read from the store, which the host can write, so it is used only if
    /// its intermediate is signed by this replica's root CA (derived from the seed) and the self-signed
    /// certificate has the intermediate's subject and key: the host cannot slip in a CA of its own.
    pub fn previous_mesh_ca_der(&self) -> Option<Vec<u8>> {
        let (ReplicaState::Ready, Some(h), Some(s)) = (self.state(), &self.history, &self.secrets)
        else {
            return None;
        };
        let n = h.chain.len();
        let previous = h.chain.hash_at(n.checked_sub(2)?)?;
        let bytes = self.store().get(&Key::MeshCerts(previous)).ok()??;
        let certs: MeshCerts = serde_json::from_slice(&bytes).ok()?;
        let (_, root) = x509_parser::parse_x509_certificate(s.root_ca.cert_der()).ok()?;
        let (_, intermediate) =
            x509_parser::parse_x509_certificate(&certs.intermediate_der).ok()?;
        let (_, mesh) = x509_parser::parse_x509_certificate(&certs.mesh_ca_der).ok()?;
        intermediate
            .verify_signature(Some(root.public_key()))
            .ok()?;
        mesh.verify_signature(None).ok()?;
        (mesh.public_key().raw == intermediate.public_key().raw
            && mesh.subject().as_raw() == intermediate.subject().as_raw())
        .then(|| certs.mesh_ca_der.clone())
    }

    /// A server certificate for `spki_der` named `sans`, issued by the current mesh CA.
    pub fn issue_service_cert(
        &self,
        spki_der: &[u8],
        common_name: &str,
        sans: &[String],
        now: OffsetDateTime,
    ) -> Result<ServiceCert, CoordinatorError> {
        let (ReplicaState::Ready, Some(s)) = (self.state(), &self.secrets) else {
            return Err(self.not_ready());
        };
        let leaf = s
            .mesh_ca
            .issue(spki_der, common_name, sans, now)
            .map_err(|e| {
                CoordinatorError::InvalidInput(format!("cannot issue a certificate: {e}"))
            })?;
        Ok(ServiceCert {
            leaf_der: leaf.der,
            intermediate_der: s.mesh_ca.intermediate_der().to_vec(),
            mesh_ca_der: s.mesh_ca.mesh_ca_der().to_vec(),
        })
    }
}
