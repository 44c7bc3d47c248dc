//! `concord witness`: a transparency-log witness (C2SP tlog-witness) for one or more deployments. It
//! cosigns a deployment's checkpoint only over a consistency proof from the last one it cosigned, never
//! two roots for one size, and keeps what it cosigned fsynced in its state directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use concord_coordinator::history::note;
use concord_coordinator::witness::{Witness, server};

use crate::exit::{CliError, CliResult};
use crate::keys;

#[derive(Debug, Args)]
pub struct WitnessArgs {
    /// The witness's key name (a schema-less URL, e.g. `witness.example.com/w1`), as the manifests
    /// that list this witness name it.
    #[arg(long)]
    pub name: String,
    /// The witness's Ed25519 key (`concord keygen witness`).
    #[arg(long)]
    pub key: PathBuf,
    /// A log to witness: `DEPLOYMENT_ID=CHECKPOINT_KEY` (64 hex each: the deployment id and the
    /// `checkpoint_key` of a history.json you verified), or `ORIGIN=CHECKPOINT_KEY`. Repeatable.
    #[arg(long = "log", value_name = "ID=KEY", required = true)]
    pub logs: Vec<String>,
    /// Where the last cosigned checkpoint of every log is kept (fsynced before each cosignature).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Address to listen on (HTTP, `POST /add-checkpoint`).
    #[arg(long, default_value_t = server::default_listen())]
    pub listen: SocketAddr,
}

pub async fn run(args: WitnessArgs) -> CliResult {
    if !note::valid_key_name(&args.name) {
        return Err(CliError::usage(
            "--name: a key name is non-empty, without spaces or `+`",
        ));
    }
    let key = keys::load_owner_key(&args.key)?;
    let mut logs = BTreeMap::new();
    for l in &args.logs {
        let (who, k) = l
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--log {l:?}: expected ID=KEY")))?;
        let origin = if who.contains('/') {
            who.to_string()
        } else {
            let id = crate::remote::parse_deployment_id(who)
                .map_err(|e| CliError::usage(format!("--log {l:?}: {e}")))?;
            note::origin_for(id.as_bytes())
        };
        let k = crate::log_proof::parse_key(k)
            .map_err(|e| CliError::usage(format!("--log {l:?}: {e}")))?;
        logs.insert(origin, k);
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::error(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::error(e.to_string()))?;
    eprintln!(
        "witness {} (cosignature/v1 key {}) for {} log(s), state in {}",
        args.name,
        hex::encode(key.verifying_key().as_bytes()),
        logs.len(),
        args.state_dir.display()
    );
    // The one line a supervisor (or a test) reads: where it listens.
    println!("listening on {addr}");
    let witness = Witness {
        name: args.name,
        key,
        logs,
    };
    server::serve(witness, args.state_dir, listener)
        .await
        .map_err(|e| CliError::error(format!("the witness stopped: {e}")))
}
