//! Whom a leader may seal a new mesh CA key to (PROTOCOL.md §7.1): a peer's seal key counts only
//! together with fresh evidence whose report data binds that key to this replica's nonce
//! ([`SealKeyEvidence`]), and a key is sealed to only if *that* evidence matches a `coordinator`
//! policy of the manifest the mesh CA serves ([`Coordinators::recipients`]). Also the serving side's
//! bound on the evidence `SealKey` answers cost ([`SealEvidenceGate`]).
//!
//! Pure checks, no I/O, except the gate, which runs the issuer off the runtime's threads. This module
//! must never let a key stand with evidence that does not bind it: the evidence checked against the
//! manifest is the evidence of the process that holds the key, not that of whichever connection
//! carried the answer (a kept channel that tonic reconnects to another process at the same address
//! changes the connection, not the binding).

use std::sync::Arc;
use std::time::Duration;

use concord_attestation::{
    AcceptPolicy, AttestationError, DeploymentId, Evidence, EvidenceIssuer, VerifiedReport,
};
use concord_proto::v1 as pb;
use tonic::Status;
use tracing::debug;

use super::links::SealTarget;
use crate::raft::NodeId;

/// A peer's seal key with the evidence that binds it: the answer to a `SealKey` request that carried
/// this replica's nonce, verified under the peer admission policy when it arrived. Only
/// [`SealKeyEvidence::accept`] makes one, so a key never travels without its evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealKeyEvidence {
    key: [u8; 32],
    evidence: Evidence,
    /// `seal_key_report_data(nonce, key, deployment)`, computed here from this replica's nonce.
    report_data: [u8; 64],
    deployment: DeploymentId,
}

impl SealKeyEvidence {
    /// Accepts `answer` to a `SealKey` request with `nonce` if its evidence binds exactly the key and
    /// the deployment it names and this nonce, and passes `policy` (the peer admission policy, with
    /// its deployment pin). CPU work (a report signature and its chain): not on the runtime's threads.
    pub fn accept(
        policy: &dyn AcceptPolicy,
        nonce: &[u8; 32],
        answer: &pb::SealKeyResponse,
    ) -> Result<SealKeyEvidence, AttestationError> {
        let key = <[u8; 32]>::try_from(answer.public_key.as_slice()).map_err(|_| {
            AttestationError::Malformed {
                what: format!(
                    "seal key answer: a public key of {} bytes, not 32",
                    answer.public_key.len()
                ),
            }
        })?;
        let deployment = <[u8; 32]>::try_from(answer.deployment.as_slice())
            .map(DeploymentId)
            .map_err(|_| AttestationError::Malformed {
                what: format!(
                    "seal key answer: a deployment id of {} bytes, not 32 (a build that does \
                         not bind its seal key to evidence?)",
                    answer.deployment.len()
                ),
            })?;
        let evidence = Evidence::from_bytes(&answer.evidence)?;
        let report_data = concord_mesh_ca::seal_key_report_data(nonce, &key, &deployment.0);
        policy.verify(&evidence, &report_data)?;
        policy.deployment_pin().check(&deployment)?;
        Ok(SealKeyEvidence {
            key,
            evidence,
            report_data,
            deployment,
        })
    }

    /// The seal key the evidence binds.
    pub fn key(&self) -> [u8; 32] {
        self.key
    }

    /// Checks the evidence again under `policy` (the manifest a mesh CA key will serve).
    pub fn check(&self, policy: &dyn AcceptPolicy) -> Result<VerifiedReport, AttestationError> {
        let report = policy.verify(&self.evidence, &self.report_data)?;
        policy.deployment_pin().check(&self.deployment)?;
        Ok(report)
    }
}

/// The `coordinator`-role policies and reference values of a manifest: whom a mesh CA key that serves
/// it may be sealed to.
pub(crate) struct Coordinators {
    policies: Vec<[u8; 32]>,
    reference: concord_attestation::ReferenceValues,
}

impl Coordinators {
    pub(crate) fn of(manifest: &crate::manifest::Manifest) -> Coordinators {
        Coordinators {
            policies: manifest
                .coordinator_policies()
                .iter()
                .map(|h| *h.as_bytes())
                .collect(),
            reference: manifest.reference_values().clone(),
        }
    }

    /// What the check of [`Coordinators::recipients`] depends on besides the evidence: the
    /// reference values, the policies and the deployment. Equal fingerprints, equal verdicts.
    pub(crate) fn fingerprint(&self, deployment: DeploymentId) -> [u8; 32] {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(b"concord/seal-recipients");
        h.update(serde_json::to_vec(&self.reference).unwrap_or_default());
        for p in &self.policies {
            h.update(p);
        }
        h.update(deployment.0);
        h.finalize().into()
    }

