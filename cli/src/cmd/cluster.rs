//! `concord cluster set-members`: set the coordinator cluster's voting members in one command, authorized
//! by a workload owner key of the latest manifest (like a manifest update).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Subcommand;
use concord_coordinator::Hash;
use concord_coordinator::history::format;
use concord_coordinator::launch::parse_member;
use concord_proto::v1 as pb;
use ed25519_dalek::Signer;

use crate::exit::{CliError, CliResult};
use crate::{keys, remote};

#[derive(Debug, Subcommand)]
pub enum Cluster {
    /// Make exactly these replicas the voting members (new ones join as learners, catch up, then vote;
    /// members left out are removed).
    SetMembers {
        #[command(flatten)]
        target: remote::CoordinatorTarget,
        /// A member as ID=HOST:PORT (its peer API address); repeat for each.
        #[arg(long = "member", required = true, value_parser = parse_member)]
        members: Vec<(u64, String)>,
        /// The workload owner key that authorizes the change (listed in the latest manifest).
        #[arg(long)]
        owner_key: PathBuf,
    },
}

pub async fn run(cmd: Cluster) -> CliResult {
    let Cluster::SetMembers {
        target,
        members,
        owner_key,
    } = cmd;
    let mut wanted = BTreeMap::new();
    for (id, addr) in members {
        if wanted.insert(id, addr).is_some() {
            return Err(CliError::usage(format!("member {id} is given twice")));
        }
    }
    let key = keys::load_owner_key(&owner_key)?;
    let mut client = target.connect().await?.client;
    let latest = client
        .get_manifests(pb::GetManifestsRequest {
            only_latest: true,
            ..Default::default()
        })
        .await
        .map_err(|s| remote::status_error("GetManifests", s))?
        .into_inner()
        .latest
        .ok_or_else(|| CliError::error("the coordinator has no manifest yet; set one first"))?;
    let latest = Hash::from_slice(&latest.hash).map_err(|e| {
        CliError::verification(format!("the coordinator sent a bad latest hash: {e}"))
    })?;
    let signature = key.sign(&format::members_message(&latest, &wanted));
    let answer = client
        .set_members(pb::SetMembersRequest {
            members: wanted
                .iter()
                .map(|(id, addr)| pb::Member {
                    id: *id,
                    peer_address: addr.clone(),
                })
                .collect(),
            owner_key: key.verifying_key().to_bytes().to_vec(),
            owner_signature: signature.to_bytes().to_vec(),
        })
        .await
        .map_err(|s| remote::status_error("SetMembers", s))?
        .into_inner();
    let voters: Vec<String> = answer
        .voters
        .iter()
        .map(|m| format!("{}={}", m.id, m.peer_address))
        .collect();
    eprintln!("the voting members are now: {}", voters.join(", "));
    Ok(())
}
