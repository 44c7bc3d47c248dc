//! `concord status`: a replica's state, Raft role, term, leader and indexes, after attesting it.

use clap::Args;
use concord_proto::v1 as pb;

use crate::exit::CliResult;
use crate::remote;

#[derive(Debug, Args)]
pub struct Status {
    #[command(flatten)]
    pub target: crate::remote::CoordinatorTarget,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Status) -> CliResult<pb::GetStatusResponse> {
    let connected = args.target.connect_allowing_unpinned().await?;
    // The deployment it serves, as its evidence binds it (all zero: none yet).
    let deployment = hex::encode(connected.peer.deployment().as_bytes());
    let mut client = connected.client;
    let s = client
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(|e| remote::status_error("GetStatus", e))?
        .into_inner();
    let leader = s.leader_id.map_or("none".to_string(), |l| l.to_string());
    if args.json {
        let v = serde_json::json!({
            "node_id": s.node_id, "state": s.state, "role": s.role, "term": s.term,
            "leader_id": s.leader_id, "last_applied": s.last_applied,
            "last_log_index": s.last_log_index,
            "transitions": s.transitions, "latest": hex::encode(&s.latest),
            "membership_index": s.membership_index,
            "deployment": deployment,
        });
        println!("{v}");
    } else {
        println!(
            "replica {}: {} {} (term {}, leader {leader}), committed and applied {}, log {}, {} transitions, latest {}, deployment {}",
            s.node_id,
            s.state,
            s.role,
            s.term,
            s.last_applied,
            s.last_log_index,
            s.transitions,
            if s.latest.is_empty() {
                "none".into()
            } else {
                hex::encode(&s.latest)
            },
            connected_deployment(&deployment)
        );
    }
    Ok(s)
}

fn connected_deployment(hex_id: &str) -> &str {
    if hex_id.bytes().all(|b| b == b'0') {
        "none yet (unpinned)"
    } else {
        hex_id
    }
}
