//! Concord's side: replicas started with the integration tests' fixture (`Env`, the real
//! `concord-coordinator` binary on loopback), attested user API clients, and a `Writer` that makes one
//! new, owner-authorized manifest version per SetManifest.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use concord_attestation::PlatformTrust;
use concord_cli::process::CoordinatorProcess;
use concord_coordinator::history::format;
use concord_coordinator::manifest::Manifest;
use concord_proto::v1 as pb;
use concord_proto::v1::user_api_client::UserApiClient;
use concord_tests::{Env, Hash};
use tonic::transport::Channel;

pub type UserClient = UserApiClient<Channel>;

/// Dials replicas' user API and verifies them against manifest v1 of the deployment. Owned, so
/// tasks that outlive a borrow of the `Env` (a poller beside a blocking restart) can dial too.
#[derive(Debug, Clone)]
pub struct Dialer {
    manifest: Manifest,
    trust: PlatformTrust,
}

impl Dialer {
    /// Simulated platform: the benchmark prints the INSECURE warning once, not per connection.
    pub fn new(env: &Env) -> Result<Dialer, String> {
        Ok(Dialer {
            manifest: Manifest::parse(&env.d.manifest(1)).map_err(|e| e.to_string())?,
            trust: PlatformTrust {
                insecure_simulated_root: Some(env.d.root.hash()),
            },
        })
    }

    /// An attested user API client of the replica at `addr`.
    pub async fn user(&self, addr: SocketAddr) -> Result<UserClient, String> {
        concord_cli::remote::user_api(
            &addr.to_string(),
            &self.manifest,
            self.trust.clone(),
            concord_tests::pin(&self.manifest),
        )
        .await
        .map(|(client, _)| client)
        .map_err(|e| e.to_string())
    }

    /// A replica's status over a fresh connection.
    pub async fn status(&self, addr: SocketAddr) -> Result<pb::GetStatusResponse, String> {
        let mut client = self.user(addr).await?;
        client
            .get_status(pb::GetStatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("{addr}: {}", s.message()))
    }

    /// The index of the replica that leads, waiting up to 10 s for an election. Of two replicas that
    /// say they lead, the one of the higher term: a former leader that restarts resumes its old term
    /// as leader until it hears from the current one.
    pub async fn leader(&self, nodes: &[CoordinatorProcess]) -> Result<usize, String> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let mut leader: Option<(u64, usize)> = None;
            for (i, node) in nodes.iter().enumerate() {
                if let Ok(s) = self.status(node.user_addr).await
                    && s.role == "leader"
                    && leader.is_none_or(|(term, _)| s.term > term)
                {
                    leader = Some((s.term, i));
                }
            }
            if let Some((_, i)) = leader {
                return Ok(i);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("the Concord replicas elected no leader within 10 s".into())
    }

