//! `gitvm vm shell ID`: an interactive terminal in a sandbox, over the node's WebSocket route
//! `GET /sandboxes/{id}/pty`.
//!
//! 1. Connect, with `X-API-Key` when a key is set, and the local window size in the query.
//! 2. When stdin is a terminal, switch it to raw mode, so every key (^C, arrows, tab) goes to
//!    the sandbox's terminal, which does its own echo and line editing. A guard restores the
//!    saved mode on every way out, including errors and panics.
//! 3. Send stdin bytes as binary frames, and a resize text frame at start and on SIGWINCH.
//!    Write binary frames from the server to stdout.
//! 4. Exit with the exit code in the server's final `exit` text frame.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use gitvm_sdk::ErrorBody;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::args::{Connection, VmShell};

/// Exit code when gitvm itself fails, as for `gitvm vm exec`.
const EXIT_GITVM_FAILED: u8 = 125;

/// Window size sent when neither stdout nor stdin is a terminal.
const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// End-of-transmission byte (^D), which a terminal in canonical mode reads as end of input.
const EOT: u8 = 0x04;

/// Interval between repeated ^D bytes once piped stdin has ended.
const EOT_REPEAT: std::time::Duration = std::time::Duration::from_millis(500);

/// Bytes read from stdin per call.
const STDIN_CHUNK: usize = 4096;

/// Opens the terminal and runs it until the sandbox's command exits; returns its exit code, or
/// 125 when gitvm fails.
pub async fn run(connection: &Connection, args: VmShell) -> ExitCode {
    match run_inner(connection, &args).await {
        Ok(code) => code,
        Err(error) => {
            // The raw-mode guard is gone by now, so the message prints on a sane terminal.
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_GITVM_FAILED)
        }
    }
}

async fn run_inner(connection: &Connection, args: &VmShell) -> Result<ExitCode> {
    let (cols, rows) = window_size();
    let url = pty_url(
        &connection.server,
        &args.id,
        cols,
        rows,
        args.command.as_deref(),
    )?;
    let mut request = url
        .as_str()
        .into_client_request()
        .with_context(|| format!("invalid terminal URL {url}"))?;
    if let Some(key) = &connection.api_key {
        let value = HeaderValue::from_str(key)
            .context("the API key contains characters that cannot be sent in a header")?;
        request.headers_mut().insert("x-api-key", value);
    }

    let (socket, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(connected) => connected,
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status();
            let message = response
                .body()
                .as_deref()
                .and_then(|body| serde_json::from_slice::<ErrorBody>(body).ok())
                .map_or_else(|| format!("status {status}"), |body| body.message);
            bail!("cannot open a terminal in sandbox {}: {message}", args.id);
        }
        Err(error) => {
            return Err(anyhow!(error).context(format!(
            "cannot connect to {}; is the server running? Point GITVM_SERVER (or --server) at it",
            connection.server
        )))
        }
    };

    let interactive = std::io::stdin().is_terminal();
    let _raw = if interactive {
        Some(RawMode::enable()?)
    } else {
        None
    };
    let input = spawn_stdin_reader(!interactive);
    bridge(socket, input).await
}

/// Builds `ws://HOST/sandboxes/ID/pty?cols=C&rows=R[&command=…]` from the server's http URL.
fn pty_url(server: &str, id: &str, cols: u16, rows: u16, command: Option<&str>) -> Result<String> {
    let server = server.trim_end_matches('/');
    let base = if let Some(rest) = server.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = server.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        bail!("server URL `{server}` must start with http:// or https://");
    };
    let mut url = format!(
        "{base}/sandboxes/{}/pty?cols={cols}&rows={rows}",
        encode(id)
    );
    if let Some(command) = command {
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

/// Copies stdin to the socket and the socket to stdout until the server's `exit` message.
async fn bridge<S>(
    socket: tokio_tungstenite::WebSocketStream<S>,
    mut input: mpsc::UnboundedReceiver<Vec<u8>>,
) -> Result<ExitCode>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = socket.split();
    let mut window_changes = signal(SignalKind::window_change())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hang_up = signal(SignalKind::hangup())?;
    sink.send(resize_message()).await?;

    let mut input_open = true;
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            chunk = input.recv(), if input_open => match chunk {
                Some(bytes) => sink.send(Message::Binary(bytes.into())).await?,
                // The socket stays open, because output and the exit status are still to come.
                None => input_open = false,
            },
            _ = window_changes.recv() => sink.send(resize_message()).await?,
            _ = terminate.recv() => return Ok(ExitCode::from(128 + libc::SIGTERM as u8)),
            _ = hang_up.recv() => return Ok(ExitCode::from(128 + libc::SIGHUP as u8)),
            message = stream.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    stdout.write_all(&bytes)?;
                    stdout.flush()?;
                }
                Some(Ok(Message::Text(text))) => {
                    if let Some(code) = exit_code(text.as_str())? {
                        let _ = sink.send(Message::Close(None)).await;
                        return Ok(ExitCode::from(code));
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let reason = frame.map(|frame| frame.reason.to_string()).unwrap_or_default();
                    bail!("the server closed the terminal before the shell exited: {reason}");
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(anyhow!(error).context("the terminal connection failed")),
                None => bail!("the terminal connection closed before the shell exited"),
            },
        }
    }
}

