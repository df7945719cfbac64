use std::time::Instant;

use gitvm_proto::{Sandbox, SandboxState};

use super::{transition, Node, NodeError, Operation};

impl Node {
    /// Starts a stopped sandbox; returns once its agent is ready.
    pub async fn start(&self, id: &str) -> Result<Sandbox, NodeError> {
        let _guard = self.lock(id).await;
        let sandbox = self.record(id).await?.sandbox;
        transition::check(&sandbox, Operation::Start)?;
        // The container's processes restarted, so an earlier agent connection is dead.
        self.forget_agent(id);

        let started = Instant::now();
        if let Err(err) = self.runtime_of(&sandbox)?.start(id).await {
            return Err(self.runtime_failed(&sandbox, "start", err).await);
        }

        let sandbox = self.persist(id, SandboxState::Running, None).await?;
        tracing::info!(
            sandbox_id = %id,
            runtime = %sandbox.runtime,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "sandbox started"
        );
        Ok(sandbox)
    }
}
