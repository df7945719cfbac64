//! `Client::open_pty` end to end: the real server, real dockerd and the agent inside the sandbox.

mod common;

use std::time::Duration;

use common::{api_error, Server};
use gitvm_sdk::{PtyEvent, PtyOptions, PtySession};

/// Upper bound of the wait for a terminal session to end.
const WAIT: Duration = Duration::from_secs(20);

/// Reads events until `Exit` and returns the output so far, the exit code and the signal.
async fn read_until_exit(session: &mut PtySession) -> (String, i32, Option<String>) {
    let mut output = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, session.next_event())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no exit within {WAIT:?}; output: {}",
                    String::from_utf8_lossy(&output)
                )
            })
            .expect("read terminal event");
        match event {
            PtyEvent::Output(bytes) => output.extend_from_slice(&bytes),
            PtyEvent::Exit { exit_code, signal } => {
                return (
                    String::from_utf8_lossy(&output).into_owned(),
                    exit_code,
                    signal,
                )
            }
            PtyEvent::Closed { reason } => panic!(
                "closed before exit ({reason:?}); output: {}",
                String::from_utf8_lossy(&output)
            ),
        }
    }
}

#[tokio::test]
async fn open_pty_runs_command_to_exit() {
    let server = Server::start();
    let sandbox = server.create().await;
    let options = PtyOptions {
        command: Some("echo pty-$((6*7)); exit 5".into()),
        ..Default::default()
    };

    let mut session = server
        .client
        .open_pty(&sandbox.id, &options)
        .await
        .expect("open pty");
    let (output, exit_code, signal) = read_until_exit(&mut session).await;

    assert!(output.contains("pty-42"), "output: {output}");
    assert_eq!(exit_code, 5, "output: {output}");
    assert_eq!(signal, None);
    let after_exit = tokio::time::timeout(WAIT, session.next_event())
        .await
        .expect("close after exit")
        .expect("read close");
    assert_eq!(after_exit, PtyEvent::Closed { reason: None });
}

#[tokio::test]
async fn open_pty_sends_input_and_resize() {
    let server = Server::start();
    let sandbox = server.create().await;
    let options = PtyOptions {
        command: Some("/bin/sh".into()),
        ..Default::default()
    };

    let mut session = server
        .client
        .open_pty(&sandbox.id, &options)
        .await
        .expect("open pty");
    session.resize(132, 50).await.expect("send resize");
    session
        .send_input(b"echo size-$(stty size | tr ' ' x); exit 7\n")
        .await
        .expect("send input");
    let (output, exit_code, _) = read_until_exit(&mut session).await;

    // The terminal echoes the input line, so only the shell's output contains `size-50x132`.
    assert!(output.contains("size-50x132"), "output: {output}");
    assert_eq!(exit_code, 7, "output: {output}");
}

#[tokio::test]
async fn open_pty_stopped_sandbox_conflict() {
    let server = Server::start();
    let sandbox = server.create().await;
    server.client.lifecycle(&sandbox.id, "stop").await.unwrap();

    let result = server
        .client
        .open_pty(&sandbox.id, &PtyOptions::default())
        .await;

    assert_eq!(api_error(result), (409, "invalid_state".to_string()));
}
