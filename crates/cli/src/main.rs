//! `gitvm`: the command line client, the standalone server (`gitvm server start`) and the
//! in-sandbox agent (`gitvm agent`).

use std::process::ExitCode;

use clap::Parser;

mod args;
mod files;
mod output;
mod server;
mod snapshot;
mod template;
mod vm;

use args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();

    // The agent runs as PID 1 inside sandboxes and builds its own single-threaded runtime, so it
    // must start before any other runtime exists.
    if let Command::Agent(agent) = cli.command {
        gitvm_node::cli::init_logging();
        return match gitvm_agent::server::run(gitvm_agent::server::AgentConfig {
            socket: agent.socket,
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("gitvm agent: {error}");
                ExitCode::FAILURE
            }
        };
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Agent(_) => unreachable!("handled before the runtime starts"),
        Command::Server(command) => server::run(command).await,
        Command::Template(command) => template::run(command).await,
        Command::Vm(command) => vm::run(&cli.connection, command).await,
        Command::Snapshot(command) => snapshot::run(&cli.connection, command).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
