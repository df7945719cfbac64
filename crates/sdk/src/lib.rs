//! Rust client for the gitvm REST API, used by the `gitvm` CLI.
//!
//! The examples run as tests against the server in `GITVM_SERVER`; `scripts/test.sh` starts
//! one for them.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), gitvm_sdk::Error> {
//! use gitvm_sdk::{Client, CreateSandboxRequest, ExecRequest};
//!
//! let client = Client::from_env()?;
//! let sandbox = client.create_sandbox(&CreateSandboxRequest::default()).await?;
//! let result = client
//!     .exec(&sandbox.id, &ExecRequest { command: "echo hi".into(), ..Default::default() })
//!     .await?;
//! assert_eq!(result.stdout, "hi\n");
//! client.delete_sandbox(&sandbox.id).await?;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
pub use gitvm_proto::*;
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;

mod machine;
mod ndjson;
mod process;
mod pty;

pub use machine::{Machine, SandboxBuilder, SandboxHandle};
pub use process::ProcessHandle;
pub use pty::{PtyEvent, PtyOptions, PtyReader, PtySession, PtyWriter};

/// Server URL used when `GITVM_SERVER` is not set.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Failure of an SDK call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server returned an error response.
    #[error("{body} [HTTP {status}]")]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's error body.
        body: ErrorBody,
    },

    /// The request did not reach the server, or its response was cut off.
    #[error("request to {url} failed: {source}")]
    Http {
        /// URL requested.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },

    /// A streamed response broke off before its end, such as when the sandbox was stopped or
    /// deleted while a command ran.
    #[error(
        "the response stream from {url} broke off: {cause}; the sandbox may have been stopped or deleted meanwhile"
    )]
    StreamBroken {
        /// URL requested.
        url: String,
        /// The innermost transport error.
        cause: String,
    },

    /// The server sent a body this client cannot decode.
    #[error("invalid response from {url}: {message}")]
    Decode {
        /// URL requested.
        url: String,
        /// Description of the undecodable content.
        message: String,
    },

    /// The WebSocket connection failed to open or broke.
    #[error("WebSocket connection to {url} failed: {source}")]
    WebSocket {
        /// WebSocket URL requested.
        url: String,
        /// The WebSocket error, boxed because it can hold a whole HTTP response.
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },

    /// The server URL is not usable.
    #[error("invalid server URL `{url}`: {reason}")]
    InvalidUrl {
        /// URL as given.
        url: String,
        /// Reason the URL is rejected.
        reason: String,
    },
}

/// Receives output chunks of [`Client::execute`] as they arrive.
pub type OutputCallback<'a> = Box<dyn FnMut(&[u8]) + Send + 'a>;

/// Options of [`Client::execute`].
#[derive(Default)]
pub struct ExecuteOptions<'a> {
    /// Working directory; must exist.
    pub cwd: Option<String>,
    /// Extra environment variables, over the sandbox's `envVars`.
    pub env: BTreeMap<String, String>,
    /// User name or uid to run as.
    pub user: Option<String>,
    /// Seconds after which the command's process group is killed.
    pub timeout: Option<f64>,
    /// Receives standard output chunks as they arrive; without it stdout is collected.
    pub on_stdout: Option<OutputCallback<'a>>,
    /// Receives standard error chunks as they arrive; without it stderr is collected.
    pub on_stderr: Option<OutputCallback<'a>>,
}

/// Result of [`Client::execute`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Process id of the command's shell inside the sandbox.
    pub pid: u32,
    /// Exit status: 128 + N for signal N, 124 after a timeout.
    pub exit_code: i32,
    /// Name of the signal that ended the command, if one did.
    pub signal: Option<String>,
    /// True when the command was killed because its timeout elapsed.
    pub timed_out: bool,
    /// Wall time from spawn to exit, in milliseconds.
    pub duration_ms: u64,
    /// Standard output bytes, when no `on_stdout` callback was given.
    pub stdout: Vec<u8>,
    /// Standard error bytes, when no `on_stderr` callback was given.
    pub stderr: Vec<u8>,
}

/// Filter for [`Client::list_sandboxes`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only sandboxes in this state.
    pub state: Option<SandboxState>,
    /// Only sandboxes whose metadata has every one of these pairs.
    pub metadata: BTreeMap<String, String>,
}

