//! Container lifecycle of a sandbox: create, start, stop, pause, resume, delete, list, observe.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum, HostConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, RemoveContainerOptions,
    StartContainerOptions, StopContainerOptions,
};

use super::{
    container_name, docker_message, guest_socket, is_not_found, sandbox_error, status_code,
    DockerRuntime, LABEL_NODE, LABEL_SANDBOX, RUNTIME,
};
use crate::{ObservedSandbox, ObservedState, RuntimeError, SandboxSpec};
use gitvm_proto::agent::{GUEST_AGENT_BIN, GUEST_RUN_DIR};

/// Seconds between SIGTERM and SIGKILL when a sandbox stops.
const STOP_GRACE_SECS: i32 = 10;

/// Processes a sandbox may hold at once, so a fork bomb stays inside its container.
const PIDS_LIMIT: i64 = 4096;

/// Capabilities removed from Docker's default set; sandboxes need none of them.
const DROPPED_CAPABILITIES: [&str; 4] = ["NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP"];

impl DockerRuntime {
    /// Creates and starts the container of `spec`, then waits for its agent.
    ///
    /// On failure the container is left in place, labelled, for the node to delete.
    pub(super) async fn create_container(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let id = spec.id.as_str();
        let run_dir = self.run_dir(id);
        std::fs::create_dir_all(&run_dir).map_err(|source| RuntimeError::Io {
            context: format!("creating the run directory {}", run_dir.display()),
            source,
        })?;
        self.remove_stale_socket(id)?;

        let body = self.container_body(spec);
        let options = CreateContainerOptions {
            name: Some(container_name(id)),
            ..Default::default()
        };
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|err| match status_code(&err) {
                Some(404) => RuntimeError::TemplateNotFound {
                    template: spec.image.clone(),
                    reason: format!(
                        "{}; prepare the template before creating a sandbox",
                        docker_message(&err)
                    ),
                },
                _ => sandbox_error("create", id, err),
            })?;
        tracing::info!(sandbox_id = %id, runtime = RUNTIME, image = %spec.image, "container created");

