//! `gitvm-node`: runs the node engine, with the same flags as `gitvm server start`.

use std::path::PathBuf;

use clap::Parser;
use gitvm_node::cli::{init_logging, ServeArgs};
use gitvm_node::NodeConfig;

/// Runs a gitvm node: the sandbox REST API over the Docker runtime.
#[derive(Debug, Parser)]
#[command(name = "gitvm-node", version)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,

    /// The `gitvm` binary run as the agent inside sandboxes [default: `gitvm` next to this
    /// executable].
    #[arg(long)]
    agent_bin: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging();
    let agent_bin = args.agent_bin.unwrap_or_else(NodeConfig::default_agent_bin);
    gitvm_node::serve(args.serve.into_config(agent_bin)).await
}
