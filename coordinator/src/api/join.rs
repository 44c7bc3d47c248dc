//! A replica that starts with an empty Raft state: does it form a new cluster, wait for the one being
//! formed, or rejoin one that exists (a lost or repaired disk)? A replica that was never a member (a
//! new replica of a scaled-up StatefulSet) asks too, is refused, and waits: only a workload owner's
//! `concord cluster set-members` adds a member (`Node::set_members`), and it then rejoins as the
//! learner that change made it.
//!
//! Owns that decision ([`decide`], a pure function of what the peers answered, tested without
//! sockets) and the loop that asks the peers and carries it out ([`form_or_join`]). Until it has
//! decided, and while it rejoins, the replica refuses to vote ([`super::Node::is_joining`]): a voter
//! that forgot its log and its vote could otherwise help elect a leader that lacks a committed entry
//! (Raft's lost-disk hazard). It rejoins through the leader, which demotes it to a learner, waits
//! until it caught up, and makes it a voter again; the leader first checks that the caller is the
//! member at the recorded address (`Node::join`: it asks that address to confirm the caller's nonce).
//! It must never initialize a cluster while any peer shows that a leader was elected once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use concord_proto::v1 as pb;
use openraft::BasicNode;
use tracing::{debug, info, warn};

use super::node::Node;
use crate::raft::NodeId;
use crate::store::Store;

/// What a peer said about its Raft state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    pub initialized: bool,
    pub last_log_index: Option<u64>,
}

/// What a replica with an empty Raft state does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A leader was elected once (a peer's log goes past the formation entry): ask to be made a voter
    /// again, through this peer.
    Rejoin { via: NodeId },
    /// Nobody formed a cluster, a majority of the members says so, and this replica has the lowest id:
    /// form it.
    Form,
    /// A cluster is being formed (a peer holds only the formation entry): take part, vote normally.
    FollowFormation,
    /// Not enough answers yet to tell.
    Wait,
}

/// Decides from the answers of the peers that answered (`members` includes this replica).
pub fn decide(
    own: NodeId,
    members: &BTreeSet<NodeId>,
    answers: &BTreeMap<NodeId, PeerView>,
) -> Decision {
    if let Some((&via, _)) = answers
        .iter()
        .find(|(_, v)| v.last_log_index.is_some_and(|i| i >= 1))
    {
        return Decision::Rejoin { via };
    }
    if answers.values().any(|v| v.initialized) {
        return Decision::FollowFormation;
    }
    let blank = 1 + answers.values().filter(|v| !v.initialized).count();
    let majority = members.len() / 2 + 1;
    if members.iter().next() == Some(&own) && blank >= majority {
        Decision::Form
    } else {
        Decision::Wait
    }
}

/// Runs at start-up on a replica whose Raft state is empty, until it formed, joined the formation, or
/// rejoined its cluster. Retries with backoff; says what it waits for.
pub async fn form_or_join<S: Store>(node: Arc<Node<S>>, peers: BTreeMap<NodeId, String>) {
    // Short: while this replica decides it refuses votes, which holds up a cluster being formed.
    const FIRST: Duration = Duration::from_millis(20);
    const MAX: Duration = Duration::from_millis(500);
    const REFUSED_WAIT: Duration = Duration::from_secs(2);
    let members: BTreeSet<NodeId> = peers.keys().copied().collect();
    let mut delay = FIRST;
    let mut waited = Duration::ZERO;
    let mut last_refusal = String::new();
    loop {
        let answers = ask_peers(&node, &peers).await;
        match decide(node.id, &members, &answers) {
            Decision::Form => {
                let voters: BTreeMap<NodeId, BasicNode> = peers
                    .iter()
                    .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                    .collect();
                match node.raft.initialize(voters).await {
                    Ok(()) => info!(members = peers.len(), "formed a new cluster"),
                    Err(e) => debug!(error = %e, "the cluster was formed already"),
                }
                node.set_joining(false);
                return;
            }
            Decision::FollowFormation => {
                info!("a new cluster is being formed; taking part");
                node.set_joining(false);
                return;
            }
            Decision::Rejoin { via } => match rejoin(&node, via, &peers).await {
                Ok(voters) => {
                    node.set_joining(false);
                    info!(members = ?voters, "rejoined the cluster with an empty disk");
                    return;
                }
                Err(e) if e.code() == tonic::Code::Unavailable => {
                    debug!(via, error = e.message(), "rejoining did not succeed yet")
                }
                Err(e) => {
                    // A refusal (not a member, another address): said once, not every round.
                    if e.message() != last_refusal {
                        warn!(
                            via,
                            error = e.message(),
                            "the cluster refused to take this replica back"
                        );
                        last_refusal = e.message().to_string();
                    }
                    // Nothing changes that until a workload owner acts: ask less often.
                    tokio::time::sleep(REFUSED_WAIT).await;
                }
            },
            Decision::Wait => debug!(
                answered = answers.len(),
                "waiting for peers to tell whether a cluster exists"
            ),
        }
        tokio::time::sleep(delay).await;
        waited += delay;
        if waited >= Duration::from_secs(10) && last_refusal.is_empty() {
            warn!(
                answered = answers.len(),
                members = members.len(),
                "this replica has an empty Raft state and cannot tell yet whether its cluster exists; \
                 it does not vote until a majority of the members answers (check that they run and \
                 that their attestation matches)"
            );
            waited = Duration::ZERO;
        }
        delay = (delay * 2).min(MAX);
    }
}

