//! `concord-initializer`: see `concord_cli::initializer`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use concord_cli::initializer::{InitializerArgs, run};

#[tokio::main]
async fn main() -> ExitCode {
    let args = InitializerArgs::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("concord-initializer: {e}");
            e.exit_code()
        }
    }
}
