use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use gitvm_proto::{ErrorBody, ExecEvent, ExecRequest, ExecResult, NDJSON};

use super::extract::{ApiJson, ApiPath};
use super::{ApiError, AppState};

/// Runs a command in a running sandbox and returns its exit code and output.
#[utoipa::path(
    post, path = "/sandboxes/{id}/exec", tag = "exec",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ExecRequest,
    responses(
        (status = 200, body = ExecResult),
        (status = 400, description = "Invalid request, such as a missing working directory", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Sandbox not running", body = ErrorBody),
    )
)]
pub async fn exec(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<ExecRequest>,
) -> Result<Json<ExecResult>, ApiError> {
    Ok(Json(state.node.exec(&id, request).await?))
}

/// Runs a command in a running sandbox and streams its events as they happen: one JSON
/// `ExecEvent` per line (`start`, base64 `stdout` and `stderr` chunks, then `exit`). Errors
/// are returned as JSON before the stream starts. Closing the connection kills the command.
#[utoipa::path(
    post, path = "/sandboxes/{id}/exec/stream", tag = "exec",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ExecRequest,
    responses(
        (status = 200, description = "One JSON event per line", body = ExecEvent, content_type = "application/x-ndjson"),
        (status = 400, description = "Invalid request, such as a missing working directory", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Sandbox not running", body = ErrorBody),
    )
)]
pub async fn exec_stream(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<ExecRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let body = state.node.exec_stream(&id, request).await?;
    Ok(([(header::CONTENT_TYPE, NDJSON)], Body::new(body)))
}
