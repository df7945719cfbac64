//! The node REST API: an axum router over a [`Node`]. Errors are JSON [`ErrorBody`]s, and the
//! OpenAPI document at `/openapi.json` is generated from the handlers' annotations.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use gitvm_proto::ErrorBody;
use utoipa::OpenApi;

use crate::sandbox::{Node, NodeError};

mod auth;
mod body;
pub mod error;
mod exec;
pub mod extract;
mod files;
mod processes;
mod pty;
mod sandboxes;
mod snapshots;
mod system;

pub use error::ApiError;

/// Maximum size of a JSON request body, in bytes. File uploads stream and have no limit.
pub const JSON_BODY_LIMIT: usize = 1024 * 1024;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The node engine.
    pub node: Arc<Node>,
    /// Key clients must present; `None` leaves the API open.
    pub api_key: Option<Arc<str>>,
}

/// OpenAPI description of the node API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "gitvm node API",
        description = "Create sandboxes, run commands in them, move files, snapshot them."
    ),
    paths(
        system::health,
        sandboxes::create,
        sandboxes::list,
        sandboxes::get,
        sandboxes::delete,
        sandboxes::start,
        sandboxes::stop,
        sandboxes::pause,
        sandboxes::resume,
        sandboxes::set_timeout,
        exec::exec,
        exec::exec_stream,
        pty::pty,
        files::read,
        files::write,
        files::remove,
        files::list,
        files::mkdir,
        processes::start,
        processes::list,
        processes::get,
        processes::output,
        processes::write_stdin,
        processes::close_stdin,
        processes::signal,
        processes::kill,
        processes::wait,
        snapshots::create,
        snapshots::list,
        snapshots::delete,
        snapshots::restore,
    ),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;

/// Builds the router with every route, the API key check, the JSON body limit and the request
/// counters.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(system::health))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(system::openapi))
        .route("/sandboxes", post(sandboxes::create).get(sandboxes::list))
        .route(
            "/sandboxes/{id}",
            get(sandboxes::get).delete(sandboxes::delete),
        )
        .route("/sandboxes/{id}/start", post(sandboxes::start))
        .route("/sandboxes/{id}/stop", post(sandboxes::stop))
        .route("/sandboxes/{id}/pause", post(sandboxes::pause))
        .route("/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/sandboxes/{id}/timeout", post(sandboxes::set_timeout))
        .route("/sandboxes/{id}/exec", post(exec::exec))
        .route("/sandboxes/{id}/exec/stream", post(exec::exec_stream))
        .route("/sandboxes/{id}/pty", get(pty::pty))
        .route(
            "/sandboxes/{id}/files",
            get(files::read).put(files::write).delete(files::remove),
        )
        .route("/sandboxes/{id}/files/list", get(files::list))
        .route("/sandboxes/{id}/files/mkdir", post(files::mkdir))
        .route(
            "/sandboxes/{id}/processes",
            post(processes::start).get(processes::list),
        )
        .route("/sandboxes/{id}/processes/{selector}", get(processes::get))
        .route(
            "/sandboxes/{id}/processes/{selector}/output",
            get(processes::output),
        )
        .route(
            "/sandboxes/{id}/processes/{selector}/stdin",
            post(processes::write_stdin),
        )
        .route(
            "/sandboxes/{id}/processes/{selector}/stdin/close",
            post(processes::close_stdin),
        )
        .route(
            "/sandboxes/{id}/processes/{selector}/signal",
            post(processes::signal),
        )
        .route(
            "/sandboxes/{id}/processes/{selector}/kill",
            post(processes::kill),
        )
        .route(
            "/sandboxes/{id}/processes/{selector}/wait",
            post(processes::wait),
        )
        .route("/sandboxes/{id}/snapshot", post(snapshots::create))
        .route("/snapshots", get(snapshots::list))
        .route("/snapshots/{id}", delete(snapshots::delete))
        .route("/snapshots/{id}/restore", post(snapshots::restore))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state)
}

/// Runs a lifecycle operation on its own task, so that it runs to the end even when the client
/// disconnects. hyper drops a handler's future on disconnect, and a create dropped halfway would
/// leave a row in `creating` and a container behind.
async fn detached<T: Send + 'static>(
    operation: impl Future<Output = Result<T, NodeError>> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(operation).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(err) => {
            tracing::error!(error = %err, "sandbox operation task failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                format!("the operation failed unexpectedly: {err}; see the node's log"),
            ))
        }
    }
}

async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        format!(
            "no route for {method} {}; the routes are listed at GET /openapi.json",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "method {method} is not allowed on {}; the routes are listed at GET /openapi.json",
            uri.path()
        ),
    )
}

/// Counts every response by method, route pattern and status for `/metrics`.
async fn count_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    // Route patterns rather than paths keep the label set small.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());

    let response = next.run(req).await;
    state
        .node
        .metrics()
        .record_http(method.as_str(), &route, response.status().as_u16());
    response
}
