//! Background processes: commands that outlive the request that started them.
//!
//! 1. `POST /processes` spawns `/bin/sh -c COMMAND` through [`exec::spawn`] with a stdin pipe,
//!    records it in the process table, and starts a task that consumes its output.
//! 2. That task appends each output chunk to the entry's replay buffer (the most recent
//!    [`table::REPLAY_LIMIT`] bytes) and broadcasts it to live followers. It never waits for a
//!    follower, so a slow follower cannot stall the process.
//! 3. `GET /processes/{selector}/output` sends `start`, the replay buffer, the live chunks, then
//!    `exit`. A follower more than [`table::BROADCAST_CAPACITY`] chunks behind loses the chunks it
//!    missed, and the stream goes on with the next one.
//! 4. When the shell exits, the entry keeps its exit status; the table keeps the last
//!    [`table::EXITED_KEPT`] exited entries.
//!
//! A selector is a decimal pid or a tag. Signals go to the process group, which holds the shell
//! and every child it started, unless a child moved to its own group or session.

mod table;

use std::time::Duration;

use bytes::Bytes;
use gitvm_proto::{ExecEvent, ExecRequest, SignalRequest, StartProcessRequest};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc};

use super::exec::{self, Stdin};
use super::{json_response, no_content, ApiError, ResponseBody, MAX_JSON_BODY};
use table::{Entry, Event};

/// Events queued between a follower's forwarding task and its response body.
const FOLLOWER_QUEUE: usize = 16;

/// Maximum length of a tag, in bytes.
const MAX_TAG_LEN: usize = 128;

/// Serves every route under `/processes`.
pub(super) async fn route(request: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();

    match (&method, segments.as_slice()) {
        (&Method::POST, ["processes"]) => start(request).await,
        (&Method::GET, ["processes"]) => Ok(json_response(StatusCode::OK, &table::list())),
        (&Method::GET, ["processes", selector]) => {
            Ok(json_response(StatusCode::OK, &find(selector)?.info()))
        }
        (&Method::GET, ["processes", selector, "output"]) => Ok(output(find(selector)?)),
        (&Method::POST, ["processes", selector, "stdin"]) => {
            write_stdin(find(selector)?, request.into_body()).await
        }
        (&Method::POST, ["processes", selector, "stdin", "close"]) => {
            close_stdin(find(selector)?).await
        }
        (&Method::POST, ["processes", selector, "signal"]) => {
            let entry = find(selector)?;
            let signal = parse_signal(&read_json::<SignalRequest>(request).await?.signal)?;
            send_signal(&entry, signal)
        }
        (&Method::POST, ["processes", selector, "kill"]) => kill(find(selector)?),
        (&Method::POST, ["processes", selector, "wait"]) => {
            let entry = find(selector)?;
            let timeout = parse_wait_timeout(request.uri().query())?;
            Ok(json_response(StatusCode::OK, &wait(&entry, timeout).await))
        }
        (
            _,
            ["processes"]
            | ["processes", _]
            | ["processes", _, "output" | "stdin" | "signal" | "kill" | "wait"]
            | ["processes", _, "stdin", "close"],
        ) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("method {method} is not allowed on {path}"),
        )),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            format!("no agent route {method} {path}"),
        )),
    }
}

async fn start(request: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let request: StartProcessRequest = read_json(request).await?;
    if let Some(tag) = &request.tag {
        check_tag(tag)?;
    }
    let command = request.command.clone();
    let tag = request.tag.clone();
    let exec_request = ExecRequest {
        command: request.command,
        cwd: request.cwd,
        env: request.env,
        user: request.user,
        timeout: request.timeout,
    };

    // The table stays locked from the tag check to the insert, so two starts with one tag
    // cannot both succeed.
    let entry = table::insert_with(tag.as_deref(), || {
        let (running, stdin) = exec::spawn(exec_request, Stdin::Piped)?;
        Ok((running, stdin, command))
    })?;
    tracing::info!(pid = entry.pid, tag = ?entry.tag, "background process started");
    Ok(json_response(StatusCode::CREATED, &entry.info()))
}

