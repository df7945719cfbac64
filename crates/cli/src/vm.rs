//! `gitvm vm …`: sandbox commands.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use gitvm_sdk::{
    Client, CreateSandboxRequest, ExecRequest, ExecuteOptions, ListFilter, SandboxState,
};

use crate::args::{Connection, VmCommand, VmExec};
use crate::output::{parse_pairs, print_json, print_sandbox, print_sandboxes};

/// Opens a client for the configured server.
pub fn client(connection: &Connection) -> Result<Client> {
    Ok(Client::new(&connection.server, connection.api_key.clone())?)
}

pub async fn run(connection: &Connection, command: VmCommand) -> Result<ExitCode> {
    let client = client(connection)?;
    match command {
        VmCommand::Create(args) => {
            let request = CreateSandboxRequest {
                template: args.template,
                runtime: args.runtime,
                vcpus: args.vcpus,
                memory_mb: args.memory,
                timeout: args.timeout,
                env_vars: parse_pairs("env", &args.env)?,
                metadata: parse_pairs("metadata", &args.metadata)?,
                internet: args.no_internet.then_some(false),
            };
            let sandbox = client.create_sandbox(&request).await?;
            if args.json {
                print_json(&sandbox)?;
            } else {
                println!("{}", sandbox.id);
            }
        }
        VmCommand::List(args) => {
            let filter = ListFilter {
                state: args
                    .state
                    .as_deref()
                    .map(str::parse::<SandboxState>)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                metadata: parse_pairs("metadata", &args.metadata)?,
            };
            let sandboxes = client.list_sandboxes(&filter).await?;
            if args.json {
                print_json(&sandboxes)?;
            } else {
                print_sandboxes(&sandboxes);
            }
        }
        VmCommand::Get(args) => {
            let sandbox = client.get_sandbox(&args.id).await?;
            if args.json {
                print_json(&sandbox)?;
            } else {
                print_sandbox(&sandbox);
            }
        }
        VmCommand::Exec(args) => return Ok(exec(&client, args).await),
        VmCommand::Shell(args) => return Ok(crate::shell::run(connection, args).await),
        VmCommand::Start(args) => lifecycle(&client, &args.id, "start", args.json).await?,
        VmCommand::Stop(args) => lifecycle(&client, &args.id, "stop", args.json).await?,
        VmCommand::Pause(args) => lifecycle(&client, &args.id, "pause", args.json).await?,
        VmCommand::Resume(args) => lifecycle(&client, &args.id, "resume", args.json).await?,
        VmCommand::Rm(args) => {
            client.delete_sandbox(&args.id).await?;
            println!("{}", args.id);
        }
        VmCommand::Timeout(args) => {
            let sandbox = client.set_timeout(&args.id, args.seconds).await?;
            if args.json {
                print_json(&sandbox)?;
            } else {
                let expires = sandbox.expires_at.as_deref().unwrap_or("never");
                println!("{} expires {expires}", sandbox.id);
            }
        }
        VmCommand::Files(command) => crate::files::run(&client, command).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn lifecycle(client: &Client, id: &str, action: &str, json: bool) -> Result<()> {
    let sandbox = client
        .lifecycle(id, action)
        .await
        .with_context(|| format!("cannot {action} sandbox {id}"))?;
    if json {
        print_json(&sandbox)?;
    } else {
        println!("{} {}", sandbox.id, sandbox.state);
    }
    Ok(())
}

/// Runs the command and mirrors its output and exit code; gitvm's own failures exit 125.
async fn exec(client: &Client, args: VmExec) -> ExitCode {
    match exec_inner(client, args).await {
        Ok(code) => code,
        Err(error) => crate::command_failed(&error),
    }
}

async fn exec_inner(client: &Client, args: VmExec) -> Result<ExitCode> {
    let request = ExecRequest {
        command: shell_line(&args.command)?,
        cwd: args.cwd,
        env: parse_pairs("env", &args.env)?,
        user: args.user,
        timeout: args.timeout,
    };
    if args.json {
        let result = client.exec(&args.id, &request).await?;
        print_json(&result)?;
        return Ok(exit_code(result.exit_code));
    }

    // Output is copied as it arrives, byte for byte, so long builds show progress and binary
    // output survives.
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let options = ExecuteOptions {
        cwd: request.cwd.clone(),
        env: request.env.clone(),
        user: request.user.clone(),
        timeout: request.timeout,
        on_stdout: Some(Box::new(move |chunk: &[u8]| {
            // A closed stdout ends the process through SIGPIPE, as for other tools.
            let _ = stdout.write_all(chunk).and_then(|()| stdout.flush());
        })),
        on_stderr: Some(Box::new(move |chunk: &[u8]| {
            let _ = stderr.write_all(chunk);
        })),
    };
    let output = client.execute(&args.id, &request.command, options).await?;
    if output.timed_out {
        eprintln!(
            "gitvm: command timed out after {} s and was killed",
            request.timeout.unwrap_or_default()
        );
    }
    Ok(exit_code(output.exit_code))
}

/// Converts a command's exit status to this process's exit code; statuses are 0..=255 by
/// construction (128 + signal at most).
fn exit_code(status: i32) -> ExitCode {
    ExitCode::from(status.clamp(0, 255) as u8)
}

/// Turns the words after `--` into one shell command line: a single word is taken as a shell
/// line as it is, several words are quoted so each stays one argument.
pub fn shell_line(words: &[String]) -> Result<String> {
    if let [line] = words {
        return Ok(line.clone());
    }
    let quoted = shlex::try_join(words.iter().map(String::as_str))
        .context("the command contains a NUL byte, which no shell argument can carry")?;
    Ok(quoted)
}

#[cfg(test)]
mod tests {
    use super::shell_line;

    #[test]
    fn shell_line_keeps_single_word() {
        assert_eq!(shell_line(&["ls | wc -l".into()]).unwrap(), "ls | wc -l");
    }

    #[test]
    fn shell_line_quotes_words() {
        let words = ["sh".to_string(), "-c".into(), "exit 3".into()];
        assert_eq!(shell_line(&words).unwrap(), "sh -c 'exit 3'");
    }
}
