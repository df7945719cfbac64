//! Background processes in a running sandbox, proxied to its agent. A selector is the
//! process's pid inside the sandbox or its tag; the agent resolves it.

use gitvm_agent::client::RequestBody;
use gitvm_proto::{ProcessInfo, ProcessList, Sandbox, SignalRequest, StartProcessRequest};
use gitvm_runtime::RuntimeError;
use hyper::body::Incoming;

use super::agent::is_connection_error;
use super::{transition, validate, Node, NodeError, Operation};

impl Node {
    /// Starts a command in the background in a running sandbox. The sandbox's `envVars` apply,
    /// and the request's `env` overrides them key by key. The request is sent once and never
    /// retried, because a retry after the agent received it would start a second process.
    pub async fn start_process(
        &self,
        id: &str,
        request: StartProcessRequest,
    ) -> Result<ProcessInfo, NodeError> {
        validate::env_vars("env", &request.env)?;
        let sandbox = self.running_sandbox(id).await?;
        let mut env = sandbox.env_vars.clone();
        env.extend(request.env);
        validate::command(&request.command, &env)?;
        let request = StartProcessRequest { env, ..request };

        let client = self.agent_or_unreachable(&sandbox).await?;
        match client.start_process(&request).await {
            Ok(info) => {
                tracing::info!(sandbox_id = %id, runtime = %sandbox.runtime, pid = info.pid, tag = ?info.tag, "background process started");
                Ok(info)
            }
            Err(err) if is_connection_error(&err) => {
                self.forget_agent(id);
                Err(self.agent_unreachable(&sandbox, &err).await)
            }
            Err(err) => {
                tracing::debug!(sandbox_id = %id, runtime = %sandbox.runtime, error = %err, "background process start rejected");
                Err(RuntimeError::Agent(err).into())
            }
        }
    }

    /// Lists the sandbox's running background processes and its most recently exited ones.
    pub async fn list_processes(&self, id: &str) -> Result<ProcessList, NodeError> {
        let sandbox = self.running_sandbox(id).await?;
        self.call_agent(
            &sandbox,
            |client| async move { client.list_processes().await },
        )
        .await
    }

    /// Fetches one background process by pid or tag.
    pub async fn process(&self, id: &str, selector: &str) -> Result<ProcessInfo, NodeError> {
        let sandbox = self.running_sandbox(id).await?;
        self.call_agent(
            &sandbox,
            |client| async move { client.process(selector).await },
        )
        .await
    }

    /// Returns the agent's NDJSON body of [`gitvm_proto::ExecEvent`]s for a background
    /// process, unchanged: `start`, recent output, live output, then `exit`.
    pub async fn process_output(&self, id: &str, selector: &str) -> Result<Incoming, NodeError> {
        let sandbox = self.running_sandbox(id).await?;
        self.call_agent(&sandbox, |client| async move {
            client.process_output(selector).await
        })
        .await
    }

    /// Streams `body` into a background process's stdin. The body is passed through
    /// unbuffered, so it cannot be sent twice and is never retried.
    pub async fn write_process_stdin(
        &self,
        id: &str,
        selector: &str,
        body: RequestBody,
    ) -> Result<(), NodeError> {
        let sandbox = self.running_sandbox(id).await?;
        let client = self.agent_or_unreachable(&sandbox).await?;
        match client.write_process_stdin(selector, body).await {
            Ok(()) => Ok(()),
            Err(err) if is_connection_error(&err) => {
                self.forget_agent(id);
                Err(self.agent_unreachable(&sandbox, &err).await)
            }
            Err(err) => Err(RuntimeError::Agent(err).into()),
        }
    }

    /// Closes a background process's stdin.
    pub async fn close_process_stdin(&self, id: &str, selector: &str) -> Result<(), NodeError> {
        let sandbox = self.running_sandbox(id).await?;
        self.call_agent(&sandbox, |client| async move {
            client.close_process_stdin(selector).await
        })
        .await
    }

    /// Sends a signal to a background process's process group.
    pub async fn signal_process(
        &self,
        id: &str,
        selector: &str,
        request: SignalRequest,
    ) -> Result<(), NodeError> {
        let sandbox = self.running_sandbox(id).await?;
        let request = &request;
        self.call_agent(&sandbox, |client| async move {
            client.signal_process(selector, request).await
        })
        .await?;
        tracing::info!(sandbox_id = %id, runtime = %sandbox.runtime, selector, signal = %request.signal, "signalled background process");
        Ok(())
    }

    /// Kills a background process's process group with SIGKILL.
    pub async fn kill_process(&self, id: &str, selector: &str) -> Result<(), NodeError> {
        let sandbox = self.running_sandbox(id).await?;
        self.call_agent(&sandbox, |client| async move {
            client.kill_process(selector).await
        })
        .await?;
        tracing::info!(sandbox_id = %id, runtime = %sandbox.runtime, selector, "killed background process");
        Ok(())
    }

    /// Waits up to `timeout_secs` (no limit when `None` or 0) for a background process to exit
    /// and returns its info, whose state is still `running` when the time ran out.
    pub async fn wait_process(
        &self,
        id: &str,
        selector: &str,
        timeout_secs: Option<f64>,
    ) -> Result<ProcessInfo, NodeError> {
        if let Some(timeout) = timeout_secs {
            if !timeout.is_finite() || timeout < 0.0 {
                return Err(NodeError::InvalidRequest(format!(
                    "invalid timeout {timeout}: must be a number of seconds, 0 or more (0 means no limit)"
                )));
            }
        }
        let sandbox = self.running_sandbox(id).await?;
        self.call_agent(&sandbox, |client| async move {
            client.wait_process(selector, timeout_secs).await
        })
        .await
    }

    /// Loads sandbox `id` and checks that it runs, as every process operation needs.
    async fn running_sandbox(&self, id: &str) -> Result<Sandbox, NodeError> {
        let sandbox = self.record(id).await?.sandbox;
        transition::check(&sandbox, Operation::Exec)?;
        Ok(sandbox)
    }
}
