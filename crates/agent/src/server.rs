//! The agent daemon: binds the Unix socket, reaps children and serves the agent protocol
//! ([`gitvm_proto::agent`]) on every accepted connection.

mod exec;
mod files;
pub mod guest;
mod processes;
mod pty;
mod reaper;
pub mod serial;
mod signals;
mod stream;
mod users;

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use gitvm_proto::agent::{AgentHealth, SetClockRequest, SetIdentityRequest};
use gitvm_proto::{ErrorBody, ExecRequest};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handshake::server_handshake;

/// Time children get to exit after a forwarded shutdown signal before they are killed. Docker
/// kills the container 10 s after `docker stop` by default, so this stays below that.
/// Maximum size of one request's headers, in bytes: room for a terminal's environment.
const MAX_HEADER_LIST_SIZE: u32 = 2 * 1024 * 1024;

const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Maximum size of a JSON request body, in bytes.
const MAX_JSON_BODY: usize = 4 * 1024 * 1024;

/// Pause after a failed `accept`, so that running out of file descriptors does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Allocation size from which glibc serves memory with its own mmap, in bytes (glibc's default
/// initial value).
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Path of the shell that runs commands.
pub(crate) const SHELL: &str = "/bin/sh";

/// Response body type of the agent's service.
type ResponseBody = BoxBody<Bytes, io::Error>;

/// Transport on which the agent waits for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A Unix socket at this path, as in Docker sandboxes; a stale socket file is replaced.
    Unix(PathBuf),
    /// The virtio-serial port with this name, as in QEMU guests.
    VirtioSerial(String),
}

/// Settings of the agent daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Transport that carries the agent protocol.
    pub transport: Transport,
    /// Whether the agent is init of a microVM guest and sets the machine up first
    /// (see [`guest`]).
    pub guest_setup: bool,
}

/// Runs the agent until SIGTERM, SIGINT or SIGHUP: binds the socket, serves connections, and
/// on a signal forwards it to every command and waits for them to exit. As PID 1 it ignores
/// these signals when a process inside its PID namespace sends them.
pub fn run(config: AgentConfig) -> io::Result<()> {
    limit_malloc_retention();

    // A current-thread runtime keeps idle memory small; file I/O still uses the blocking pool,
    // whose threads exit after the keep-alive.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(8)
        .thread_keep_alive(Duration::from_secs(10))
        .build()?;
    runtime.block_on(run_until_signal(config))
}

/// Makes glibc return freed memory of large buffers, such as a 16 MiB exec output, to the
/// kernel instead of keeping it for later allocations, so the agent's RSS falls back after a
/// request.
fn limit_malloc_retention() {
    // SAFETY: mallopt only changes allocator tuning and is called before any other thread runs.
    unsafe {
        // A fixed threshold disables glibc's dynamic raise of it, which otherwise moves large
        // buffers onto the heap after the first one is freed.
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        // One arena: blocking-pool threads would otherwise each keep their own.
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

async fn run_until_signal(config: AgentConfig) -> io::Result<()> {
    let mut signals = signals::ShutdownSignals::install(reaper::is_init())?;
    if config.guest_setup {
        guest::prepare();
    }

    let shutdown = CancellationToken::new();
    let connections = TaskTracker::new();
    let serving = match &config.transport {
        Transport::Unix(socket) => {
            let listener = bind(socket)?;
            tracing::info!(socket = %socket.display(), pid = std::process::id(), init = reaper::is_init(), "agent ready");
            futures_util::future::Either::Left(serve_until(
                listener,
                shutdown.clone(),
                connections.clone(),
            ))
        }
        Transport::VirtioSerial(name) => {
            let device = serial::find_port(name).await?;
            let port = serial::SerialPort::open(&device)?;
            reaper::start()?;
            tracing::info!(port = %device.display(), pid = std::process::id(), init = reaper::is_init(), "agent ready");
            let serving = serial::serve(port, shutdown.clone());
            futures_util::future::Either::Right(connections.track_future(serving))
        }
    };
    let received = tokio::select! {
        result = serving => return result,
        received = signals.recv() => received?,
    };
    reaper::shut_down(received, SHUTDOWN_GRACE).await;

    // Children are gone, so in-flight execs are about to respond; let each connection finish
    // its open streams before the runtime is dropped.
    shutdown.cancel();
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the grace period"
        );
    }

    if let Transport::Unix(socket) = &config.transport {
        if let Err(error) = std::fs::remove_file(socket) {
            tracing::debug!(socket = %socket.display(), %error, "cannot remove socket");
        }
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// Binds the Unix socket at `path` with mode 0600, replacing a stale socket file.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; remove it or choose another socket path",
                    path.display()
                ),
            ))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }

    let listener = UnixListener::bind(path).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot bind agent socket {}: {error}", path.display()),
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the agent protocol on every connection accepted from `listener`, forever. Starts the
/// child reaper first, which from then on collects the exit status of every child of this
/// process.
pub async fn serve(listener: UnixListener) -> io::Result<()> {
    serve_until(listener, CancellationToken::new(), TaskTracker::new()).await
}

