//! `gitvm`: the command line client, the standalone server (`gitvm server start`) and the
//! in-sandbox agent (`gitvm agent`).

use std::process::ExitCode;

use clap::Parser;

mod args;
mod bench;
mod bench_docker;
mod files;
mod output;
mod process;
mod server;
mod shell;
mod snapshot;
mod template;
mod vm;

use args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();

    // The agent runs as PID 1 inside sandboxes and builds its own single-threaded runtime, so it
    // must start before any other runtime exists.
    if let Command::Agent(agent) = cli.command {
        // In a microVM the log goes to the emulated serial console, which is slow under TCG
        // and kept in a file on the host, so only warnings go there unless RUST_LOG asks for more.
        match agent.vm {
            true => gitvm_node::cli::init_logging_at("warn"),
            false => gitvm_node::cli::init_logging(),
        }
        use gitvm_agent::server::{AgentConfig, Transport};
        let config = match agent.socket {
            Some(socket) => AgentConfig {
                transport: Transport::Unix(socket),
                guest_setup: false,
            },
            None => AgentConfig {
                transport: Transport::VirtioSerial(gitvm_proto::agent::SERIAL_PORT_NAME.to_owned()),
                guest_setup: true,
            },
        };
        return match gitvm_agent::server::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("gitvm agent: {error}");
                ExitCode::FAILURE
            }
        };
    }

    if let Command::QemuRelay {
        qemu_socket,
        listen,
    } = cli.command
    {
        return match gitvm_runtime::qemu::relay::run(qemu_socket, listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("gitvm qemu-relay: {error}");
                ExitCode::FAILURE
            }
        };
    }

    if !matches!(cli.command, Command::Server(_)) {
        restore_default_sigpipe();
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

/// Lets a client command end quietly when its output pipe closes (`gitvm vm list | head -1`),
/// as other Unix tools do; Rust ignores SIGPIPE by default, which turns the closed pipe into a
/// panic in `println!`.
fn restore_default_sigpipe() {
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Agent(_) | Command::QemuRelay { .. } => {
            unreachable!("handled before the runtime starts")
        }
        Command::Server(command) => server::run(command).await,
        Command::Template(command) => template::run(command).await,
        Command::Bench(command) => bench::run(&cli.connection, command).await,
        Command::Vm(command) => vm::run(&cli.connection, command).await,
        Command::Snapshot(command) => snapshot::run(&cli.connection, command).await,
        // Like `vm exec`, the process commands can exit with a process's exit code, so
        // gitvm's own failures take 125.
        Command::Proc(command) => {
            let result = match vm::client(&cli.connection) {
                Ok(client) => process::run(&client, command).await,
                Err(error) => Err(error),
            };
            return result.unwrap_or_else(|error| command_failed(&error));
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            if let Some(hint) = hint(&error) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Exit code of commands that pass on a sandbox command's exit code (`vm exec`, `vm shell`,
/// `proc`) when gitvm itself fails, as `docker run` does.
pub const EXIT_GITVM_FAILED: u8 = 125;

/// Prints a failure of gitvm itself with its hint and returns [`EXIT_GITVM_FAILED`].
pub fn command_failed(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    if let Some(hint) = hint(error) {
        eprintln!("hint: {hint}");
    }
    ExitCode::from(EXIT_GITVM_FAILED)
}

/// Suggests the next step for errors whose fix is outside gitvm.
pub fn hint(error: &anyhow::Error) -> Option<&'static str> {
    let sdk_error = error.downcast_ref::<gitvm_sdk::Error>()?;
    match sdk_error {
        gitvm_sdk::Error::Http { source, .. } if source.is_connect() => Some(
            "is the server running? Start one with `gitvm server start`, or point GITVM_SERVER (or --server) at it",
        ),
        gitvm_sdk::Error::Api { status: 401, .. } => {
            Some("set GITVM_API_KEY (or --api-key) to the key the server was started with")
        }
        _ => None,
    }
}
