//! The resynchronisation handshake that starts every agent connection.
//!
//! Both sides read in chunks and keep the bytes that follow their handshake line in a
//! [`Rewind`] stream, so HTTP/2 starts on exactly the first byte after the line. A handshake
//! line is recognised anywhere after the last newline, because stale binary bytes from an
//! earlier connection rarely end with one. Only the last [`MAX_HANDSHAKE_LINE`] bytes of a
//! line are kept, which bounds memory while skipping stale input.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use gitvm_proto::agent::{HELLO, MAX_HANDSHAKE_LINE, READY};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::client::AgentError;

/// Client connection preface of HTTP/2 (RFC 9113, section 3.4), the first bytes the host sends
/// after a successful handshake.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Maximum nonce length accepted from the peer, in hex digits. The host sends 32.
const MAX_NONCE_LEN: usize = 64;

/// Bytes requested from the stream per read while handshaking.
const READ_CHUNK: usize = 4096;

/// A stream that first replays bytes read past the handshake line, then reads from the inner
/// stream. Writes go straight to the inner stream.
#[derive(Debug)]
pub struct Rewind<S> {
    pending: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// Wraps `inner` so that reads return `pending` before any new bytes.
    pub fn new(pending: Bytes, inner: S) -> Self {
        Self { pending, inner }
    }

    /// Returns the inner stream and the bytes not yet read from the wrapper.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.pending, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.remaining());
            buf.put_slice(&self.pending[..n]);
            self.pending.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Generates a fresh nonce of 32 lowercase hex digits.
pub fn new_nonce() -> String {
    let value: u128 = rand::random();
    format!("{value:032x}")
}

/// First wait for the agent's ready line before the host sends a newer hello. It is short
/// because a restored microVM's agent loses the first hello to the session it had when the
/// snapshot was taken. Each later wait doubles, up to [`MAX_HELLO_RETRY`], so that a slow agent
/// still replies to the newest hello.
const FIRST_HELLO_RETRY: Duration = Duration::from_millis(50);

/// Maximum wait for a ready line before the next hello.
const MAX_HELLO_RETRY: Duration = Duration::from_secs(2);

/// Zero bytes sent before every hello but the first. A serial port can carry an HTTP/2 session
/// of an earlier host connection that the agent still serves, stopped anywhere in a frame.
/// Zeros fill the rest of a frame of up to 16 KiB, the agent's maximum frame size. Then they
/// form a DATA frame header on stream 0, which HTTP/2 rejects, so the agent ends that session
/// and looks for a hello again.
static RESYNC_FILL: [u8; 2 * (16 * 1024 + 9)] = [0; 2 * (16 * 1024 + 9)];

/// Runs the host side: sends a hello with a fresh nonce and discards input until the agent's
/// ready line carries that nonce. When no such line arrives in time, it sends zero fill and a
/// newer hello, and accepts only the newest nonce from then on. The caller sets the deadline.
pub async fn client_handshake<S>(mut stream: S) -> Result<Rewind<S>, AgentError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut pending = BytesMut::new();
    let mut wait = FIRST_HELLO_RETRY;
    let mut first = true;
    loop {
        let nonce = new_nonce();
        if !first {
            stream.write_all(&RESYNC_FILL).await?;
        }
        first = false;
        stream
            .write_all(format!("{HELLO} {nonce}\n").as_bytes())
            .await?;
        stream.flush().await?;

        let deadline = tokio::time::Instant::now() + wait;
        wait = (wait * 2).min(MAX_HELLO_RETRY);
        loop {
            let reply = tokio::time::timeout_at(
                deadline,
                next_token_line(&mut stream, &mut pending, READY),
            )
            .await;
            match reply {
                Err(_elapsed) => break,
                Ok(Ok(Some(reply))) if reply == nonce => {
                    return Ok(Rewind::new(pending.freeze(), stream));
                }
                Ok(Ok(Some(reply))) => {
                    tracing::debug!(stale_nonce = %reply, "discarded a ready line for an older hello");
                }
                Ok(Ok(None)) => {
                    return Err(AgentError::Handshake(format!(
                        "the agent closed the stream before replying to hello nonce {nonce}; \
                         check that the agent is running"
                    )));
                }
                Ok(Err(error)) => return Err(error.into()),
            }
        }
    }
}

