use std::time::Instant;

use gitvm_proto::{ExecRequest, ExecResult, Sandbox};
use hyper::body::Incoming;

use super::{transition, validate, Node, NodeError, Operation};

impl Node {
    /// Runs a command in a running sandbox and returns its buffered result. The sandbox's
    /// `envVars` apply, and the request's `env` overrides them key by key.
    pub async fn exec(&self, id: &str, request: ExecRequest) -> Result<ExecResult, NodeError> {
        let (sandbox, request) = self.prepare_exec(id, request).await?;

        let started = Instant::now();
        let request = &request;
        let result = self
            .call_agent(&sandbox, |client| async move { client.exec(request).await })
            .await;
        let elapsed = started.elapsed();
        self.metrics.record_exec(elapsed, result.is_ok());

        match &result {
            Ok(output) => tracing::debug!(
                sandbox_id = %id,
                runtime = %sandbox.runtime,
                exit_code = output.exit_code,
                elapsed_us = elapsed.as_micros() as u64,
                "exec finished"
            ),
            Err(err) => {
                tracing::warn!(sandbox_id = %id, runtime = %sandbox.runtime, error = %err, "exec failed")
            }
        }
        result
    }

    /// Runs a command in a running sandbox and returns the agent's NDJSON body of
    /// [`gitvm_proto::ExecEvent`]s, unchanged, as the command produces them. Checks and
    /// environment are those of [`Node::exec`]; errors arrive before any event.
    pub async fn exec_stream(&self, id: &str, request: ExecRequest) -> Result<Incoming, NodeError> {
        let (sandbox, request) = self.prepare_exec(id, request).await?;
        let request = &request;
        let result = self
            .call_agent(&sandbox, |client| async move {
                client.exec_stream(request).await
            })
            .await;
        match &result {
            Ok(_) => {
                tracing::debug!(sandbox_id = %id, runtime = %sandbox.runtime, "exec stream started")
            }
            Err(err) => {
                tracing::warn!(sandbox_id = %id, runtime = %sandbox.runtime, error = %err, "exec stream failed")
            }
        }
        result
    }

    /// Validates `request` against the sandbox's state and merges the sandbox's `envVars`
    /// under the request's `env`.
    async fn prepare_exec(
        &self,
        id: &str,
        request: ExecRequest,
    ) -> Result<(Sandbox, ExecRequest), NodeError> {
        check_exec_request(&request)?;
        let sandbox = self.record(id).await?.sandbox;
        transition::check(&sandbox, Operation::Exec)?;

        let mut env = sandbox.env_vars.clone();
        env.extend(request.env);
        validate::command(&request.command, &env)?;
        Ok((sandbox, ExecRequest { env, ..request }))
    }
}

fn check_exec_request(request: &ExecRequest) -> Result<(), NodeError> {
    if request.command.trim().is_empty() {
        return Err(NodeError::InvalidRequest(
            "invalid command ``: give a shell command line such as `echo hi`".to_owned(),
        ));
    }
    if let Some(timeout) = request.timeout {
        if !timeout.is_finite() || timeout < 0.0 {
            return Err(NodeError::InvalidRequest(format!(
                "invalid timeout {timeout}: must be a number of seconds, 0 or more (0 means no limit)"
            )));
        }
    }
    validate::env_vars("env", &request.env)
}
