use axum::extract::State;
use axum::Json;
use gitvm_proto::{ErrorBody, ExecRequest, ExecResult};

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
