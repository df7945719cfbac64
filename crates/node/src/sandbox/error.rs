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

    /// The sandbox's container runs, but its agent does not accept connections or requests.
    #[error("cannot reach the agent of sandbox {id}: {reason}; retry, or restart it with `gitvm vm stop {id}` and `gitvm vm start {id}`")]
    AgentUnreachable {
        /// Sandbox id.
        id: String,
        /// Cause of the connection failure, without host paths.
        reason: String,
    },

    /// The runtime failed; the sandbox keeps its state.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),

    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
