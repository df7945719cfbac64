//! Interactive terminals over the node's WebSocket route `GET /sandboxes/{id}/pty`.
//!
//! Protocol after the upgrade: binary frames carry terminal bytes in both directions, the
//! client sends `{"type":"resize","cols":N,"rows":M}` text frames, and the server ends with one
//! `{"type":"exit","exitCode":N,"signal":null|"SIGNAME"}` text frame before it closes.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use gitvm_proto::ErrorBody;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{Client, Error};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Options of [`Client::open_pty`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtyOptions {
    /// Initial terminal width in columns, at least 1.
    pub cols: u16,
    /// Initial terminal height in rows, at least 1.
    pub rows: u16,
    /// Shell command line to run instead of the sandbox's login shell.
    pub command: Option<String>,
}

impl Default for PtyOptions {
    fn default() -> Self {
        Self {
            cols: 80,
            rows: 24,
            command: None,
        }
    }
}

/// Message received from a terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyEvent {
    /// Bytes the terminal wrote, as the server sent them.
    Output(Vec<u8>),
    /// The command ended, and the server closes the connection next.
    Exit {
        /// Exit status: 128 + N for signal N.
        exit_code: i32,
        /// Name of the signal that ended the command, such as `SIGKILL`, if one did.
        signal: Option<String>,
    },
    /// The connection closed, after an `Exit` or without one when the server failed.
    Closed {
        /// Reason in the server's close frame, if it sent a non-empty one.
        reason: Option<String>,
    },
}

/// An open terminal in a sandbox, from [`Client::open_pty`].
#[derive(Debug)]
pub struct PtySession {
    writer: PtyWriter,
    reader: PtyReader,
}

/// Sending half of a [`PtySession`]: input bytes and window sizes.
#[derive(Debug)]
pub struct PtyWriter {
    sink: SplitSink<Socket, Message>,
    url: String,
}

/// Receiving half of a [`PtySession`]: output bytes and the exit status.
#[derive(Debug)]
pub struct PtyReader {
    stream: SplitStream<Socket>,
    url: String,
}

/// Body of the server's `exit` text frame.
#[derive(Deserialize)]
struct ExitMessage {
    #[serde(rename = "exitCode")]
    exit_code: i32,
    signal: Option<String>,
}

impl Client {
    /// Opens an interactive terminal in running sandbox `id` over a WebSocket.
    ///
    /// A server that rejects the upgrade (unknown sandbox, sandbox not running, missing API
    /// key) gives [`Error::Api`] with its status and JSON error body.
    ///
    /// NOTE: the workspace builds tokio-tungstenite without TLS, so a `https://` server URL
    /// fails with [`Error::WebSocket`] until a TLS feature is enabled.
    pub async fn open_pty(&self, id: &str, options: &PtyOptions) -> Result<PtySession, Error> {
        let url = pty_url(self.base_url(), id, options)?;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|source| websocket_error(&url, source))?;
        if let Some(key) = self.api_key() {
            let value = HeaderValue::from_str(key).map_err(|source| {
                websocket_error(&url, tungstenite::Error::HttpFormat(source.into()))
            })?;
            request.headers_mut().insert("x-api-key", value);
        }

        let socket = match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => socket,
            Err(tungstenite::Error::Http(response)) => {
                return Err(rejection(
                    &url,
                    response.status(),
                    response.body().as_deref(),
                ))
            }
            Err(source) => return Err(websocket_error(&url, source)),
        };
        let (sink, stream) = socket.split();
        Ok(PtySession {
            writer: PtyWriter {
                sink,
                url: url.clone(),
            },
            reader: PtyReader { stream, url },
        })
    }
}

impl PtySession {
    /// Sends bytes to the terminal's input, as if typed.
    pub async fn send_input(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.writer.send_input(bytes).await
    }

    /// Sets the terminal's window size.
    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<(), Error> {
        self.writer.resize(cols, rows).await
    }

    /// Waits for the next output chunk, the exit status or the end of the connection.
    pub async fn next_event(&mut self) -> Result<PtyEvent, Error> {
        self.reader.next_event().await
    }

    /// Closes the connection, which hangs up a command still running (SIGHUP).
    pub async fn close(&mut self) -> Result<(), Error> {
        self.writer.close().await
    }

    /// Splits the session into halves that can send and receive at the same time.
    pub fn split(self) -> (PtyWriter, PtyReader) {
        (self.writer, self.reader)
    }
}

impl PtyWriter {
    /// Sends bytes to the terminal's input, as if typed.
    pub async fn send_input(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.send(Message::Binary(bytes.to_vec().into())).await
    }

    /// Sets the terminal's window size.
    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<(), Error> {
        let resize = serde_json::json!({ "type": "resize", "cols": cols, "rows": rows });
        self.send(Message::Text(resize.to_string().into())).await
    }

    /// Closes the connection, which hangs up a command still running (SIGHUP).
    pub async fn close(&mut self) -> Result<(), Error> {
        self.send(Message::Close(None)).await
    }

    async fn send(&mut self, message: Message) -> Result<(), Error> {
        self.sink
            .send(message)
            .await
            .map_err(|source| websocket_error(&self.url, source))
    }
}

