//! The sandbox state machine: which operation each state allows and the message of each rejection.

mod common;

use gitvm_node::sandbox::transition::{check, Operation};
use gitvm_node::sandbox::NodeError;
use gitvm_proto::SandboxState;

use common::record;

const ALL_OPERATIONS: [Operation; 7] = [
    Operation::Start,
    Operation::Stop,
    Operation::Pause,
    Operation::Resume,
    Operation::Exec,
    Operation::Files,
    Operation::Snapshot,
];

fn allowed(state: SandboxState) -> Vec<Operation> {
    let sandbox = record("sb-machine00001", state, "2026-01-01T00:00:00Z", None).sandbox;
    ALL_OPERATIONS
        .into_iter()
        .filter(|op| check(&sandbox, *op).is_ok())
        .collect()
}

fn rejection(state: SandboxState, operation: Operation) -> String {
    let mut sandbox = record("sb-machine00001", state, "2026-01-01T00:00:00Z", None).sandbox;
    sandbox.error = (state == SandboxState::Error).then(|| "agent did not become ready".to_owned());
    match check(&sandbox, operation) {
        Err(NodeError::InvalidState {
            id,
            state: got,
            message,
        }) => {
            assert_eq!(id, "sb-machine00001");
            assert_eq!(got, state);
            message
        }
        other => panic!("{operation:?} in {state} returned {other:?}"),
    }
}

#[test]
fn each_state_allows_exactly_its_operations() {
    use Operation::*;
    assert_eq!(
        allowed(SandboxState::Running),
        [Stop, Pause, Exec, Files, Snapshot]
    );
    assert_eq!(allowed(SandboxState::Paused), [Stop, Resume, Snapshot]);
    assert_eq!(allowed(SandboxState::Stopped), [Start, Snapshot]);
    assert_eq!(allowed(SandboxState::Creating), []);
    assert_eq!(allowed(SandboxState::Error), []);
    assert_eq!(allowed(SandboxState::Deleted), []);
}

#[test]
fn rejections_name_next_step() {
    let id = "sb-machine00001";
    let cases = [
        (SandboxState::Paused, Operation::Exec, format!("sandbox {id} is paused; resume it first")),
        (SandboxState::Paused, Operation::Files, format!("sandbox {id} is paused; resume it first")),
        (SandboxState::Paused, Operation::Start, format!("sandbox {id} is paused; resume it first")),
        (SandboxState::Paused, Operation::Pause, format!("sandbox {id} is already paused")),
        (SandboxState::Stopped, Operation::Exec, format!("sandbox {id} is stopped; start it first")),
        (SandboxState::Stopped, Operation::Resume, format!("sandbox {id} is stopped; start it first")),
        (SandboxState::Stopped, Operation::Stop, format!("sandbox {id} is already stopped")),
        (SandboxState::Running, Operation::Start, format!("sandbox {id} is already running")),
        (SandboxState::Running, Operation::Resume, format!("sandbox {id} is already running")),
        (
            SandboxState::Creating,
            Operation::Exec,
            format!("sandbox {id} is still being created; retry once it is running"),
        ),
        (
            SandboxState::Error,
            Operation::Start,
            format!(
                "sandbox {id} is in state error (agent did not become ready); only delete is allowed, so delete it and create a new one"
            ),
        ),
        (SandboxState::Deleted, Operation::Snapshot, format!("sandbox {id} is deleted; create a new one")),
    ];

    for (state, operation, message) in cases {
        assert_eq!(
            rejection(state, operation),
            message,
            "{operation:?} in {state}"
        );
    }
}
