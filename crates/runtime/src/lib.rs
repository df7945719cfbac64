//! The [`Runtime`] trait, which turns sandbox operations into work on a backend, and its
//! backends. The runtime does not depend on HTTP routes or the store: the node checks state
//! transitions and persists them, the runtime does the work.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use gitvm_agent::client::AgentClient;
use gitvm_proto::SnapshotKind;

pub mod docker;
mod error;
pub mod qemu;

pub use error::RuntimeError;

/// Everything a backend needs to create one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Sandbox id; backends name their resources after it.
    pub id: String,
    /// Image (or snapshot image) to boot, already resolved by [`Runtime::prepare_template`] or
    /// taken from a snapshot.
    pub image: String,
    /// Number of virtual CPUs.
    pub vcpus: u32,
    /// Memory limit in MiB.
    pub memory_mb: u64,
    /// Whether the sandbox may open connections to the outside; without it only loopback
    /// works inside.
    pub internet: bool,
    /// Extra labels for the backend's resources, next to the ones the backend sets itself.
    pub labels: BTreeMap<String, String>,
}

/// State of a sandbox as the backend reports it, used to reconcile the store at node start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObservedState {
    /// Processes are running.
    Running,
    /// Processes are frozen.
    Paused,
    /// Not running, but resources remain and it can be started again.
    Stopped,
    /// The backend has no trace of the sandbox.
    Missing,
}

/// A sandbox found on the backend with this node's label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedSandbox {
    /// Sandbox id from the backend's label.
    pub id: String,
    /// State the backend reports.
    pub state: ObservedState,
}

/// A snapshot written by a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Snapshot contents: filesystem only, or full.
    pub kind: SnapshotKind,
    /// Backend reference to restore from (an image id for Docker).
    pub image: String,
    /// Size on disk in bytes.
    pub size_bytes: u64,
}

/// Receives progress lines of long operations such as image pulls and template builds.
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// A sandbox backend: Docker containers or QEMU microVMs.
///
/// Every method that takes a sandbox id acts on resources this runtime created for it. Methods
/// that start processes (`create`, `start`) return only once the agent responds to a health check.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Backend name as used in the API (`docker`, `qemu`).
    fn name(&self) -> &'static str;

    /// Smallest memory in MiB a sandbox of this backend can run with.
    fn min_memory_mb(&self) -> i64 {
        64
    }

    /// Makes `template` available locally, pulling it if needed, and returns the reference to
    /// put in [`SandboxSpec::image`]. Fails with [`RuntimeError::TemplateNotFound`] when the
    /// template does not exist anywhere this node can reach.
    async fn prepare_template(
        &self,
        template: &str,
        progress: Progress,
    ) -> Result<String, RuntimeError>;

    /// Creates and starts a sandbox, then waits until its agent is ready.
    async fn create(&self, spec: &SandboxSpec) -> Result<(), RuntimeError>;

    /// Starts a stopped sandbox and waits until its agent is ready.
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;

    /// Stops a running or paused sandbox; its processes get SIGTERM, then SIGKILL.
    async fn stop(&self, id: &str) -> Result<(), RuntimeError>;

    /// Freezes every process of a running sandbox.
    async fn pause(&self, id: &str) -> Result<(), RuntimeError>;

    /// Thaws a paused sandbox.
    async fn resume(&self, id: &str) -> Result<(), RuntimeError>;

    /// Removes a sandbox and everything the runtime holds for it. Succeeds when it is already
    /// gone.
    async fn delete(&self, id: &str) -> Result<(), RuntimeError>;

    /// Opens a new connection to the sandbox's agent and completes the handshake.
    async fn connect(&self, id: &str) -> Result<AgentClient, RuntimeError>;

    /// Captures a snapshot of a sandbox under `snapshot_id`.
    async fn snapshot(&self, id: &str, snapshot_id: &str) -> Result<SnapshotInfo, RuntimeError>;

    /// Removes a snapshot's data. Succeeds when it is already gone.
    async fn delete_snapshot(&self, snapshot: &SnapshotInfo) -> Result<(), RuntimeError>;

    /// Lists every sandbox that carries this node's label.
    async fn list(&self) -> Result<Vec<ObservedSandbox>, RuntimeError>;

    /// Reports the backend's view of one sandbox.
    async fn observe(&self, id: &str) -> Result<ObservedState, RuntimeError>;
}
