use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use gitvm_proto::{ErrorBody, FileList};
use serde::Deserialize;

use super::extract::{ApiPath, ApiQuery};
use super::{ApiError, AppState};

/// Query of every file route.
#[derive(Debug, Deserialize)]
pub struct FileQuery {
    /// Absolute path inside the sandbox.
    path: Option<String>,
}

impl FileQuery {
    fn require_path(self) -> Result<String, ApiError> {
        match self.path {
            Some(path) if !path.is_empty() => Ok(path),
            _ => Err(ApiError::invalid_request(
                "missing query parameter `path`; pass the absolute path inside the sandbox, such as ?path=/tmp/a.txt",
            )),
        }
    }
}

/// Streams a file's bytes out of a running sandbox.
#[utoipa::path(
    get, path = "/sandboxes/{id}/files", tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Absolute path inside the sandbox"),
    ),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    )
)]
pub async fn read(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let path = query.require_path()?;
    let body = state.node.read_file(&id, &path).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::new(body),
    ))
}

/// Streams the request body into a file in a running sandbox, creating parent directories.
#[utoipa::path(
    put, path = "/sandboxes/{id}/files", tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Absolute path inside the sandbox"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Written"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    )
)]
pub async fn write(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let path = query.require_path()?;
    let body = super::body::streamed(body);
    state.node.write_file(&id, &path, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a file, or a directory with everything in it.
#[utoipa::path(
    delete, path = "/sandboxes/{id}/files", tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Absolute path inside the sandbox"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    )
)]
pub async fn remove(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
) -> Result<StatusCode, ApiError> {
    let path = query.require_path()?;
    state.node.remove_file(&id, &path).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists a directory in a running sandbox.
#[utoipa::path(
    get, path = "/sandboxes/{id}/files/list", tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Absolute path of the directory inside the sandbox"),
    ),
    responses(
        (status = 200, body = FileList),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
) -> Result<Json<FileList>, ApiError> {
    let path = query.require_path()?;
    Ok(Json(state.node.list_files(&id, &path).await?))
}

/// Creates a directory and its parents, like `mkdir -p`.
#[utoipa::path(
    post, path = "/sandboxes/{id}/files/mkdir", tag = "files",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Absolute path of the directory inside the sandbox"),
    ),
    responses(
        (status = 204, description = "Created"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    )
)]
pub async fn mkdir(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
) -> Result<StatusCode, ApiError> {
    let path = query.require_path()?;
    state.node.make_dir(&id, &path).await?;
    Ok(StatusCode::NO_CONTENT)
}