    /// The targets whose seal key evidence matches a `coordinator`-role policy of this manifest and
    /// this deployment (or a replica not pinned yet, as the peer API admits): checked now, unless it
    /// was under the same fingerprint within `SEAL_VERDICT_TTL` (`keep_seal_keys` checks ahead,
    /// under the latest manifest, so the commit path usually verifies nothing). Also returns the
    /// (id, dial) of the links checked now, to record.
    pub(crate) fn recipients(
        &self,
        verifier: &concord_attestation::Verifier,
        deployment: DeploymentId,
        targets: &[SealTarget],
    ) -> (Vec<crate::state::SealRecipient>, Vec<(NodeId, u64)>) {
        let fingerprint = self.fingerprint(deployment);
        let policy = concord_attestation::StaticPolicy {
            verifier: verifier.clone(),
            reference: self.reference.clone(),
            host_data: self.policies.clone(),
            deployment: concord_attestation::DeploymentPin::ThisOrUnpinned(deployment),
        };
        let mut checked = Vec::new();
        let recipients = targets
            .iter()
            .filter(|t| {
                if t.verdict == Some(fingerprint) {
                    return true;
                }
                match t.sealing.check(&policy) {
                    Ok(_) => {
                        checked.push((t.id, t.dial));
                        true
                    }
                    Err(e) => {
                        debug!(peer = t.id, error = %e, "not sealing the mesh CA key to a peer whose seal key evidence does not match the manifest");
                        false
                    }
                }
            })
            .map(|t| crate::state::SealRecipient {
                node: t.id,
                seal_key: t.sealing.key(),
            })
            .collect();
        (recipients, checked)
    }
}

/// The least time between two reports made for `SealKey` answers: at most 20 a second, whoever asks.
pub const SEAL_EVIDENCE_GAP: Duration = Duration::from_millis(50);

/// How long a `SealKey` request waits for its turn before it is refused (ResourceExhausted).
pub const SEAL_EVIDENCE_WAIT: Duration = Duration::from_secs(2);

/// The serving side's bound on `SealKey` evidence: one report at a time, [`SEAL_EVIDENCE_GAP`] apart.
/// A report costs a call to the platform (on SEV-SNP, the secure processor the whole host shares);
/// only attested coordinators reach `SealKey`, and an honest one asks once per link (and again
/// only when the key it holds changed), so the bound never slows an honest cluster.
#[derive(Debug, Default)]
pub struct SealEvidenceGate {
    /// When the last report was made.
    last: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl SealEvidenceGate {
    /// Evidence from `issuer` whose report data is `report_data`, when this caller's turn comes.
    pub async fn issue(
        &self,
        issuer: Arc<dyn EvidenceIssuer>,
        report_data: [u8; 64],
    ) -> Result<Evidence, Status> {
        let mut last = tokio::time::timeout(SEAL_EVIDENCE_WAIT, self.last.lock())
            .await
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "this replica is busy making seal key evidence for other peers (at most one \
                     report every {SEAL_EVIDENCE_GAP:?}); retry later"
                ))
            })?;
        if let Some(at) = *last {
            tokio::time::sleep_until(at + SEAL_EVIDENCE_GAP).await;
        }
        let evidence = tokio::task::spawn_blocking(move || issuer.issue(&report_data))
            .await
            .map_err(|e| Status::internal(format!("the evidence task failed: {e}")))?
            .map_err(|e| {
                Status::unavailable(format!(
                    "this replica cannot make evidence for its seal key: {e}"
                ))
            });
        *last = Some(tokio::time::Instant::now());
        if evidence.is_ok() {
            crate::observe::global().seal_key_report();
        }
        evidence
    }
}

#[cfg(test)]
mod tests {
    //! The "Not mended" pairing of issue 11.5: the seal key answer comes from another process than
    //! the one whose evidence the leader checked. Here the evidence checked *is* the answer's.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use concord_attestation::{DeploymentPin, EvidenceIssuer as _, RejectReason, StaticPolicy};

    use super::*;
    use crate::hash::Hash;
    use crate::manifest::Manifest;
    use crate::testing::TestDeployment;

    const DEPLOYMENT: DeploymentId = DeploymentId([0x5e; 32]);

