//! Requests at the kernel's limits, against a real agent server over a real Unix socket:
//! oversized exec arguments, over-long paths and file systems that refuse new entries.

mod common;

use std::collections::BTreeMap;

use common::TestAgent;
use gitvm_agent::client::AgentError;
use gitvm_proto::ExecRequest;

fn remote(error: AgentError) -> (u16, String, String) {
    match error {
        AgentError::Remote { status, body } => (status, body.code, body.message),
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test]
async fn exec_env_over_arg_limit_is_400() {
    let agent = TestAgent::start().await;
    let request = ExecRequest {
        command: "true".into(),
        env: BTreeMap::from([("BIG".to_owned(), "x".repeat(200_000))]),
        ..ExecRequest::default()
    };

    let (status, code, message) = remote(agent.client.exec(&request).await.unwrap_err());

    assert_eq!(status, 400);
    assert_eq!(code, "invalid_request");
    assert!(
        message.starts_with(
            "cannot start the command: its command line and environment exceed the kernel's limits"
        ),
        "{message}"
    );
}

#[tokio::test]
async fn exec_command_with_nul_is_400() {
    let agent = TestAgent::start().await;
    let request = ExecRequest {
        command: "echo a\0b".into(),
        ..ExecRequest::default()
    };

    let (status, code, message) = remote(agent.client.exec(&request).await.unwrap_err());

    assert_eq!(status, 400);
    assert_eq!(code, "invalid_request");
    assert_eq!(
        message,
        "command contains a NUL byte, which no command line can carry; remove it"
    );
}

#[tokio::test]
async fn path_over_path_max_is_400_shortened() {
    let agent = TestAgent::start().await;
    let path = format!("/{}", "a".repeat(4999));

    let (status, code, message) = remote(agent.client.list_files(&path).await.unwrap_err());

    assert_eq!(status, 400);
    assert_eq!(code, "invalid_path");
    assert_eq!(
        message,
        format!(
            "path `/{}…` (5000 bytes) is longer than 4095 bytes, the limit of Linux (PATH_MAX 4096 with the terminating NUL)",
            "a".repeat(99)
        )
    );
}

#[tokio::test]
async fn mkdir_in_procfs_is_not_reported_missing() {
    let agent = TestAgent::start().await;

    // procfs returns ENOENT to mkdir in its root, although /proc exists.
    let (status, code, message) = remote(
        agent
            .client
            .make_dir("/proc/gitvm-test-newdir")
            .await
            .unwrap_err(),
    );

    assert_eq!(status, 403);
    assert_eq!(code, "not_supported");
    assert_eq!(
        message,
        "cannot create directory `/proc/gitvm-test-newdir`: the file system of `/proc` does not allow new entries there"
    );
}

#[tokio::test]
async fn missing_file_still_reported_missing() {
    let agent = TestAgent::start().await;
    let path = agent.path("no/such/file");

    let (status, code, message) = remote(agent.client.read_file(&path).await.unwrap_err());

    assert_eq!(status, 404);
    assert_eq!(code, "not_found");
    assert_eq!(message, format!("file `{path}` does not exist"));
}
