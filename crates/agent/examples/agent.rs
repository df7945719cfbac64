//! Runs the agent daemon on a Unix socket without the `gitvm` CLI, for manual checks:
//! `cargo run -p gitvm-agent --example agent -- /tmp/agent.sock`.

use std::path::PathBuf;

use gitvm_agent::server::{run, AgentConfig, Transport};

fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let Some(socket) = std::env::args_os().nth(1) else {
        eprintln!("usage: agent SOCKET_PATH");
        std::process::exit(2);
    };
    run(AgentConfig {
        transport: Transport::Unix(PathBuf::from(socket)),
        guest_setup: false,
    })
}
