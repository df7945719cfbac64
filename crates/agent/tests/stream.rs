//! Streamed exec (`POST /exec/stream`) of a real agent server, over a real Unix socket.

mod common;

use std::time::{Duration, Instant};

use common::{processes_in_group, EventReader, TestAgent};
use gitvm_agent::client::AgentError;
use gitvm_proto::{ExecEvent, ExecRequest, EXIT_CODE_TIMED_OUT};

fn command(line: &str) -> ExecRequest {
    ExecRequest {
        command: line.to_owned(),
        ..ExecRequest::default()
    }
}

/// Starts a streamed exec and reads its events.
async fn open(agent: &TestAgent, request: ExecRequest) -> EventReader {
    EventReader::new(agent.client.exec_stream(&request).await.unwrap())
}

/// Concatenates the bytes of the stdout (or stderr) chunks in `events`.
fn output(events: &[ExecEvent], stderr: bool) -> Vec<u8> {
    let mut bytes = Vec::new();
    for event in events {
        let matches = match event {
            ExecEvent::Stdout { .. } => !stderr,
            ExecEvent::Stderr { .. } => stderr,
            _ => false,
        };
        if matches {
            bytes.extend(event.bytes().unwrap().unwrap());
        }
    }
    bytes
}

fn exit_code(event: &ExecEvent) -> i32 {
    match event {
        ExecEvent::Exit { exit_code, .. } => *exit_code,
        other => panic!("expected an exit event, got {other:?}"),
    }
}

#[tokio::test]
async fn stream_delivers_lines_as_written() {
    let agent = TestAgent::start().await;
    let started = Instant::now();
    let mut reader = open(&agent, command("for i in 1 2 3; do echo $i; sleep 1; done")).await;

    let ExecEvent::Start { pid } = reader.next().await.unwrap() else {
        panic!("the first event should be start");
    };
    assert!(pid > 1);

    let first = reader.next().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(first.bytes().unwrap().unwrap(), b"1\n");
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");

    let second = reader.next().await.unwrap();
    assert_eq!(second.bytes().unwrap().unwrap(), b"2\n");
    let third = reader.next().await.unwrap();
    assert_eq!(third.bytes().unwrap().unwrap(), b"3\n");

    let events = reader.rest().await;
    assert_eq!(events.len(), 1, "events after the output: {events:?}");
    match &events[0] {
        ExecEvent::Exit {
            exit_code,
            signal,
            timed_out,
            duration_ms,
        } => {
            assert_eq!(*exit_code, 0);
            assert_eq!(*signal, None);
            assert!(!timed_out);
            assert!(*duration_ms >= 3000, "duration {duration_ms} ms");
        }
        other => panic!("expected exit, got {other:?}"),
    }
}

#[tokio::test]
async fn stream_binary_output_is_exact() {
    let agent = TestAgent::start().await;
    let mut reader = open(&agent, command(r"printf '\377\000\001'")).await;
    let events = reader.rest().await;

    assert!(matches!(events[0], ExecEvent::Start { .. }));
    assert_eq!(output(&events, false), vec![0xff, 0x00, 0x01]);
    assert_eq!(output(&events, true), Vec::<u8>::new());
    assert_eq!(exit_code(events.last().unwrap()), 0);
}

#[tokio::test]
async fn stream_keeps_stderr_separate() {
    let agent = TestAgent::start().await;
    let mut reader = open(&agent, command("echo out; echo err >&2; echo out2; exit 5")).await;
    let events = reader.rest().await;

    assert_eq!(output(&events, false), b"out\nout2\n");
    assert_eq!(output(&events, true), b"err\n");
    assert_eq!(exit_code(events.last().unwrap()), 5);
}

#[tokio::test]
async fn stream_large_output_is_complete() {
    let agent = TestAgent::start().await;
    // 1 MiB of 'a' followed by a marker, more than the agent queues, so flow control is used.
    let mut reader = open(
        &agent,
        command("head -c 1048576 /dev/zero | tr '\\000' a; echo end"),
    )
    .await;
    let events = reader.rest().await;

    let stdout = output(&events, false);
    assert_eq!(stdout.len(), 1024 * 1024 + 4);
    assert!(stdout[..1024 * 1024].iter().all(|&byte| byte == b'a'));
    assert_eq!(&stdout[1024 * 1024..], b"end\n");
    for event in &events {
        if let Some(bytes) = event.bytes() {
            assert!(bytes.unwrap().len() <= 32 * 1024);
        }
    }
    assert_eq!(exit_code(events.last().unwrap()), 0);
}

