//! `PeerAcceptPolicy`: which coordinator replicas a replica talks to on the peer API, in both directions.
//! Before any manifest exists: exactly this replica's own launch (measurement and policy hash). After: a
//! `coordinator`-role policy of the latest manifest in its store, with that manifest's reference values.

use std::sync::Arc;
use std::time::SystemTime;

use concord_attestation::{
    AcceptPolicy, AttestationError, Evidence, ReferenceValues, VerifiedReport,
};

use super::replica::Replica;
use crate::hash::Hash;
use crate::state::PeerAcceptance;
use crate::store::Store;

/// The peer admission policy of one replica.
#[derive(Debug)]
pub struct PeerAcceptPolicy<S> {
    replica: Arc<Replica<S>>,
    own_policy: Hash,
    own_reference: ReferenceValues,
}

impl<S: Store> PeerAcceptPolicy<S> {
    pub fn new(replica: Arc<Replica<S>>, own_policy: Hash, own_reference: ReferenceValues) -> Self {
        PeerAcceptPolicy {
            replica,
            own_policy,
            own_reference,
        }
    }
}

impl<S: Store> AcceptPolicy for PeerAcceptPolicy<S> {
    fn verify(
        &self,
        evidence: &Evidence,
        expected_report_data: &[u8; 64],
    ) -> Result<VerifiedReport, AttestationError> {
        let acceptance = self
            .replica
            .read()
            .map_err(|e| AttestationError::Config(e.to_string()))?
            .peer_acceptance();
        let (policies, reference) = match &acceptance {
            PeerAcceptance::OwnIdentity => (vec![self.own_policy], &self.own_reference),
            PeerAcceptance::Manifest {
                policies,
                reference_values,
            } => (policies.clone(), reference_values),
        };
        self.replica.verifier.verify(
            evidence,
            reference,
            expected_report_data,
            &|h| policies.contains(&Hash(*h)),
            SystemTime::now(),
        )
    }
}
