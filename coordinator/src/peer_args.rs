//! `PeerArgs`: the flags that say which replica this is and who its peers are, either listed
//! (`--node-id`, `--peer ID=HOST:PORT`) or derived from the Kubernetes StatefulSet the replica runs in
//! (`--statefulset-peers` with the pod name, the headless peer Service, the namespace and the initial
//! replica count).
//!
//! Owns parsing those flags into a node id and a static peer list ([`Members`]); the derivation is a
//! pure function ([`statefulset_members`]). Must never guess: a pod name that is not `NAME-ORDINAL`,
//! or a name that is not a DNS label, is a usage error that says what to set.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use clap::Args;
use serde::Serialize;

use crate::launch::parse_member;
use crate::raft::NodeId;

/// Kubernetes' default cluster domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// Who this replica is and who its peers are.
#[derive(Debug, Clone, Args)]
pub struct PeerArgs {
    /// This replica's id in the cluster.
    #[arg(long, env = "CONCORD_NODE_ID", default_value_t = 0)]
    pub node_id: u64,
    /// A member of the cluster as ID=HOST:PORT (its peer API), this replica included; repeat for each.
    /// This replica dials a listed member at the address given here, even if the membership records
    /// another; members added later and not listed are dialed at the membership's address.
    /// Default: this replica alone, at its --peer-listen address.
    #[arg(long = "peer", env = "CONCORD_PEERS", value_delimiter = ',', value_parser = parse_member)]
    pub peers: Vec<(u64, String)>,
    /// Derive the node id (pod ordinal + 1) and the peers (ordinals 0 to N-1 at
    /// NAME-I.SERVICE.NAMESPACE.svc.DOMAIN, on this replica's peer port) from the StatefulSet.
    #[arg(
        long,
        env = "CONCORD_STATEFULSET_PEERS",
        conflicts_with_all = ["node_id", "peers"]
    )]
    pub statefulset_peers: bool,
    /// This pod's name, NAME-ORDINAL (from the downward API: fieldRef metadata.name).
    #[arg(long, env = "POD_NAME", required_if_eq("statefulset_peers", "true"))]
    pub pod_name: Option<String>,
    /// The headless Service that gives the StatefulSet's pods their DNS names.
    #[arg(
        long,
        env = "CONCORD_PEER_SERVICE",
        required_if_eq("statefulset_peers", "true")
    )]
    pub peer_service: Option<String>,
    /// This pod's namespace (from the downward API: fieldRef metadata.namespace).
    #[arg(
        long,
        env = "POD_NAMESPACE",
        required_if_eq("statefulset_peers", "true")
    )]
    pub namespace: Option<String>,
    /// The cluster's DNS domain.
    #[arg(long, env = "CONCORD_CLUSTER_DOMAIN", default_value = DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
    /// How many replicas form the cluster when it is first created (ordinals 0 to N-1).
    #[arg(
        long,
        env = "CONCORD_INITIAL_REPLICAS",
        required_if_eq("statefulset_peers", "true")
    )]
    pub initial_replicas: Option<u64>,
}

/// This replica's id and every member's peer API address, this replica included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Members {
    pub node_id: NodeId,
    pub peers: BTreeMap<NodeId, String>,
}

impl PeerArgs {
    /// The members, given the address this replica's peer API listens on (its port is every
    /// StatefulSet replica's peer port; with no peers listed, the replica is alone at that address).
    /// The error is a usage error.
    pub fn members(&self, peer_listen: SocketAddr) -> Result<Members, String> {
        if self.statefulset_peers {
            // clap requires each of these with --statefulset-peers; the messages cover a caller that
            // built PeerArgs by hand.
            let need = |v: &Option<String>, flag: &str| {
                v.clone()
                    .ok_or_else(|| format!("--statefulset-peers needs {flag}"))
            };
            return statefulset_members(&StatefulSetPod {
                pod_name: &need(&self.pod_name, "--pod-name (POD_NAME)")?,
                service: &need(&self.peer_service, "--peer-service")?,
                namespace: &need(&self.namespace, "--namespace (POD_NAMESPACE)")?,
                cluster_domain: &self.cluster_domain,
                initial_replicas: self
                    .initial_replicas
                    .ok_or("--statefulset-peers needs --initial-replicas")?,
                peer_port: peer_listen.port(),
            });
        }
        let mut peers = BTreeMap::new();
        for (id, addr) in &self.peers {
            if peers.insert(*id, addr.clone()).is_some() {
                return Err(format!("--peer: member {id} is listed twice"));
            }
        }
        if peers.is_empty() {
            let own = if peer_listen.ip().is_unspecified() {
                SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), peer_listen.port())
            } else {
                peer_listen
            };
            peers.insert(self.node_id, own.to_string());
        }
        Ok(Members {
            node_id: self.node_id,
            peers,
        })
    }
}