    /// A process running `policy`, with its seal key.
    struct Process {
        policy: Vec<u8>,
        key: concord_mesh_ca::SealKey,
    }

    impl Process {
        fn new(policy: &[u8]) -> Process {
            Process {
                policy: policy.to_vec(),
                key: concord_mesh_ca::SealKey::generate().unwrap(),
            }
        }

        /// Its answer to `nonce`, with evidence from its platform over `bound_key` and `deployment`
        /// (what an honest process binds: its own key and its deployment).
        fn answer_binding(
            &self,
            d: &TestDeployment,
            nonce: &[u8; 32],
            bound_key: &[u8; 32],
            deployment: DeploymentId,
        ) -> pb::SealKeyResponse {
            let report_data =
                concord_mesh_ca::seal_key_report_data(nonce, bound_key, &deployment.0);
            pb::SealKeyResponse {
                public_key: self.key.public_key().to_vec(),
                evidence: d
                    .issuer(&self.policy)
                    .issue(&report_data)
                    .unwrap()
                    .to_bytes(),
                deployment: deployment.0.to_vec(),
            }
        }

        /// Its honest answer to `nonce`.
        fn answer(&self, d: &TestDeployment, nonce: &[u8; 32]) -> pb::SealKeyResponse {
            self.answer_binding(d, nonce, &self.key.public_key(), DEPLOYMENT)
        }
    }

    /// A manifest whose `coordinator` policies are `policies`.
    fn manifest(d: &TestDeployment, policies: &[&[u8]]) -> Manifest {
        let mut doc: serde_json::Value = serde_json::from_slice(&d.manifest(1)).unwrap();
        let all = doc["policies"].as_object_mut().unwrap();
        all.remove(&d.coordinator_policy_hash().to_hex());
        for (i, p) in policies.iter().enumerate() {
            all.insert(
                Hash::of(p).to_hex(),
                serde_json::json!({ "name": format!("coordinator-{i}"), "sans": [], "role": "coordinator" }),
            );
        }
        Manifest::parse(&serde_json::to_vec(&doc).unwrap()).unwrap()
    }

    /// The peer admission policy of a replica whose latest manifest is `m`.
    fn admission(d: &TestDeployment, m: &Manifest) -> StaticPolicy {
        StaticPolicy {
            verifier: verifier(d),
            reference: m.reference_values().clone(),
            host_data: Coordinators::of(m).policies,
            deployment: DeploymentPin::ThisOrUnpinned(DEPLOYMENT),
        }
    }

    fn verifier(d: &TestDeployment) -> concord_attestation::Verifier {
        concord_attestation::Verifier::new(concord_attestation::PlatformTrust {
            insecure_simulated_root: Some(d.root.hash()),
        })
    }

    fn target(id: NodeId, sealing: SealKeyEvidence) -> SealTarget {
        SealTarget {
            id,
            sealing: Arc::new(sealing),
            dial: id,
            verdict: None,
        }
    }

    fn nonce() -> [u8; 32] {
        rand::random()
    }

    /// The attack of "Not mended": the leader's link to replica 2 was attested as process A (a
    /// coordinator of the new manifest); tonic reconnected it to process B at the same address (a
    /// build only the old manifest allowed) before the seal key answer, which is B's. The key is
    /// B's, so the evidence checked against the new manifest is B's, and no copy is sealed to it.
    #[test]
    fn a_seal_key_answered_by_another_process_is_checked_with_that_process_evidence() {
        let d = TestDeployment::new();
        let (a_policy, b_policy) = (b"build A".as_slice(), b"build B, dropped".as_slice());
        let old = manifest(&d, &[a_policy, b_policy]);
        let new = manifest(&d, &[a_policy]);
        let (a, b) = (Process::new(a_policy), Process::new(b_policy));

        // Under the old manifest both are admitted peers: B's answer is accepted as B's key.
        let n = nonce();
        let from_b = SealKeyEvidence::accept(&admission(&d, &old), &n, &b.answer(&d, &n)).unwrap();
        assert_eq!(from_b.key(), b.key.public_key());
        let n = nonce();
        let from_a = SealKeyEvidence::accept(&admission(&d, &old), &n, &a.answer(&d, &n)).unwrap();

        // The new manifest's recipients: A, not B, whichever link each answer came over.
        let (recipients, checked) = Coordinators::of(&new).recipients(
            &verifier(&d),
            DEPLOYMENT,
            &[target(2, from_b.clone()), target(3, from_a)],
        );
        assert_eq!(
            recipients
                .iter()
                .map(|r| (r.node, r.seal_key))
                .collect::<Vec<_>>(),
            vec![(3, a.key.public_key())],
            "a mesh CA key was sealed to the key of a process the new manifest does not admit"
        );
        assert_eq!(checked, vec![(3, 3)]);
        // Under the old manifest, B's key would be sealed to: the check is the manifest's.
        let (recipients, _) =
            Coordinators::of(&old).recipients(&verifier(&d), DEPLOYMENT, &[target(2, from_b)]);
        assert_eq!(recipients.len(), 1);
    }

