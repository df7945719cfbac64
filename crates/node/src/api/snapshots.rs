use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use gitvm_proto::{ErrorBody, RestoreRequest, Sandbox, Snapshot, SnapshotList};

use super::extract::{ApiPath, OptionalJson};
use super::{detached, ApiError, AppState};

/// Captures a snapshot of a running, paused or stopped sandbox.
#[utoipa::path(
    post, path = "/sandboxes/{id}/snapshot", tag = "snapshots",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 201, body = Snapshot),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Snapshot>), ApiError> {
    let node = state.node;
    let snapshot = detached(async move { node.snapshot(&id).await }).await?;
    Ok((StatusCode::CREATED, Json(snapshot)))
}

/// Lists every snapshot, oldest first.
#[utoipa::path(get, path = "/snapshots", tag = "snapshots", responses((status = 200, body = SnapshotList)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<SnapshotList>, ApiError> {
    let snapshots = state.node.list_snapshots().await?;
    Ok(Json(SnapshotList { snapshots }))
}

/// Deletes a snapshot and its data.
#[utoipa::path(
    delete, path = "/snapshots/{id}", tag = "snapshots",
    params(("id" = String, Path, description = "Snapshot id")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody))
)]
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let node = state.node;
    detached(async move { node.delete_snapshot(&id).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates a new sandbox from a snapshot; the body is optional.
#[utoipa::path(
    post, path = "/snapshots/{id}/restore", tag = "snapshots",
    params(("id" = String, Path, description = "Snapshot id")),
    request_body = Option<RestoreRequest>,
    responses(
        (status = 201, body = Sandbox),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody),
    )
)]
pub async fn restore(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    OptionalJson(request): OptionalJson<RestoreRequest>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
    let node = state.node;
    let sandbox = detached(async move { node.restore(&id, request).await }).await?;
    Ok((StatusCode::CREATED, Json(sandbox)))
}