/// What a StatefulSet pod knows about itself.
#[derive(Debug, Clone)]
pub struct StatefulSetPod<'a> {
    pub pod_name: &'a str,
    pub service: &'a str,
    pub namespace: &'a str,
    pub cluster_domain: &'a str,
    pub initial_replicas: u64,
    pub peer_port: u16,
}

/// Node id = ordinal + 1; peers = ordinals 0 to N-1 at `{statefulset}-{i}.{service}.{namespace}.svc.{domain}:{port}`.
/// A pod beyond the initial count (the StatefulSet was scaled up) lists itself too; it starts with an
/// empty Raft state and joins the cluster by itself (`api::join`) once its evidence is accepted.
pub fn statefulset_members(pod: &StatefulSetPod<'_>) -> Result<Members, String> {
    let (statefulset, ordinal) = split_pod_name(pod.pod_name)?;
    dns_label("--peer-service", pod.service)?;
    dns_label("--namespace (POD_NAMESPACE)", pod.namespace)?;
    let domain = pod.cluster_domain.trim_end_matches('.');
    if domain.is_empty() {
        return Err("--cluster-domain is empty; the default is cluster.local".into());
    }
    for label in domain.split('.') {
        dns_label("--cluster-domain", label)?;
    }
    if pod.initial_replicas == 0 {
        return Err("--initial-replicas must be at least 1".into());
    }
    let node_id = ordinal
        .checked_add(1)
        .ok_or_else(|| format!("--pod-name {:?}: the ordinal is too large", pod.pod_name))?;
    let address = |i: u64| {
        format!(
            "{statefulset}-{i}.{}.{}.svc.{domain}:{}",
            pod.service, pod.namespace, pod.peer_port
        )
    };
    let mut peers: BTreeMap<NodeId, String> = (0..pod.initial_replicas)
        .map(|i| (i + 1, address(i)))
        .collect();
    peers.entry(node_id).or_insert_with(|| address(ordinal));
    Ok(Members { node_id, peers })
}

/// `concord-2` is StatefulSet `concord`, ordinal 2.
fn split_pod_name(pod: &str) -> Result<(&str, u64), String> {
    let hint = "a StatefulSet pod is named NAME-ORDINAL (e.g. concord-0); set POD_NAME from the \
                downward API (fieldRef metadata.name)";
    let (name, ordinal) = pod
        .rsplit_once('-')
        .ok_or_else(|| format!("--pod-name {pod:?} has no -ORDINAL suffix: {hint}"))?;
    let canonical = ordinal.bytes().all(|b| b.is_ascii_digit())
        && !ordinal.is_empty()
        && (ordinal == "0" || !ordinal.starts_with('0'));
    if !canonical {
        return Err(format!(
            "--pod-name {pod:?}: {ordinal:?} is not an ordinal: {hint}"
        ));
    }
    let ordinal = ordinal
        .parse()
        .map_err(|_| format!("--pod-name {pod:?}: the ordinal {ordinal} is too large"))?;
    if name.is_empty() {
        return Err(format!("--pod-name {pod:?} has no NAME: {hint}"));
    }
    dns_label("--pod-name", pod)?;
    if name.ends_with('-') {
        return Err(format!(
            "--pod-name {pod:?}: the StatefulSet name {name:?} is not a DNS label: {hint}"
        ));
    }
    Ok((name, ordinal))
}