    /// An answer whose evidence binds another key, another nonce or another deployment than the
    /// answer names is refused: B cannot pass A's evidence off for its own key, nor replay an old
    /// answer, nor rename its deployment.
    #[test]
    fn an_answer_whose_evidence_does_not_bind_its_key_and_the_nonce_is_refused() {
        let d = TestDeployment::new();
        let a_policy = b"build A".as_slice();
        let m = manifest(&d, &[a_policy]);
        let policy = admission(&d, &m);
        let (a, b) = (Process::new(a_policy), Process::new(a_policy));
        let mismatch = Err(AttestationError::from(RejectReason::ReportDataMismatch));
        let n = nonce();

        // A's evidence (for A's key) with B's key in the answer.
        let mut swapped = a.answer(&d, &n);
        swapped.public_key = b.key.public_key().to_vec();
        assert_eq!(SealKeyEvidence::accept(&policy, &n, &swapped), mismatch);
        // B's answer with evidence binding A's key.
        let other_key = b.answer_binding(&d, &n, &a.key.public_key(), DEPLOYMENT);
        assert_eq!(SealKeyEvidence::accept(&policy, &n, &other_key), mismatch);
        // An answer made for another nonce (a replay).
        let replay = a.answer(&d, &nonce());
        assert_eq!(SealKeyEvidence::accept(&policy, &n, &replay), mismatch);
        // Evidence for another deployment than the answer names.
        let mut renamed = a.answer(&d, &n);
        renamed.deployment = vec![0x77; 32];
        assert_eq!(SealKeyEvidence::accept(&policy, &n, &renamed), mismatch);
        // Evidence made for an aTLS handshake of the same nonce: another binding.
        let mut handshake = a.answer(&d, &n);
        let atls = concord_attestation::atls::binding(b"spki", &n, &DEPLOYMENT);
        handshake.evidence = d.issuer(a_policy).issue(&atls).unwrap().to_bytes();
        assert_eq!(SealKeyEvidence::accept(&policy, &n, &handshake), mismatch);
        // An older build's answer: the key alone.
        let bare = pb::SealKeyResponse {
            public_key: a.key.public_key().to_vec(),
            ..Default::default()
        };
        assert!(matches!(
            SealKeyEvidence::accept(&policy, &n, &bare),
            Err(AttestationError::Malformed { .. })
        ));
        // A process of a build no manifest admits, binding correctly: refused by the admission.
        let stranger = Process::new(b"a stranger");
        assert!(SealKeyEvidence::accept(&policy, &n, &stranger.answer(&d, &n)).is_err());
        // Another pinned deployment than the one this replica serves: refused by the pin.
        let elsewhere = a.answer_binding(&d, &n, &a.key.public_key(), DeploymentId([0x66; 32]));
        assert!(SealKeyEvidence::accept(&policy, &n, &elsewhere).is_err());
        // The honest answer passes.
        assert!(SealKeyEvidence::accept(&policy, &n, &a.answer(&d, &n)).is_ok());
    }

    /// A stand-in replica process on the peer port: mutual aTLS with its own evidence, and a
    /// `SealKey` that answers as a real replica does; everything else is unimplemented.
    struct StandIn {
        issuer: Arc<dyn EvidenceIssuer>,
        key: concord_mesh_ca::SealKey,
        asked: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[tonic::async_trait]
    impl pb::peer_api_server::PeerApi for StandIn {
        async fn append_entries(
            &self,
            _: tonic::Request<pb::RaftMessage>,
        ) -> Result<tonic::Response<pb::RaftMessage>, Status> {
            Err(Status::unimplemented("stand-in"))
        }

        async fn vote(
            &self,
            _: tonic::Request<pb::RaftMessage>,
        ) -> Result<tonic::Response<pb::RaftMessage>, Status> {
            Err(Status::unimplemented("stand-in"))
        }

        async fn install_snapshot(
            &self,
            _: tonic::Request<pb::RaftMessage>,
        ) -> Result<tonic::Response<pb::RaftMessage>, Status> {
            Err(Status::unimplemented("stand-in"))
        }

