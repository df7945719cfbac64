use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use gitvm_proto::{CreateSandboxRequest, Sandbox, SandboxState};
use gitvm_runtime::SandboxSpec;

use super::{validate, Node, NodeError};
use crate::store::SandboxRecord;
use crate::{ids, timestamp};

impl Node {
    /// Creates a sandbox: checks the request, resolves the template, records the sandbox in
    /// `creating`, and has the runtime create it. The template is resolved before the row is
    /// written, so an unknown template leaves nothing behind.
    pub async fn create(&self, request: CreateSandboxRequest) -> Result<Sandbox, NodeError> {
        let runtime = Arc::clone(self.runtimes.get(request.runtime.as_deref())?);
        let params = validate::create_request(request, &self.settings)?;
        let min_memory_mb = runtime.min_memory_mb();
        if params.memory_mb < min_memory_mb {
            return Err(NodeError::InvalidRequest(format!(
                "invalid memoryMB {}: {} sandboxes need at least {min_memory_mb} MiB",
                params.memory_mb,
                runtime.name()
            )));
        }

        let template = params.template.clone();
        let progress = Arc::new(move |line: &str| {
            tracing::info!(template = %template, "{line}");
        });
        let image = runtime.prepare_template(&params.template, progress).await?;

        let record = new_record(
            runtime.name(),
            params.template,
            image,
            Limits {
                vcpus: params.vcpus,
                memory_mb: params.memory_mb,
                timeout: params.timeout,
                internet: params.internet,
            },
            params.env_vars,
            params.metadata,
            None,
        );
        self.launch(record, "create").await
    }

    /// Inserts `record` in state `creating` and has the runtime create the sandbox. On failure
    /// the sandbox moves to `error` with the reason and the runtime's leftovers are removed.
    pub(super) async fn launch(
        &self,
        record: SandboxRecord,
        operation: &'static str,
    ) -> Result<Sandbox, NodeError> {
        let id = record.sandbox.id.clone();
        let backend = Arc::clone(self.runtime_of(&record.sandbox)?);
        let runtime = backend.name();
        // Held from insertion on, so a delete or the reaper waits until the runtime is done.
        let _guard = self.lock(&id).await;
        self.store.insert_sandbox(&record).await?;

        let spec = SandboxSpec {
            id: id.clone(),
            image: record.image.clone(),
            vcpus: u32::try_from(record.sandbox.vcpus).expect("vcpus validated as 1..=host CPUs"),
            memory_mb: u64::try_from(record.sandbox.memory_mb)
                .expect("memoryMB validated as positive"),
            internet: record.sandbox.internet,
            labels: BTreeMap::new(),
        };
        let started = Instant::now();
        let result = backend.create(&spec).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;

        if let Err(source) = result {
            let reason = source.to_string();
            tracing::error!(sandbox_id = %id, runtime, operation, elapsed_ms, error = %reason, "sandbox failed to start");
            self.store
                .set_state(&id, SandboxState::Error, Some(&reason))
                .await?;
            if let Err(err) = backend.delete(&id).await {
                tracing::warn!(sandbox_id = %id, runtime, error = %err, "cannot remove runtime resources of failed sandbox");
            }
            return Err(NodeError::SandboxFailed {
                id,
                operation,
                source,
            });
        }

        // The sandbox exists for its user from now on: its time to live counts from here, so a
        // slow boot does not eat it, and `expiresAt` stays `createdAt` plus the timeout.
        let now = timestamp::now();
        let expires_at = timestamp::expiry(now, record.sandbox.timeout).map(timestamp::format);
        self.store
            .set_started(&id, &timestamp::format(now), expires_at.as_deref())
            .await?;
        let sandbox = self.persist(&id, SandboxState::Running, None).await?;
        tracing::info!(
            sandbox_id = %id,
            runtime,
            template = %sandbox.template,
            image = %record.image,
            elapsed_ms,
            "sandbox {operation}d"
        );
        Ok(sandbox)
    }
}

/// Resource limits, network access and time to live of a new sandbox.
pub(super) struct Limits {
    pub vcpus: i64,
    pub memory_mb: i64,
    pub timeout: i64,
    pub internet: bool,
}

/// Builds the row of a new sandbox in state `creating`, with a fresh id and its expiry time.
pub(super) fn new_record(
    runtime: &str,
    template: String,
    image: String,
    limits: Limits,
    env_vars: BTreeMap<String, String>,
    metadata: BTreeMap<String, String>,
    snapshot_id: Option<String>,
) -> SandboxRecord {
    let created_at = timestamp::now();
    let sandbox = Sandbox {
        id: ids::sandbox_id(),
        template,
        runtime: runtime.to_owned(),
        state: SandboxState::Creating,
        vcpus: limits.vcpus,
        memory_mb: limits.memory_mb,
        timeout: limits.timeout,
        env_vars,
        metadata,
        created_at: timestamp::format(created_at),
        expires_at: timestamp::expiry(created_at, limits.timeout).map(timestamp::format),
        snapshot_id,
        internet: limits.internet,
        error: None,
    };
    SandboxRecord { sandbox, image }
}
