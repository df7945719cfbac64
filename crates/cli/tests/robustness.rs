//! The server against misuse that used to break it: a second server on the same data
//! directory, an agent that exits inside a running sandbox, and files on file systems that
//! reject writes. Each test runs the real `gitvm` binary against the real dockerd.

mod common;

use std::process::Command;

use common::Server;
use gitvm_sdk::{ErrorBody, SandboxState};

/// Extracts the status and body of an SDK error, and panics on any other result.
fn api_error_body<T: std::fmt::Debug>(result: Result<T, gitvm_sdk::Error>) -> (u16, ErrorBody) {
    match result {
        Err(gitvm_sdk::Error::Api { status, body }) => (status, body),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn second_server_on_same_data_dir_fails() {
    let first = Server::start();
    let sandbox = first.create().await;
    assert_eq!(first.exec(&sandbox.id, "echo one").await.stdout, "one\n");

    let second = Command::new(common::gitvm_bin())
        .args(["server", "start", "--port", "0", "--data-dir"])
        .arg(&first.data_dir)
        .output()
        .expect("run a second gitvm server");

    assert!(!second.status.success(), "the second server must not start");
    assert!(
        second.stdout.is_empty(),
        "the second server must not listen"
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    let lock_text = std::fs::read_to_string(first.data_dir.join("gitvm.lock")).unwrap();
    let expected = format!(
        "data directory {} is in use by another gitvm server (pid {}); stop it or pass another --data-dir",
        first.data_dir.display(),
        lock_text.trim()
    );
    assert!(stderr.contains(&expected), "{stderr}");

    let after = first.client.get_sandbox(&sandbox.id).await.unwrap();
    assert_eq!(after.state, SandboxState::Running);
    assert_eq!(common::containers_labelled(&sandbox.id).len(), 1);
    assert_eq!(first.exec(&sandbox.id, "echo two").await.stdout, "two\n");
}

#[tokio::test]
async fn kill_term_1_inside_sandbox_is_ignored() {
    let server = Server::start();
    let sandbox = server.create().await;

    let killed = server.exec(&sandbox.id, "kill -TERM 1; echo sent").await;
    assert_eq!(killed.stdout, "sent\n");
    // Give a shutdown, if one started, the time to stop the container.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let after = server.exec(&sandbox.id, "echo alive").await;
    assert_eq!(after.stdout, "alive\n");
    let state = server.client.get_sandbox(&sandbox.id).await.unwrap().state;
    assert_eq!(state, SandboxState::Running);
}

#[tokio::test]
async fn exited_container_is_recorded_stopped() {
    let server = Server::start();
    let sandbox = server.create().await;
    assert_eq!(server.exec(&sandbox.id, "echo up").await.stdout, "up\n");

    let killed = Command::new("docker")
        .args(["kill", &format!("gitvm-{}", sandbox.id)])
        .output()
        .expect("run docker kill");
    assert!(
        killed.status.success(),
        "{}",
        String::from_utf8_lossy(&killed.stderr)
    );

    let request = gitvm_sdk::ExecRequest {
        command: "echo down".into(),
        ..Default::default()
    };
    let (status, body) = api_error_body(server.client.exec(&sandbox.id, &request).await);
    assert_eq!(status, 409);
    assert_eq!(body.code, "invalid_state");
    assert_eq!(
        body.message,
        format!(
            "sandbox {id} stopped: its agent exited (its container or microVM is no longer running); start it with `gitvm vm start {id}`",
            id = sandbox.id
        )
    );
    assert!(
        !body
            .message
            .contains(&server.data_dir.display().to_string()),
        "no host path in client messages"
    );
    let state = server.client.get_sandbox(&sandbox.id).await.unwrap().state;
    assert_eq!(state, SandboxState::Stopped);

    let started = server.client.lifecycle(&sandbox.id, "start").await.unwrap();
    assert_eq!(started.state, SandboxState::Running);
    assert_eq!(server.exec(&sandbox.id, "echo back").await.stdout, "back\n");
}

#[tokio::test]
async fn refused_file_writes_name_the_cause() {
    let server = Server::start();
    let sandbox = server.create().await;

    // Docker mounts /proc/sys read-only inside unprivileged containers.
    let (status, body) = api_error_body(
        server
            .client
            .write_file(&sandbox.id, "/proc/sys/kernel/hostname", "x")
            .await,
    );
    assert_eq!(status, 403);
    assert_eq!(body.code, "read_only");
    assert_eq!(
        body.message,
        "file `/proc/sys/kernel/hostname` is on a read-only file system"
    );

    let (status, body) = api_error_body(server.client.make_dir(&sandbox.id, "/proc/newdir").await);
    assert_eq!(status, 403);
    assert_eq!(body.code, "not_supported");
    assert_eq!(
        body.message,
        "cannot create directory `/proc/newdir`: the file system of `/proc` does not allow new entries there"
    );

    let long = format!("/tmp/{}", "a".repeat(5000));
    let (status, body) = api_error_body(server.client.write_file(&sandbox.id, &long, "x").await);
    assert_eq!(status, 400);
    assert_eq!(body.code, "invalid_path");
    assert_eq!(
        body.message,
        format!(
            "path `/tmp/{}…` (5005 bytes) is longer than 4095 bytes, the limit of Linux (PATH_MAX 4096 with the terminating NUL)",
            "a".repeat(95)
        )
    );
}

#[tokio::test]
async fn oversized_env_is_rejected_at_create() {
    let server = Server::start();
    let request = gitvm_sdk::CreateSandboxRequest {
        env_vars: [("BIG".to_owned(), "x".repeat(200_000))].into(),
        ..Default::default()
    };

    let (status, body) = api_error_body(server.client.create_sandbox(&request).await);

    assert_eq!(status, 400);
    assert_eq!(body.code, "invalid_request");
    assert!(
        body.message.starts_with("invalid envVars entry \"BIG\""),
        "{}",
        body.message
    );
    let listed = server
        .client
        .list_sandboxes(&gitvm_sdk::ListFilter::default())
        .await
        .unwrap();
    assert!(listed.is_empty());
}