/// An RFC 1123 label: 1 to 63 lowercase letters, digits and '-', starting and ending alphanumeric.
fn dns_label(flag: &str, v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{flag} {v:?} is not a DNS label (1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, initial: u64) -> StatefulSetPod<'_> {
        StatefulSetPod {
            pod_name: name,
            service: "concord-peers",
            namespace: "prod",
            cluster_domain: "cluster.local",
            initial_replicas: initial,
            peer_port: 7778,
        }
    }

    #[test]
    fn ordinal_plus_one_is_the_node_id_and_every_initial_ordinal_a_peer() {
        let m = statefulset_members(&pod("concord-1", 3)).unwrap();
        assert_eq!(m.node_id, 2);
        let want: BTreeMap<u64, String> = [
            (1, "concord-0.concord-peers.prod.svc.cluster.local:7778"),
            (2, "concord-1.concord-peers.prod.svc.cluster.local:7778"),
            (3, "concord-2.concord-peers.prod.svc.cluster.local:7778"),
        ]
        .into_iter()
        .map(|(i, a)| (i, a.to_string()))
        .collect();
        assert_eq!(m.peers, want);
    }

    #[test]
    fn a_statefulset_name_with_dashes_keeps_them() {
        let m = statefulset_members(&pod("my-concord-0", 1)).unwrap();
        assert_eq!(m.node_id, 1);
        assert_eq!(
            m.peers[&1],
            "my-concord-0.concord-peers.prod.svc.cluster.local:7778"
        );
    }

    #[test]
    fn a_pod_beyond_the_initial_count_lists_itself_to_wait_to_be_added() {
        let m = statefulset_members(&pod("concord-4", 3)).unwrap();
        assert_eq!(m.node_id, 5);
        assert_eq!(
            m.peers.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3, 5]
        );
    }

    #[test]
    fn domain_and_port_are_used() {
        let mut p = pod("concord-0", 1);
        p.cluster_domain = "corp.example.";
        p.peer_port = 9000;
        let m = statefulset_members(&p).unwrap();
        assert_eq!(
            m.peers[&1],
            "concord-0.concord-peers.prod.svc.corp.example:9000"
        );
    }

    #[test]
    fn bad_pod_names_are_refused_with_what_to_set() {
        for (name, says) in [
            ("concord", "no -ORDINAL suffix"),
            ("concord-", "is not an ordinal"),
            ("concord-x", "is not an ordinal"),
            ("concord-01", "is not an ordinal"),
            ("concord--1", "is not a DNS label"),
            ("-0", "has no NAME"),
            ("Concord-0", "is not a DNS label"),
            ("concord-99999999999999999999", "too large"),
            ("", "no -ORDINAL suffix"),
        ] {
            let e = statefulset_members(&pod(name, 3)).unwrap_err();
            assert!(e.contains(says), "{name:?}: {e}");
            if says.contains("ORDINAL") || says.contains("ordinal") {
                assert!(e.contains("POD_NAME"), "{name:?}: {e}");
            }
        }
    }

    #[test]
    fn bad_service_namespace_domain_or_count_are_refused() {
        let mut p = pod("concord-0", 3);
        p.service = "Peers";
        assert!(
            statefulset_members(&p)
                .unwrap_err()
                .contains("--peer-service")
        );
        let mut p = pod("concord-0", 3);
        p.namespace = "";
        assert!(statefulset_members(&p).unwrap_err().contains("--namespace"));
        let mut p = pod("concord-0", 3);
        p.cluster_domain = "a..b";
        assert!(
            statefulset_members(&p)
                .unwrap_err()
                .contains("--cluster-domain")
        );
        let e = statefulset_members(&pod("concord-0", 0)).unwrap_err();
        assert!(e.contains("--initial-replicas"), "{e}");
    }

    #[test]
    fn explicit_peers_default_to_this_replica_alone() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            p: PeerArgs,
        }
        let listen: SocketAddr = "0.0.0.0:7778".parse().unwrap();
        let t = T::try_parse_from(["t", "--node-id", "4"]).unwrap();
        let m = t.p.members(listen).unwrap();
        assert_eq!(m.node_id, 4);
        assert_eq!(m.peers[&4], "127.0.0.1:7778");

        let t = T::try_parse_from(["t", "--peer", "1=a:1", "--peer", "1=b:1"]).unwrap();
        assert!(t.p.members(listen).unwrap_err().contains("twice"));
    }

    #[test]
    fn statefulset_mode_conflicts_with_explicit_peers_and_needs_its_flags() {
        use clap::Parser;
        #[derive(Parser, Debug)]
        struct T {
            #[command(flatten)]
            p: PeerArgs,
        }
        let sts = [
            "t",
            "--statefulset-peers",
            "--pod-name",
            "concord-2",
            "--peer-service",
            "concord-peers",
            "--namespace",
            "default",
            "--initial-replicas",
            "3",
        ];
        let t = T::try_parse_from(sts).unwrap();
        let m = t.p.members("0.0.0.0:7778".parse().unwrap()).unwrap();
        assert_eq!(m.node_id, 3);
        assert_eq!(m.peers.len(), 3);

        let conflict = T::try_parse_from(sts.iter().chain(&["--node-id", "1"])).unwrap_err();
        assert_eq!(conflict.kind(), clap::error::ErrorKind::ArgumentConflict);
        let conflict = T::try_parse_from(sts.iter().chain(&["--peer", "1=a:1"])).unwrap_err();
        assert_eq!(conflict.kind(), clap::error::ErrorKind::ArgumentConflict);
        let missing = T::try_parse_from(&sts[..sts.len() - 2]).unwrap_err();
        assert_eq!(
            missing.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }
}
