use std::time::Instant;

use gitvm_proto::{Sandbox, SandboxState};

use super::{transition, Node, NodeError, Operation};

impl Node {
    /// Thaws a paused sandbox.
    pub async fn resume(&self, id: &str) -> Result<Sandbox, NodeError> {
        let _guard = self.lock(id).await;
        let sandbox = self.record(id).await?.sandbox;
        transition::check(&sandbox, Operation::Resume)?;

        let started = Instant::now();
        if let Err(err) = self.runtime_of(&sandbox)?.resume(id).await {
            return Err(self.runtime_failed(&sandbox, "resume", err).await);
        }

        let sandbox = self.persist(id, SandboxState::Running, None).await?;
        tracing::info!(
            sandbox_id = %id,
            runtime = %sandbox.runtime,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "sandbox resumed"
        );
        Ok(sandbox)
    }
}
