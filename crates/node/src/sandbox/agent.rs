//! One cached agent connection per sandbox, so that an exec costs one HTTP/2 request rather
//! than a connect and a handshake.

use std::future::Future;

use gitvm_agent::client::{AgentClient, AgentError};
use gitvm_proto::{Sandbox, SandboxState};
use gitvm_runtime::{ObservedState, RuntimeError};

use super::{transition, Node, NodeError, Operation};

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

        let runtime = self.runtime_of(sandbox)?;
        let client = match runtime.connect(&sandbox.id).await {
            Ok(client) => client,
            Err(err) => {
                // A microVM whose QEMU exited on its own is stopped, not broken.
                if sandbox.state == SandboxState::Running
                    && matches!(
                        runtime.observe(&sandbox.id).await,
                        Ok(ObservedState::Stopped)
                    )
                {
                    tracing::warn!(sandbox_id = %sandbox.id, runtime = %sandbox.runtime, error = %err, "sandbox stopped on its own");
                    return Err(self.record_agent_exit(sandbox).await);
                }
                return Err(self
                    .runtime_failed(sandbox, "connect to its agent", err)
                    .await);
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
    /// broken before the request was handled, it reconnects and runs `call` once more. When
    /// that fails too, [`Node::agent_unreachable`] finds out why.
    pub(super) async fn call_agent<T, F, Fut>(
        &self,
        sandbox: &Sandbox,
        call: F,
    ) -> Result<T, NodeError>
    where
        F: Fn(AgentClient) -> Fut,
        Fut: Future<Output = Result<T, AgentError>>,
    {
        let client = self.agent_or_unreachable(sandbox).await?;
        let err = match call(client).await {
            Ok(value) => return Ok(value),
            Err(err) if is_connection_error(&err) => err,
            Err(err) => return Err(RuntimeError::Agent(err).into()),
        };

        tracing::warn!(sandbox_id = %sandbox.id, runtime = %sandbox.runtime, error = %err, "agent connection broken; reconnecting once");
        self.forget_agent(&sandbox.id);
        let client = self.agent_or_unreachable(sandbox).await?;
        match call(client).await {
            Ok(value) => Ok(value),
            Err(err) if is_connection_error(&err) => {
                self.forget_agent(&sandbox.id);
                Err(self.agent_unreachable(sandbox, &err).await)
            }
            Err(err) => Err(RuntimeError::Agent(err).into()),
        }
    }

    /// Like [`Node::agent`], but a connection-level failure goes through
    /// [`Node::agent_unreachable`].
    pub(super) async fn agent_or_unreachable(
        &self,
        sandbox: &Sandbox,
    ) -> Result<AgentClient, NodeError> {
        match self.agent(sandbox).await {
            Err(NodeError::Runtime(RuntimeError::Agent(err))) if is_connection_error(&err) => {
                Err(self.agent_unreachable(sandbox, &err).await)
            }
            other => other,
        }
    }

    /// Explains an unreachable agent by asking the runtime for its sandbox's state. A sandbox
    /// whose container exited, such as after its agent was killed, is recorded as `stopped`
    /// and the result is a 409 naming the fix. One the runtime lost moves to `error`, and one
    /// still running is a 502 `agent_unreachable`. The full error, which names host paths, is
    /// only logged.
    pub(super) async fn agent_unreachable(&self, sandbox: &Sandbox, err: &AgentError) -> NodeError {
        let id = &sandbox.id;
        tracing::warn!(sandbox_id = %id, runtime = %sandbox.runtime, error = %err, "agent unreachable; asking the runtime for the sandbox's state");

        let runtime = match self.runtime_of(sandbox) {
            Ok(runtime) => runtime,
            Err(err) => return err,
        };
        let observed = match runtime.observe(id).await {
            Ok(observed) => observed,
            Err(observe_err) => {
                tracing::error!(sandbox_id = %id, runtime = %sandbox.runtime, error = %observe_err, "cannot observe sandbox with an unreachable agent");
                return NodeError::AgentUnreachable {
                    id: id.clone(),
                    reason: client_reason(err),
                };
            }
        };

        match observed {
            ObservedState::Stopped => self.record_agent_exit(sandbox).await,
            ObservedState::Missing => {
                let lost = RuntimeError::NotFound {
                    what: "sandbox",
                    id: id.clone(),
                };
                self.runtime_failed(sandbox, "reach its agent", lost).await
            }
            ObservedState::Running | ObservedState::Paused => NodeError::AgentUnreachable {
                id: id.clone(),
                reason: client_reason(err),
            },
        }
    }

    /// Persists state `stopped` for a sandbox whose container exited on its own, unless a
    /// lifecycle operation changed its state meanwhile.
    async fn record_agent_exit(&self, sandbox: &Sandbox) -> NodeError {
        let id = &sandbox.id;
        let _guard = self.lock(id).await;
        let current = match self.record(id).await {
            Ok(record) => record.sandbox,
            Err(err) => return err,
        };
        if current.state != SandboxState::Running {
            // A stop, delete or error transition won the race; report the state it left.
            return match transition::check(&current, Operation::Exec) {
                Err(err) => err,
                Ok(()) => NodeError::AgentUnreachable {
                    id: id.clone(),
                    reason: "the agent restarted while the request was sent; retry".to_owned(),
                },
            };
        }

        // A start may have finished between the first observation and the lock.
        let runtime = match self.runtime_of(sandbox) {
            Ok(runtime) => runtime,
            Err(err) => return err,
        };
        match runtime.observe(id).await {
            Ok(ObservedState::Stopped) => {}
            Ok(observed) => {
                tracing::info!(sandbox_id = %id, runtime = %sandbox.runtime, ?observed, "sandbox no longer stopped once locked; keeping its state");
                return NodeError::AgentUnreachable {
                    id: id.clone(),
                    reason: "the sandbox restarted while the request was sent; retry".to_owned(),
                };
            }
            Err(err) => return err.into(),
        }

        if let Err(err) = self.store.set_state(id, SandboxState::Stopped, None).await {
            return err.into();
        }
        self.forget_agent(id);
        tracing::warn!(sandbox_id = %id, runtime = %sandbox.runtime, "agent exited and the container stopped; sandbox recorded as stopped");
        NodeError::InvalidState {
            id: id.clone(),
            state: SandboxState::Stopped,
            message: format!(
                "sandbox {id} stopped: its agent exited (its container or microVM is no longer running); start it with `gitvm vm start {id}`"
            ),
        }
    }
}

/// Describes an agent connection failure for API clients. The I/O variant's message names the
/// host path of the agent's socket, so only the error kind is shown.
fn client_reason(err: &AgentError) -> String {
    match err {
        AgentError::Io(io) => format!("connection failed ({})", io.kind()),
        other => other.to_string(),
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