/// Checks that `tag` cannot be mistaken for a pid and needs no percent-encoding in a URL path.
fn check_tag(tag: &str) -> Result<(), ApiError> {
    let valid_chars = tag
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || b"-._~".contains(&byte));
    if tag.is_empty() || tag.len() > MAX_TAG_LEN || !valid_chars {
        return Err(ApiError::bad_request(
            "invalid_tag",
            format!("tag `{tag}` is invalid; use 1 to {MAX_TAG_LEN} letters, digits, `-`, `_`, `.` or `~`"),
        ));
    }
    if tag.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(ApiError::bad_request(
            "invalid_tag",
            format!("tag `{tag}` is invalid because it would read as a pid; add a letter"),
        ));
    }
    Ok(())
}

fn find(selector: &str) -> Result<std::sync::Arc<Entry>, ApiError> {
    table::find(selector).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "process_not_found",
            format!("no background process has pid or tag `{selector}`; list the background processes to find it"),
        )
    })
}

/// Starts a task that forwards the entry's replay buffer and live events to a new response
/// body, so the body only polls a queue.
fn output(entry: std::sync::Arc<Entry>) -> Response<ResponseBody> {
    let (replay, exit, mut live) = entry.follow();
    let (sender, receiver) = mpsc::channel(FOLLOWER_QUEUE);
    let pid = entry.pid;

    tokio::spawn(async move {
        let mut pending = vec![ExecEvent::Start { pid }];
        pending.extend(
            replay
                .iter()
                .map(|(stderr, bytes)| ExecEvent::chunk(*stderr, bytes)),
        );
        if let Some(exit) = &exit {
            pending.push(exit.event());
        }
        for event in pending {
            if sender.send(event).await.is_err() {
                return;
            }
        }
        if exit.is_some() {
            return;
        }

        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                _ = sender.closed() => return,
            };
            let event = match received {
                Ok(Event::Chunk { stderr, bytes }) => ExecEvent::chunk(stderr, &bytes),
                Ok(Event::Exit(exit)) => exit.event(),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        pid,
                        missed,
                        "output follower fell behind; dropping the chunks it missed"
                    );
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let last = matches!(event, ExecEvent::Exit { .. });
            if sender.send(event).await.is_err() || last {
                return;
            }
        }
    });

    let mut response = Response::new(EventQueueBody { receiver }.boxed());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(gitvm_proto::NDJSON),
    );
    response
}

/// NDJSON response body fed by a follower's forwarding task.
struct EventQueueBody {
    receiver: mpsc::Receiver<ExecEvent>,
}

impl Body for EventQueueBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.receiver.poll_recv(cx).map(|event| {
            event.map(|event| {
                // ExecEvent has only string keys and plain values, for which serde_json
                // cannot fail.
                let mut line = serde_json::to_vec(&event).unwrap_or_default();
                line.push(b'\n');
                Ok(Frame::data(Bytes::from(line)))
            })
        })
    }
}

/// Copies the request body to the process's stdin. The stdin lock is held for the whole body,
/// so concurrent writers do not interleave, and a close waits for a write in progress.
async fn write_stdin(
    entry: std::sync::Arc<Entry>,
    mut body: Incoming,
) -> Result<Response<ResponseBody>, ApiError> {
    let mut stdin = entry.stdin.lock().await;
    let Some(pipe) = stdin.as_mut() else {
        return Err(stdin_closed(&entry));
    };

    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            ApiError::bad_request(
                "invalid_request",
                format!("cannot read the stdin request body: {error}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if let Err(error) = pipe.write_all(&data).await {
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "stdin_closed",
                    format!(
                        "process {} no longer reads its stdin (it exited or closed it)",
                        entry.pid
                    ),
                ));
            }
            return Err(ApiError::internal(
                "io_error",
                format!(
                    "cannot write to the stdin of process {}: {error}",
                    entry.pid
                ),
            ));
        }
    }
    Ok(no_content())
}

async fn close_stdin(entry: std::sync::Arc<Entry>) -> Result<Response<ResponseBody>, ApiError> {
    // Dropping the only write end gives the process end of file.
    if entry.stdin.lock().await.take().is_none() {
        return Err(stdin_closed(&entry));
    }
    tracing::debug!(pid = entry.pid, "stdin closed");
    Ok(no_content())
}

fn stdin_closed(entry: &Entry) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "stdin_closed",
        format!(
            "the stdin of process {} is already closed; start a new process to send more input",
            entry.pid
        ),
    )
}

