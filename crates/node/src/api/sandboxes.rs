use std::str::FromStr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use gitvm_proto::{
    CreateSandboxRequest, ErrorBody, Sandbox, SandboxList, SandboxState, SetTimeoutRequest,
};

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{detached, ApiError, AppState};
use crate::store::SandboxFilter;

/// Prefix of query parameters that filter by a metadata entry: `metadata.team=infra`.
const METADATA_PREFIX: &str = "metadata.";

/// Creates a sandbox and returns it once its agent is ready.
#[utoipa::path(
    post, path = "/sandboxes", tag = "sandboxes",
    request_body = CreateSandboxRequest,
    responses(
        (status = 201, description = "Sandbox running", body = Sandbox),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 404, description = "Template not found", body = ErrorBody),
        (status = 500, description = "Sandbox failed to start", body = ErrorBody),
        (status = 503, description = "Runtime unavailable", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateSandboxRequest>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
    let node = state.node;
    let sandbox = detached(async move { node.create(request).await }).await?;
    Ok((StatusCode::CREATED, Json(sandbox)))
}

/// Lists sandboxes that are not deleted, oldest first; `state=S` and `metadata.KEY=VALUE`
/// filter the list, and `state=deleted` lists the deleted ones.
#[utoipa::path(
    get, path = "/sandboxes", tag = "sandboxes",
    params(
        ("state" = Option<SandboxState>, Query, description = "Only sandboxes in this state"),
    ),
    responses(
        (status = 200, body = SandboxList),
        (status = 400, description = "Invalid filter", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<Vec<(String, String)>>,
) -> Result<Json<SandboxList>, ApiError> {
    let filter = parse_filter(params)?;
    let sandboxes = state.node.list(&filter).await?;
    Ok(Json(SandboxList { sandboxes }))
}

fn parse_filter(params: Vec<(String, String)>) -> Result<SandboxFilter, ApiError> {
    let mut filter = SandboxFilter::default();
    for (name, value) in params {
        if name == "state" {
            if filter.state.is_some() {
                return Err(ApiError::invalid_request(
                    "query parameter `state` is given more than once; pass one state such as `state=running`",
                ));
            }
            let state = SandboxState::from_str(&value).map_err(ApiError::invalid_request)?;
            filter.state = Some(state);
        } else if let Some(key) = name.strip_prefix(METADATA_PREFIX) {
            if key.is_empty() {
                return Err(ApiError::invalid_request(
                    "query parameter `metadata.` has an empty key; filter with `metadata.KEY=VALUE`",
                ));
            }
            filter.metadata.insert(key.to_owned(), value);
        } else {
            return Err(ApiError::invalid_request(format!(
                "unknown query parameter `{name}`; filter with `state=running` or `metadata.KEY=VALUE`"
            )));
        }
    }
    Ok(filter)
}

/// Returns one sandbox, also after it was deleted.
#[utoipa::path(
    get, path = "/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = Sandbox), (status = 404, body = ErrorBody))
)]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(state.node.get(&id).await?))
}

/// Deletes a sandbox; deleting it again succeeds too.
#[utoipa::path(
    delete, path = "/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody))
)]
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let node = state.node;
    detached(async move { node.delete(&id).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts a stopped sandbox; returns once its agent is ready.
#[utoipa::path(
    post, path = "/sandboxes/{id}/start", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = Sandbox), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn start(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let node = state.node;
    Ok(Json(detached(async move { node.start(&id).await }).await?))
}

/// Stops a running or paused sandbox, keeping its filesystem.
#[utoipa::path(
    post, path = "/sandboxes/{id}/stop", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = Sandbox), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn stop(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let node = state.node;
    Ok(Json(detached(async move { node.stop(&id).await }).await?))
}

/// Freezes every process of a running sandbox.
#[utoipa::path(
    post, path = "/sandboxes/{id}/pause", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = Sandbox), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn pause(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let node = state.node;
    Ok(Json(detached(async move { node.pause(&id).await }).await?))
}

/// Thaws a paused sandbox.
#[utoipa::path(
    post, path = "/sandboxes/{id}/resume", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = Sandbox), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub async fn resume(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let node = state.node;
    Ok(Json(detached(async move { node.resume(&id).await }).await?))
}

/// Sets a sandbox's time to live, counted from now; 0 means it never expires.
#[utoipa::path(
    post, path = "/sandboxes/{id}/timeout", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = SetTimeoutRequest,
    responses(
        (status = 200, body = Sandbox),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    )
)]
pub async fn set_timeout(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<SetTimeoutRequest>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(state.node.set_timeout(&id, request.timeout).await?))
}
