//! Host side of the agent protocol: one HTTP/2 connection to one agent.

use std::path::Path;
use std::time::Duration;

use std::collections::BTreeMap;

use bytes::Bytes;
use gitvm_proto::agent::AgentHealth;
use gitvm_proto::{
    ErrorBody, ExecRequest, ExecResult, FileList, ProcessInfo, ProcessList, SignalRequest,
    StartProcessRequest,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::handshake::client_handshake;

/// Boxed error type carried by request bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request body type of the client: any stream of bytes.
pub type RequestBody = BoxBody<Bytes, BoxError>;

/// Interval between HTTP/2 pings that detect a dead agent connection.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// Time an HTTP/2 ping may stay unanswered before the connection is closed.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Receive window per stream, in bytes; larger than the HTTP/2 default of 64 KiB so that file
/// downloads are not limited by round trips.
const STREAM_WINDOW: u32 = 1024 * 1024;

/// Receive window of the whole connection, in bytes.
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// Request header of `POST /pty` carrying its options as a JSON object.
const PTY_OPTIONS_HEADER: &str = "x-gitvm-pty";

/// Failure talking to an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The byte stream failed.
    #[error("agent connection failed: {0}")]
    Io(#[from] std::io::Error),

    /// The resynchronisation handshake did not complete.
    #[error("agent handshake failed: {0}")]
    Handshake(String),

    /// HTTP/2 failed on the connection.
    #[error("agent protocol error: {0}")]
    Http(#[from] hyper::Error),

    /// The agent returned an error response.
    #[error("{body}")]
    Remote {
        /// HTTP status of the agent's response.
        status: u16,
        /// The agent's error body.
        body: ErrorBody,
    },

    /// The agent's response could not be decoded.
    #[error("invalid answer from agent: {0}")]
    Decode(String),
}

/// A handshaken HTTP/2 connection to one agent. Cheap to clone; clones share the connection and
/// may send requests concurrently.
#[derive(Clone)]
pub struct AgentClient {
    sender: hyper::client::conn::http2::SendRequest<RequestBody>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl AgentClient {
    /// Runs the handshake and HTTP/2 setup over `stream`, and spawns the connection task on
    /// the current tokio runtime. The caller sets the deadline.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), gitvm_agent::client::AgentError> {
    /// let stream = tokio::net::UnixStream::connect("/run/agent.sock").await?;
    /// let agent = gitvm_agent::client::AgentClient::connect(stream).await?;
    /// println!("agent {}", agent.health().await?.version);
    /// # Ok(()) }
    /// ```
    pub async fn connect<S>(stream: S) -> Result<AgentClient, AgentError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let stream = client_handshake(stream).await?;

        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "agent connection ended with an error");
            }
        });

        Ok(AgentClient { sender })
    }

    /// Connects to an agent listening on the Unix socket at `path`.
    pub async fn connect_unix(path: &Path) -> Result<AgentClient, AgentError> {
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|error| {
                AgentError::Io(std::io::Error::new(
                    error.kind(),
                    format!("cannot connect to agent socket {}: {error}", path.display()),
                ))
            })?;
        Self::connect(stream).await
    }

    /// Returns true once the connection is dead; the caller then connects again.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Fetches the agent's version, pid and whether it has a shell.
    pub async fn health(&self) -> Result<AgentHealth, AgentError> {
        let response = self.send(Method::GET, "/health".into(), empty()).await?;
        decode_json(response).await
    }

    /// Sets the guest's wall clock to the host's current time; used after a microVM restore.
    pub async fn sync_clock(&self) -> Result<(), AgentError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let request = gitvm_proto::agent::SetClockRequest {
            unix_seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
            nanos: now.subsec_nanos(),
        };
        let body = serde_json::to_vec(&request)
            .map_err(|error| AgentError::Decode(format!("cannot encode clock request: {error}")))?;
        let response = self.send(Method::POST, "/clock".into(), full(body)).await?;
        drain(response).await
    }

    /// Gives a restored microVM the hostname `hostname` and reseeds its kernel's random
    /// generator with fresh bytes from the host.
    pub async fn set_identity(&self, hostname: &str) -> Result<(), AgentError> {
        let entropy: [u8; 64] = rand::random();
        let request = gitvm_proto::agent::SetIdentityRequest {
            hostname: hostname.to_owned(),
            entropy_hex: entropy.iter().map(|byte| format!("{byte:02x}")).collect(),
        };
        let body = serde_json::to_vec(&request).map_err(|error| {
            AgentError::Decode(format!("cannot encode identity request: {error}"))
        })?;
        let response = self
            .send(Method::POST, "/identity".into(), full(body))
            .await?;
        drain(response).await
    }

    /// Runs a command to completion and returns its buffered output.
    pub async fn exec(&self, req: &ExecRequest) -> Result<ExecResult, AgentError> {
        let body = serde_json::to_vec(req)
            .map_err(|error| AgentError::Decode(format!("cannot encode exec request: {error}")))?;
        let response = self.send(Method::POST, "/exec".into(), full(body)).await?;
        decode_json(response).await
    }

    /// Runs a command and returns its events as they happen: an NDJSON body of
    /// [`gitvm_proto::ExecEvent`] lines. Dropping the body resets the stream, which makes the
    /// agent kill the command's process group.
    pub async fn exec_stream(&self, req: &ExecRequest) -> Result<Incoming, AgentError> {
        let body = serde_json::to_vec(req)
            .map_err(|error| AgentError::Decode(format!("cannot encode exec request: {error}")))?;
        let response = self
            .send(Method::POST, "/exec/stream".into(), full(body))
            .await?;
        Ok(response.into_body())
    }

    /// Opens an interactive terminal of `cols` x `rows` running the shell command line
    /// `command`, or a login shell when `None`; `input` is written to it as typed bytes.
    /// Returns the NDJSON body of [`gitvm_proto::ExecEvent`]s: `start`, `stdout` chunks of
    /// terminal output, then `exit`. Dropping the body hangs up the terminal.
    pub async fn pty(
        &self,
        cols: u16,
        rows: u16,
        command: Option<&str>,
        env: &BTreeMap<String, String>,
        input: RequestBody,
    ) -> Result<Incoming, AgentError> {
        // JSON escapes control characters, so any command line fits in a header value.
        let options = serde_json::json!({ "command": command, "env": env }).to_string();
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://agent/pty?cols={cols}&rows={rows}"))
            .header(PTY_OPTIONS_HEADER, options);
        let request = request
            .body(input)
            .map_err(|error| AgentError::Decode(format!("invalid pty request: {error}")))?;

        let mut sender = self.sender.clone();
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            return Err(remote_error(response).await);
        }
        Ok(response.into_body())
    }

    /// Sets the window size of the terminal whose command has process id `pid`.
    pub async fn pty_resize(&self, pid: u32, cols: u16, rows: u16) -> Result<(), AgentError> {
        let uri = format!("/pty/{pid}/resize?cols={cols}&rows={rows}");
        let response = self.send(Method::POST, uri, empty()).await?;
        drain(response).await
    }

    /// Opens a file for reading and returns its bytes as a stream.
    pub async fn read_file(&self, path: &str) -> Result<Incoming, AgentError> {
        let response = self
            .send(Method::GET, path_uri("/files", path), empty())
            .await?;
        Ok(response.into_body())
    }

    /// Writes `body` to the file at `path`, replacing it atomically and creating parents.
    pub async fn write_file(&self, path: &str, body: RequestBody) -> Result<(), AgentError> {
        let response = self
            .send(Method::PUT, path_uri("/files", path), body)
            .await?;
        drain(response).await
    }

    /// Lists the directory at `path`, sorted by name.
    pub async fn list_files(&self, path: &str) -> Result<FileList, AgentError> {
        let response = self
            .send(Method::GET, path_uri("/files/list", path), empty())
            .await?;
        decode_json(response).await
    }

    /// Creates the directory at `path` and its missing parents, like `mkdir -p`.
    pub async fn make_dir(&self, path: &str) -> Result<(), AgentError> {
        let response = self
            .send(Method::POST, path_uri("/files/mkdir", path), empty())
            .await?;
        drain(response).await
    }

    /// Removes the file, symlink or directory tree at `path`.
    pub async fn remove(&self, path: &str) -> Result<(), AgentError> {
        let response = self
            .send(Method::DELETE, path_uri("/files", path), empty())
            .await?;
        drain(response).await
    }

    /// Starts a command in the background and returns its info.
    pub async fn start_process(
        &self,
        req: &StartProcessRequest,
    ) -> Result<ProcessInfo, AgentError> {
        let body = serde_json::to_vec(req).map_err(|error| {
            AgentError::Decode(format!("cannot encode start process request: {error}"))
        })?;
        let response = self
            .send(Method::POST, "/processes".into(), full(body))
            .await?;
        decode_json(response).await
    }

    /// Lists running background processes and the most recently exited ones.
    pub async fn list_processes(&self) -> Result<ProcessList, AgentError> {
        let response = self.send(Method::GET, "/processes".into(), empty()).await?;
        decode_json(response).await
    }

    /// Fetches the background process whose pid or tag is `selector`.
    pub async fn process(&self, selector: &str) -> Result<ProcessInfo, AgentError> {
        let response = self
            .send(Method::GET, process_uri(selector, ""), empty())
            .await?;
        decode_json(response).await
    }

    /// Follows a background process's output: an NDJSON body of [`gitvm_proto::ExecEvent`]
    /// lines with `start`, the kept recent output, live output, then `exit`. Dropping the body
    /// leaves the process running.
    pub async fn process_output(&self, selector: &str) -> Result<Incoming, AgentError> {
        let response = self
            .send(Method::GET, process_uri(selector, "/output"), empty())
            .await?;
        Ok(response.into_body())
    }

    /// Writes `body` to a background process's stdin.
    pub async fn write_process_stdin(
        &self,
        selector: &str,
        body: RequestBody,
    ) -> Result<(), AgentError> {
        let response = self
            .send(Method::POST, process_uri(selector, "/stdin"), body)
            .await?;
        drain(response).await
    }

    /// Closes a background process's stdin, so that it reads end of file.
    pub async fn close_process_stdin(&self, selector: &str) -> Result<(), AgentError> {
        let response = self
            .send(Method::POST, process_uri(selector, "/stdin/close"), empty())
            .await?;
        drain(response).await
    }

    /// Sends a signal to a background process's process group.
    pub async fn signal_process(
        &self,
        selector: &str,
        req: &SignalRequest,
    ) -> Result<(), AgentError> {
        let body = serde_json::to_vec(req).map_err(|error| {
            AgentError::Decode(format!("cannot encode signal request: {error}"))
        })?;
        let response = self
            .send(Method::POST, process_uri(selector, "/signal"), full(body))
            .await?;
        drain(response).await
    }

    /// Sends SIGKILL to a background process's process group.
    pub async fn kill_process(&self, selector: &str) -> Result<(), AgentError> {
        let response = self
            .send(Method::POST, process_uri(selector, "/kill"), empty())
            .await?;
        drain(response).await
    }

    /// Waits up to `timeout_secs` (no limit when `None` or 0) for a background process to
    /// exit, and returns its info; its `state` is still `running` when the time ran out.
    pub async fn wait_process(
        &self,
        selector: &str,
        timeout_secs: Option<f64>,
    ) -> Result<ProcessInfo, AgentError> {
        let mut uri = process_uri(selector, "/wait");
        if let Some(timeout) = timeout_secs {
            uri.push_str(&format!("?timeout={timeout}"));
        }
        let response = self.send(Method::POST, uri, empty()).await?;
        decode_json(response).await
    }

    /// Sends one request and turns an error status into [`AgentError::Remote`].
    async fn send(
        &self,
        method: Method,
        path_and_query: String,
        body: RequestBody,
    ) -> Result<Response<Incoming>, AgentError> {
        // The authority is never resolved; HTTP/2 only requires the pseudo-headers to exist.
        let request = Request::builder()
            .method(method)
            .uri(format!("http://agent{path_and_query}"))
            .body(body)
            .map_err(|error| AgentError::Decode(format!("invalid request URI: {error}")))?;

        let mut sender = self.sender.clone();
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(remote_error(response).await)
    }
}

