//! `PeerAcceptPolicy`: which coordinator replicas a replica talks to on the peer API, in both directions.
//! Before any manifest exists: exactly this replica's own launch (measurement and policy hash). After: a
//! `coordinator`-role policy of the latest manifest in its store, with that manifest's reference values.

use std::sync::Arc;
use std::time::SystemTime;

use concord_attestation::{
    AcceptPolicy, AttestationError, DeploymentPin, Evidence, ReferenceValues, VerifiedReport,
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

impl<S: Store> PeerAcceptPolicy<S> {
    /// [`AcceptPolicy::verify`] with certificates checked at `now`.
    pub fn verify_at(
        &self,
        evidence: &Evidence,
        expected_report_data: &[u8; 64],
        now: SystemTime,
    ) -> Result<VerifiedReport, AttestationError> {
        let acceptance = self
            .replica
            .read()
            .map_err(|e| AttestationError::Config(e.to_string()))?
            .peer_acceptance();
        self.judge(&acceptance, evidence, expected_report_data, now)
    }

    /// `evidence` under `acceptance`, whatever the platform: the evidence's own `platform` decides
    /// which checks `Verifier::verify` runs, against the reference values for that platform.
    fn judge(
        &self,
        acceptance: &PeerAcceptance,
        evidence: &Evidence,
        expected_report_data: &[u8; 64],
        now: SystemTime,
    ) -> Result<VerifiedReport, AttestationError> {
        let (policies, reference) = match acceptance {
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
            now,
        )
    }
}

impl<S: Store> AcceptPolicy for PeerAcceptPolicy<S> {
    fn verify(
        &self,
        evidence: &Evidence,
        expected_report_data: &[u8; 64],
    ) -> Result<VerifiedReport, AttestationError> {
        self.verify_at(evidence, expected_report_data, SystemTime::now())
    }

    /// A replica that knows its deployment (pinned, or from its history) refuses a peer of another;
    /// it accepts an unpinned peer (a replica with an empty disk started without `--deployment-id`),
    /// which takes this deployment's history and then names it. An unpinned replica accepts any.
    fn deployment_pin(&self) -> DeploymentPin {
        match self.replica.read().map(|c| c.deployment_id()) {
            Ok(own) if own.is_unpinned() => DeploymentPin::Any,
            Ok(own) => DeploymentPin::ThisOrUnpinned(own),
            // A poisoned state. `verify`, which runs first, has already refused on it; fail closed
            // anyway, with an id no deployment has but with negligible probability.
            Err(_) => DeploymentPin::Exactly(concord_attestation::DeploymentId([0xff; 32])),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Real SEV-SNP evidence through the peer admission policy, before and after a manifest.

    use concord_attestation::testing::snp::{self as vectors, Vector};
    use concord_attestation::{PlatformTrust, RejectReason, Verifier};

    use super::*;
    use crate::launch::own_snp_reference;
    use crate::manifest::Manifest;
    use crate::state::Coordinator;
    use crate::store::MemoryStore;
    use crate::testing::TestDeployment;

    /// A fresh replica (no manifest) whose own launch is `own`'s, trusting no simulated root.
    fn fresh_replica_like(own: &Vector) -> PeerAcceptPolicy<MemoryStore> {
        let d = TestDeployment::new();
        let replica = Replica::new(
            Coordinator::open(MemoryStore::new()).unwrap(),
            Arc::new(d.issuer(&d.coordinator_policy)),
            // Real vectors, and no real AMD CRL among them: revocation is snp::crl's tests'.
            Verifier::new(PlatformTrust::default())
                .with_snp_revocation(concord_attestation::snp::SnpRevocation::NotChecked),
        );
        let own_reference = own_snp_reference(&own.report(), None).unwrap();
        PeerAcceptPolicy::new(
            Arc::new(replica),
            Hash(*own.report().host_data()),
            own_reference,
        )
    }

    fn rejection(result: Result<VerifiedReport, AttestationError>) -> RejectReason {
        match result {
            Err(AttestationError::Rejected(reason)) => reason,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn before_a_manifest_only_the_replicas_own_snp_launch_is_accepted() {
        let own = vectors::trustee_genoa_e2e();
        let policy = fresh_replica_like(&own);
        let verified = policy
            .verify_at(&own.evidence(), &own.report_data(), own.at)
            .unwrap();
        assert_eq!(verified.platform(), concord_attestation::Platform::Snp);
        assert_eq!(verified.measurement(), own.report().measurement());

        // Another launch (another measurement) is refused, and so is the right launch for another
        // binding.
        let other = vectors::azure_genoa();
        assert_eq!(
            rejection(policy.verify_at(&other.evidence(), &other.report_data(), other.at)),
            RejectReason::MeasurementNotTrusted
        );
        let mut replayed = own.report_data();
        replayed[0] ^= 1;
        assert_eq!(
            rejection(policy.verify_at(&own.evidence(), &replayed, own.at)),
            RejectReason::ReportDataMismatch
        );
    }

    #[test]
    fn after_a_manifest_snp_evidence_must_name_a_coordinator_policy() {
        let v = vectors::virtee_milan();
        let d = TestDeployment::new();
        let host_data = *v.report().host_data();
        let manifest = Manifest::parse(&d.snp_manifest(host_data, &v.reference())).unwrap();
        let policy = fresh_replica_like(&vectors::trustee_genoa_e2e());
        let acceptance = PeerAcceptance::Manifest {
            policies: manifest.coordinator_policies(),
            reference_values: manifest.reference_values().clone(),
        };
        policy
            .judge(&acceptance, &v.evidence(), &v.report_data(), v.at)
            .unwrap();

        // The same evidence when its policy is in the manifest without the coordinator role.
        let workload_only = PeerAcceptance::Manifest {
            policies: vec![d.workload_policy_hash()],
            reference_values: manifest.reference_values().clone(),
        };
        assert_eq!(
            rejection(policy.judge(&workload_only, &v.evidence(), &v.report_data(), v.at)),
            RejectReason::HostDataNotAccepted
        );
    }

    #[test]
    fn a_replica_that_knows_its_deployment_refuses_peers_of_another() {
        use concord_attestation::{DeploymentId, DeploymentPin};
        let d = TestDeployment::new();
        let policy = |c: Coordinator<MemoryStore>| {
            let replica = Replica::new(
                c,
                Arc::new(d.issuer(&d.coordinator_policy)),
                Verifier::new(PlatformTrust::default())
                    .with_snp_revocation(concord_attestation::snp::SnpRevocation::NotChecked),
            );
            PeerAcceptPolicy::new(
                Arc::new(replica),
                d.coordinator_policy_hash(),
                ReferenceValues::default(),
            )
        };
        let ours = Manifest::parse(&d.manifest(1)).unwrap().deployment_id();
        let other = DeploymentId([5; 32]);

        // Unpinned and fresh: any peer (it may be joining a formed cluster).
        let fresh = policy(Coordinator::open(MemoryStore::new()).unwrap());
        assert_eq!(fresh.deployment_pin(), DeploymentPin::Any);

        // Pinned: its own id, or an unpinned peer (a replica with an empty disk and no flag).
        let mut pinned = Coordinator::open(MemoryStore::new()).unwrap();
        pinned.pin_deployment(ours).unwrap();
        let pin = policy(pinned).deployment_pin();
        assert!(pin.check(&ours).is_ok());
        assert!(pin.check(&DeploymentId::UNPINNED).is_ok());
        assert!(pin.check(&other).is_err());

        // With a history and no flag: the history's id.
        let mut set = Coordinator::open(MemoryStore::new()).unwrap();
        set.set_manifest(
            d.set_request(d.manifest(1), Hash::ZERO),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        let pin = policy(set).deployment_pin();
        assert_eq!(pin, DeploymentPin::ThisOrUnpinned(ours));
        assert!(pin.check(&other).is_err());
    }
}