/// Serves like [`serve`] until `shutdown` is cancelled, then sends every connection a GOAWAY,
/// so that it finishes its open streams and closes. Connection tasks are spawned on `connections`.
async fn serve_until(
    listener: UnixListener,
    shutdown: CancellationToken,
    connections: TaskTracker,
) -> io::Result<()> {
    reaper::start()?;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        connections.spawn(serve_connection(stream, shutdown.clone()));
    }
}

async fn serve_connection(stream: tokio::net::UnixStream, shutdown: CancellationToken) {
    let stream = tokio::select! {
        handshake = server_handshake(stream) => match handshake {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "handshake failed");
                return;
            }
        },
        _ = shutdown.cancelled() => return,
    };
    tracing::debug!("host connected");
    serve_stream(stream, shutdown).await;
}

/// Serves HTTP/2 on a stream whose handshake is done, until the host closes it or `shutdown`
/// is cancelled.
async fn serve_stream<S>(stream: crate::handshake::Rewind<S>, shutdown: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(|request| async move { Ok::<_, Infallible>(route(request).await) });
    // A terminal's options travel in a header and carry the sandbox's environment, which the
    // node allows up to 1 MiB; hyper's default header list limit is 16 KiB.
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "host connection ended with an error");
    }

    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe { libc::malloc_trim(0) };
}

async fn route(request: Request<Incoming>) -> Response<ResponseBody> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let result = match (method.clone(), path.as_str()) {
        (Method::GET, "/health") => Ok(health()),
        (Method::POST, "/clock") => clock_route(request).await,
        (Method::POST, "/identity") => identity_route(request).await,
        (Method::POST, "/exec") => exec_route(request).await,
        (Method::POST, "/exec/stream") => exec_stream_route(request).await,
        (Method::POST, "/pty") => pty::open(request).await,
        (Method::POST, p) if p.starts_with("/pty/") => pty::resize(&request),
        (Method::GET, "/files") => files::read(request).await,
        (Method::PUT, "/files") => files::write(request).await,
        (Method::DELETE, "/files") => files::remove(request).await,
        (Method::GET, "/files/list") => files::list(request).await,
        (Method::POST, "/files/mkdir") => files::make_dir(request).await,
        (_, p) if p == "/processes" || p.starts_with("/processes/") => {
            processes::route(request).await
        }
        (_, "/health" | "/exec" | "/exec/stream" | "/files" | "/files/list" | "/files/mkdir") => {
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("method {method} is not allowed on {path}"),
            ))
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            format!("no agent route {method} {path}"),
        )),
    };

    result.unwrap_or_else(|error| {
        if error.status.is_server_error() {
            tracing::warn!(%method, %path, code = %error.body.code, message = %error.body.message, "request failed");
        }
        error.into_response()
    })
}

fn health() -> Response<ResponseBody> {
    json_response(
        StatusCode::OK,
        &AgentHealth {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            shell: Path::new(SHELL).exists(),
        },
    )
}

