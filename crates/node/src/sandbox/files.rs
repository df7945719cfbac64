use gitvm_agent::client::RequestBody;
use gitvm_proto::FileList;
use gitvm_runtime::RuntimeError;
use hyper::body::Incoming;

use super::agent::is_connection_error;
use super::{transition, Node, NodeError, Operation};

impl Node {
    /// Opens a file in a running sandbox and returns its bytes as a stream from the agent.
    pub async fn read_file(&self, id: &str, path: &str) -> Result<Incoming, NodeError> {
        let sandbox = self.record(id).await?.sandbox;
        transition::check(&sandbox, Operation::Files)?;
        self.call_agent(
            &sandbox,
            |client| async move { client.read_file(path).await },
        )
        .await
    }

    /// Writes a file in a running sandbox from a stream, creating parent directories. The body
    /// is passed through unbuffered, so it cannot be sent twice and is never retried.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        body: RequestBody,
    ) -> Result<(), NodeError> {
        let sandbox = self.record(id).await?.sandbox;
        transition::check(&sandbox, Operation::Files)?;

        let client = self.agent_or_unreachable(&sandbox).await?;
        match client.write_file(path, body).await {
            Ok(()) => Ok(()),
            Err(err) if is_connection_error(&err) => {
                self.forget_agent(id);
                Err(self.agent_unreachable(&sandbox, &err).await)
            }
            Err(err) => {
                tracing::warn!(sandbox_id = %id, runtime = %sandbox.runtime, path, error = %err, "file write failed");
                Err(RuntimeError::Agent(err).into())
            }
        }
    }

    /// Lists a directory in a running sandbox.
    pub async fn list_files(&self, id: &str, path: &str) -> Result<FileList, NodeError> {
        let sandbox = self.record(id).await?.sandbox;
        transition::check(&sandbox, Operation::Files)?;
        self.call_agent(
            &sandbox,
            |client| async move { client.list_files(path).await },
        )
        .await
    }

    /// Creates a directory and its parents in a running sandbox.
    pub async fn make_dir(&self, id: &str, path: &str) -> Result<(), NodeError> {
        let sandbox = self.record(id).await?.sandbox;
        transition::check(&sandbox, Operation::Files)?;
        self.call_agent(
            &sandbox,
            |client| async move { client.make_dir(path).await },
        )
        .await
    }

    /// Removes a file, or a directory recursively, in a running sandbox.
    pub async fn remove_file(&self, id: &str, path: &str) -> Result<(), NodeError> {
        let sandbox = self.record(id).await?.sandbox;
        transition::check(&sandbox, Operation::Files)?;
        self.call_agent(&sandbox, |client| async move { client.remove(path).await })
            .await
    }
}
