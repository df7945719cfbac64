//! Docker backend: one container per sandbox, driven through the Docker Engine API (bollard).
//!
//! How a sandbox container is put together:
//!
//! 1. At connect, the host's `gitvm` binary is copied to `<data_dir>/agent/gitvm`, so that
//!    rebuilding the host binary never swaps the agent under a running sandbox.
//! 2. Each sandbox gets `<data_dir>/sandboxes/<id>/run`, bind-mounted read-write at
//!    [`GUEST_RUN_DIR`]; the copied agent is bind-mounted read-only at
//!    [`GUEST_AGENT_BIN`](gitvm_proto::agent::GUEST_AGENT_BIN).
//! 3. The container's entrypoint is the agent (`gitvm agent --socket …`), running as PID 1 and
//!    root, whatever the image sets.
//! 4. The host reaches the agent through the socket the agent creates in the run directory.
//!
//! Containers are named `gitvm-<id>` and labelled `gitvm.sandbox=<id>` and `gitvm.node=<node>`,
//! which is how [`Runtime::list`] finds this node's sandboxes after a restart.

mod container;
mod readiness;
mod snapshot;
pub mod template;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::{Docker, API_DEFAULT_VERSION};
use gitvm_agent::client::AgentClient;
use gitvm_proto::agent::{GUEST_RUN_DIR, SOCKET_NAME};

use crate::{
    ObservedSandbox, ObservedState, Progress, Runtime, RuntimeError, SandboxSpec, SnapshotInfo,
};

pub use template::{build_base_image, BASE_IMAGE};

/// Runtime name used in the API and in errors.
const RUNTIME: &str = "docker";

/// Label carrying the sandbox id.
pub const LABEL_SANDBOX: &str = "gitvm.sandbox";

/// Label carrying the id of the node that owns a container or snapshot image.
pub const LABEL_NODE: &str = "gitvm.node";

/// Socket used when `DOCKER_HOST` does not name a Unix socket.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Time the daemon gets to respond to the version check and ping at connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Timeout of each Docker API request until its response headers arrive, in seconds. Commits
/// and imports of large trees respond only when done, so this is generous.
const REQUEST_TIMEOUT_SECS: u64 = 600;

/// Settings of a [`DockerRuntime`].
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Directory for the agent copy and the per-sandbox run directories.
    pub data_dir: PathBuf,
    /// Static `gitvm` binary to run as the agent inside every container.
    pub agent_bin: PathBuf,
    /// Id of this node, stored in the `gitvm.node` label.
    pub node_id: String,
    /// Time a started container gets until its agent responds to a health check.
    pub ready_timeout: Duration,
}

/// Docker implementation of [`Runtime`].
pub struct DockerRuntime {
    docker: Docker,
    config: DockerConfig,
    agent_copy: PathBuf,
}

/// Connects to the Docker daemon alone, for work that needs no sandbox directory, such as
/// [`build_base_image`]. Uses the same socket and errors as [`DockerRuntime::connect`].
pub async fn connect_daemon_default() -> Result<Docker, RuntimeError> {
    connect_daemon(&socket_path()).await
}

impl DockerRuntime {
    /// Connects to the Docker daemon and installs the agent binary under the data directory.
    ///
    /// The socket is the path in `DOCKER_HOST` when it is a `unix://` address, otherwise
    /// `/var/run/docker.sock`. Fails with [`RuntimeError::Unavailable`] when the daemon does
    /// not respond within two seconds.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), gitvm_runtime::RuntimeError> {
    /// use std::time::Duration;
    /// use gitvm_runtime::docker::{DockerConfig, DockerRuntime};
    ///
    /// let runtime = DockerRuntime::connect(DockerConfig {
    ///     data_dir: "/var/lib/gitvm".into(),
    ///     agent_bin: "/usr/local/bin/gitvm".into(),
    ///     node_id: "node-1".into(),
    ///     ready_timeout: Duration::from_secs(10),
    /// })
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: DockerConfig) -> Result<DockerRuntime, RuntimeError> {
        let socket = socket_path();
        let docker = connect_daemon(&socket).await?;

        let agent_copy = install_agent(&config.agent_bin, &config.data_dir)?;
        tracing::info!(
            socket = %socket,
            node_id = %config.node_id,
            agent = %agent_copy.display(),
            "connected to docker"
        );

        Ok(DockerRuntime {
            docker,
            config,
            agent_copy,
        })
    }

    /// Returns the bollard client, for work outside the [`Runtime`] trait such as
    /// [`build_base_image`].
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Returns the host directory containing everything this runtime keeps for one sandbox.
    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("sandboxes").join(id)
    }

    /// Returns the host side of the directory bind-mounted at [`GUEST_RUN_DIR`].
    fn run_dir(&self, id: &str) -> PathBuf {
        self.sandbox_dir(id).join("run")
    }

    /// Returns the host path of the agent's socket.
    fn socket_path(&self, id: &str) -> PathBuf {
        self.run_dir(id).join(SOCKET_NAME)
    }
}

/// Returns the name of the container of sandbox `id`.
fn container_name(id: &str) -> String {
    format!("gitvm-{id}")
}

/// Returns the path of the agent's socket inside the container.
fn guest_socket() -> String {
    format!("{GUEST_RUN_DIR}/{SOCKET_NAME}")
}

