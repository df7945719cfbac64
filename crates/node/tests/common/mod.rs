//! Helpers shared by the integration tests: sandbox rows and a node whose runtime is down.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use gitvm_agent::client::AgentClient;
use gitvm_node::sandbox::{HostLimits, Node, Settings};
use gitvm_node::store::{SandboxRecord, Store};
use gitvm_proto::{Sandbox, SandboxState};
use gitvm_runtime::{
    ObservedSandbox, ObservedState, Progress, Runtime, RuntimeError, SandboxSpec, SnapshotInfo,
};

/// A runtime whose backend is not reachable, like Docker with its daemon stopped: every
/// operation fails with [`RuntimeError::Unavailable`]. It lets tests drive the API paths that
/// end before the runtime, and the mapping of an unavailable runtime, without Docker.
pub struct DownRuntime;

fn down() -> RuntimeError {
    RuntimeError::Unavailable {
        runtime: "docker",
        reason: "the Docker daemon is not running; start it with `systemctl start docker`"
            .to_owned(),
    }
}

#[async_trait]
impl Runtime for DownRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }
    async fn prepare_template(&self, _: &str, _: Progress) -> Result<String, RuntimeError> {
        Err(down())
    }
    async fn create(&self, _: &SandboxSpec) -> Result<(), RuntimeError> {
        Err(down())
    }
    async fn start(&self, _: &str) -> Result<(), RuntimeError> {
        Err(down())
    }
    async fn stop(&self, _: &str) -> Result<(), RuntimeError> {
        Err(down())
    }
    async fn pause(&self, _: &str) -> Result<(), RuntimeError> {
        Err(down())
    }
    async fn resume(&self, _: &str) -> Result<(), RuntimeError> {
        Err(down())
    }
    async fn delete(&self, _: &str) -> Result<(), RuntimeError> {
        Err(down())
    }
    async fn connect(&self, _: &str) -> Result<AgentClient, RuntimeError> {
        Err(down())
    }
    async fn snapshot(&self, _: &str, _: &str) -> Result<SnapshotInfo, RuntimeError> {
        Err(down())
    }
    async fn delete_snapshot(&self, _: &SnapshotInfo) -> Result<(), RuntimeError> {
        Err(down())
    }
    async fn list(&self) -> Result<Vec<ObservedSandbox>, RuntimeError> {
        Err(down())
    }
    async fn observe(&self, _: &str) -> Result<ObservedState, RuntimeError> {
        Err(down())
    }
}

/// Settings with fixed limits, so that tests do not depend on the machine.
pub fn settings() -> Settings {
    Settings {
        default_timeout_secs: 300,
        default_template: "base".to_owned(),
        limits: HostLimits {
            max_vcpus: 4,
            max_memory_mb: 8192,
        },
    }
}

/// Builds a node over a fresh store in `dir` and the [`DownRuntime`].
pub async fn node(dir: &Path) -> Arc<Node> {
    let store = Store::open(dir).await.expect("open store");
    let mut runtimes = gitvm_node::runtimes::Runtimes::new("docker").expect("known runtime");
    runtimes.add(Arc::new(DownRuntime));
    Arc::new(Node::new(store, runtimes, settings()))
}

/// Builds a sandbox row in `state` with a 300 s timeout.
pub fn record(
    id: &str,
    state: SandboxState,
    created_at: &str,
    expires_at: Option<&str>,
) -> SandboxRecord {
    SandboxRecord {
        sandbox: Sandbox {
            id: id.to_owned(),
            template: "base".to_owned(),
            runtime: "docker".to_owned(),
            state,
            vcpus: 1,
            memory_mb: 512,
            timeout: 300,
            env_vars: BTreeMap::from([("LANG".to_owned(), "C.UTF-8".to_owned())]),
            metadata: BTreeMap::from([("team".to_owned(), "infra".to_owned())]),
            created_at: created_at.to_owned(),
            expires_at: expires_at.map(str::to_owned),
            snapshot_id: None,
            internet: true,
            error: None,
        },
        image: "gitvm-base:latest".to_owned(),
    }
}
