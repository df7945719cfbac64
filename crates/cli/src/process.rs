//! `gitvm proc …`: background processes in a sandbox.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Result};
use futures_util::StreamExt;
use gitvm_sdk::{Client, ExecEvent, ProcessInfo, ProcessState, StartProcessRequest};

use crate::args::ProcCommand;
use crate::output::{parse_pairs, print_json};
use crate::vm::shell_line;

pub async fn run(client: &Client, command: ProcCommand) -> Result<ExitCode> {
    match command {
        ProcCommand::Start {
            id,
            tag,
            cwd,
            env,
            json,
            command,
        } => {
            let request = StartProcessRequest {
                command: shell_line(&command)?,
                cwd,
                env: parse_pairs("env", &env)?,
                tag,
                ..Default::default()
            };
            let info = client.start_process(&id, &request).await?;
            if json {
                print_json(&info)?;
            } else {
                println!("{}", info.pid);
            }
        }
        ProcCommand::List { id, json } => {
            let processes = client.list_processes(&id).await?;
            if json {
                print_json(&processes)?;
            } else {
                print_processes(&processes);
            }
        }
        ProcCommand::Logs { id, process } => return logs(client, &id, &process).await,
        ProcCommand::Signal {
            id,
            process,
            signal,
        } => client.signal_process(&id, &process, &signal).await?,
        ProcCommand::Kill { id, process } => client.kill_process(&id, &process).await?,
        ProcCommand::Wait {
            id,
            process,
            timeout,
        } => {
            let info = client.wait_process(&id, &process, timeout).await?;
            if info.state == ProcessState::Running {
                bail!(
                    "process {process} is still running after {} s",
                    timeout.unwrap_or_default()
                );
            }
            print_json(&info)?;
            return Ok(ExitCode::from(
                info.exit_code.unwrap_or(255).clamp(0, 255) as u8
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies a process's output (replay buffer, then live) until it exits, then exits with its
/// exit code.
async fn logs(client: &Client, id: &str, process: &str) -> Result<ExitCode> {
    let events = client.process_output(id, process).await?;
    let mut events = std::pin::pin!(events);
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    while let Some(event) = events.next().await {
        let event = event?;
        match &event {
            ExecEvent::Start { .. } => {}
            ExecEvent::Stdout { .. } => {
                stdout.write_all(&decode(&event)?)?;
                stdout.flush()?;
            }
            ExecEvent::Stderr { .. } => stderr.write_all(&decode(&event)?)?,
            ExecEvent::Exit { exit_code, .. } => {
                return Ok(ExitCode::from((*exit_code).clamp(0, 255) as u8));
            }
        }
    }
    bail!("the output stream of process {process} ended before its exit event")
}

fn decode(event: &ExecEvent) -> Result<Vec<u8>> {
    Ok(event.bytes().unwrap_or(Ok(Vec::new()))?)
}

fn print_processes(processes: &[ProcessInfo]) {
    println!(
        "{:<8}  {:<12}  {:<8}  {:<6}  COMMAND",
        "PID", "TAG", "STATE", "EXIT"
    );
    for process in processes {
        let state = match process.state {
            ProcessState::Running => "running",
            ProcessState::Exited => "exited",
        };
        let exit = process
            .exit_code
            .map(|code| code.to_string())
            .unwrap_or_default();
        println!(
            "{:<8}  {:<12}  {:<8}  {:<6}  {}",
            process.pid,
            process.tag.as_deref().unwrap_or("-"),
            state,
            exit,
            process.command
        );
    }
}