/// Asks every other member for its Raft state, each for at most a second; unanswered ones are absent.
async fn ask_peers<S: Store>(
    node: &Node<S>,
    peers: &BTreeMap<NodeId, String>,
) -> BTreeMap<NodeId, PeerView> {
    let mut answers = BTreeMap::new();
    for (&id, addr) in peers.iter().filter(|(id, _)| **id != node.id) {
        let ask = node.links.call(id, addr, |mut api, _| async move {
            api.peer_state(pb::PeerStateRequest {}).await
        });
        if let Ok(Ok(state)) = tokio::time::timeout(Duration::from_secs(1), ask).await {
            answers.insert(
                id,
                PeerView {
                    initialized: state.initialized,
                    last_log_index: state.last_log_index,
                },
            );
        }
    }
    answers
}

async fn rejoin<S: Store>(
    node: &Node<S>,
    via: NodeId,
    peers: &BTreeMap<NodeId, String>,
) -> Result<Vec<NodeId>, tonic::Status> {
    let addr = peers.get(&via).cloned().unwrap_or_default();
    let own = peers.get(&node.id).cloned().unwrap_or_default();
    let request = pb::JoinRequest {
        member: Some(pb::Member {
            id: node.id,
            peer_address: own,
        }),
        forwarded: false,
        nonce: node.join_nonce()?.to_vec(),
    };
    let answer = node
        .links
        .call(
            via,
            &addr,
            |mut api, _| async move { api.join(request).await },
        )
        .await?;
    Ok(answer.voters.iter().map(|m| m.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(initialized: bool, last: Option<u64>) -> PeerView {
        PeerView {
            initialized,
            last_log_index: last,
        }
    }

    fn members(n: u64) -> BTreeSet<NodeId> {
        (0..n).collect()
    }

    #[test]
    fn a_peer_past_the_formation_entry_means_rejoin() {
        let answers = BTreeMap::from([(1, view(true, Some(7))), (2, view(false, None))]);
        assert_eq!(
            decide(0, &members(3), &answers),
            Decision::Rejoin { via: 1 },
            "even the lowest id must not form a second cluster"
        );
        assert_eq!(
            decide(2, &members(3), &answers),
            Decision::Rejoin { via: 1 }
        );
    }

    #[test]
    fn the_lowest_id_forms_only_with_a_majority_of_blank_answers() {
        assert_eq!(decide(0, &members(3), &BTreeMap::new()), Decision::Wait);
        let one = BTreeMap::from([(1, view(false, None))]);
        assert_eq!(decide(0, &members(3), &one), Decision::Form);
        assert_eq!(decide(1, &members(3), &one), Decision::Wait);
        let five = BTreeMap::from([(1, view(false, None))]);
        assert_eq!(decide(0, &members(5), &five), Decision::Wait);
        assert_eq!(
            decide(0, &members(1), &BTreeMap::new()),
            Decision::Form,
            "a lone replica forms at once"
        );
    }

    #[test]
    fn a_peer_with_only_the_formation_entry_is_a_formation_in_progress() {
        let answers = BTreeMap::from([(0, view(true, Some(0)))]);
        assert_eq!(decide(2, &members(3), &answers), Decision::FollowFormation);
    }
}
