//! `gitvm server start`: a standalone node with embedded defaults.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::args::ServerCommand;

pub async fn run(command: ServerCommand) -> Result<ExitCode> {
    let ServerCommand::Start(args) = command;
    gitvm_node::cli::init_logging();
    // The agent is this very binary, mounted into every sandbox.
    let agent_bin = std::env::current_exe().context("cannot locate the running gitvm binary")?;
    gitvm_node::serve(args.into_config(agent_bin)).await?;
    Ok(ExitCode::SUCCESS)
}
