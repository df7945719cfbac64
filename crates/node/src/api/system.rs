use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use gitvm_proto::Health;
use utoipa::OpenApi;

use super::{ApiDoc, ApiError, AppState};

/// Reports that the node serves requests, and which runtimes it has. Needs no API key.
#[utoipa::path(get, path = "/health", tag = "system", responses((status = 200, body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        runtimes: state
            .node
            .runtimes()
            .names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
    })
}

/// Renders the node's metrics in the Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let counts = state
        .node
        .store()
        .count_by_state()
        .await
        .map_err(crate::sandbox::NodeError::from)?;
    let text = state.node.metrics().render(&counts);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

/// Returns the OpenAPI document of this API.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
