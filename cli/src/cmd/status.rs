//! `concord status`: a replica's state, Raft role, term, leader and indexes, after attesting it.

use std::path::PathBuf;

use clap::Args;
use concord_proto::v1 as pb;

use crate::exit::CliResult;
use crate::remote;

#[derive(Debug, Args)]
pub struct Status {
    /// The manifest you expect (the coordinator is verified against it).
    #[arg(short, long, default_value = "manifest.json")]
    pub manifest: PathBuf,
    /// The replica's user API (host:port).
    #[arg(
        short,
        long,
        env = "CONCORD_COORDINATOR",
        default_value = "127.0.0.1:1313"
    )]
    pub coordinator: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Accept a coordinator on the simulated platform (INSECURE).
    #[arg(long)]
    pub insecure_simulated_attestation: bool,
}

pub async fn run(args: Status) -> CliResult<pb::GetStatusResponse> {
    let manifest = remote::read_manifest(&args.manifest)?;
    let trust = remote::trust_for(&manifest, args.insecure_simulated_attestation)?;
    let (mut client, _) = remote::user_api(&args.coordinator, &manifest, trust).await?;
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
            "transitions": s.transitions, "latest": hex::encode(&s.latest),
        });
        println!("{v}");
    } else {
        println!(
            "replica {}: {} {} (term {}, leader {leader}), applied {}, {} transitions, latest {}",
            s.node_id,
            s.state,
            s.role,
            s.term,
            s.last_applied,
            s.transitions,
            if s.latest.is_empty() {
                "none".into()
            } else {
                hex::encode(&s.latest)
            }
        );
    }
    Ok(s)
}
