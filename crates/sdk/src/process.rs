//! Background processes: start one, follow its output, feed its stdin, signal it, wait for it.

use bytes::Bytes;
use futures_util::Stream;
use gitvm_proto::{ExecEvent, ProcessInfo, ProcessList, SignalRequest, StartProcessRequest};
use reqwest::Method;

use crate::{ndjson, Client, Error, SandboxHandle};

impl Client {
    /// Starts a command in the background and returns at once.
    pub async fn start_process(
        &self,
        id: &str,
        request: &StartProcessRequest,
    ) -> Result<ProcessInfo, Error> {
        self.json(
            self.request(Method::POST, &format!("/sandboxes/{id}/processes"))
                .json(request),
        )
        .await
    }

    /// Lists running background processes and recently exited ones.
    pub async fn list_processes(&self, id: &str) -> Result<Vec<ProcessInfo>, Error> {
        let list: ProcessList = self
            .json(self.request(Method::GET, &format!("/sandboxes/{id}/processes")))
            .await?;
        Ok(list.processes)
    }

    /// Fetches one process by pid or tag.
    pub async fn process(&self, id: &str, selector: &str) -> Result<ProcessInfo, Error> {
        self.json(self.request(Method::GET, &process_path(id, selector, "")))
            .await
    }

    /// Follows a process's output: the replay buffer first, then live chunks, then `exit`.
    /// Can be called again at any time, for example after a dropped connection.
    pub async fn process_output(
        &self,
        id: &str,
        selector: &str,
    ) -> Result<impl Stream<Item = Result<ExecEvent, Error>>, Error> {
        let response = self
            .send(self.request(Method::GET, &process_path(id, selector, "/output")))
            .await?;
        Ok(ndjson::events(response))
    }

    /// Writes `body` to a process's stdin.
    pub async fn write_process_stdin(
        &self,
        id: &str,
        selector: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<(), Error> {
        self.empty(
            self.request(Method::POST, &process_path(id, selector, "/stdin"))
                .body(body),
        )
        .await
    }

    /// Closes a process's stdin, so that it reads end of file.
    pub async fn close_process_stdin(&self, id: &str, selector: &str) -> Result<(), Error> {
        self.empty(self.request(Method::POST, &process_path(id, selector, "/stdin/close")))
            .await
    }

    /// Sends a signal (`SIGTERM`, `TERM` or `15`) to a process's group.
    pub async fn signal_process(
        &self,
        id: &str,
        selector: &str,
        signal: &str,
    ) -> Result<(), Error> {
        let request = SignalRequest {
            signal: signal.to_string(),
        };
        self.empty(
            self.request(Method::POST, &process_path(id, selector, "/signal"))
                .json(&request),
        )
        .await
    }

    /// Kills a process and every process of its group with SIGKILL.
    pub async fn kill_process(&self, id: &str, selector: &str) -> Result<(), Error> {
        self.empty(self.request(Method::POST, &process_path(id, selector, "/kill")))
            .await
    }

    /// Waits until a process exits, or until `timeout` seconds pass; the returned state shows
    /// which happened.
    pub async fn wait_process(
        &self,
        id: &str,
        selector: &str,
        timeout: Option<f64>,
    ) -> Result<ProcessInfo, Error> {
        let mut builder = self.request(Method::POST, &process_path(id, selector, "/wait"));
        if let Some(timeout) = timeout {
            builder = builder.query(&[("timeout", timeout)]);
        }
        self.json(builder).await
    }
}

fn process_path(id: &str, selector: &str, suffix: &str) -> String {
    // Pids are digits and tags are limited to [A-Za-z0-9._~-], so neither needs escaping.
    format!("/sandboxes/{id}/processes/{selector}{suffix}")
}

impl SandboxHandle {
    /// Starts a command in the background and returns a handle to it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), gitvm_sdk::Error> {
    /// use gitvm_sdk::{Client, ProcessState, StartProcessRequest};
    ///
    /// let sandbox = Client::from_env()?.new_sandbox().timeout(600).create().await?;
    /// let request = StartProcessRequest {
    ///     command: "python3 -m http.server 8000".into(),
    ///     tag: Some("web".into()),
    ///     ..Default::default()
    /// };
    /// let server = sandbox.start_process(&request).await?;
    /// assert_eq!(sandbox.process("web").info().await?.state, ProcessState::Running);
    /// server.signal("TERM").await?;
    /// let exited = server.wait(Some(10.0)).await?;
    /// assert_eq!(exited.signal.as_deref(), Some("SIGTERM"));
    /// sandbox.delete().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start_process(
        &self,
        request: &StartProcessRequest,
    ) -> Result<ProcessHandle, Error> {
        let info = self.client.start_process(&self.id, request).await?;
        Ok(ProcessHandle {
            client: self.client.clone(),
            sandbox_id: self.id.clone(),
            selector: info.pid.to_string(),
        })
    }

    /// Returns a handle to a process by pid or tag; no request is sent.
    pub fn process(&self, selector: impl Into<String>) -> ProcessHandle {
        ProcessHandle {
            client: self.client.clone(),
            sandbox_id: self.id.clone(),
            selector: selector.into(),
        }
    }

    /// Lists background processes.
    pub async fn processes(&self) -> Result<Vec<ProcessInfo>, Error> {
        self.client.list_processes(&self.id).await
    }
}

/// One background process in one sandbox. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProcessHandle {
    client: Client,
    sandbox_id: String,
    selector: String,
}

impl ProcessHandle {
    /// Fetches the process's current state.
    pub async fn info(&self) -> Result<ProcessInfo, Error> {
        self.client.process(&self.sandbox_id, &self.selector).await
    }

    /// Follows the output from the start of the replay buffer.
    pub async fn output(&self) -> Result<impl Stream<Item = Result<ExecEvent, Error>>, Error> {
        self.client
            .process_output(&self.sandbox_id, &self.selector)
            .await
    }

    /// Writes to stdin.
    pub async fn write_stdin(&self, data: impl Into<Bytes>) -> Result<(), Error> {
        self.client
            .write_process_stdin(&self.sandbox_id, &self.selector, data.into())
            .await
    }

    /// Closes stdin.
    pub async fn close_stdin(&self) -> Result<(), Error> {
        self.client
            .close_process_stdin(&self.sandbox_id, &self.selector)
            .await
    }

    /// Sends a signal to the process group.
    pub async fn signal(&self, signal: &str) -> Result<(), Error> {
        self.client
            .signal_process(&self.sandbox_id, &self.selector, signal)
            .await
    }

    /// Kills the whole process tree.
    pub async fn kill(&self) -> Result<(), Error> {
        self.client
            .kill_process(&self.sandbox_id, &self.selector)
            .await
    }

    /// Waits for exit, at most `timeout` seconds when given.
    pub async fn wait(&self, timeout: Option<f64>) -> Result<ProcessInfo, Error> {
        self.client
            .wait_process(&self.sandbox_id, &self.selector, timeout)
            .await
    }
}