/// Builds the remote error for a non-success response from its [`ErrorBody`].
async fn remote_error(response: Response<Incoming>) -> AgentError {
    let status = response.status();
    let bytes = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return AgentError::Http(error),
    };
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => AgentError::Remote {
            status: status.as_u16(),
            body,
        },
        Err(_) => AgentError::Decode(format!(
            "agent returned status {status} with a body that is not an error object: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )),
    }
}

async fn decode_json<T: DeserializeOwned>(response: Response<Incoming>) -> Result<T, AgentError> {
    let bytes = response.into_body().collect().await?.to_bytes();
    serde_json::from_slice(&bytes).map_err(|error| {
        AgentError::Decode(format!(
            "cannot decode {}: {error}",
            std::any::type_name::<T>()
        ))
    })
}

/// Reads and discards a success response's body, so the stream completes.
async fn drain(response: Response<Incoming>) -> Result<(), AgentError> {
    if response.status() != StatusCode::NO_CONTENT {
        response.into_body().collect().await?;
    }
    Ok(())
}

fn empty() -> RequestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn full(bytes: Vec<u8>) -> RequestBody {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed()
}

/// Builds `/processes/SELECTOR` plus `suffix`, with the selector percent-encoded like a query
/// path but with `/` encoded too, so that it stays one path segment.
fn process_uri(selector: &str, suffix: &str) -> String {
    let mut uri = "/processes/".to_owned();
    for &byte in selector.as_bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            uri.push(byte as char);
        } else {
            uri.push_str(&format!("%{byte:02X}"));
        }
    }
    uri.push_str(suffix);
    uri
}

/// Builds `route?path=P` with `P` percent-encoded byte by byte; only RFC 3986 unreserved
/// characters and `/` stay literal.
fn path_uri(route: &str, path: &str) -> String {
    let mut uri = format!("{route}?path=");
    for &byte in path.as_bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            uri.push(byte as char);
        } else {
            uri.push_str(&format!("%{byte:02X}"));
        }
    }
    uri
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_uri_encodes_reserved_and_non_ascii() {
        assert_eq!(path_uri("/files", "/tmp/a b"), "/files?path=/tmp/a%20b");
        assert_eq!(
            path_uri("/files", "/x&y#z%+"),
            "/files?path=/x%26y%23z%25%2B"
        );
        assert_eq!(path_uri("/files", "/naïve"), "/files?path=/na%C3%AFve");
    }

    #[test]
    fn process_uri_keeps_selector_one_segment() {
        assert_eq!(process_uri("web", "/output"), "/processes/web/output");
        assert_eq!(process_uri("a/b c", ""), "/processes/a%2Fb%20c");
    }
}
