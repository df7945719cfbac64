//! Background processes (`/sandboxes/{id}/processes...`) end to end: the real server, real
//! dockerd and the agent inside a base-image sandbox, driven with reqwest.

mod common;

use std::time::{Duration, Instant};

use common::{EventReader, Server};
use gitvm_proto::{ExecEvent, ProcessInfo, ProcessList, ProcessState};

/// Follows a process's output.
async fn follow(server: &Server, id: &str, selector: &str) -> EventReader {
    let response = reqwest::get(format!(
        "{}/sandboxes/{id}/processes/{selector}/output",
        server.url
    ))
    .await
    .expect("send output request");
    EventReader::new(response)
}

fn processes_url(server: &Server, id: &str) -> String {
    format!("{}/sandboxes/{id}/processes", server.url)
}

async fn start(server: &Server, id: &str, body: serde_json::Value) -> ProcessInfo {
    let response = reqwest::Client::new()
        .post(processes_url(server, id))
        .json(&body)
        .send()
        .await
        .expect("send start request");
    assert_eq!(response.status().as_u16(), 201);
    response.json().await.unwrap()
}

#[tokio::test]
async fn http_server_runs_in_background_until_sigterm() {
    let server = Server::start();
    let sandbox = server.create().await;
    let id = &sandbox.id;
    let http = reqwest::Client::new();

    let started = start(
        &server,
        id,
        serde_json::json!({ "command": "python3 -m http.server 8000", "tag": "web", "cwd": "/tmp" }),
    )
    .await;
    assert_eq!(started.tag.as_deref(), Some("web"));
    assert_eq!(started.state, ProcessState::Running);

    let list: ProcessList = http
        .get(processes_url(&server, id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.processes.len(), 1);
    assert_eq!(list.processes[0].pid, started.pid);
    assert_eq!(list.processes[0].command, "python3 -m http.server 8000");
    assert_eq!(list.processes[0].state, ProcessState::Running);

    // The server needs a moment to bind its port.
    let probe = "python3 -c \"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8000').status)\"";
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut result = server.exec(id, probe).await;
    while result.exit_code != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        result = server.exec(id, probe).await;
    }
    assert_eq!(result.stdout, "200\n", "stderr: {}", result.stderr);
    assert_eq!(result.exit_code, 0);

    let response = http
        .post(format!("{}/web/signal", processes_url(&server, id)))
        .json(&serde_json::json!({ "signal": "SIGTERM" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);

    let response = http
        .post(format!(
            "{}/web/wait?timeout=10",
            processes_url(&server, id)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let exited: ProcessInfo = response.json().await.unwrap();
    assert_eq!(exited.pid, started.pid);
    assert_eq!(exited.state, ProcessState::Exited);
    assert_eq!(exited.signal.as_deref(), Some("SIGTERM"));
    assert_eq!(exited.exit_code, Some(143));
    assert!(exited.exited_at.is_some());
}

#[tokio::test]
async fn output_reconnect_replays_earlier_lines() {
    let server = Server::start();
    let sandbox = server.create().await;
    let id = &sandbox.id;
    start(
        &server,
        id,
        serde_json::json!({
            "command": "for i in 1 2 3; do echo line$i; sleep 1; done",
            "tag": "counter",
        }),
    )
    .await;

    let mut first = follow(&server, id, "counter").await;
    assert!(matches!(first.next().await, Some(ExecEvent::Start { .. })));
    assert_eq!(first.next_stdout().await, "line1\n");
    drop(first);

    let mut second = follow(&server, id, "counter").await;
    assert!(matches!(second.next().await, Some(ExecEvent::Start { .. })));
    assert_eq!(second.next_stdout().await, "line1\n");
    assert_eq!(second.next_stdout().await, "line2\n");
    assert_eq!(second.next_stdout().await, "line3\n");
    match second.next().await {
        Some(ExecEvent::Exit {
            exit_code, signal, ..
        }) => {
            assert_eq!(exit_code, 0);
            assert_eq!(signal, None);
        }
        other => panic!("expected exit, got {other:?}"),
    }
    assert_eq!(second.next().await, None);
}

#[tokio::test]
async fn processes_on_paused_sandbox_are_409() {
    let server = Server::start();
    let sandbox = server.create().await;
    server
        .client
        .lifecycle(&sandbox.id, "pause")
        .await
        .expect("pause sandbox");

    let response = reqwest::Client::new()
        .post(processes_url(&server, &sandbox.id))
        .json(&serde_json::json!({ "command": "sleep 10" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["code"], "invalid_state");
    assert_eq!(
        error["message"],
        format!("sandbox {} is paused; resume it first", sandbox.id)
    );

    let response = reqwest::get(processes_url(&server, &sandbox.id))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
}

#[tokio::test]
async fn unknown_process_is_404_naming_it() {
    let server = Server::start();
    let sandbox = server.create().await;

    let response = reqwest::get(format!("{}/nope", processes_url(&server, &sandbox.id)))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["code"], "process_not_found");
    assert_eq!(
        error["message"],
        "no background process has pid or tag `nope`; list the background processes to find it"
    );
}
