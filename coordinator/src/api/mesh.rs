//! The mesh API (port 7777): NewMeshCert for attested workloads, and the policy their evidence must meet.

use std::sync::Arc;
use std::time::SystemTime;

use concord_attestation::{
    AcceptPolicy, AttestationError, DeploymentPin, Evidence, VerifiedReport,
};
use concord_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use super::replica::Replica;
use super::status::to_status;
use crate::hash::Hash;
use crate::store::Store;

/// Admits a workload whose evidence matches the reference values of the current manifest and whose
/// `HOST_DATA` names one of its policies. Refuses everyone while the replica is not ready.
#[derive(Debug)]
pub struct MeshAcceptPolicy<S> {
    replica: Arc<Replica<S>>,
}

impl<S: Store> MeshAcceptPolicy<S> {
    pub fn new(replica: Arc<Replica<S>>) -> MeshAcceptPolicy<S> {
        MeshAcceptPolicy { replica }
    }
}

impl<S: Store> AcceptPolicy for MeshAcceptPolicy<S> {
    fn verify(
        &self,
        evidence: &Evidence,
        expected_report_data: &[u8; 64],
    ) -> Result<VerifiedReport, AttestationError> {
        let coordinator = self
            .replica
            .read()
            .map_err(|e| AttestationError::Config(e.to_string()))?;
        let Some(manifest) = coordinator.serving_manifest() else {
            return Err(AttestationError::Config(
                "this coordinator is not ready (no manifest, or recovering); retry later".into(),
            ));
        };
        let result = self.replica.verifier.verify(
            evidence,
            manifest.reference_values(),
            expected_report_data,
            &|h| manifest.policy(&Hash(*h)).is_some(),
            SystemTime::now(),
        );
        if let Err(e) = &result {
            debug!(error = %e, "workload evidence rejected");
        }
        result
    }

    /// A workload is admitted for its policy hash in this replica's manifest; the deployment its
    /// certificate names is its own business (it refuses a coordinator of another deployment).
    fn deployment_pin(&self) -> DeploymentPin {
        DeploymentPin::Any
    }

    /// The serving manifest's hash: the verdict depends on the manifest (reference values,
    /// policies), the launch-time trust and the time alone; `None` while not ready, so that
    /// [`MeshService`] then verifies afresh and refuses.
    fn fingerprint(&self) -> Option<[u8; 32]> {
        let coordinator = self.replica.read().ok()?;
        coordinator.serving_manifest().map(|m| m.hash().0)
    }
}

/// The mesh API service.
///
/// A connection outlives the manifest it was admitted under (and HTTP/2 lets a workload call again
/// and again on it), so every `NewMeshCert` is decided under the manifest as it is at the call: the
/// handshake's evidence is checked again with [`MeshAcceptPolicy`] (which also refuses while this
/// replica is not ready), and the certificate follows that verdict, not the handshake's.
#[derive(Debug)]
pub struct MeshService<S> {
    replica: Arc<Replica<S>>,
    policy: Arc<MeshAcceptPolicy<S>>,
}

impl<S: Store> MeshService<S> {
    pub fn new(replica: Arc<Replica<S>>) -> MeshService<S> {
        MeshService {
            policy: Arc::new(MeshAcceptPolicy::new(replica.clone())),
            replica,
        }
    }
}

#[tonic::async_trait]
impl<S: Store> pb::mesh_api_server::MeshApi for MeshService<S> {
    async fn new_mesh_cert(
        &self,
        request: Request<pb::NewMeshCertRequest>,
    ) -> Result<Response<pb::NewMeshCertResponse>, Status> {
        let peer = crate::transport::attested_peer(&request, "mesh API")?;
        // The handshake's verdict while the manifest is the same (no signature check, so no hop to
        // another thread); else signature checks over the evidence, off the runtime's workers.
        let verdict = match peer.reverify_unchanged(&*self.policy) {
            Some(verdict) => verdict,
            None => {
                let policy = self.policy.clone();
                let checked = peer.clone();
                tokio::task::spawn_blocking(move || checked.reverify(&*policy))
                    .await
                    .map_err(|e| {
                        Status::internal(format!("checking the workload's evidence: {e}"))
                    })?
            }
        };
        let report = verdict.map_err(|e| {
                crate::observe::global().attestation_failed("mesh", &e);
                match e {
                    // MeshAcceptPolicy's only Config error: this replica is not ready.
                    AttestationError::Config(why) => Status::unavailable(why),
                    e => {
                        warn!(rpc = "NewMeshCert", error = %e, "refused: the connection's evidence does not pass the current manifest");
                        Status::permission_denied(format!(
                            "this connection's evidence does not pass the current manifest ({e}); \
                             the workload is no longer admitted"
                        ))
                    }
                }
            })?;
        let issued = self
            .replica
            .read()
            .and_then(|c| {
                c.issue_mesh_cert(&report, peer.spki_der(), time::OffsetDateTime::now_utc())
            })
            .map_err(|e| {
                let s = to_status(&e);
                warn!(rpc = "NewMeshCert", code = ?s.code(), error = %e, "rejected");
                s
            })?;
        crate::observe::global().certificate_issued();
        info!(rpc = "NewMeshCert", workload = %issued.workload, policy = %hex::encode(peer.report().host_data()), "issued");
        let mut issued = issued;
        Ok(Response::new(pb::NewMeshCertResponse {
            cert_chain: issued.cert_chain_pem,
            mesh_ca: issued.mesh_ca_pem,
            root_ca: issued.root_ca_pem,
            // Moved, not copied: the codec wipes it once it is encoded (concord_proto::wipe).
            workload_secret: std::mem::take(&mut *issued.workload_secret),
        }))
    }
}
