//! The sandbox orchestrator. Each lifecycle operation lives in its own file and follows the
//! same steps: take the sandbox's lock, reload it from the store, check the transition, call the
//! runtime, persist the new state, log with `sandbox_id` and `runtime` fields.
//!
//! Lifecycle operations on one sandbox run one at a time under a per-sandbox lock. Exec and
//! file operations do not take it, so many of them run concurrently on one sandbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gitvm_proto::{Sandbox, SandboxState};
use gitvm_runtime::{Runtime, RuntimeError};

use crate::runtimes::Runtimes;
use tokio::sync::OwnedMutexGuard;

use crate::metrics::Metrics;
use crate::store::{SandboxFilter, SandboxRecord, Store};

mod agent;
mod create;
mod delete;
mod error;
mod exec;
mod files;
mod pause;
mod processes;
mod pty;
mod resume;
mod snapshot;
mod start;
mod stop;
mod timeout;
pub mod transition;
pub mod validate;

pub use error::NodeError;
pub use transition::Operation;
pub use validate::HostLimits;

/// Node-wide defaults and limits applied to create requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Time to live in seconds of sandboxes created without `timeout`.
    pub default_timeout_secs: i64,
    /// Template of sandboxes created without `template`.
    pub default_template: String,
    /// Maximum `vcpus` and `memoryMB` a request may ask for.
    pub limits: HostLimits,
}

/// The node engine: the store, the runtimes and the per-sandbox locks and agent connections.
pub struct Node {
    store: Store,
    runtimes: Runtimes,
    settings: Settings,
    metrics: Arc<Metrics>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    agents: Mutex<HashMap<String, gitvm_agent::client::AgentClient>>,
}

impl Node {
    /// Builds a node over an open store and its runtimes.
    pub fn new(store: Store, runtimes: Runtimes, settings: Settings) -> Self {
        Self {
            store,
            runtimes,
            settings,
            metrics: Arc::new(Metrics::default()),
            locks: Mutex::new(HashMap::new()),
            agents: Mutex::new(HashMap::new()),
        }
    }

    /// Returns the node's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Returns the node's runtimes.
    pub fn runtimes(&self) -> &Runtimes {
        &self.runtimes
    }

    /// Returns the runtime that runs `sandbox`.
    fn runtime_of(&self, sandbox: &Sandbox) -> Result<&Arc<dyn Runtime>, NodeError> {
        self.runtimes.get(Some(&sandbox.runtime))
    }

    /// Returns the node's defaults and limits.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Returns the node's request and exec counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Fetches one sandbox, deleted ones included.
    pub async fn get(&self, id: &str) -> Result<Sandbox, NodeError> {
        Ok(self.record(id).await?.sandbox)
    }

    /// Lists sandboxes that match `filter`, oldest first; deleted ones only when the filter's
    /// state is `deleted`.
    pub async fn list(&self, filter: &SandboxFilter) -> Result<Vec<Sandbox>, NodeError> {
        let records = self.store.list_sandboxes(filter).await?;
        Ok(records.into_iter().map(|record| record.sandbox).collect())
    }

    async fn record(&self, id: &str) -> Result<SandboxRecord, NodeError> {
        self.store
            .get_sandbox(id)
            .await?
            .ok_or_else(|| NodeError::SandboxNotFound { id: id.to_owned() })
    }

    /// Waits for the lifecycle lock of sandbox `id`.
    async fn lock(&self, id: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().expect("sandbox lock table poisoned");
            Arc::clone(locks.entry(id.to_owned()).or_default())
        };
        lock.lock_owned().await
    }

    fn forget_lock(&self, id: &str) {
        self.locks
            .lock()
            .expect("sandbox lock table poisoned")
            .remove(id);
    }

    /// Persists a new state and returns the updated sandbox.
    async fn persist(
        &self,
        id: &str,
        state: SandboxState,
        error: Option<&str>,
    ) -> Result<Sandbox, NodeError> {
        self.store.set_state(id, state, error).await?;
        self.get(id).await
    }

    /// Turns a runtime failure of a lifecycle operation into the API error. When the runtime
    /// has lost the sandbox, the sandbox moves to state `error`, since no operation but delete
    /// can succeed any more.
    async fn runtime_failed(
        &self,
        sandbox: &Sandbox,
        operation: &'static str,
        err: RuntimeError,
    ) -> NodeError {
        tracing::error!(
            sandbox_id = %sandbox.id,
            runtime = %sandbox.runtime,
            operation,
            error = %err,
            "runtime operation failed"
        );
        if !matches!(
            err,
            RuntimeError::NotFound {
                what: "sandbox",
                ..
            }
        ) {
            return err.into();
        }

        let reason = format!("the runtime no longer has this sandbox ({err})");
        if let Err(store_err) = self
            .store
            .set_state(&sandbox.id, SandboxState::Error, Some(&reason))
            .await
        {
            tracing::error!(sandbox_id = %sandbox.id, error = %store_err, "cannot record lost sandbox");
        }
        self.forget_agent(&sandbox.id);
        NodeError::InvalidState {
            id: sandbox.id.clone(),
            state: SandboxState::Error,
            message: format!(
                "sandbox {} cannot {operation}: {reason}; delete it and create a new one",
                sandbox.id
            ),
        }
    }
}
