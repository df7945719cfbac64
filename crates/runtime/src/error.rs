use gitvm_agent::client::AgentError;

/// Failure of a runtime operation. The node maps each variant to an HTTP status and code.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The template is neither local nor pullable.
    #[error("template `{template}` not found: {reason}")]
    TemplateNotFound {
        /// Template as requested.
        template: String,
        /// Backend message, with the next step.
        reason: String,
    },

    /// Building a template image failed, such as the Debian base image.
    #[error("building template `{template}` failed: {reason}")]
    TemplateBuild {
        /// Template being built.
        template: String,
        /// Reason for the failure, with the tool to install or the step to fix.
        reason: String,
    },

    /// The backend has no resources for this sandbox or snapshot.
    #[error("{what} `{id}` not found in the runtime")]
    NotFound {
        /// `sandbox` or `snapshot`.
        what: &'static str,
        /// The id looked up.
        id: String,
    },

    /// The sandbox started but its agent did not become ready, or its process exited.
    #[error("agent of sandbox `{id}` did not become ready: {reason}")]
    AgentNotReady {
        /// Sandbox id.
        id: String,
        /// Why, with the tail of the sandbox's log when there is one.
        reason: String,
    },

    /// The backend cannot run on this node, such as Docker with no daemon.
    #[error("runtime `{runtime}` is unavailable: {reason}")]
    Unavailable {
        /// Runtime name.
        runtime: &'static str,
        /// Missing component, with how to install or start it.
        reason: String,
    },

    /// The backend rejected a request; the message is the backend's.
    #[error("{runtime} failed to {operation} `{id}`: {message}")]
    Backend {
        /// Runtime name.
        runtime: &'static str,
        /// Operation that failed, such as `pause`.
        operation: &'static str,
        /// Sandbox or snapshot id.
        id: String,
        /// The backend's message.
        message: String,
    },

    /// Talking to the agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),

    /// Local file work failed, such as preparing a sandbox's directory.
    #[error("{context}: {source}")]
    Io {
        /// Operation in progress, with the path.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Wraps the error of `action` (such as `reading`) on `path`.
pub(crate) fn path_io_error(
    action: &str,
    path: &std::path::Path,
    source: std::io::Error,
) -> RuntimeError {
    RuntimeError::Io {
        context: format!("{action} {}", path.display()),
        source,
    }
}