        async fn recover(
            &self,
            _: tonic::Request<pb::PeerRecoverRequest>,
        ) -> Result<tonic::Response<pb::PeerRecoverResponse>, Status> {
            Err(Status::unimplemented("stand-in"))
        }

        async fn forward_set_manifest(
            &self,
            _: tonic::Request<pb::SetManifestRequest>,
        ) -> Result<tonic::Response<pb::SetManifestResponse>, Status> {
            Err(Status::unimplemented("stand-in"))
        }

        async fn forward_command(
            &self,
            _: tonic::Request<pb::RaftMessage>,
        ) -> Result<tonic::Response<pb::RaftMessage>, Status> {
            Err(Status::unimplemented("stand-in"))
        }

        async fn read_index(
            &self,
            _: tonic::Request<pb::ReadIndexRequest>,
        ) -> Result<tonic::Response<pb::ReadIndexResponse>, Status> {
            Err(Status::unimplemented("stand-in"))
        }

        async fn forward_set_members(
            &self,
            _: tonic::Request<pb::SetMembersRequest>,
        ) -> Result<tonic::Response<pb::SetMembersResponse>, Status> {
            Err(Status::unimplemented("stand-in"))
        }

        async fn peer_state(
            &self,
            _: tonic::Request<pb::PeerStateRequest>,
        ) -> Result<tonic::Response<pb::PeerStateResponse>, Status> {
            Err(Status::unimplemented("stand-in"))
        }

        async fn join(
            &self,
            _: tonic::Request<pb::JoinRequest>,
        ) -> Result<tonic::Response<pb::SetMembersResponse>, Status> {
            Err(Status::unimplemented("stand-in"))
        }

        async fn confirm_join(
            &self,
            _: tonic::Request<pb::ConfirmJoinRequest>,
        ) -> Result<tonic::Response<pb::ConfirmJoinResponse>, Status> {
            Err(Status::unimplemented("stand-in"))
        }

        async fn seal_key(
            &self,
            request: tonic::Request<pb::SealKeyRequest>,
        ) -> Result<tonic::Response<pb::SealKeyResponse>, Status> {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let public_key = self.key.public_key();
            let mut answer = pb::SealKeyResponse {
                public_key: public_key.to_vec(),
                ..Default::default()
            };
            if let Ok(nonce) = <[u8; 32]>::try_from(request.get_ref().nonce.as_slice()) {
                let report_data =
                    concord_mesh_ca::seal_key_report_data(&nonce, &public_key, &DEPLOYMENT.0);
                answer.evidence = self.issuer.issue(&report_data).unwrap().to_bytes();
                answer.deployment = DEPLOYMENT.0.to_vec();
            }
            Ok(tonic::Response::new(answer))
        }
    }

    /// Serves a stand-in for `policy` on loopback; returns its address, seal key and ask counter.
    async fn stand_in(
        d: &TestDeployment,
        policy: &[u8],
        admission: StaticPolicy,
    ) -> (
        std::net::SocketAddr,
        [u8; 32],
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let issuer: Arc<dyn EvidenceIssuer> = Arc::new(d.issuer(policy));
        let acceptor = concord_attestation::AtlsAcceptor::new(
            issuer.clone(),
            Arc::new(rcgen::KeyPair::generate().unwrap()),
            Arc::new(DEPLOYMENT),
            concord_attestation::ClientAuth::Required(Arc::new(admission)),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let key = concord_mesh_ca::SealKey::generate().unwrap();
        let public_key = key.public_key();
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let service = StandIn {
            issuer,
            key,
            asked: asked.clone(),
        };
        let limits = crate::transport::ListenerLimits::for_api("peer");
        let incoming = crate::transport::incoming(
            listener,
            Arc::new(acceptor),
            "peer",
            &limits,
            &tokio::runtime::Handle::current(),
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::peer_api_server::PeerApiServer::new(service))
                .serve_with_incoming(incoming),
        );
        (addr, public_key, asked)
    }

    /// A TCP relay the "host" controls: it forwards new connections to its current upstream, and
    /// `switch` points it elsewhere and cuts the connections it carries.
    struct Relay {
        addr: std::net::SocketAddr,
        upstream: Arc<std::sync::Mutex<std::net::SocketAddr>>,
        carried: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    }