    /// Waits until the replica at `addr` is ready at `transitions` transitions, dialing until it
    /// listens, and returns when it first was seen ready. Polls every `every`.
    pub async fn wait_ready(
        &self,
        addr: SocketAddr,
        transitions: u64,
        every: Duration,
        timeout: Duration,
    ) -> Result<Instant, String> {
        let start = Instant::now();
        let mut client = None;
        loop {
            if client.is_none() {
                client = self.user(addr).await.ok();
            }
            if let Some(c) = &mut client
                && is_ready(c, transitions).await
            {
                return Ok(Instant::now());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "the replica at {addr} was not ready at {transitions} transitions within {timeout:?}"
                ));
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// Whether the replica is ready at `transitions` transitions (it holds the latest mesh CA).
pub async fn is_ready(client: &mut UserClient, transitions: u64) -> bool {
    client
        .get_status(pb::GetStatusRequest {})
        .await
        .is_ok_and(|s| {
            let s = s.into_inner();
            s.state == "ready" && s.transitions == transitions
        })
}

/// Makes SetManifest requests, each a new manifest version after the latest acknowledged one,
/// authorized by the deployment's owner key: what `concord set --owner-key` sends.
#[derive(Debug)]
pub struct Writer {
    version: u32,
    latest: Hash,
    transitions: u64,
}

impl Writer {
    /// For a replica with no history yet.
    pub fn new() -> Writer {
        Writer {
            version: 0,
            latest: Hash::ZERO,
            transitions: 0,
        }
    }

    /// Transitions acknowledged so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// The next request; sending it again until one answer arrives is safe (a repeat of an applied
    /// request is a no-op that answers the same transition).
    pub fn next(&self, env: &Env) -> pb::SetManifestRequest {
        let manifest = env.d.manifest(self.version + 1);
        // Every transition is owner-authorized, the first by a key the first manifest lists.
        let t = format::transition_hash(&Hash::of(&manifest), &self.latest);
        let (owner_key, owner_signature) = (
            env.d.owner.verifying_key().to_bytes().to_vec(),
            format::sign_owner(&env.d.owner, &t).to_bytes().to_vec(),
        );
        pb::SetManifestRequest {
            manifest,
            policies: vec![
                env.d.coordinator_policy.clone(),
                env.d.workload_policy.clone(),
            ],
            expected_previous: self.latest.as_bytes().to_vec(),
            owner_key,
            owner_signature,
        }
    }

    /// The manifest version of the latest acknowledged transition.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Takes over after writes made elsewhere: `answer` acknowledged the latest of them, and no
    /// manifest version above `version` was used.
    pub fn adopt(&mut self, answer: &pb::SetManifestResponse, version: u32) -> Result<(), String> {
        self.acknowledged(answer)?;
        self.version = version;
        Ok(())
    }

    /// Records the answer to the request `next` made.
    pub fn acknowledged(&mut self, answer: &pb::SetManifestResponse) -> Result<(), String> {
        let t = answer
            .transition
            .as_ref()
            .ok_or("SetManifest answered without a transition")?;
        self.latest = Hash::from_slice(&t.hash)?;
        self.version += 1;
        self.transitions = t.index + 1;
        Ok(())
    }

    /// Sends the next manifest to `client` and waits for its acknowledgement.
    pub async fn set(
        &mut self,
        env: &Env,
        client: &mut UserClient,
    ) -> Result<pb::SetManifestResponse, String> {
        let answer = client
            .set_manifest(self.next(env))
            .await
            .map_err(|s| format!("SetManifest failed ({:?}): {}", s.code(), s.message()))?
            .into_inner();
        self.acknowledged(&answer)?;
        Ok(answer)
    }
}

/// A Concord cluster of the fixture's replicas, with the deployment they serve.
pub struct Cluster {
    // Dropped in this order: the replicas are killed before their directory is removed.
    pub nodes: Vec<CoordinatorProcess>,
    /// Shared with the writer tasks of the failover under load.
    pub env: std::sync::Arc<Env>,
    pub dialer: Dialer,
    pub writer: Writer,
}

impl Cluster {
    /// Starts `n` replicas, fresh: no manifest yet.
    pub fn start(n: u64) -> Result<Cluster, String> {
        let env = Env::new();
        let nodes = env.start_cluster(n);
        Ok(Cluster {
            nodes,
            dialer: Dialer::new(&env)?,
            env: std::sync::Arc::new(env),
            writer: Writer::new(),
        })
    }

    /// A client of the replica that leads now.
    pub async fn leader_client(&self) -> Result<UserClient, String> {
        let leader = self.dialer.leader(&self.nodes).await?;
        self.dialer.user(self.nodes[leader].user_addr).await
    }

    /// Waits until every running replica is ready with every acknowledged transition.
    pub async fn wait_all_ready(&self) -> Result<(), String> {
        for node in &self.nodes {
            self.dialer
                .wait_ready(
                    node.user_addr,
                    self.writer.transitions(),
                    Duration::from_millis(10),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|e| format!("{e}; see {}", node.log.display()))?;
        }
        Ok(())
    }
}