/// Returns the Docker socket path from `DOCKER_HOST`, or the default.
fn socket_path() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(host) => match host.strip_prefix("unix://") {
            Some(path) => path.to_string(),
            None => {
                tracing::warn!(docker_host = %host, "DOCKER_HOST is not a unix:// address; using the default socket");
                DEFAULT_SOCKET.to_string()
            }
        },
        Err(_) => DEFAULT_SOCKET.to_string(),
    }
}

/// Opens a client on `socket`, lowers its API version to the daemon's, and pings the daemon.
async fn connect_daemon(socket: &str) -> Result<Docker, RuntimeError> {
    let unavailable = |what: String| {
        RuntimeError::Unavailable {
        runtime: RUNTIME,
        reason: format!(
            "{what}; install Docker (`apt-get install docker.io`), start the daemon \
             (`systemctl start docker` or `dockerd &`), or set DOCKER_HOST=unix:///path/to/docker.sock"
        ),
    }
    };

    let docker = Docker::connect_with_socket(socket, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        .map_err(|err| unavailable(format!("cannot open the Docker socket {socket}: {err}")))?;

    // Daemons older than bollard's default API version reject every request, so the client
    // version is lowered to what the daemon supports before anything else.
    let handshake = async {
        let docker = docker.negotiate_version().await?;
        docker.ping().await?;
        Ok::<_, DockerError>(docker)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(err)) => Err(unavailable(format!(
            "the Docker daemon at {socket} did not answer: {err}"
        ))),
        Err(_) => Err(unavailable(format!(
            "the Docker daemon at {socket} did not answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// Copies the agent binary to `<data_dir>/agent/gitvm` through a temporary file and a rename,
/// so a running container never runs a half-written binary.
fn install_agent(agent_bin: &Path, data_dir: &Path) -> Result<PathBuf, RuntimeError> {
    use std::os::unix::fs::PermissionsExt;

    let dir = data_dir.join("agent");
    std::fs::create_dir_all(&dir).map_err(|source| RuntimeError::Io {
        context: format!("creating the agent directory {}", dir.display()),
        source,
    })?;

    // Runtimes sharing a data directory, in this process or another, must not write the same
    // temporary file.
    static COPIES: AtomicU64 = AtomicU64::new(0);
    let target = dir.join("gitvm");
    let temp = dir.join(format!(
        ".gitvm.tmp.{}.{}",
        std::process::id(),
        COPIES.fetch_add(1, Ordering::Relaxed)
    ));
    let copy = || -> std::io::Result<()> {
        std::fs::copy(agent_bin, &temp)?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&temp, &target)
    };
    if let Err(source) = copy() {
        let _ = std::fs::remove_file(&temp);
        return Err(RuntimeError::Io {
            context: format!(
                "copying the agent binary {} to {}; build it with `cargo build -p gitvm-cli` or \
                 point agent_bin at a static gitvm binary",
                agent_bin.display(),
                target.display()
            ),
            source,
        });
    }
    Ok(target)
}

/// Returns the HTTP status of a Docker error response, if the error is one.
fn status_code(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Checks whether Docker reported that the object does not exist.
fn is_not_found(err: &DockerError) -> bool {
    status_code(err) == Some(404)
}

/// Returns Docker's own message for an error, without bollard's prefix when there is one.
fn docker_message(err: &DockerError) -> String {
    match err {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        DockerError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

/// Maps a Docker error on sandbox `id` to [`RuntimeError::NotFound`] for 404 and
/// [`RuntimeError::Backend`] otherwise.
fn sandbox_error(operation: &'static str, id: &str, err: DockerError) -> RuntimeError {
    if is_not_found(&err) {
        return RuntimeError::NotFound {
            what: "sandbox",
            id: id.to_string(),
        };
    }
    RuntimeError::Backend {
        runtime: RUNTIME,
        operation,
        id: id.to_string(),
        message: docker_message(&err),
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        RUNTIME
    }

    async fn prepare_template(
        &self,
        template: &str,
        progress: Progress,
    ) -> Result<String, RuntimeError> {
        template::prepare(&self.docker, template, progress).await
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        self.create_container(spec).await
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.start_container(id).await
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        self.stop_container(id).await
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.pause_container(id).await
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.resume_container(id).await
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        self.delete_container(id).await
    }

    async fn connect(&self, id: &str) -> Result<AgentClient, RuntimeError> {
        let socket = self.socket_path(id);
        if !self.sandbox_dir(id).exists() {
            return Err(RuntimeError::NotFound {
                what: "sandbox",
                id: id.to_string(),
            });
        }
        Ok(AgentClient::connect_unix(&socket).await?)
    }

    async fn snapshot(&self, id: &str, snapshot_id: &str) -> Result<SnapshotInfo, RuntimeError> {
        self.commit_snapshot(id, snapshot_id).await
    }

    async fn delete_snapshot(&self, snapshot: &SnapshotInfo) -> Result<(), RuntimeError> {
        self.remove_snapshot(snapshot).await
    }

    async fn list(&self) -> Result<Vec<ObservedSandbox>, RuntimeError> {
        self.list_containers().await
    }

    async fn observe(&self, id: &str) -> Result<ObservedState, RuntimeError> {
        self.observe_container(id).await
    }
}
