use std::time::Instant;

use gitvm_proto::{Sandbox, SandboxState};

use super::{transition, Node, NodeError, Operation};

impl Node {
    /// Stops a running or paused sandbox; its filesystem is kept.
    pub async fn stop(&self, id: &str) -> Result<Sandbox, NodeError> {
        let _guard = self.lock(id).await;
        let sandbox = self.record(id).await?.sandbox;
        transition::check(&sandbox, Operation::Stop)?;
        self.forget_agent(id);

        let started = Instant::now();
        if let Err(err) = self.runtime_of(&sandbox)?.stop(id).await {
            return Err(self.runtime_failed(&sandbox, "stop", err).await);
        }

        let sandbox = self.persist(id, SandboxState::Stopped, None).await?;
        tracing::info!(
            sandbox_id = %id,
            runtime = %sandbox.runtime,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "sandbox stopped"
        );
        Ok(sandbox)
    }
}