#[tokio::test]
async fn stream_timeout_reports_124() {
    let agent = TestAgent::start().await;
    let started = Instant::now();
    let mut reader = open(
        &agent,
        ExecRequest {
            timeout: Some(1.0),
            ..command("echo before; sleep 30; echo never")
        },
    )
    .await;
    let events = reader.rest().await;
    let elapsed = started.elapsed();

    assert!(elapsed < Duration::from_millis(1800), "took {elapsed:?}");
    assert_eq!(output(&events, false), b"before\n");
    match events.last().unwrap() {
        ExecEvent::Exit {
            exit_code,
            signal,
            timed_out,
            ..
        } => {
            assert_eq!(*exit_code, EXIT_CODE_TIMED_OUT);
            assert_eq!(signal.as_deref(), Some("SIGKILL"));
            assert!(timed_out);
        }
        other => panic!("expected exit, got {other:?}"),
    }
}

#[tokio::test]
async fn stream_kill_self_reports_sigkill() {
    let agent = TestAgent::start().await;
    let mut reader = open(&agent, command("kill -9 $$")).await;
    let events = reader.rest().await;

    match events.last().unwrap() {
        ExecEvent::Exit {
            exit_code,
            signal,
            timed_out,
            ..
        } => {
            assert_eq!(*exit_code, 137);
            assert_eq!(signal.as_deref(), Some("SIGKILL"));
            assert!(!timed_out);
        }
        other => panic!("expected exit, got {other:?}"),
    }
}

#[tokio::test]
async fn stream_background_child_returns_promptly() {
    let agent = TestAgent::start().await;
    let started = Instant::now();
    let mut reader = open(&agent, command("sleep 1000 & echo started; echo $! >&2")).await;
    let events = reader.rest().await;
    let elapsed = started.elapsed();

    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert_eq!(output(&events, false), b"started\n");
    assert_eq!(exit_code(events.last().unwrap()), 0);
    let sleeper: i32 = String::from_utf8(output(&events, true))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: plain kill(2) of the background child this test started.
    unsafe { libc::kill(sleeper, libc::SIGKILL) };
}

#[tokio::test]
async fn stream_dropped_body_kills_group() {
    let agent = TestAgent::start().await;
    let mut reader = open(&agent, command("sleep 30 & echo ready; sleep 30")).await;
    let ExecEvent::Start { pid } = reader.next().await.unwrap() else {
        panic!("the first event should be start");
    };
    assert_eq!(
        reader.next().await.unwrap().bytes().unwrap().unwrap(),
        b"ready\n"
    );
    let pgid = pid as i32;
    assert!(
        processes_in_group(pgid).contains(&pgid),
        "the shell should be running"
    );

    drop(reader);

    let deadline = Instant::now() + Duration::from_secs(2);
    while !processes_in_group(pgid).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(processes_in_group(pgid), Vec::<i32>::new());
}

#[tokio::test]
async fn stream_missing_cwd_fails_before_streaming() {
    let agent = TestAgent::start().await;
    let request = ExecRequest {
        cwd: Some("/does/not/exist".to_owned()),
        ..command("pwd")
    };
    match agent.client.exec_stream(&request).await {
        Err(AgentError::Remote { status, body }) => {
            assert_eq!(status, 400);
            assert_eq!(body.code, "cwd_not_found");
            assert_eq!(
                body.message,
                "working directory `/does/not/exist` does not exist"
            );
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test]
async fn stream_empty_command_is_rejected() {
    let agent = TestAgent::start().await;
    match agent.client.exec_stream(&command("  ")).await {
        Err(AgentError::Remote { status, body }) => {
            assert_eq!(status, 400);
            assert_eq!(body.code, "invalid_command");
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
}
