//! One cached agent connection per sandbox, so that an exec costs one HTTP/2 request rather
//! than a connect and a handshake.

use std::future::Future;

use gitvm_agent::client::{AgentClient, AgentError};
use gitvm_proto::Sandbox;
use gitvm_runtime::RuntimeError;

use super::{Node, NodeError};

impl Node {
    /// Returns the cached connection to the sandbox's agent, opening a new one when there is
    /// none or the cached one has closed.
    pub(super) async fn agent(&self, sandbox: &Sandbox) -> Result<AgentClient, NodeError> {
        let cached = self
            .agents
            .lock()
            .expect("agent table poisoned")
            .get(&sandbox.id)
            .cloned();
        if let Some(client) = cached {
            if !client.is_closed() {
                return Ok(client);
            }
        }

        let client = match self.runtime.connect(&sandbox.id).await {
            Ok(client) => client,
            Err(err) => {
                return Err(self
                    .runtime_failed(sandbox, "connect to its agent", err)
                    .await)
            }
        };
        tracing::debug!(sandbox_id = %sandbox.id, runtime = %sandbox.runtime, "connected to agent");
        self.agents
            .lock()
            .expect("agent table poisoned")
            .insert(sandbox.id.clone(), client.clone());
        Ok(client)
    }

    /// Drops the cached agent connection of sandbox `id`.
    pub(super) fn forget_agent(&self, id: &str) {
        self.agents.lock().expect("agent table poisoned").remove(id);
    }

    /// Runs `call` on the sandbox's agent connection. When the connection turns out to be
    /// broken before the request was handled, it reconnects and runs `call` once more.
    pub(super) async fn call_agent<T, F, Fut>(
        &self,
        sandbox: &Sandbox,
        call: F,
    ) -> Result<T, NodeError>
    where
        F: Fn(AgentClient) -> Fut,
        Fut: Future<Output = Result<T, AgentError>>,
    {
        let client = self.agent(sandbox).await?;
        let err = match call(client).await {
            Ok(value) => return Ok(value),
            Err(err) if is_connection_error(&err) => err,
            Err(err) => return Err(RuntimeError::Agent(err).into()),
        };

        tracing::warn!(sandbox_id = %sandbox.id, runtime = %sandbox.runtime, error = %err, "agent connection broken; reconnecting once");
        self.forget_agent(&sandbox.id);
        let client = self.agent(sandbox).await?;
        call(client)
            .await
            .map_err(|err| RuntimeError::Agent(err).into())
    }
}

/// True for failures of the connection itself rather than of the request.
// NOTE: an I/O error can also arrive after the agent received the request, and then the retry
// runs the request a second time.
pub(super) fn is_connection_error(err: &AgentError) -> bool {
    match err {
        AgentError::Io(_) | AgentError::Handshake(_) => true,
        AgentError::Http(err) => err.is_canceled() || err.is_closed(),
        AgentError::Remote { .. } | AgentError::Decode(_) => false,
    }
}
