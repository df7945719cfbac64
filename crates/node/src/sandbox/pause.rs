use std::time::Instant;

use gitvm_proto::{Sandbox, SandboxState};

use super::{transition, Node, NodeError, Operation};

impl Node {
    /// Freezes every process of a running sandbox.
    pub async fn pause(&self, id: &str) -> Result<Sandbox, NodeError> {
        let _guard = self.lock(id).await;
        let sandbox = self.record(id).await?.sandbox;
        transition::check(&sandbox, Operation::Pause)?;

        let started = Instant::now();
        if let Err(err) = self.runtime_of(&sandbox)?.pause(id).await {
            return Err(self.runtime_failed(&sandbox, "pause", err).await);
        }

        let sandbox = self.persist(id, SandboxState::Paused, None).await?;
        tracing::info!(
            sandbox_id = %id,
            runtime = %sandbox.runtime,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "sandbox paused"
        );
        Ok(sandbox)
    }
}
