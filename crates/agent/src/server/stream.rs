//! Response body of a streamed exec: one JSON [`ExecEvent`] per line, produced as the command's
//! output is read.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use gitvm_proto::ExecEvent;
use hyper::body::{Body, Frame};

use super::exec::{Output, Running};

/// NDJSON body of [`ExecEvent`]s for one running command: `start`, the output chunks, then
/// `exit`. Polling it pulls one chunk at a time from the command's queue, so HTTP/2 flow
/// control reaches the pipe readers; dropping it kills the command (see [`Running::output`]).
pub(super) struct EventBody {
    start: Option<u32>,
    running: Running,
}

impl EventBody {
    pub(super) fn new(running: Running) -> Self {
        Self {
            start: Some(running.pid),
            running,
        }
    }
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(pid) = self.start.take() {
            return Poll::Ready(Some(Ok(line(&ExecEvent::Start { pid }))));
        }
        let Some(output) = ready!(self.running.output.poll_recv(cx)) else {
            return Poll::Ready(None);
        };
        let event = match output {
            Output::Chunk { stderr, bytes } => ExecEvent::chunk(stderr, &bytes),
            Output::Exit(Ok(finished)) => ExecEvent::Exit {
                exit_code: finished.exit_code,
                signal: finished.signal,
                timed_out: finished.timed_out,
                duration_ms: finished.duration_ms,
            },
            // The status line is already sent, so the error can only end the stream: hyper
            // resets it, and the client sees a body error instead of an `exit` event.
            Output::Exit(Err(error)) => {
                tracing::warn!(pid = self.running.pid, code = %error.body.code, message = %error.body.message, "streamed exec failed");
                return Poll::Ready(Some(Err(io::Error::other(error.body.message))));
            }
        };
        Poll::Ready(Some(Ok(line(&event))))
    }
}

fn line(event: &ExecEvent) -> Frame<Bytes> {
    // ExecEvent has only string keys and plain values, for which serde_json cannot fail.
    let mut bytes = serde_json::to_vec(event).unwrap_or_default();
    bytes.push(b'\n');
    Frame::data(Bytes::from(bytes))
}