impl PtyReader {
    /// Waits for the next output chunk, the exit status or the end of the connection.
    ///
    /// Text frames of types other than `exit` are skipped, so that a newer server can add
    /// message types. Cancel-safe: a call dropped in `tokio::select!` loses no message.
    pub async fn next_event(&mut self) -> Result<PtyEvent, Error> {
        loop {
            let message = match self.stream.next().await {
                None => return Ok(PtyEvent::Closed { reason: None }),
                Some(Err(source)) => return Err(websocket_error(&self.url, source)),
                Some(Ok(message)) => message,
            };
            match message {
                Message::Binary(bytes) => return Ok(PtyEvent::Output(bytes.to_vec())),
                Message::Text(text) => {
                    if let Some(event) = exit_event(&self.url, text.as_str())? {
                        return Ok(event);
                    }
                }
                Message::Close(frame) => {
                    let reason = frame
                        .map(|frame| frame.reason.to_string())
                        .filter(|reason| !reason.is_empty());
                    return Ok(PtyEvent::Closed { reason });
                }
                // tungstenite queues the pong reply to a ping itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }
}

/// Builds `ws://HOST/sandboxes/ID/pty?cols=C&rows=R[&command=…]` from the server's http URL.
fn pty_url(base_url: &str, id: &str, options: &PtyOptions) -> Result<String, Error> {
    let server = base_url.trim_end_matches('/');
    let base = if let Some(rest) = server.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = server.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        return Err(Error::InvalidUrl {
            url: base_url.to_string(),
            reason: "it must start with http:// or https://".into(),
        });
    };
    let mut url = format!(
        "{base}/sandboxes/{}/pty?cols={}&rows={}",
        encode(id),
        options.cols,
        options.rows
    );
    if let Some(command) = &options.command {
        url.push_str("&command=");
        url.push_str(&encode(command));
    }
    Ok(url)
}

/// Percent-encodes every byte but RFC 3986 unreserved characters.
fn encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for &byte in value.as_bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Parses a server text frame into an `Exit` event, or `None` for types other than `exit`.
fn exit_event(url: &str, text: &str) -> Result<Option<PtyEvent>, Error> {
    let invalid = |error: serde_json::Error| Error::Decode {
        url: url.to_string(),
        message: format!("invalid terminal message {text}: {error}"),
    };
    let message: serde_json::Value = serde_json::from_str(text).map_err(invalid)?;
    if message["type"] != "exit" {
        return Ok(None);
    }
    let exit: ExitMessage = serde_json::from_value(message).map_err(invalid)?;
    Ok(Some(PtyEvent::Exit {
        exit_code: exit.exit_code,
        signal: exit.signal,
    }))
}

/// Converts a rejected upgrade into [`Error::Api`], as [`Client`] does for other routes.
fn rejection(url: &str, status: tungstenite::http::StatusCode, body: Option<&[u8]>) -> Error {
    let body = body.unwrap_or_default();
    let body = serde_json::from_slice::<ErrorBody>(body).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(body);
        ErrorBody::new(
            "http_error",
            format!(
                "{status} from {url}: {}",
                if text.is_empty() { "no body" } else { &text }
            ),
        )
    });
    Error::Api {
        status: status.as_u16(),
        body,
    }
}

fn websocket_error(url: &str, source: tungstenite::Error) -> Error {
    Error::WebSocket {
        url: url.to_string(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_url_from_server_url() {
        let options = PtyOptions {
            cols: 120,
            rows: 40,
            command: None,
        };
        assert_eq!(
            pty_url("http://127.0.0.1:8080/", "sb-1", &options).unwrap(),
            "ws://127.0.0.1:8080/sandboxes/sb-1/pty?cols=120&rows=40"
        );

        let options = PtyOptions {
            command: Some("top -b".into()),
            ..Default::default()
        };
        assert_eq!(
            pty_url("https://example.test", "a", &options).unwrap(),
            "wss://example.test/sandboxes/a/pty?cols=80&rows=24&command=top%20-b"
        );
        assert!(matches!(
            pty_url("ftp://x", "a", &options),
            Err(Error::InvalidUrl { .. })
        ));
    }

    #[test]
    fn exit_event_of_messages() {
        let url = "ws://127.0.0.1/sandboxes/a/pty";
        assert_eq!(
            exit_event(url, r#"{"type":"exit","exitCode":3,"signal":null}"#).unwrap(),
            Some(PtyEvent::Exit {
                exit_code: 3,
                signal: None
            })
        );
        assert_eq!(
            exit_event(url, r#"{"type":"exit","exitCode":137,"signal":"SIGKILL"}"#).unwrap(),
            Some(PtyEvent::Exit {
                exit_code: 137,
                signal: Some("SIGKILL".into())
            })
        );
        assert_eq!(exit_event(url, r#"{"type":"other"}"#).unwrap(), None);
        assert!(matches!(
            exit_event(url, r#"{"type":"exit"}"#),
            Err(Error::Decode { .. })
        ));
        assert!(matches!(
            exit_event(url, "not json"),
            Err(Error::Decode { .. })
        ));
    }

    #[test]
    fn rejection_keeps_error_body() {
        let url = "ws://127.0.0.1/sandboxes/a/pty";
        let body = br#"{"code":"invalid_state","message":"sandbox a is stopped"}"#;
        match rejection(url, tungstenite::http::StatusCode::CONFLICT, Some(body)) {
            Error::Api { status, body } => {
                assert_eq!(status, 409);
                assert_eq!(body.code, "invalid_state");
                assert_eq!(body.message, "sandbox a is stopped");
            }
            other => panic!("expected Error::Api, got {other:?}"),
        }

        match rejection(url, tungstenite::http::StatusCode::BAD_GATEWAY, None) {
            Error::Api { status, body } => {
                assert_eq!(status, 502);
                assert_eq!(body.code, "http_error");
                assert_eq!(body.message, format!("502 Bad Gateway from {url}: no body"));
            }
            other => panic!("expected Error::Api, got {other:?}"),
        }
    }
}