/// Parses `SIGTERM`, `TERM` or `15`.
fn parse_signal(value: &str) -> Result<Signal, ApiError> {
    let parsed = match value.parse::<i32>() {
        Ok(number) => Signal::try_from(number).ok(),
        Err(_) => {
            let upper = value.to_ascii_uppercase();
            let name = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            name.parse::<Signal>().ok()
        }
    };
    parsed.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_signal",
            format!("signal `{value}` is unknown; pass a name such as `SIGTERM` or `TERM`, or a number such as `15`"),
        )
    })
}

/// Sends `signal` to the process group. An exited process whose group is gone gets a 409.
fn send_signal(entry: &Entry, signal: Signal) -> Result<Response<ResponseBody>, ApiError> {
    match killpg(Pid::from_raw(entry.pid as i32), signal) {
        Ok(()) => {
            tracing::info!(pid = entry.pid, %signal, "signalled background process group");
            Ok(no_content())
        }
        Err(Errno::ESRCH) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "process_exited",
            format!(
                "process {} has exited and no process of its group is left; nothing to signal",
                entry.pid
            ),
        )),
        Err(error) => Err(ApiError::internal(
            "signal_failed",
            format!(
                "cannot send {signal} to process group {}: {error}",
                entry.pid
            ),
        )),
    }
}

/// Kills the process group. A group that is already gone counts as killed.
fn kill(entry: std::sync::Arc<Entry>) -> Result<Response<ResponseBody>, ApiError> {
    match send_signal(&entry, Signal::SIGKILL) {
        Err(error) if error.body.code == "process_exited" => Ok(no_content()),
        other => other,
    }
}

/// Waits until the process exits or `timeout` elapses, then returns its info either way. The
/// `state` field shows which happened.
async fn wait(entry: &Entry, timeout: Option<Duration>) -> gitvm_proto::ProcessInfo {
    let mut exited = entry.exited.subscribe();
    let waiting = exited.wait_for(|exited| *exited);
    match timeout {
        Some(limit) => {
            let _ = tokio::time::timeout(limit, waiting).await;
        }
        None => {
            let _ = waiting.await;
        }
    }
    entry.info()
}

/// Parses `timeout=SECONDS` from the query; absent or 0 waits without limit.
fn parse_wait_timeout(query: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(value) = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("timeout="))
    else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::bad_request(
            "invalid_timeout",
            format!("wait timeout `{value}` is invalid; pass a number of seconds >= 0 (0 means no limit)"),
        )
    };
    let seconds: f64 = value.parse().map_err(|_| invalid())?;
    if seconds == 0.0 {
        return Ok(None);
    }
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(invalid());
    }
    Duration::try_from_secs_f64(seconds)
        .map(Some)
        .map_err(|_| invalid())
}

async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, ApiError> {
    let body = Limited::new(request.into_body(), MAX_JSON_BODY)
        .collect()
        .await
        .map_err(|error| {
            ApiError::bad_request(
                "invalid_request",
                format!("cannot read request body (at most {MAX_JSON_BODY} bytes): {error}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request(
            "invalid_request",
            format!(
                "invalid {} body: {error}",
                std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("request")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_signal_accepts_name_short_name_and_number() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("15").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
    }

    #[test]
    fn parse_signal_rejects_unknown_value() {
        let error = parse_signal("SIGNOPE").unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.body.code, "invalid_signal");
        assert!(error.body.message.contains("`SIGNOPE`"));
        assert_eq!(parse_signal("99").unwrap_err().body.code, "invalid_signal");
    }

    #[test]
    fn check_tag_rejects_pid_like_and_unsafe_tags() {
        assert!(check_tag("web").is_ok());
        assert!(check_tag("web-1.v2_x").is_ok());
        assert_eq!(check_tag("123").unwrap_err().body.code, "invalid_tag");
        assert_eq!(check_tag("").unwrap_err().body.code, "invalid_tag");
        assert_eq!(check_tag("a/b").unwrap_err().body.code, "invalid_tag");
        assert_eq!(check_tag("a b").unwrap_err().body.code, "invalid_tag");
    }

    #[test]
    fn parse_wait_timeout_cases() {
        assert_eq!(parse_wait_timeout(None).unwrap(), None);
        assert_eq!(parse_wait_timeout(Some("timeout=0")).unwrap(), None);
        assert_eq!(
            parse_wait_timeout(Some("timeout=1.5")).unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_wait_timeout(Some("timeout=-1"))
                .unwrap_err()
                .body
                .code,
            "invalid_timeout"
        );
        assert_eq!(
            parse_wait_timeout(Some("timeout=x")).unwrap_err().body.code,
            "invalid_timeout"
        );
    }
}
