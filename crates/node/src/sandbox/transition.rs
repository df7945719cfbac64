//! The operations each sandbox state allows, and the 409 message for the others.

use gitvm_proto::{Sandbox, SandboxState};

use super::NodeError;

/// An operation that needs the sandbox in a particular state. Delete is allowed in every state
/// and so is not listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Start a stopped sandbox.
    Start,
    /// Stop a running or paused sandbox.
    Stop,
    /// Freeze a running sandbox.
    Pause,
    /// Thaw a paused sandbox.
    Resume,
    /// Run a command.
    Exec,
    /// Read, write, list or remove files.
    Files,
    /// Capture a snapshot.
    Snapshot,
    /// Change the time to live.
    SetTimeout,
}

impl Operation {
    /// States in which the operation is allowed.
    pub fn allowed_states(self) -> &'static [SandboxState] {
        use SandboxState::*;
        match self {
            Self::Start => &[Stopped],
            Self::Stop => &[Running, Paused],
            Self::Pause => &[Running],
            Self::Resume => &[Paused],
            Self::Exec | Self::Files => &[Running],
            Self::Snapshot => &[Running, Paused, Stopped],
            Self::SetTimeout => &[Creating, Running, Paused, Stopped, Error],
        }
    }
}

/// Checks that `sandbox` is in a state that allows `operation`; otherwise returns
/// [`NodeError::InvalidState`] with a message that names the step to take first.
pub fn check(sandbox: &Sandbox, operation: Operation) -> Result<(), NodeError> {
    let state = sandbox.state;
    if operation.allowed_states().contains(&state) {
        return Ok(());
    }

    let id = &sandbox.id;
    use Operation::*;
    use SandboxState::*;
    let message = match (state, operation) {
        (Running, _) => format!("sandbox {id} is already running"),
        (Paused, Pause) => format!("sandbox {id} is already paused"),
        (Paused, _) => format!("sandbox {id} is paused; resume it first"),
        (Stopped, Stop) => format!("sandbox {id} is already stopped"),
        (Stopped, _) => format!("sandbox {id} is stopped; start it first"),
        (Creating, _) => format!("sandbox {id} is still being created; retry once it is running"),
        (Error, _) => format!(
            "sandbox {id} is in state error ({}); only delete is allowed, so delete it and create a new one",
            sandbox.error.as_deref().unwrap_or("no reason recorded")
        ),
        (Deleted, _) => format!("sandbox {id} is deleted; create a new one"),
    };
    Err(NodeError::InvalidState {
        id: id.clone(),
        state,
        message,
    })
}
