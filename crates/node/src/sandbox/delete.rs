use gitvm_proto::SandboxState;

use super::{Node, NodeError};

impl Node {
    /// Deletes a sandbox and its runtime resources, keeping its row as a tombstone in state
    /// `deleted`. Deleting a deleted sandbox succeeds and does nothing.
    pub async fn delete(&self, id: &str) -> Result<(), NodeError> {
        if self.record(id).await?.sandbox.state == SandboxState::Deleted {
            return Ok(());
        }

        let guard = self.lock(id).await;
        let sandbox = self.record(id).await?.sandbox;
        if sandbox.state == SandboxState::Deleted {
            return Ok(());
        }
        self.forget_agent(id);

        if let Err(err) = self.runtime_of(&sandbox)?.delete(id).await {
            tracing::error!(sandbox_id = %id, runtime = %sandbox.runtime, error = %err, "cannot delete sandbox");
            return Err(err.into());
        }
        self.store
            .set_state(id, SandboxState::Deleted, sandbox.error.as_deref())
            .await?;

        drop(guard);
        self.forget_lock(id);
        tracing::info!(sandbox_id = %id, runtime = %sandbox.runtime, previous_state = %sandbox.state, "sandbox deleted");
        Ok(())
    }
}
