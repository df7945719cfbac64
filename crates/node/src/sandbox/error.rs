use gitvm_proto::SandboxState;
use gitvm_runtime::RuntimeError;

use crate::store::StoreError;

/// Failure of a sandbox or snapshot operation. The API maps each variant to a status and code.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A request field or parameter is invalid; the message names it and the allowed values.
    #[error("{0}")]
    InvalidRequest(String),

    /// No sandbox has this id.
    #[error("sandbox `{id}` not found; list sandboxes with GET /sandboxes")]
    SandboxNotFound {
        /// The id looked up.
        id: String,
    },

    /// No snapshot has this id.
    #[error("snapshot `{id}` not found; list snapshots with GET /snapshots")]
    SnapshotNotFound {
        /// The id looked up.
        id: String,
    },

    /// The sandbox's state does not allow the operation.
    #[error("{message}")]
    InvalidState {
        /// Sandbox id.
        id: String,
        /// State the sandbox is in.
        state: SandboxState,
        /// Description of the conflict and the step to take first.
        message: String,
    },

    /// Creating or restoring a sandbox failed; the sandbox is left in state `error`.
    #[error(
        "sandbox {id} failed to {operation}: {source}; it is now in state error, remove it with DELETE /sandboxes/{id}"
    )]
    SandboxFailed {
        /// Sandbox id.
        id: String,
        /// Operation that failed, such as `create`.
        operation: &'static str,
        /// The runtime's error.
        source: RuntimeError,
    },

    /// The runtime failed; the sandbox keeps its state.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),

    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