/// Runs the agent side: discards input until a complete hello line, replies with a ready line,
/// and returns once the host starts HTTP/2. A hello followed by anything other than the HTTP/2 preface was
/// stale, so the agent keeps looking for a newer hello.
pub async fn server_handshake<S>(mut stream: S) -> io::Result<Rewind<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut pending = BytesMut::new();
    loop {
        let Some(nonce) = next_token_line(&mut stream, &mut pending, HELLO).await? else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the host closed the stream before sending a hello line",
            ));
        };
        stream
            .write_all(format!("{READY} {nonce}\n").as_bytes())
            .await?;
        stream.flush().await?;

        if starts_with_preface(&mut stream, &mut pending).await? {
            return Ok(Rewind::new(pending.freeze(), stream));
        }
        tracing::debug!(nonce = %nonce, "hello was stale; waiting for a newer one");
    }
}

/// Reads until `pending` either starts with the full HTTP/2 preface (true) or diverges from it
/// (false). Consumes nothing.
async fn starts_with_preface<S>(stream: &mut S, pending: &mut BytesMut) -> io::Result<bool>
where
    S: AsyncRead + Unpin,
{
    loop {
        let n = pending.len().min(HTTP2_PREFACE.len());
        if pending[..n] != HTTP2_PREFACE[..n] {
            return Ok(false);
        }
        if n == HTTP2_PREFACE.len() {
            return Ok(true);
        }
        if read_more(stream, pending).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the host closed the stream after the handshake",
            ));
        }
    }
}

/// Reads until a complete line containing `word`, a space and a hex token, and returns the
/// token; `None` on end of stream. Bytes after that line stay in `pending`.
async fn next_token_line<S>(
    stream: &mut S,
    pending: &mut BytesMut,
    word: &str,
) -> io::Result<Option<String>>
where
    S: AsyncRead + Unpin,
{
    loop {
        while let Some(newline) = pending.iter().position(|&b| b == b'\n') {
            let line = pending.split_to(newline + 1);
            let body = &line[..newline];
            let tail = &body[body.len().saturating_sub(MAX_HANDSHAKE_LINE)..];
            if let Some(token) = parse_token(tail, word) {
                return Ok(Some(token));
            }
        }

        // No newline yet: keep only the bytes that could still end a valid line.
        if pending.len() > MAX_HANDSHAKE_LINE {
            pending.advance(pending.len() - MAX_HANDSHAKE_LINE);
        }
        if read_more(stream, pending).await? == 0 {
            return Ok(None);
        }
    }
}

async fn read_more<S>(stream: &mut S, pending: &mut BytesMut) -> io::Result<usize>
where
    S: AsyncRead + Unpin,
{
    pending.reserve(READ_CHUNK);
    stream.read_buf(pending).await
}