/// Returns the exit code of an `exit` message, clamped to 0..=255, or `None` for other types.
fn exit_code(text: &str) -> Result<Option<u8>> {
    let message: serde_json::Value = serde_json::from_str(text)
        .with_context(|| format!("invalid message from the server: {text}"))?;
    if message["type"] != "exit" {
        return Ok(None);
    }
    let code = message["exitCode"]
        .as_i64()
        .with_context(|| format!("exit message without an exitCode: {text}"))?;
    Ok(Some(code.clamp(0, 255) as u8))
}

fn resize_message() -> Message {
    let (cols, rows) = window_size();
    let resize = serde_json::json!({ "type": "resize", "cols": cols, "rows": rows });
    Message::Text(resize.to_string().into())
}

/// Returns the local terminal's (columns, rows), from stdout or else stdin.
fn window_size() -> (u16, u16) {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize to the pointer, which outlives the call.
        let result = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size as *mut libc::winsize) };
        if result == 0 && size.ws_col > 0 && size.ws_row > 0 {
            return (size.ws_col, size.ws_row);
        }
    }
    DEFAULT_SIZE
}

/// Reads stdin on a thread of its own, because a blocking read cannot be cancelled and the
/// runtime waits for its blocking tasks when it shuts down. When `send_eot` is set, end of
/// file is passed on as ^D, so that `echo CMD | gitvm vm shell ID` ends like a script. The ^D
/// is repeated every [`EOT_REPEAT`] until the session ends: one that arrives before the shell
/// has put the terminal in its own mode becomes a NUL byte when the mode changes (Linux n_tty
/// behaviour), and a shell still running an earlier line needs one more.
fn spawn_stdin_reader(send_eot: bool) -> mpsc::UnboundedReceiver<Vec<u8>> {
    let (sender, receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buffer = vec![0u8; STDIN_CHUNK];
        loop {
            match stdin.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    if sender.send(buffer[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::debug!(%error, "reading stdin failed");
                    break;
                }
            }
        }
        if send_eot {
            while sender.send(vec![EOT]).is_ok() {
                std::thread::sleep(EOT_REPEAT);
            }
        }
    });
    receiver
}

/// Raw mode of the terminal on stdin, restored to the saved settings on drop.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enable() -> Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).context("cannot read the terminal mode")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .context("cannot switch the terminal to raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        // TCSAFLUSH drops unread typed input, which was meant for the remote shell.
        if let Err(error) = termios::tcsetattr(stdin.as_fd(), SetArg::TCSAFLUSH, &self.saved) {
            eprintln!(
                "error: cannot restore the terminal mode of fd {}: {error}; run `stty sane`",
                stdin.as_raw_fd()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_url_from_server_url() {
        assert_eq!(
            pty_url("http://127.0.0.1:8080/", "sb-1", 120, 40, None).unwrap(),
            "ws://127.0.0.1:8080/sandboxes/sb-1/pty?cols=120&rows=40"
        );
        assert_eq!(
            pty_url("https://example.test", "a", 80, 24, Some("top -b")).unwrap(),
            "wss://example.test/sandboxes/a/pty?cols=80&rows=24&command=top%20-b"
        );
        assert!(pty_url("ftp://x", "a", 80, 24, None).is_err());
    }

    #[test]
    fn exit_code_of_messages() {
        assert_eq!(
            exit_code(r#"{"type":"exit","exitCode":3,"signal":null}"#).unwrap(),
            Some(3)
        );
        assert_eq!(
            exit_code(r#"{"type":"exit","exitCode":300}"#).unwrap(),
            Some(255)
        );
        assert_eq!(exit_code(r#"{"type":"other"}"#).unwrap(), None);
        assert!(exit_code("not json").is_err());
    }
}
