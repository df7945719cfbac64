//! `gitvm server start`: a standalone node with embedded defaults.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use gitvm_node::NodeConfig;

use crate::args::{ServerCommand, ServerStart};

pub async fn run(command: ServerCommand) -> Result<ExitCode> {
    let ServerCommand::Start(args) = command;
    init_logging();
    let config = config(args)?;
    gitvm_node::serve(config).await?;
    Ok(ExitCode::SUCCESS)
}

fn config(args: ServerStart) -> Result<NodeConfig> {
    let listen: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| {
            format!(
                "invalid --host `{}`: expected an IP address such as 127.0.0.1 or 0.0.0.0",
                args.host
            )
        })?;
    // The agent is this very binary, mounted into every sandbox.
    let agent_bin = std::env::current_exe().context("cannot locate the running gitvm binary")?;
    Ok(NodeConfig {
        listen,
        data_dir: args.data_dir.unwrap_or_else(NodeConfig::default_data_dir),
        api_key: args.api_key.filter(|key| !key.is_empty()),
        agent_bin,
        default_timeout_secs: args.default_timeout,
        default_template: "base".into(),
        ready_timeout: Duration::from_secs(args.ready_timeout),
    })
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