/// Returns the token after the last `word ` in `line` when it is 1 to [`MAX_NONCE_LEN`]
/// lowercase hex digits, ignoring a trailing carriage return.
fn parse_token(line: &[u8], word: &str) -> Option<String> {
    let marker = [word.as_bytes(), b" "].concat();
    let start = line
        .windows(marker.len())
        .rposition(|window| window == marker.as_slice())?;
    let token = &line[start + marker.len()..];
    let token = token.strip_suffix(b"\r").unwrap_or(token);

    let valid = !token.is_empty()
        && token.len() <= MAX_NONCE_LEN
        && token
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    valid.then(|| String::from_utf8_lossy(token).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::duplex;

    /// Runs both sides over an in-memory pipe whose host-to-agent direction starts with
    /// `stale_to_agent` and whose agent-to-host direction starts with `stale_to_host`, then
    /// checks that bytes written after the handshake arrive intact in both directions.
    async fn handshake_with_stale_bytes(stale_to_agent: &[u8], stale_to_host: &[u8]) {
        let (mut host, mut agent) = duplex(64 * 1024);
        host.write_all(stale_to_agent).await.unwrap();
        agent.write_all(stale_to_host).await.unwrap();

        let agent_task = tokio::spawn(async move {
            let mut agent = server_handshake(agent).await.unwrap();
            let mut preface = [0u8; HTTP2_PREFACE.len()];
            agent.read_exact(&mut preface).await.unwrap();
            assert_eq!(&preface[..], HTTP2_PREFACE);
            let mut rest = [0u8; 5];
            agent.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"after");
            agent.write_all(b"agent-bytes").await.unwrap();
            agent
        });

        let mut host = client_handshake(host).await.unwrap();
        host.write_all(HTTP2_PREFACE).await.unwrap();
        host.write_all(b"after").await.unwrap();
        let mut reply = [0u8; 11];
        host.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"agent-bytes");
        agent_task.await.unwrap();
    }

    #[tokio::test]
    async fn handshake_on_clean_stream() {
        handshake_with_stale_bytes(b"", b"").await;
    }

    #[tokio::test]
    async fn handshake_skips_binary_garbage_without_newline() {
        let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let garbage: Vec<u8> = garbage.into_iter().filter(|&b| b != b'\n').collect();
        handshake_with_stale_bytes(&garbage, &garbage).await;
    }

    #[tokio::test]
    async fn handshake_skips_stale_hello_and_ready() {
        let stale_hello = format!("{HELLO} {}\n", "ab".repeat(16));
        let stale_ready = format!("{READY} {}\n", "cd".repeat(16));
        handshake_with_stale_bytes(stale_hello.as_bytes(), stale_ready.as_bytes()).await;
    }

    #[tokio::test]
    async fn handshake_ignores_overlong_hello_line() {
        let overlong = format!("{HELLO} {}\n", "a".repeat(MAX_HANDSHAKE_LINE));
        handshake_with_stale_bytes(overlong.as_bytes(), b"").await;
    }

    #[tokio::test]
    async fn server_handshake_keeps_bytes_after_preface() {
        let (mut host, agent) = duplex(1024);
        let mut sent = format!("junk\n{HELLO} 0123abcd\n").into_bytes();
        sent.extend_from_slice(HTTP2_PREFACE);
        sent.extend_from_slice(b"frame");
        host.write_all(&sent).await.unwrap();

        let agent = server_handshake(agent).await.unwrap();
        let (pending, _) = agent.into_parts();
        assert_eq!(&pending[..HTTP2_PREFACE.len()], HTTP2_PREFACE);
        assert_eq!(&pending[HTTP2_PREFACE.len()..], b"frame");
    }

    /// An agent still serving an old session swallows the first hello, as HTTP/2 would; the
    /// host's zero fill and newer hello get through.
    #[tokio::test]
    async fn host_retries_when_first_hello_is_lost() {
        let (host, mut agent) = duplex(256 * 1024);
        let agent_task = tokio::spawn(async move {
            let mut swallowed = Vec::new();
            while !swallowed.ends_with(b"\n") {
                swallowed.push(agent.read_u8().await.unwrap());
            }
            let mut agent = server_handshake(agent).await.unwrap();
            let mut preface = [0u8; HTTP2_PREFACE.len()];
            agent.read_exact(&mut preface).await.unwrap();
            preface
        });

        let mut host = client_handshake(host).await.unwrap();
        host.write_all(HTTP2_PREFACE).await.unwrap();
        assert_eq!(&agent_task.await.unwrap()[..], HTTP2_PREFACE);
    }

    #[tokio::test]
    async fn client_handshake_fails_on_closed_stream() {
        let (host, agent) = duplex(1024);
        drop(agent);
        let err = client_handshake(host).await.unwrap_err();
        assert!(matches!(err, AgentError::Io(_) | AgentError::Handshake(_)));
    }

    #[test]
    fn parse_token_cases() {
        assert_eq!(parse_token(b"GITVM-HELLO 00ff", HELLO), Some("00ff".into()));
        assert_eq!(
            parse_token(b"\x00\x01GITVM-HELLO 00ff\r", HELLO),
            Some("00ff".into())
        );
        assert_eq!(parse_token(b"GITVM-HELLO 00FF", HELLO), None);
        assert_eq!(parse_token(b"GITVM-HELLO ", HELLO), None);
        assert_eq!(parse_token(b"GITVM-READY 00ff", HELLO), None);
    }

    #[test]
    fn new_nonce_is_32_lowercase_hex() {
        let nonce = new_nonce();
        assert_eq!(nonce.len(), 32);
        assert!(nonce
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(nonce, new_nonce());
    }
}
