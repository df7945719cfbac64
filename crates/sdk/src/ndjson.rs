//! Decoding of newline-delimited JSON response bodies into [`ExecEvent`]s.

use bytes::{Buf, BytesMut};
use futures_util::{Stream, StreamExt};
use gitvm_proto::ExecEvent;

use crate::Error;

/// Maximum length of one event line; the agent sends chunks of at most 32 KiB, which base64
/// grows by a third.
const MAX_LINE: usize = 4 * 1024 * 1024;

/// Turns a streamed NDJSON response into events, one per line, as the lines arrive.
pub(crate) fn events(response: reqwest::Response) -> impl Stream<Item = Result<ExecEvent, Error>> {
    let url = response.url().to_string();
    let body = response.bytes_stream().boxed();
    futures_util::stream::unfold(
        (body, BytesMut::new(), url, false),
        |(mut body, mut buffer, url, mut done)| async move {
            loop {
                if let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                    let line = buffer.split_to(end);
                    buffer.advance(1);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let event =
                        serde_json::from_slice::<ExecEvent>(&line).map_err(|err| Error::Decode {
                            url: url.clone(),
                            message: format!("invalid event line: {err}"),
                        });
                    return Some((event, (body, buffer, url, done)));
                }
                if done {
                    return None;
                }
                if buffer.len() > MAX_LINE {
                    let error = Error::Decode {
                        url: url.clone(),
                        message: format!("an event line is longer than {MAX_LINE} bytes"),
                    };
                    return Some((Err(error), (body, BytesMut::new(), url, true)));
                }
                match body.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                    Some(Err(source)) => {
                        let error = Error::StreamBroken {
                            url: url.clone(),
                            cause: innermost_cause(&source),
                        };
                        return Some((Err(error), (body, BytesMut::new(), url, true)));
                    }
                    None => {
                        // A last line without its newline still counts.
                        done = true;
                        if !buffer.is_empty() {
                            buffer.extend_from_slice(b"\n");
                        }
                    }
                }
            }
        },
    )
}

/// Returns the message of the innermost error in `error`'s source chain, which names the actual
/// transport failure.
fn innermost_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}
