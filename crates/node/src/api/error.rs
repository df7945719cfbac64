//! The API's error response: every failure is an [`ErrorBody`] JSON with a matching status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gitvm_agent::client::AgentError;
use gitvm_proto::ErrorBody;
use gitvm_runtime::RuntimeError;

use crate::sandbox::NodeError;

/// An error response: a status and an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// JSON body.
    pub body: ErrorBody,
}

impl ApiError {
    /// Builds an error response from a status, a code and a message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message),
        }
    }

    /// Builds a 400 `invalid_request` whose message names the invalid value.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(err: NodeError) -> Self {
        let message = err.to_string();
        match err {
            NodeError::InvalidRequest(_) => Self::invalid_request(message),
            NodeError::SandboxNotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, "sandbox_not_found", message)
            }
            NodeError::SnapshotNotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, "snapshot_not_found", message)
            }
            NodeError::InvalidState { .. } => {
                Self::new(StatusCode::CONFLICT, "invalid_state", message)
            }
            NodeError::SandboxFailed { source, .. } => {
                let status = match source {
                    RuntimeError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                Self::new(status, "sandbox_failed", message)
            }
            NodeError::AgentUnreachable { .. } => {
                Self::new(StatusCode::BAD_GATEWAY, "agent_unreachable", message)
            }
            NodeError::Runtime(err) => Self::from(err),
            NodeError::Store(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", message)
            }
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(err: RuntimeError) -> Self {
        let message = err.to_string();
        match err {
            RuntimeError::TemplateNotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, "template_not_found", message)
            }
            RuntimeError::TemplateBuild { .. } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "template_build_failed",
                message,
            ),
            RuntimeError::NotFound {
                what: "snapshot", ..
            } => Self::new(StatusCode::NOT_FOUND, "snapshot_not_found", message),
            // The store has the sandbox but the runtime does not: a state conflict.
            RuntimeError::NotFound { .. } => {
                Self::new(StatusCode::CONFLICT, "invalid_state", message)
            }
            RuntimeError::AgentNotReady { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "sandbox_failed", message)
            }
            RuntimeError::Unavailable { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "runtime_unavailable",
                message,
            ),
            RuntimeError::Backend { .. } | RuntimeError::Io { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "runtime_error", message)
            }
            RuntimeError::Agent(AgentError::Remote { status, body }) => Self {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                body,
            },
            RuntimeError::Agent(_) => Self::new(StatusCode::BAD_GATEWAY, "agent_error", message),
        }
    }
}