async fn clock_route(request: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let clock: SetClockRequest = read_json(request, "clock").await?;
    if clock.nanos >= 1_000_000_000 {
        return Err(ApiError::bad_request(
            "invalid_clock",
            format!("nanos must be below 1000000000, got {}", clock.nanos),
        ));
    }
    guest::set_clock(clock.unix_seconds, clock.nanos).map_err(|error| {
        ApiError::internal("clock_failed", format!("cannot set the clock: {error}"))
    })?;
    Ok(no_content())
}

async fn identity_route(request: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let identity: SetIdentityRequest = read_json(request, "identity").await?;
    let entropy = guest::decode_hex(&identity.entropy_hex)
        .filter(|bytes| (16..=512).contains(&bytes.len()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_entropy",
                "entropyHex must be 16 to 512 bytes as lowercase hex digits",
            )
        })?;
    guest::set_identity(&identity.hostname, &entropy).map_err(|error| {
        ApiError::internal(
            "identity_failed",
            format!("cannot set the identity: {error}"),
        )
    })?;
    Ok(no_content())
}

async fn exec_route(request: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let result = exec::exec(read_exec_request(request).await?).await?;
    Ok(json_response(StatusCode::OK, &result))
}

/// Starts the command and streams its events. Invalid requests get a JSON error response, as
/// on `/exec`, because they fail before the command is spawned.
async fn exec_stream_route(request: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let running = exec::start(read_exec_request(request).await?)?;
    let mut response = Response::new(stream::EventBody::new(running).boxed());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(gitvm_proto::NDJSON),
    );
    Ok(response)
}

async fn read_exec_request(request: Request<Incoming>) -> Result<ExecRequest, ApiError> {
    read_json(request, "exec").await
}

/// Reads a JSON request body of at most [`MAX_JSON_BODY`] bytes; `what` names the request in
/// errors.
async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
    what: &str,
) -> Result<T, ApiError> {
    let body = Limited::new(request.into_body(), MAX_JSON_BODY)
        .collect()
        .await
        .map_err(|error| {
            ApiError::bad_request(
                "invalid_request",
                format!("cannot read {what} request body (at most {MAX_JSON_BODY} bytes): {error}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request(
            "invalid_request",
            format!("invalid {what} request: {error}"),
        )
    })
}

/// An error response: status plus [`ErrorBody`].
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message),
        }
    }

    fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn internal(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, code, message)
    }

    /// Maps a filesystem error on `path` to its status and code. `what` names the path's role
    /// in the message, such as "file" or "working directory".
    fn from_io(what: &str, path: &Path, error: &io::Error) -> Self {
        let shown = path.display();
        match error.kind() {
            io::ErrorKind::NotFound => Self::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} `{shown}` does not exist"),
            ),
            io::ErrorKind::PermissionDenied => Self::new(
                StatusCode::FORBIDDEN,
                "permission_denied",
                format!("permission denied on {what} `{shown}`"),
            ),
            io::ErrorKind::NotADirectory => Self::bad_request(
                "not_a_directory",
                format!("a parent of {what} `{shown}` is not a directory"),
            ),
            io::ErrorKind::IsADirectory => {
                Self::bad_request("is_a_directory", format!("{what} `{shown}` is a directory"))
            }
            io::ErrorKind::ReadOnlyFilesystem => Self::new(
                StatusCode::FORBIDDEN,
                "read_only",
                format!("{what} `{shown}` is on a read-only file system"),
            ),
            io::ErrorKind::InvalidFilename => Self::bad_request(
                "invalid_path",
                format!("{what} `{shown}` has a file name longer than its file system allows (255 bytes on most)"),
            ),
            io::ErrorKind::AlreadyExists => Self::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!("{what} `{shown}` already exists"),
            ),
            _ => Self::internal(
                "io_error",
                format!("I/O error on {what} `{shown}`: {error}"),
            ),
        }
    }

    fn into_response(self) -> Response<ResponseBody> {
        json_response(self.status, &self.body)
    }
}

fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    // The agent serializes only structs with string keys, for which serde_json cannot fail.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(full_body(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn full_body(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn no_content() -> Response<ResponseBody> {
    let mut response = Response::new(full_body(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}
