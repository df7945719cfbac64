//! Field cases from sandbox platforms of this kind, with their exact expected values.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{api_error, containers_labelled, read_to_vec, Server};
use gitvm_sdk::{CreateSandboxRequest, ExecRequest, ListFilter, SandboxState};

fn exec_request(command: &str) -> ExecRequest {
    ExecRequest {
        command: command.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn c1_pause_resume_cycles_keep_files() {
    let server = Server::start();
    let id = server.create().await.id;
    let client = &server.client;
    client.write_file(&id, "/work/a.txt", "1").await.unwrap();
    client.lifecycle(&id, "pause").await.unwrap();
    client.lifecycle(&id, "resume").await.unwrap();
    client.write_file(&id, "/work/b.txt", "2").await.unwrap();
    client.lifecycle(&id, "pause").await.unwrap();
    client.lifecycle(&id, "resume").await.unwrap();
    assert_eq!(read_to_vec(&server, &id, "/work/a.txt").await, b"1");
    assert_eq!(read_to_vec(&server, &id, "/work/b.txt").await, b"2");
    for _ in 0..5 {
        client.lifecycle(&id, "pause").await.unwrap();
        client.lifecycle(&id, "resume").await.unwrap();
        let result = server.exec(&id, "echo ok").await;
        assert_eq!(result.stdout, "ok\n");
        assert_eq!(result.exit_code, 0);
    }
}

#[tokio::test]
async fn c2_explicit_timeout_outlives_node_default() {
    let server = Server::start_with(&["--default-timeout", "2"]);
    let sandbox = server
        .client
        .create_sandbox(&CreateSandboxRequest {
            timeout: Some(3600),
            ..Default::default()
        })
        .await
        .unwrap();
    let forever = server
        .client
        .create_sandbox(&CreateSandboxRequest {
            timeout: Some(0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(forever.timeout, 0);
    assert_eq!(forever.expires_at, None);
    let created = time::OffsetDateTime::parse(
        &sandbox.created_at,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let expires = time::OffsetDateTime::parse(
        sandbox.expires_at.as_deref().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expires - created, time::Duration::seconds(3600));

    tokio::time::sleep(Duration::from_secs(4)).await;
    for id in [&sandbox.id, &forever.id] {
        let current = server.client.get_sandbox(id).await.unwrap();
        assert_eq!(current.state, SandboxState::Running, "{current:?}");
    }
}

#[tokio::test]
async fn c3_missing_template_is_fast_404() {
    let server = Server::start();
    let started = Instant::now();
    let result = server
        .client
        .create_sandbox(&CreateSandboxRequest {
            template: Some("gitvm-no-such-template:1".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(api_error(result), (404, "template_not_found".to_string()));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let all = server
        .client
        .list_sandboxes(&ListFilter::default())
        .await
        .unwrap();
    assert!(all.is_empty(), "left rows: {all:?}");
}

/// Imports an image whose root has `/.gitvm` as a regular file, so the agent cannot be mounted.
fn import_broken_image(tag: &str) {
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(tree.path().join(".gitvm"), b"not a directory").unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker rmi -f {tag} >/dev/null 2>&1; tar -C '{}' -c . | docker import - {tag} >/dev/null",
            tree.path().display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "docker import of the broken image failed");
}

#[tokio::test]
async fn c4_template_that_cannot_run_agent_fails_cleanly() {
    let tag = "gitvm-test-broken:c4";
    import_broken_image(tag);
    let server = Server::start();
    let started = Instant::now();
    let result = server
        .client
        .create_sandbox(&CreateSandboxRequest {
            template: Some(tag.into()),
            timeout: Some(600),
            ..Default::default()
        })
        .await;
    let elapsed = started.elapsed();
    let Err(gitvm_sdk::Error::Api { status, body }) = result else {
        panic!("create from a broken template succeeded: {result:?}");
    };
    assert!(elapsed < Duration::from_secs(35), "took {elapsed:?}");
    assert_eq!(status, 500);
    assert_eq!(body.code, "sandbox_failed");
    assert!(
        body.message.contains(".gitvm"),
        "message should name the reason: {}",
        body.message
    );

    let all = server
        .client
        .list_sandboxes(&ListFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].state, SandboxState::Error);
    assert!(all[0].error.as_deref().unwrap_or("").contains(".gitvm"));
    server.client.delete_sandbox(&all[0].id).await.unwrap();
    assert!(containers_labelled(&all[0].id).is_empty());
}

#[tokio::test]
async fn c5_exec_right_after_start_succeeds() {
    let server = Server::start();
    let id = server.create().await.id;
    server.client.lifecycle(&id, "stop").await.unwrap();
    let started = server.client.lifecycle(&id, "start").await.unwrap();
    assert_eq!(started.state, SandboxState::Running);
    let result = server.exec(&id, "echo hi").await;
    assert_eq!(result.stdout, "hi\n");
    assert_eq!(result.exit_code, 0);
}

#[tokio::test]
async fn c6_background_child_does_not_hang_exec() {
    let server = Server::start();
    let id = server.create().await.id;
    let started = Instant::now();
    let result = server.exec(&id, "sh -c 'sleep 1000 & echo started'").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(result.stdout, "started\n");
    assert_eq!(result.exit_code, 0);
}

#[tokio::test]
async fn c7_timeout_kills_process_group() {
    let server = Server::start();
    let id = server.create().await.id;
    let started = Instant::now();
    let result = server
        .client
        .exec(
            &id,
            &ExecRequest {
                command: "sleep 30".into(),
                timeout: Some(1.0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(950), "took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert!(result.timed_out);
    assert_eq!(result.exit_code, 124);
    let left = server
        .exec(&id, "ps -eo comm= | grep -c '^sleep$' || true")
        .await;
    assert_eq!(left.stdout.trim(), "0");
}

#[tokio::test]
async fn c8_odd_file_names_round_trip_bytes() {
    let server = Server::start();
    let id = server.create().await.id;
    let mut data: Vec<u8> = (0..256).map(|_| rand::random::<u8>()).collect();
    data[0] = 0;
    data[128] = 0;
    let path = "/tmp/dir with space/naïve ✓.bin";
    server
        .client
        .write_file(&id, path, data.clone())
        .await
        .unwrap();
    let entries = server
        .client
        .list_files(&id, "/tmp/dir with space")
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, "naïve ✓.bin");
    assert_eq!(entries[0].path, path);
    assert_eq!(entries[0].size, 256);
    assert_eq!(read_to_vec(&server, &id, path).await, data);
}

#[tokio::test]
async fn c9_missing_cwd_is_named_in_4xx() {
    let server = Server::start();
    let id = server.create().await.id;
    let result = server
        .client
        .exec(
            &id,
            &ExecRequest {
                command: "pwd".into(),
                cwd: Some("/no/such/dir".into()),
                ..Default::default()
            },
        )
        .await;
    let Err(gitvm_sdk::Error::Api { status, body }) = result else {
        panic!("exec with a missing cwd succeeded: {result:?}");
    };
    assert_eq!(status, 400);
    assert_eq!(body.code, "cwd_not_found");
    assert!(body.message.contains("/no/such/dir"), "{}", body.message);
}

#[tokio::test]
async fn c11_exit_codes_and_signals() {
    let server = Server::start();
    let id = server.create().await.id;
    let exit3 = server.exec(&id, "exit 3").await;
    assert_eq!(exit3.exit_code, 3);
    assert_eq!(exit3.signal, None);
    let killed = server.exec(&id, "kill -9 $$").await;
    assert_eq!(killed.exit_code, 137);
    assert_eq!(killed.signal.as_deref(), Some("SIGKILL"));
    assert!(!killed.timed_out);
}

#[tokio::test]
async fn c12_twenty_concurrent_sandboxes() {
    let server = Server::start();
    let creates = (0..20).map(|_| server.create());
    let sandboxes = futures_util::future::join_all(creates).await;
    let request = exec_request("echo $((20+22))");
    let execs = sandboxes
        .iter()
        .map(|s| server.client.exec(&s.id, &request));
    for result in futures_util::future::join_all(execs).await {
        let result = result.unwrap();
        assert_eq!(result.stdout, "42\n");
    }
    let deletes = sandboxes
        .iter()
        .map(|s| server.client.delete_sandbox(&s.id));
    for result in futures_util::future::join_all(deletes).await {
        result.unwrap();
    }
    for sandbox in &sandboxes {
        assert!(
            containers_labelled(&sandbox.id).is_empty(),
            "{} left",
            sandbox.id
        );
    }
}
