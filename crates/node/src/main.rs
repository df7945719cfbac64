//! `gitvm-node`: runs the node engine, with the same flags as `gitvm server start`.

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use gitvm_node::NodeConfig;
use tracing_subscriber::EnvFilter;

/// Runs a gitvm node: the sandbox REST API over the Docker runtime.
#[derive(Debug, Parser)]
#[command(name = "gitvm-node", version)]
struct Args {
    /// TCP port of the REST API; 0 picks a free port.
    #[arg(long, default_value_t = 8080)]
    port: u16,

    /// Address the REST API listens on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,

    /// Directory of the database and per-sandbox files [default: /var/lib/gitvm for root, else
    /// $XDG_DATA_HOME/gitvm or ~/.local/share/gitvm].
    #[arg(long)]
    data_dir: Option<PathBuf>,

    /// API key clients must send as `X-API-Key` or `Authorization: Bearer`; unset leaves the
    /// API open.
    #[arg(long, env = "GITVM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// Time to live, in seconds, of sandboxes created without `timeout`; 0 means never.
    #[arg(long, default_value_t = 300)]
    default_timeout: i64,

    /// The `gitvm` binary run as the agent inside sandboxes [default: `gitvm` next to this
    /// executable].
    #[arg(long)]
    agent_bin: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let args = Args::parse();
    let config = NodeConfig {
        listen: SocketAddr::new(args.host, args.port),
        data_dir: args.data_dir.unwrap_or_else(NodeConfig::default_data_dir),
        api_key: args.api_key.filter(|key| !key.is_empty()),
        agent_bin: args.agent_bin.unwrap_or_else(NodeConfig::default_agent_bin),
        default_timeout_secs: args.default_timeout,
        ..NodeConfig::default()
    };
    gitvm_node::serve(config).await
}
