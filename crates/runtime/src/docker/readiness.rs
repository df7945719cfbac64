//! Waiting for a started container's agent to respond to a health check.

use std::time::Duration;

use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::{InspectContainerOptions, LogsOptions};
use futures_util::StreamExt;
use gitvm_agent::client::AgentClient;
use tokio::time::Instant;

use super::{container_name, docker_message, DockerRuntime, RUNTIME};
use crate::RuntimeError;

/// First pause between health checks; an agent usually starts within a few milliseconds.
const FIRST_POLL_DELAY: Duration = Duration::from_millis(5);

/// Maximum pause between health checks.
const MAX_POLL_DELAY: Duration = Duration::from_millis(200);

/// Lines of the container's log quoted when the agent does not become ready.
const LOG_TAIL_LINES: usize = 20;

impl DockerRuntime {
    /// Polls the agent's socket until `/health` responds or the ready timeout passes.
    ///
    /// Between polls the container is inspected, so an agent that exits (or a container that
    /// never ran) fails at once instead of at the deadline. Either failure is
    /// [`RuntimeError::AgentNotReady`] with the exit code and the tail of the container's log.
    pub(super) async fn wait_ready(&self, id: &str) -> Result<(), RuntimeError> {
        let socket = self.socket_path(id);
        let started = Instant::now();
        let deadline = started + self.config.ready_timeout;
        let mut delay = FIRST_POLL_DELAY;
        let mut last_error = String::from("the agent socket was never created");

        loop {
            if socket.exists() {
                match tokio::time::timeout_at(deadline, health_check(&socket)).await {
                    Ok(Ok(())) => {
                        tracing::info!(
                            sandbox_id = %id,
                            runtime = RUNTIME,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "agent ready"
                        );
                        return Ok(());
                    }
                    Ok(Err(err)) => last_error = err.to_string(),
                    Err(_) => last_error = "the health check did not answer".to_string(),
                }
            }

            if let Some(exit) = self.exit_description(id).await? {
                return Err(self.not_ready(id, exit).await);
            }

            let now = Instant::now();
            if now >= deadline {
                let reason = format!(
                    "no answer within {} ms (last error: {last_error})",
                    self.config.ready_timeout.as_millis()
                );
                return Err(self.not_ready(id, reason).await);
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(MAX_POLL_DELAY);
        }
    }

    /// Describes how the container ended when it is no longer running, or `None` while it
    /// runs.
    async fn exit_description(&self, id: &str) -> Result<Option<String>, RuntimeError> {
        let inspect = self
            .docker
            .inspect_container(&container_name(id), None::<InspectContainerOptions>)
            .await
            .map_err(|err| RuntimeError::AgentNotReady {
                id: id.to_string(),
                reason: format!("inspecting the container failed: {}", docker_message(&err)),
            })?;
        let state = inspect.state.unwrap_or_default();

        let description = match state.status {
            Some(ContainerStateStatusEnum::RUNNING) => return Ok(None),
            Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
                format!(
                    "the container exited with code {}",
                    state.exit_code.unwrap_or(-1)
                )
            }
            other => format!(
                "the container is {}",
                other.map_or_else(|| "in an unknown state".to_string(), |s| s.to_string())
            ),
        };
        match state.error.filter(|error| !error.is_empty()) {
            Some(error) => Ok(Some(format!("{description}: {error}"))),
            None => Ok(Some(description)),
        }
    }

    /// Builds the readiness error, appending the tail of the container's log.
    async fn not_ready(&self, id: &str, reason: String) -> RuntimeError {
        let log = self.log_tail(id).await;
        tracing::warn!(sandbox_id = %id, runtime = RUNTIME, %reason, "agent did not become ready");

        let reason = if log.trim().is_empty() {
            format!("{reason}; the container log is empty")
        } else {
            format!(
                "{reason}; last lines of the container log:\n{}",
                log.trim_end()
            )
        };
        RuntimeError::AgentNotReady {
            id: id.to_string(),
            reason,
        }
    }

    /// Reads the last [`LOG_TAIL_LINES`] lines of the container's stdout and stderr, or a note saying
    /// why they could not be read.
    async fn log_tail(&self, id: &str) -> String {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: LOG_TAIL_LINES.to_string(),
            ..Default::default()
        };
        let mut stream = self.docker.logs(&container_name(id), Some(options));

        let mut log = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(output) => log.push_str(&String::from_utf8_lossy(&output.into_bytes())),
                Err(err) => {
                    tracing::warn!(sandbox_id = %id, error = %err, "reading the container log failed");
                    log.push_str(&format!("(reading the container log failed: {err})"));
                    break;
                }
            }
        }
        log
    }
}

/// Connects to the agent and requests `/health`.
async fn health_check(socket: &std::path::Path) -> Result<(), gitvm_agent::client::AgentError> {
    let client = AgentClient::connect_unix(socket).await?;
    client.health().await?;
    Ok(())
}
