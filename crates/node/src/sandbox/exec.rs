use std::time::Instant;

use gitvm_proto::{ExecRequest, ExecResult};

use super::{transition, validate, Node, NodeError, Operation};

impl Node {
    /// Runs a command in a running sandbox and returns its buffered result. The sandbox's
    /// `envVars` apply, and the request's `env` overrides them key by key.
    pub async fn exec(&self, id: &str, request: ExecRequest) -> Result<ExecResult, NodeError> {
        check_exec_request(&request)?;
        let sandbox = self.record(id).await?.sandbox;
        transition::check(&sandbox, Operation::Exec)?;

        let mut env = sandbox.env_vars.clone();
        env.extend(request.env);
        validate::command(&request.command, &env)?;
        let request = ExecRequest { env, ..request };

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
