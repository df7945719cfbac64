//! `gitvm bench docker`: exec round trip and create to first exec on the server's Docker
//! runtime, each against the same work done straight through the Docker Engine API, and the
//! agent's memory. Runs on the server's host, because it reads the agent's memory from /proc.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, RemoveContainerOptions, StartContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use gitvm_sdk::{Client, CreateSandboxRequest, ExecRequest};
use serde::Serialize;

use crate::args::{BenchDocker, Connection};
use crate::bench::{finish, run_label, Cleanup, Status, Summary};

/// Image of the raw Docker baseline, the `base` template's image.
const BASE_IMAGE: &str = "gitvm-base:bookworm";

/// Results of one run.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    server: String,
    exec_gitvm: Summary,
    exec_docker: Summary,
    create_to_first_exec_gitvm: Summary,
    create_to_first_exec_docker: Summary,
    agent_rss_kib: u64,
    agent_anon_kib: u64,
}

/// Runs `gitvm bench docker`.
pub async fn run(connection: &Connection, args: BenchDocker) -> Result<ExitCode> {
    let client = crate::vm::client(connection)?;
    let docker = gitvm_runtime::docker::connect_daemon_default().await?;
    let mut cleanup = Cleanup::new(run_label());
    let status = Status::new();
    let outcome = tokio::select! {
        result = measure(&client, &docker, &args, &mut cleanup, &status) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    finish(
        &client,
        &mut cleanup,
        &status,
        outcome,
        args.json,
        print_report,
    )
    .await
}

async fn measure(
    client: &Client,
    docker: &Docker,
    args: &BenchDocker,
    cleanup: &mut Cleanup,
    status: &Status,
) -> Result<Report> {
    let labels = cleanup.labels();
    let request = |timeout| CreateSandboxRequest {
        runtime: Some("docker".into()),
        timeout: Some(timeout),
        metadata: labels.clone(),
        ..Default::default()
    };
    let true_command = ExecRequest {
        command: "true".into(),
        ..Default::default()
    };

    status.say("creating the exec sandbox");
    let sandbox = client
        .create_sandbox(&request(900))
        .await
        .context("creating a docker sandbox failed; is the server's docker runtime available?")?;
    cleanup.sandboxes.push(sandbox.id.clone());
    let container = format!("gitvm-{}", sandbox.id);

    let execs = args.exec_runs as usize;
    let mut gitvm_samples = Vec::with_capacity(execs);
    let mut docker_samples = Vec::with_capacity(execs);
    for round in 0..=execs {
        status.say(&format!("exec round trips {round}/{execs}"));
        let started = Instant::now();
        let result = client.exec(&sandbox.id, &true_command).await?;
        let gitvm = started.elapsed();
        if result.exit_code != 0 {
            bail!("`true` exited with {} in {}", result.exit_code, sandbox.id);
        }
        let started = Instant::now();
        docker_exec(docker, &container).await?;
        let raw = started.elapsed();
        // Round 0 warms both paths up and is not counted.
        if round > 0 {
            gitvm_samples.push(gitvm);
            docker_samples.push(raw);
        }
    }
    let (agent_rss_kib, agent_anon_kib) = agent_memory(docker, &container).await?;

    let creates = args.create_runs as usize;
    let mut gitvm_creates = Vec::with_capacity(creates);
    let mut docker_creates = Vec::with_capacity(creates);
    for round in 0..=creates {
        status.say(&format!("create to first exec {round}/{creates}"));
        let started = Instant::now();
        let created = client.create_sandbox(&request(300)).await?;
        cleanup.sandboxes.push(created.id.clone());
        client.exec(&created.id, &true_command).await?;
        let gitvm = started.elapsed();
        client.delete_sandbox(&created.id).await?;
        cleanup.sandboxes.retain(|id| *id != created.id);

        let raw = docker_create_to_exec(docker).await?;
        if round > 0 {
            gitvm_creates.push(gitvm);
            docker_creates.push(raw);
        }
    }

    Ok(Report {
        server: client.base_url().to_owned(),
        exec_gitvm: Summary::of(&gitvm_samples),
        exec_docker: Summary::of(&docker_samples),
        create_to_first_exec_gitvm: Summary::of(&gitvm_creates),
        create_to_first_exec_docker: Summary::of(&docker_creates),
        agent_rss_kib,
        agent_anon_kib,
    })
}

/// Runs `true` in `container` through the Engine API, as `docker exec` does, and waits for it.
async fn docker_exec(docker: &Docker, container: &str) -> Result<()> {
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions::<String> {
                cmd: Some(vec!["true".into()]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("docker exec in {container} failed"))?;
    if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&exec.id, None).await?
    {
        while output.next().await.is_some() {}
    }
    Ok(())
}

/// Creates and starts a container of [`BASE_IMAGE`] that sleeps, runs `true` in it and returns
/// the time that took; the container is removed afterwards, untimed.
async fn docker_create_to_exec(docker: &Docker) -> Result<Duration> {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("gitvm-bench-raw-{}-{count}", std::process::id());
    let body = ContainerCreateBody {
        image: Some(BASE_IMAGE.into()),
        cmd: Some(vec!["sleep".into(), "600".into()]),
        ..Default::default()
    };
    let started = Instant::now();
    let result = async {
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .with_context(|| format!("creating a container of {BASE_IMAGE} failed"))?;
        docker
            .start_container(&name, None::<StartContainerOptions>)
            .await?;
        docker_exec(docker, &name).await
    }
    .await;
    let elapsed = started.elapsed();
    let removed = docker
        .remove_container(
            &name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    result?;
    removed.with_context(|| format!("removing the baseline container {name} failed"))?;
    Ok(elapsed)
}

/// Returns the resident and anonymous memory, in KiB, of the agent, PID 1 of `container`.
async fn agent_memory(docker: &Docker, container: &str) -> Result<(u64, u64)> {
    let inspect = docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await?;
    let pid = inspect
        .state
        .and_then(|state| state.pid)
        .filter(|pid| *pid > 0)
        .ok_or_else(|| anyhow!("container {container} reports no pid"))?;
    let status_path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&status_path).with_context(|| {
        format!("cannot read {status_path}; run the benchmark on the server's host as root")
    })?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("RssAnon:")))
}

fn print_report(report: &Report) {
    println!("gitvm bench docker: server {}", report.server);
    println!();
    let rows = [
        ("exec `true`, gitvm REST API", &report.exec_gitvm),
        ("exec `true`, Docker Engine API", &report.exec_docker),
        (
            "create + first exec, gitvm",
            &report.create_to_first_exec_gitvm,
        ),
        (
            "create + first exec, Docker",
            &report.create_to_first_exec_docker,
        ),
    ];
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    println!(
        "{:<width$}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}",
        "MEASURE (ms)", "RUNS", "MIN", "P50", "P90", "MAX"
    );
    for (name, summary) in rows {
        println!(
            "{name:<width$}  {:>5}  {:>9.1}  {:>9.1}  {:>9.1}  {:>9.1}",
            summary.runs, summary.min_ms, summary.p50_ms, summary.p90_ms, summary.max_ms
        );
    }
    println!();
    println!(
        "create + first exec p50, gitvm / Docker: {:.2}",
        report.create_to_first_exec_gitvm.p50_ms / report.create_to_first_exec_docker.p50_ms
    );
    println!(
        "agent (PID 1) memory: {} KiB resident, {} KiB anonymous",
        report.agent_rss_kib, report.agent_anon_kib
    );
}