        self.start_and_wait(id).await
    }

    /// Starts a stopped sandbox's container and waits for its agent.
    pub(super) async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.remove_stale_socket(id)?;
        self.start_and_wait(id).await
    }

    /// Stops a sandbox's container, thawing it first when it is paused so that SIGTERM can be
    /// handled.
    pub(super) async fn stop_container(&self, id: &str) -> Result<(), RuntimeError> {
        let name = container_name(id);
        if self.observe_container(id).await? == ObservedState::Paused {
            self.docker
                .unpause_container(&name)
                .await
                .map_err(|err| sandbox_error("unpause", id, err))?;
        }

        let options = StopContainerOptions {
            t: Some(STOP_GRACE_SECS),
            ..Default::default()
        };
        // Bollard treats Docker's 304 (already stopped) as success.
        self.docker
            .stop_container(&name, Some(options))
            .await
            .map_err(|err| sandbox_error("stop", id, err))?;
        tracing::info!(sandbox_id = %id, runtime = RUNTIME, "container stopped");
        Ok(())
    }

    /// Freezes a sandbox's processes with the cgroup freezer.
    pub(super) async fn pause_container(&self, id: &str) -> Result<(), RuntimeError> {
        match self.docker.pause_container(&container_name(id)).await {
            Ok(()) => {}
            // The state asked for is reached, such as when dockerd finished an earlier pause
            // after reporting an error for it.
            Err(err) if docker_message(&err).contains("is already paused") => {
                tracing::warn!(sandbox_id = %id, runtime = RUNTIME, "container was paused already");
            }
            Err(err) => return Err(sandbox_error("pause", id, err)),
        }
        tracing::info!(sandbox_id = %id, runtime = RUNTIME, "container paused");
        Ok(())
    }

    /// Thaws a paused sandbox.
    pub(super) async fn resume_container(&self, id: &str) -> Result<(), RuntimeError> {
        match self.docker.unpause_container(&container_name(id)).await {
            Ok(()) => {}
            Err(err) if docker_message(&err).contains("is not paused") => {
                tracing::warn!(sandbox_id = %id, runtime = RUNTIME, "container was running already");
            }
            Err(err) => return Err(sandbox_error("resume", id, err)),
        }
        tracing::info!(sandbox_id = %id, runtime = RUNTIME, "container resumed");
        Ok(())
    }

    /// Force-removes a sandbox's container with its anonymous volumes, then its host
    /// directory. Either being gone already is success.
    pub(super) async fn delete_container(&self, id: &str) -> Result<(), RuntimeError> {
        let image = self
            .docker
            .inspect_container(
                &container_name(id),
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
            .and_then(|container| container.image);
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self
            .docker
            .remove_container(&container_name(id), Some(options))
            .await
        {
            Ok(()) => {}
            Err(err) if is_not_found(&err) => {}
            Err(err) => return Err(sandbox_error("delete", id, err)),
        }
        if let Some(image) = image {
            self.remove_orphan_snapshot_image(&image).await;
        }

        let dir = self.sandbox_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(RuntimeError::Io {
                    context: format!("removing the sandbox directory {}", dir.display()),
                    source,
                })
            }
        }
        tracing::info!(sandbox_id = %id, runtime = RUNTIME, "container deleted");
        Ok(())
    }

    /// Lists every container labelled with this node's id, in any state.
    pub(super) async fn list_containers(&self) -> Result<Vec<ObservedSandbox>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_NODE}={}", self.config.node_id)],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|err| RuntimeError::Backend {
                runtime: RUNTIME,
                operation: "list",
                id: self.config.node_id.clone(),
                message: docker_message(&err),
            })?;

        let mut sandboxes = Vec::with_capacity(containers.len());
        for summary in containers {
            let labels = summary.labels.unwrap_or_default();
            let Some(id) = labels.get(LABEL_SANDBOX) else {
                tracing::warn!(container = ?summary.id, "container has the node label but no sandbox label; skipping it");
                continue;
            };
            sandboxes.push(ObservedSandbox {
                id: id.clone(),
                state: summary_state(summary.state),
            });
        }
        Ok(sandboxes)
    }

    /// Reports the state of a sandbox's container; a missing container is
    /// [`ObservedState::Missing`].
    pub(super) async fn observe_container(&self, id: &str) -> Result<ObservedState, RuntimeError> {
        match self
            .docker
            .inspect_container(&container_name(id), None::<InspectContainerOptions>)
            .await
        {
            Ok(inspect) => Ok(inspect_state(inspect.state.and_then(|state| state.status))),
            Err(err) if is_not_found(&err) => Ok(ObservedState::Missing),
            Err(err) => Err(sandbox_error("inspect", id, err)),
        }
    }

    /// Starts the container and waits for its agent. Docker failing to start it, such as for
    /// a bind mount the image's tree does not allow, is reported as the agent not becoming
    /// ready, with Docker's message.
    async fn start_and_wait(&self, id: &str) -> Result<(), RuntimeError> {
        let name = container_name(id);
        match self
            .docker
            .start_container(&name, None::<StartContainerOptions>)
            .await
        {
            // Bollard treats Docker's 304 (already running) as success.
            Ok(()) => {}
            Err(err) if is_not_found(&err) => return Err(sandbox_error("start", id, err)),
            Err(err) => {
                tracing::warn!(sandbox_id = %id, runtime = RUNTIME, error = %err, "container failed to start");
                return Err(RuntimeError::AgentNotReady {
                    id: id.to_string(),
                    reason: format!(
                        "docker could not start the container: {}",
                        docker_message(&err)
                    ),
                });
            }
        }
        tracing::info!(sandbox_id = %id, runtime = RUNTIME, "container started");

        self.wait_ready(id).await
    }

    /// Removes a socket left by an earlier run of the agent, so readiness polling cannot
    /// connect to a dead socket file.
    fn remove_stale_socket(&self, id: &str) -> Result<(), RuntimeError> {
        let socket = self.socket_path(id);
        match std::fs::remove_file(&socket) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RuntimeError::Io {
                context: format!("removing the stale agent socket {}", socket.display()),
                source,
            }),
        }
    }

    /// Container configuration of a sandbox: the agent as entrypoint, its two bind mounts,
    /// labels and resource limits.
    fn container_body(&self, spec: &SandboxSpec) -> ContainerCreateBody {
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(LABEL_SANDBOX.to_string(), spec.id.clone());
        labels.insert(LABEL_NODE.to_string(), self.config.node_id.clone());

        let binds = vec![
            format!("{}:{GUEST_RUN_DIR}:rw", self.run_dir(&spec.id).display()),
            format!("{}:{GUEST_AGENT_BIN}:ro", self.agent_copy.display()),
        ];
        let memory_bytes =
            i64::try_from(spec.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
        let host_config = HostConfig {
            binds: Some(binds),
            nano_cpus: Some(i64::from(spec.vcpus) * 1_000_000_000),
            memory: Some(memory_bytes),
            // Equal to `memory`, so the sandbox gets no swap.
            memory_swap: Some(memory_bytes),
            pids_limit: Some(PIDS_LIMIT),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            cap_drop: Some(
                DROPPED_CAPABILITIES
                    .iter()
                    .map(|cap| cap.to_string())
                    .collect(),
            ),
            // The agent is PID 1 and reaps zombies itself.
            init: Some(false),
            // Without a network, only the loopback device exists inside.
            network_mode: (!spec.internet).then(|| "none".to_string()),
            ..Default::default()
        };

        ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(vec![
                GUEST_AGENT_BIN.to_string(),
                "agent".to_string(),
                "--socket".to_string(),
                guest_socket(),
            ]),
            cmd: Some(Vec::new()),
            user: Some("0:0".to_string()),
            working_dir: Some("/".to_string()),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}

/// Maps Docker's container status from an inspect.
fn inspect_state(status: Option<ContainerStateStatusEnum>) -> ObservedState {
    match status {
        Some(ContainerStateStatusEnum::RUNNING) | Some(ContainerStateStatusEnum::RESTARTING) => {
            ObservedState::Running
        }
        Some(ContainerStateStatusEnum::PAUSED) => ObservedState::Paused,
        // A container being removed still has its resources until Docker finishes, so it is
        // reported as stopped rather than missing.
        _ => ObservedState::Stopped,
    }
}

/// Maps Docker's container state from a list entry.
fn summary_state(state: Option<ContainerSummaryStateEnum>) -> ObservedState {
    match state {
        Some(ContainerSummaryStateEnum::RUNNING) | Some(ContainerSummaryStateEnum::RESTARTING) => {
            ObservedState::Running
        }
        Some(ContainerSummaryStateEnum::PAUSED) => ObservedState::Paused,
        _ => ObservedState::Stopped,
    }
}
