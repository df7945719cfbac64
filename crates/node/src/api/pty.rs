//! `GET /sandboxes/{id}/pty`: an interactive terminal over a WebSocket, bridged to the
//! agent's `POST /pty` stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::extract::ws::{rejection::WebSocketUpgradeRejection, CloseFrame, Message, WebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use gitvm_agent::client::BoxError;
use gitvm_proto::{ErrorBody, ExecEvent};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::extract::{ApiPath, ApiQuery};
use super::{ApiError, AppState};
use crate::sandbox::Node;

/// Window size used when the request gives none.
const DEFAULT_COLS: u16 = 80;
const DEFAULT_ROWS: u16 = 24;

/// Input messages queued between the socket and the agent stream. A full queue stops reading
/// the socket, so a terminal that stops reading input slows the client down.
const INPUT_QUEUE: usize = 16;

/// WebSocket close code for a server-side failure (RFC 6455, section 7.4.1).
const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// Query of `GET /sandboxes/{id}/pty`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PtyQuery {
    /// Terminal width in columns, 1 to 65535 [default: 80].
    pub cols: Option<u16>,
    /// Terminal height in rows, 1 to 65535 [default: 24].
    pub rows: Option<u16>,
    /// Shell command line to run instead of a login shell (`/bin/bash -l`, else `/bin/sh`).
    pub command: Option<String>,
}

/// Text message a client sends to change the window size.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum ClientMessage {
    /// New window size.
    Resize {
        /// Width in columns.
        cols: u16,
        /// Height in rows.
        rows: u16,
    },
}

/// Opens an interactive terminal in a running sandbox over a WebSocket.
///
/// Protocol, once the connection is upgraded:
/// 1. Client binary frames are raw input bytes, written to the terminal as typed.
/// 2. Client text frames are JSON `{"type":"resize","cols":N,"rows":M}` and set the window size.
/// 3. Server binary frames are raw terminal output bytes.
/// 4. When the command exits, the server sends one text frame
///    `{"type":"exit","exitCode":N,"signal":null|"SIGNAME"}` and closes the socket.
///
/// Closing the socket before that hangs up the terminal: SIGHUP, then SIGKILL after 2 s.
/// Errors found before the upgrade (unknown sandbox, sandbox not running, invalid size) are
/// JSON responses, as on other routes. Send the API key in the upgrade request's headers.
#[utoipa::path(
    get, path = "/sandboxes/{id}/pty", tag = "exec",
    params(("id" = String, Path, description = "Sandbox id"), PtyQuery),
    responses(
        (status = 101, description = "Switched to the WebSocket terminal protocol"),
        (status = 400, description = "Invalid size, or not a WebSocket upgrade request", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Sandbox not running", body = ErrorBody),
    )
)]
pub async fn pty(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<PtyQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let cols = window_dimension("cols", query.cols, DEFAULT_COLS)?;
    let rows = window_dimension("rows", query.rows, DEFAULT_ROWS)?;
    state.node.check_pty(&id).await?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "websocket_required",
            format!("{rejection}; connect with a WebSocket client, such as `gitvm vm shell {id}`"),
        )
    })?;

    // The agent stream opens before the upgrade, so that its failures are JSON responses too.
    let (input, receiver) = mpsc::channel(INPUT_QUEUE);
    let body = state
        .node
        .pty(
            &id,
            cols,
            rows,
            query.command.as_deref(),
            ChannelBody(receiver).boxed(),
        )
        .await?;
    let mut events = EventLines::new(body);
    let pid = match events.next().await {
        Ok(Some(ExecEvent::Start { pid })) => pid,
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "agent_error",
                format!("the agent of sandbox {id} did not start the terminal: {other:?}"),
            ))
        }
    };

    let node = state.node.clone();
    Ok(upgrade.on_upgrade(move |socket| async move {
        bridge(socket, node, &id, pid, events, input).await;
        tracing::info!(sandbox_id = %id, pid, "pty closed");
    }))
}

fn window_dimension(name: &str, value: Option<u16>, default: u16) -> Result<u16, ApiError> {
    match value {
        None => Ok(default),
        Some(0) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_size",
            format!("{name}=0 is invalid; pass a whole number from 1 to 65535"),
        )),
        Some(value) => Ok(value),
    }
}

/// Copies socket input to the agent and agent output to the socket until the command exits
/// or either side goes away. Returning drops `input` and `events`, which hangs up the terminal
/// if it is still running.
async fn bridge(
    socket: WebSocket,
    node: Arc<Node>,
    id: &str,
    pid: u32,
    mut events: EventLines,
    input: mpsc::Sender<Bytes>,
) {
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    if input.send(bytes).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
                    Ok(ClientMessage::Resize { cols, rows }) if cols > 0 && rows > 0 => {
                        if let Err(err) = node.pty_resize(id, pid, cols, rows).await {
                            tracing::warn!(sandbox_id = %id, pid, error = %err, "pty resize failed");
                        }
                    }
                    Ok(ClientMessage::Resize { cols, rows }) => {
                        tracing::warn!(sandbox_id = %id, pid, cols, rows, "ignored pty resize to a zero size");
                    }
                    Err(err) => {
                        tracing::warn!(sandbox_id = %id, pid, error = %err, "ignored invalid pty text message");
                    }
                },
                Some(Ok(Message::Close(_))) | None => return,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Err(err)) => {
                    tracing::debug!(sandbox_id = %id, pid, error = %err, "pty socket failed");
                    return;
                }
            },
            event = events.next() => {
                let message = match event {
                    Ok(Some(event @ (ExecEvent::Stdout { .. } | ExecEvent::Stderr { .. }))) => {
                        match event.bytes() {
                            Some(Ok(bytes)) => Message::Binary(bytes.into()),
                            _ => {
                                close_with_error(&mut sink, "the agent sent invalid terminal output").await;
                                return;
                            }
                        }
                    }
                    Ok(Some(ExecEvent::Exit { exit_code, signal, .. })) => {
                        let exit = serde_json::json!({ "type": "exit", "exitCode": exit_code, "signal": signal });
                        let _ = sink.send(Message::Text(exit.to_string().into())).await;
                        let _ = sink.send(Message::Close(None)).await;
                        return;
                    }
                    Ok(Some(ExecEvent::Start { .. })) => continue,
                    Ok(None) | Err(_) => {
                        tracing::warn!(sandbox_id = %id, pid, result = ?event, "pty stream ended without an exit event");
                        close_with_error(&mut sink, "the terminal stream ended without an exit status").await;
                        return;
                    }
                };
                if sink.send(message).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn close_with_error(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    reason: &'static str,
) {
    let frame = CloseFrame {
        code: CLOSE_INTERNAL_ERROR,
        reason: reason.into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
}

/// Request body fed from a channel: the bytes the WebSocket client types.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|bytes| bytes.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// Splits the agent's NDJSON body into events as its frames arrive.
struct EventLines {
    body: Incoming,
    buffer: Vec<u8>,
}

impl EventLines {
    fn new(body: Incoming) -> Self {
        Self {
            body,
            buffer: Vec::new(),
        }
    }

    /// Returns the next event, or `None` at the end of the body. Cancel safe: bytes read stay
    /// in the buffer.
    async fn next(&mut self) -> Result<Option<ExecEvent>, String> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&byte| byte == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|err| format!("invalid event line from the agent: {err}"));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(err)) => return Err(format!("the agent stream failed: {err}")),
                None => return Ok(None),
            }
        }
    }
}