/// A connection to one gitvm server (a node or the control plane).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl Client {
    /// Creates a client for the server at `base_url`, such as `http://127.0.0.1:8080`.
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Self, Error> {
        let base = base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::InvalidUrl {
                url: base_url.to_string(),
                reason: "it must start with http:// or https://".into(),
            });
        }
        let http = reqwest::Client::builder()
            .build()
            .map_err(|source| Error::Http {
                url: base.clone(),
                source,
            })?;
        Ok(Self {
            http,
            base,
            api_key,
        })
    }

    /// Creates a client for the server in `GITVM_SERVER` (default `http://127.0.0.1:8080`),
    /// sending the key in `GITVM_API_KEY` when it is set and not empty.
    pub fn from_env() -> Result<Self, Error> {
        let server = std::env::var("GITVM_SERVER")
            .ok()
            .filter(|url| !url.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVER.to_string());
        let api_key = std::env::var("GITVM_API_KEY")
            .ok()
            .filter(|key| !key.is_empty());
        Self::new(&server, api_key)
    }

    /// Base URL of the server, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// API key sent in `X-API-Key`, if any.
    pub(crate) fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// Fetches `/health`.
    pub async fn health(&self) -> Result<Health, Error> {
        self.json(self.request(Method::GET, "/health")).await
    }

    /// Creates a sandbox and waits until it is running.
    pub async fn create_sandbox(&self, request: &CreateSandboxRequest) -> Result<Sandbox, Error> {
        self.json(self.request(Method::POST, "/sandboxes").json(request))
            .await
    }

    /// Lists sandboxes that are not deleted.
    pub async fn list_sandboxes(&self, filter: &ListFilter) -> Result<Vec<Sandbox>, Error> {
        let mut query: Vec<(String, String)> = Vec::new();
        if let Some(state) = filter.state {
            query.push(("state".into(), state.to_string()));
        }
        for (key, value) in &filter.metadata {
            query.push((format!("metadata.{key}"), value.clone()));
        }
        let list: SandboxList = self
            .json(self.request(Method::GET, "/sandboxes").query(&query))
            .await?;
        Ok(list.sandboxes)
    }

    /// Fetches one sandbox.
    pub async fn get_sandbox(&self, id: &str) -> Result<Sandbox, Error> {
        self.json(self.request(Method::GET, &format!("/sandboxes/{id}")))
            .await
    }

    /// Deletes a sandbox; deleting a deleted sandbox succeeds.
    pub async fn delete_sandbox(&self, id: &str) -> Result<(), Error> {
        self.empty(self.request(Method::DELETE, &format!("/sandboxes/{id}")))
            .await
    }

    /// Applies a lifecycle action (`start`, `stop`, `pause`, `resume`) and returns the sandbox.
    pub async fn lifecycle(&self, id: &str, action: &str) -> Result<Sandbox, Error> {
        self.json(self.request(Method::POST, &format!("/sandboxes/{id}/{action}")))
            .await
    }

    /// Sets a sandbox's time to live to `timeout` seconds from now; 0 means never.
    pub async fn set_timeout(&self, id: &str, timeout: i64) -> Result<Sandbox, Error> {
        self.json(
            self.request(Method::POST, &format!("/sandboxes/{id}/timeout"))
                .json(&SetTimeoutRequest { timeout }),
        )
        .await
    }

    /// Runs a command and waits for its buffered result.
    pub async fn exec(&self, id: &str, request: &ExecRequest) -> Result<ExecResult, Error> {
        self.json(
            self.request(Method::POST, &format!("/sandboxes/{id}/exec"))
                .json(request),
        )
        .await
    }

    /// Starts a command and returns its events as they happen: `start`, output chunks, `exit`.
    pub async fn exec_stream(
        &self,
        id: &str,
        request: &ExecRequest,
    ) -> Result<impl Stream<Item = Result<ExecEvent, Error>>, Error> {
        let response = self
            .send(
                self.request(Method::POST, &format!("/sandboxes/{id}/exec/stream"))
                    .json(request),
            )
            .await?;
        Ok(ndjson::events(response))
    }

    /// Runs a command, feeding its output to the callbacks in `options` as it arrives, and
    /// returns its exit status with the output of every stream that has no callback.
    pub async fn execute(
        &self,
        id: &str,
        command: &str,
        mut options: ExecuteOptions<'_>,
    ) -> Result<ExecOutput, Error> {
        let request = ExecRequest {
            command: command.to_string(),
            cwd: options.cwd.take(),
            env: std::mem::take(&mut options.env),
            user: options.user.take(),
            timeout: options.timeout,
        };
        let events = self.exec_stream(id, &request).await?;
        let mut events = std::pin::pin!(events);
        let mut output = ExecOutput::default();
        while let Some(event) = events.next().await {
            let event = event?;
            let url = || format!("{}/sandboxes/{id}/exec/stream", self.base);
            let bytes = || {
                event
                    .bytes()
                    .unwrap_or(Ok(Vec::new()))
                    .map_err(|err| Error::Decode {
                        url: url(),
                        message: format!("output chunk is not valid base64: {err}"),
                    })
            };
            match &event {
                ExecEvent::Start { pid } => output.pid = *pid,
                ExecEvent::Stdout { .. } => match options.on_stdout.as_mut() {
                    Some(callback) => callback(&bytes()?),
                    None => output.stdout.extend_from_slice(&bytes()?),
                },
                ExecEvent::Stderr { .. } => match options.on_stderr.as_mut() {
                    Some(callback) => callback(&bytes()?),
                    None => output.stderr.extend_from_slice(&bytes()?),
                },
                ExecEvent::Exit {
                    exit_code,
                    signal,
                    timed_out,
                    duration_ms,
                } => {
                    output.exit_code = *exit_code;
                    output.signal = signal.clone();
                    output.timed_out = *timed_out;
                    output.duration_ms = *duration_ms;
                    return Ok(output);
                }
            }
        }
        Err(Error::Decode {
            url: format!("{}/sandboxes/{id}/exec/stream", self.base),
            message: "the stream ended before the command's exit event".into(),
        })
    }

    /// Streams a file out of a sandbox.
    pub async fn read_file(
        &self,
        id: &str,
        path: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, reqwest::Error>>, Error> {
        let response = self
            .send(
                self.request(Method::GET, &format!("/sandboxes/{id}/files"))
                    .query(&[("path", path)]),
            )
            .await?;
        Ok(response.bytes_stream())
    }

    /// Streams `body` into a file in a sandbox, creating parent directories.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<(), Error> {
        self.empty(
            self.request(Method::PUT, &format!("/sandboxes/{id}/files"))
                .query(&[("path", path)])
                .body(body),
        )
        .await
    }

    /// Lists a directory in a sandbox.
    pub async fn list_files(&self, id: &str, path: &str) -> Result<Vec<FileEntry>, Error> {
        let list: FileList = self
            .json(
                self.request(Method::GET, &format!("/sandboxes/{id}/files/list"))
                    .query(&[("path", path)]),
            )
            .await?;
        Ok(list.entries)
    }

    /// Creates a directory and its parents in a sandbox.
    pub async fn make_dir(&self, id: &str, path: &str) -> Result<(), Error> {
        self.empty(
            self.request(Method::POST, &format!("/sandboxes/{id}/files/mkdir"))
                .query(&[("path", path)]),
        )
        .await
    }

    /// Removes a file or a directory tree in a sandbox.
    pub async fn remove_file(&self, id: &str, path: &str) -> Result<(), Error> {
        self.empty(
            self.request(Method::DELETE, &format!("/sandboxes/{id}/files"))
                .query(&[("path", path)]),
        )
        .await
    }

    /// Snapshots a sandbox.
    pub async fn create_snapshot(&self, id: &str) -> Result<Snapshot, Error> {
        self.json(self.request(Method::POST, &format!("/sandboxes/{id}/snapshot")))
            .await
    }

    /// Lists snapshots.
    pub async fn list_snapshots(&self) -> Result<Vec<Snapshot>, Error> {
        let list: SnapshotList = self.json(self.request(Method::GET, "/snapshots")).await?;
        Ok(list.snapshots)
    }

    /// Creates a new sandbox from a snapshot.
    pub async fn restore_snapshot(
        &self,
        snapshot_id: &str,
        request: &RestoreRequest,
    ) -> Result<Sandbox, Error> {
        self.json(
            self.request(Method::POST, &format!("/snapshots/{snapshot_id}/restore"))
                .json(request),
        )
        .await
    }

    /// Deletes a snapshot.
    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), Error> {
        self.empty(self.request(Method::DELETE, &format!("/snapshots/{snapshot_id}")))
            .await
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.http.request(method, format!("{}{}", self.base, path));
        match &self.api_key {
            Some(key) => builder.header("X-API-Key", key),
            None => builder,
        }
    }

    async fn send(&self, builder: RequestBuilder) -> Result<Response, Error> {
        let request = builder.build().map_err(|source| Error::Http {
            url: self.base.clone(),
            source,
        })?;
        let url = request.url().to_string();
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|source| Error::Http {
                url: url.clone(),
                source,
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str::<ErrorBody>(&text).unwrap_or_else(|_| {
            ErrorBody::new(
                "http_error",
                format!(
                    "{} from {url}: {}",
                    status,
                    if text.is_empty() { "no body" } else { &text }
                ),
            )
        });
        Err(Error::Api {
            status: status.as_u16(),
            body,
        })
    }

    async fn json<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T, Error> {
        let response = self.send(builder).await?;
        let url = response.url().to_string();
        response
            .json()
            .await
            .map_err(|source| Error::Http { url, source })
    }

    async fn empty(&self, builder: RequestBuilder) -> Result<(), Error> {
        self.send(builder).await?;
        Ok(())
    }
}