    impl Relay {
        async fn start(upstream: std::net::SocketAddr) -> Relay {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let relay = Relay {
                addr: listener.local_addr().unwrap(),
                upstream: Arc::new(std::sync::Mutex::new(upstream)),
                carried: Arc::default(),
            };
            let (upstream, carried) = (relay.upstream.clone(), relay.carried.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let to = *upstream.lock().unwrap();
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    carried.lock().unwrap().push(task);
                }
            });
            relay
        }

        fn switch(&self, to: std::net::SocketAddr) {
            *self.upstream.lock().unwrap() = to;
            for task in self.carried.lock().unwrap().drain(..) {
                task.abort();
            }
        }
    }

    /// "Not mended", through the real `PeerLinks`: the leader's link to replica 2 is dialed and
    /// attested with process A; the host then points the address at process B (a build only the old
    /// manifest admits) and cuts the connection, so tonic reconnects the kept channel to B before
    /// the first `SealKey`. B's key is what the link caches; the evidence it is checked with under
    /// the new manifest must be B's, so nothing is sealed to it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_link_reconnected_to_another_process_does_not_lend_it_the_first_evidence() {
        let d = TestDeployment::new();
        let (a_policy, b_policy) = (b"build A".as_slice(), b"build B, dropped".as_slice());
        let old = manifest(&d, &[a_policy, b_policy]);
        let new = manifest(&d, &[a_policy]);
        let (a_addr, a_key, _) = stand_in(&d, a_policy, admission(&d, &old)).await;
        let (b_addr, b_key, b_asked) = stand_in(&d, b_policy, admission(&d, &old)).await;
        let relay = Relay::start(a_addr).await;
        let leader = Arc::new(
            concord_attestation::AtlsClient::new(
                Arc::new(admission(&d, &old)),
                Some(concord_attestation::ClientIdentity {
                    issuer: Arc::new(d.issuer(a_policy)),
                    key: Arc::new(rcgen::KeyPair::generate().unwrap()),
                    deployment: Arc::new(DEPLOYMENT),
                }),
            )
            .unwrap(),
        );
        let links = super::super::links::PeerLinks::new(leader, Arc::new(admission(&d, &old)));
        let at = relay.addr.to_string();

        // The link is dialed and attested: process A.
        let (_, peer) = links.get(2, &at).await.unwrap();
        assert_eq!(peer.report().host_data(), Hash::of(a_policy).as_bytes());
        // The host moves the address to B and cuts the connection; once tonic has seen it close, the
        // kept channel reconnects (to B) on the next call, without a new link being recorded.
        relay.switch(b_addr);
        let start = std::time::Instant::now();
        let key = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            match links.seal_key(2, &at, Duration::from_secs(5)).await {
                Ok(Some(key)) => break key,
                other => assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "no seal key: {other:?}"
                ),
            }
        };
        assert_eq!(key, b_key, "the answer came from B, over the kept link");
        assert!(b_asked.load(std::sync::atomic::Ordering::SeqCst) > 0);
        assert_ne!(key, a_key);
        // The link still carries A's handshake: the pairing of the old code (B's key, A's evidence).
        let (_, still) = links.get(2, &at).await.unwrap();
        assert_eq!(
            still.report().host_data(),
            Hash::of(a_policy).as_bytes(),
            "the link was dialed again rather than reconnected: not the case under test"
        );

        let targets = links.seal_targets([2]);
        let (recipients, _) =
            Coordinators::of(&new).recipients(&verifier(&d), DEPLOYMENT, &targets);
        assert!(
            recipients.iter().all(|r| r.seal_key != b_key),
            "the new mesh CA key was sealed to process B's key, which the new manifest does not admit"
        );
    }

    /// The serving side makes at most one report per gap, however many ask at once.
    #[tokio::test]
    async fn seal_key_evidence_is_made_one_at_a_time_and_spaced() {
        let d = TestDeployment::new();
        let issuer: Arc<dyn EvidenceIssuer> = Arc::new(d.issuer(b"build A"));
        let gate = Arc::new(SealEvidenceGate::default());
        let start = tokio::time::Instant::now();
        let asks: Vec<_> = (0..5)
            .map(|i| {
                let (gate, issuer) = (gate.clone(), issuer.clone());
                tokio::spawn(
                    async move { gate.issue(issuer, [i; 64]).await.map(|_| start.elapsed()) },
                )
            })
            .collect();
        let mut at = Vec::new();
        for a in asks {
            at.push(a.await.unwrap().unwrap());
        }
        at.sort();
        for pair in at.windows(2) {
            assert!(pair[1] - pair[0] >= SEAL_EVIDENCE_GAP, "{at:?}");
        }
    }
}
