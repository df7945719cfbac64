use gitvm_agent::client::RequestBody;
use gitvm_runtime::RuntimeError;
use hyper::body::Incoming;

use super::{transition, Node, NodeError, Operation};

impl Node {
    /// Checks that sandbox `id` can open a terminal, so callers can reject the request before
    /// upgrading the connection.
    pub async fn check_pty(&self, id: &str) -> Result<(), NodeError> {
        let sandbox = self.record(id).await?.sandbox;
        transition::check(&sandbox, Operation::Exec)
    }

    /// Opens an interactive terminal of `cols` x `rows` in a running sandbox, running the
    /// shell command line `command` or a login shell, and returns the agent's NDJSON body of
    /// [`gitvm_proto::ExecEvent`]s. `input` carries the typed bytes. Unlike exec, a broken
    /// agent connection is not retried, because `input` can be sent only once.
    pub async fn pty(
        &self,
        id: &str,
        cols: u16,
        rows: u16,
        command: Option<&str>,
        input: RequestBody,
    ) -> Result<Incoming, NodeError> {
        let sandbox = self.record(id).await?.sandbox;
        transition::check(&sandbox, Operation::Exec)?;

        let client = self.agent_or_unreachable(&sandbox).await?;
        match client
            .pty(cols, rows, command, &sandbox.env_vars, input)
            .await
        {
            Ok(body) => {
                tracing::info!(sandbox_id = %id, runtime = %sandbox.runtime, cols, rows, "pty opened");
                Ok(body)
            }
            Err(err) => {
                tracing::warn!(sandbox_id = %id, runtime = %sandbox.runtime, error = %err, "pty open failed");
                self.forget_agent_if_closed(&sandbox.id, &client);
                Err(RuntimeError::Agent(err).into())
            }
        }
    }

    /// Sets the window size of the terminal whose command has process id `pid` in sandbox `id`.
    pub async fn pty_resize(
        &self,
        id: &str,
        pid: u32,
        cols: u16,
        rows: u16,
    ) -> Result<(), NodeError> {
        let sandbox = self.record(id).await?.sandbox;
        self.call_agent(&sandbox, |client| async move {
            client.pty_resize(pid, cols, rows).await
        })
        .await
    }

    fn forget_agent_if_closed(&self, id: &str, client: &gitvm_agent::client::AgentClient) {
        if client.is_closed() {
            self.forget_agent(id);
        }
    }
}
