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

use crate::exit::{CliError, CliResult, write_file};
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
        #[arg(long, required_unless_present_any = ["signature", "prepare"], conflicts_with_all = ["signature", "prepare"])]
        owner_key: Option<PathBuf>,
        /// Do not change anything: write the exact bytes a workload owner signs for this change to
        /// FILE (for an external signer), and print the membership index they name.
        #[arg(long, value_name = "FILE", conflicts_with = "signature")]
        prepare: Option<PathBuf>,
        /// An owner signature made elsewhere over the bytes `--prepare` wrote: 128 hex characters, or
        /// a file holding the 64 raw bytes or their hex.
        #[arg(long, requires_all = ["owner_public_key", "membership_index"])]
        signature: Option<String>,
        /// The public key of the external signature (64 hex characters).
        #[arg(long)]
        owner_public_key: Option<String>,
        /// The membership index `--prepare` printed (the signature names it).
        #[arg(long)]
        membership_index: Option<u64>,
    },
}

pub async fn run(cmd: Cluster) -> CliResult {
    let Cluster::SetMembers {
        target,
        members,
        owner_key,
        prepare,
        signature,
        owner_public_key,
        membership_index,
    } = cmd;
    let mut wanted = BTreeMap::new();
    for (id, addr) in members {
        if wanted.insert(id, addr).is_some() {
            return Err(CliError::usage(format!("member {id} is given twice")));
        }
    }
    let members_pb: Vec<pb::Member> = wanted
        .iter()
        .map(|(id, addr)| pb::Member {
            id: *id,
            peer_address: addr.clone(),
        })
        .collect();
    let mut client = target.connect().await?.client;

    let answer = if let Some(out) = prepare {
        let (latest, membership_index) = authorization_point(&mut client).await?;
        let message = format::members_message(&latest, membership_index, &wanted);
        write_file(&out, &message, false)?;
        eprintln!(
            "wrote the {} bytes to sign to {}; sign them with Ed25519 (`concord sign --message {} \
             --owner-key owner.pem`, or `openssl pkeyutl -sign -rawin -inkey owner.pem -in {} -out sig.bin`), \
             then run this command again with --signature SIG --owner-public-key HEX --membership-index \
             {membership_index}. The signature is good for this one change, until the membership moves",
            message.len(),
            out.display(),
            out.display(),
            out.display(),
        );
        println!("{membership_index}");
        return Ok(());
    } else if let (Some(sig), Some(public), Some(membership_index)) =
        (signature, owner_public_key, membership_index)
    {
        let public = hex::decode(&public)
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| CliError::usage("--owner-public-key: expected 64 hex characters"))?;
        client
            .set_members(pb::SetMembersRequest {
                members: members_pb,
                owner_key: public,
                owner_signature: super::set::decode_signature(&sig)?.to_bytes().to_vec(),
                membership_index,
            })
            .await
            .map_err(|s| remote::status_error("SetMembers", s))?
            .into_inner()
    } else {
        let Some(owner_key) = owner_key else {
            return Err(CliError::usage(
                "give --owner-key, or --prepare FILE, or --signature with --owner-public-key and --membership-index",
            ));
        };
        let key = keys::load_owner_key(&owner_key)?;
        // The authorization names the membership it starts from; if the membership moves between
        // reading it and the change (a replica rejoining, a stale replica answered), read and sign
        // again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (latest, membership_index) = authorization_point(&mut client).await?;
            let message = format::members_message(&latest, membership_index, &wanted);
            let request = pb::SetMembersRequest {
                members: members_pb.clone(),
                owner_key: key.verifying_key().to_bytes().to_vec(),
                owner_signature: key.sign(&message).to_bytes().to_vec(),
                membership_index,
            };
            match client.set_members(request).await {
                Ok(a) => break a.into_inner(),
                Err(s) if s.code() == tonic::Code::FailedPrecondition && attempt < 10 => {
                    eprintln!("{}; signing again", s.message());
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(s) => return Err(remote::status_error("SetMembers", s)),
            }
        }
    };
    let voters: Vec<String> = answer
        .voters
        .iter()
        .map(|m| format!("{}={}", m.id, m.peer_address))
        .collect();
    eprintln!("the voting members are now: {}", voters.join(", "));
    Ok(())
}

/// What a membership authorization names: the latest transition (read linearizably) and the index of
/// the membership configuration the replica has now.
async fn authorization_point(
    client: &mut pb::user_api_client::UserApiClient<tonic::transport::Channel>,
) -> Result<(Hash, u64), CliError> {
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
    let membership_index = client
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(|s| remote::status_error("GetStatus", s))?
        .into_inner()
        .membership_index;
    Ok((latest, membership_index))
}
