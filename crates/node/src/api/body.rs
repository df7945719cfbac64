//! Request bodies streamed from a client to an agent.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use gitvm_agent::client::{BoxError, RequestBody};
use http_body_util::BodyExt;
use hyper::body::Body as HttpBody;

/// Wraps a client's request body for the agent client, without buffering it.
pub(super) fn streamed(body: Body) -> RequestBody {
    SyncBody(Mutex::new(body))
        .map_err(|err| Box::new(err) as BoxError)
        .boxed()
}

/// A request body that is `Sync`, as the agent client's body type requires. axum's body is
/// only `Send`; the mutex is never contended because polling takes `&mut self`.
struct SyncBody(Mutex<Body>);

impl HttpBody for SyncBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        let body = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Pin::new(body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .map(|body| body.is_end_stream())
            .unwrap_or(true)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.0
            .lock()
            .map(|body| body.size_hint())
            .unwrap_or_default()
    }
}
