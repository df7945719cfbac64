//! Streamed exec (`POST /sandboxes/{id}/exec/stream`) end to end: the real server, real
//! dockerd and the agent inside the sandbox, read as raw NDJSON with reqwest.

mod common;

use std::time::{Duration, Instant};

use common::{EventReader, Server};
use gitvm_proto::{ExecEvent, ExecRequest};

async fn post_stream(server: &Server, id: &str, body: &serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/sandboxes/{id}/exec/stream", server.url))
        .json(body)
        .send()
        .await
        .expect("send exec stream request")
}

/// Opens a stream and checks its status and content type.
async fn open(server: &Server, id: &str, command: &str) -> EventReader {
    let response = post_stream(server, id, &serde_json::json!({ "command": command })).await;
    EventReader::new(response)
}

fn stdout_bytes(events: &[ExecEvent]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for event in events {
        if let ExecEvent::Stdout { .. } = event {
            bytes.extend(event.bytes().unwrap().unwrap());
        }
    }
    bytes
}

#[tokio::test]
async fn stream_delivers_lines_as_written() {
    let server = Server::start();
    let sandbox = server.create().await;
    let started = Instant::now();
    let mut reader = open(
        &server,
        &sandbox.id,
        "for i in 1 2 3; do echo $i; sleep 1; done",
    )
    .await;

    assert!(matches!(reader.next().await, Some(ExecEvent::Start { .. })));
    let first = reader.next().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(first.bytes().unwrap().unwrap(), b"1\n");
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    assert_eq!(
        reader.next().await.unwrap().bytes().unwrap().unwrap(),
        b"2\n"
    );
    assert_eq!(
        reader.next().await.unwrap().bytes().unwrap().unwrap(),
        b"3\n"
    );

    let events = reader.rest().await;
    assert_eq!(events.len(), 1, "events after the output: {events:?}");
    match &events[0] {
        ExecEvent::Exit {
            exit_code,
            signal,
            timed_out,
            ..
        } => {
            assert_eq!(*exit_code, 0);
            assert_eq!(*signal, None);
            assert!(!timed_out);
        }
        other => panic!("expected exit, got {other:?}"),
    }
}

#[tokio::test]
async fn stream_binary_output_is_exact() {
    let server = Server::start();
    let sandbox = server.create().await;
    let command = r"printf '\377\000\001'";

    let mut reader = open(&server, &sandbox.id, command).await;
    let events = reader.rest().await;
    assert_eq!(stdout_bytes(&events), vec![0xff, 0x00, 0x01]);
    assert!(matches!(
        events.last(),
        Some(ExecEvent::Exit { exit_code: 0, .. })
    ));

    // The buffered exec's text has U+FFFD for 0xff; its base64 copy has the exact bytes.
    let buffered = server.exec(&sandbox.id, command).await;
    assert_eq!(buffered.stdout, "\u{fffd}\u{0}\u{1}");
    assert_eq!(buffered.stdout_base64.as_deref(), Some("/wAB"));
    assert_eq!(buffered.stdout_bytes().unwrap(), vec![0xff, 0x00, 0x01]);
    assert_eq!(buffered.stderr_base64, None);
    assert_eq!(buffered.exit_code, 0);

    // Valid UTF-8 output has no base64 copy.
    let text = server.exec(&sandbox.id, "printf 'naïve ✓'").await;
    assert_eq!(text.stdout, "naïve ✓");
    assert_eq!(text.stdout_base64, None);
}

#[tokio::test]
async fn stream_on_paused_sandbox_is_409() {
    let server = Server::start();
    let sandbox = server.create().await;
    server
        .client
        .lifecycle(&sandbox.id, "pause")
        .await
        .expect("pause sandbox");

    let response = post_stream(
        &server,
        &sandbox.id,
        &serde_json::json!({ "command": "echo ok" }),
    )
    .await;
    assert_eq!(response.status().as_u16(), 409);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["code"], "invalid_state");
    assert_eq!(
        error["message"],
        format!("sandbox {} is paused; resume it first", sandbox.id)
    );
}

#[tokio::test]
async fn stream_missing_cwd_is_400_before_streaming() {
    let server = Server::start();
    let sandbox = server.create().await;
    let request = ExecRequest {
        command: "pwd".into(),
        cwd: Some("/does/not/exist".into()),
        ..Default::default()
    };

    let response = post_stream(
        &server,
        &sandbox.id,
        &serde_json::to_value(&request).unwrap(),
    )
    .await;
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["code"], "cwd_not_found");
    assert_eq!(
        error["message"],
        "working directory `/does/not/exist` does not exist"
    );
}
