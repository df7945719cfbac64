//! Background process routes: `/sandboxes/{id}/processes...`. The `{selector}` path parameter
//! is a process's pid inside the sandbox or its tag.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use gitvm_proto::{
    ErrorBody, ExecEvent, ProcessInfo, ProcessList, SignalRequest, StartProcessRequest, NDJSON,
};
use serde::Deserialize;

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{ApiError, AppState};

/// Query of `POST /sandboxes/{id}/processes/{selector}/wait`.
#[derive(Debug, Deserialize)]
pub struct WaitQuery {
    /// Seconds to wait at most; no limit when absent or 0.
    timeout: Option<f64>,
}

/// Starts a command in the background in a running sandbox. It keeps running after the
/// response; follow its output, write to its stdin, signal it or wait for it with the other
/// process routes.
#[utoipa::path(
    post, path = "/sandboxes/{id}/processes", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = StartProcessRequest,
    responses(
        (status = 201, body = ProcessInfo),
        (status = 400, description = "Invalid request, such as a missing working directory or an invalid tag", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Sandbox not running, or the tag is used by a running process (`tag_in_use`)", body = ErrorBody),
    )
)]
pub async fn start(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<StartProcessRequest>,
) -> Result<(StatusCode, Json<ProcessInfo>), ApiError> {
    let info = state.node.start_process(&id, request).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// Lists the sandbox's running background processes and its last 100 exited ones.
#[utoipa::path(
    get, path = "/sandboxes/{id}/processes", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, body = ProcessList),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Sandbox not running", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ProcessList>, ApiError> {
    Ok(Json(state.node.list_processes(&id).await?))
}

/// Fetches one background process. A tag selects the running process with that tag, else the
/// most recently started exited one.
#[utoipa::path(
    get, path = "/sandboxes/{id}/processes/{selector}", tag = "processes",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("selector" = String, Path, description = "Pid inside the sandbox, or tag"),
    ),
    responses(
        (status = 200, body = ProcessInfo),
        (status = 404, description = "No such sandbox, or no process with this pid or tag (`process_not_found`)", body = ErrorBody),
        (status = 409, description = "Sandbox not running", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    ApiPath((id, selector)): ApiPath<(String, String)>,
) -> Result<Json<ProcessInfo>, ApiError> {
    Ok(Json(state.node.process(&id, &selector).await?))
}

/// Follows a background process's output: one JSON `ExecEvent` per line, `start`, the most
/// recent 1 MiB of output, live output as it comes, then `exit` (at once after the recent
/// output if the process already exited). Several followers may connect at once, and closing
/// the connection leaves the process running. A follower that reads more than 64 chunks
/// behind the process loses the chunks it missed.
#[utoipa::path(
    get, path = "/sandboxes/{id}/processes/{selector}/output", tag = "processes",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("selector" = String, Path, description = "Pid inside the sandbox, or tag"),
    ),
    responses(
        (status = 200, description = "One JSON event per line", body = ExecEvent, content_type = "application/x-ndjson"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Sandbox not running", body = ErrorBody),
    )
)]
pub async fn output(
    State(state): State<AppState>,
    ApiPath((id, selector)): ApiPath<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let body = state.node.process_output(&id, &selector).await?;
    Ok(([(header::CONTENT_TYPE, NDJSON)], Body::new(body)))
}

/// Streams the request body into a background process's stdin.
#[utoipa::path(
    post, path = "/sandboxes/{id}/processes/{selector}/stdin", tag = "processes",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("selector" = String, Path, description = "Pid inside the sandbox, or tag"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Written"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Sandbox not running, or stdin closed (`stdin_closed`)", body = ErrorBody),
    )
)]
pub async fn write_stdin(
    State(state): State<AppState>,
    ApiPath((id, selector)): ApiPath<(String, String)>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let body = super::body::streamed(body);
    state.node.write_process_stdin(&id, &selector, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Closes a background process's stdin, so that it reads end of file.
#[utoipa::path(
    post, path = "/sandboxes/{id}/processes/{selector}/stdin/close", tag = "processes",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("selector" = String, Path, description = "Pid inside the sandbox, or tag"),
    ),
    responses(
        (status = 204, description = "Closed"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Sandbox not running, or stdin already closed (`stdin_closed`)", body = ErrorBody),
    )
)]
pub async fn close_stdin(
    State(state): State<AppState>,
    ApiPath((id, selector)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.node.close_process_stdin(&id, &selector).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends a signal to a background process's process group: the shell and every child it
/// started, unless a child moved to a group of its own.
#[utoipa::path(
    post, path = "/sandboxes/{id}/processes/{selector}/signal", tag = "processes",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("selector" = String, Path, description = "Pid inside the sandbox, or tag"),
    ),
    request_body = SignalRequest,
    responses(
        (status = 204, description = "Sent"),
        (status = 400, description = "Unknown signal (`invalid_signal`)", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Sandbox not running, or the process and its group are gone (`process_exited`)", body = ErrorBody),
    )
)]
pub async fn signal(
    State(state): State<AppState>,
    ApiPath((id, selector)): ApiPath<(String, String)>,
    ApiJson(request): ApiJson<SignalRequest>,
) -> Result<StatusCode, ApiError> {
    state.node.signal_process(&id, &selector, request).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Kills a background process's process group with SIGKILL. A group that is already gone
/// counts as killed.
#[utoipa::path(
    post, path = "/sandboxes/{id}/processes/{selector}/kill", tag = "processes",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("selector" = String, Path, description = "Pid inside the sandbox, or tag"),
    ),
    responses(
        (status = 204, description = "Killed"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Sandbox not running", body = ErrorBody),
    )
)]
pub async fn kill(
    State(state): State<AppState>,
    ApiPath((id, selector)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.node.kill_process(&id, &selector).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Waits for a background process to exit and returns its info. When the timeout elapses
/// first, the response is still 200, with `state` `running`.
#[utoipa::path(
    post, path = "/sandboxes/{id}/processes/{selector}/wait", tag = "processes",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("selector" = String, Path, description = "Pid inside the sandbox, or tag"),
        ("timeout" = Option<f64>, Query, description = "Seconds to wait at most; no limit when absent or 0"),
    ),
    responses(
        (status = 200, body = ProcessInfo),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Sandbox not running", body = ErrorBody),
    )
)]
pub async fn wait(
    State(state): State<AppState>,
    ApiPath((id, selector)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<ProcessInfo>, ApiError> {
    Ok(Json(
        state
            .node
            .wait_process(&id, &selector, query.timeout)
            .await?,
    ))
}
