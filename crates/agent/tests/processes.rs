//! Background processes (`/processes`) of a real agent server, over a real Unix socket.
//!
//! The process table is shared by every test in this binary, so each test uses its own tags.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{is_running, processes_in_group, EventReader, TestAgent};
use gitvm_agent::client::{AgentError, RequestBody};
use gitvm_proto::{ExecEvent, ProcessState, SignalRequest, StartProcessRequest};
use http_body_util::{BodyExt, Full};

fn background(line: &str, tag: Option<&str>) -> StartProcessRequest {
    StartProcessRequest {
        command: line.to_owned(),
        tag: tag.map(str::to_owned),
        ..StartProcessRequest::default()
    }
}

fn body(bytes: &'static [u8]) -> RequestBody {
    Full::new(Bytes::from_static(bytes))
        .map_err(|never| match never {})
        .boxed()
}

/// Follows a background process's output.
async fn follow(agent: &TestAgent, selector: &str) -> EventReader {
    EventReader::new(agent.client.process_output(selector).await.unwrap())
}

fn remote_code(error: AgentError) -> (u16, String, String) {
    match error {
        AgentError::Remote { status, body } => (status, body.code, body.message),
        other => panic!("expected an agent error response, got {other}"),
    }
}

#[tokio::test]
async fn start_with_tag_lists_running_process() {
    let agent = TestAgent::start().await;
    let started = agent
        .client
        .start_process(&background("sleep 30", Some("list-sleeper")))
        .await
        .unwrap();

    assert_eq!(started.tag.as_deref(), Some("list-sleeper"));
    assert_eq!(started.command, "sleep 30");
    assert_eq!(started.state, ProcessState::Running);
    assert_eq!(started.exit_code, None);
    assert_eq!(started.exited_at, None);
    assert!(is_running(started.pid as i32));

    let list = agent.client.list_processes().await.unwrap();
    let listed = list
        .processes
        .iter()
        .find(|process| process.pid == started.pid)
        .expect("the started process is listed");
    assert_eq!(listed, &started);

    let by_tag = agent.client.process("list-sleeper").await.unwrap();
    assert_eq!(by_tag, started);
    let by_pid = agent
        .client
        .process(&started.pid.to_string())
        .await
        .unwrap();
    assert_eq!(by_pid, started);

    agent.client.kill_process("list-sleeper").await.unwrap();
}

#[tokio::test]
async fn output_follow_gets_lines_as_written() {
    let agent = TestAgent::start().await;
    let info = agent
        .client
        .start_process(&background(
            "for i in 1 2 3; do echo $i; sleep 1; done",
            Some("follow-counter"),
        ))
        .await
        .unwrap();
    let started = Instant::now();
    let mut reader = follow(&agent, "follow-counter").await;

    assert_eq!(
        reader.next().await,
        Some(ExecEvent::Start { pid: info.pid })
    );
    assert_eq!(reader.next_stdout().await, b"1\n");
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(reader.next_stdout().await, b"2\n");
    assert_eq!(reader.next_stdout().await, b"3\n");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1500), "took {elapsed:?}");

    match reader.next().await {
        Some(ExecEvent::Exit {
            exit_code, signal, ..
        }) => {
            assert_eq!(exit_code, 0);
            assert_eq!(signal, None);
        }
        other => panic!("expected exit, got {other:?}"),
    }
    assert_eq!(reader.next().await, None);
}

#[tokio::test]
async fn output_reconnect_replays_then_follows() {
    let agent = TestAgent::start().await;
    agent
        .client
        .start_process(&background(
            "for i in 1 2 3 4; do echo line$i; sleep 1; done",
            Some("reconnect-counter"),
        ))
        .await
        .unwrap();

    let mut first = follow(&agent, "reconnect-counter").await;
    assert!(matches!(first.next().await, Some(ExecEvent::Start { .. })));
    assert_eq!(first.next_stdout().await, b"line1\n");
    drop(first);

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let info = agent.client.process("reconnect-counter").await.unwrap();
    assert_eq!(info.state, ProcessState::Running);

    let mut second = follow(&agent, "reconnect-counter").await;
    assert!(matches!(second.next().await, Some(ExecEvent::Start { .. })));
    assert_eq!(second.next_stdout().await, b"line1\n");
    assert_eq!(second.next_stdout().await, b"line2\n");
    assert_eq!(second.next_stdout().await, b"line3\n");
    assert_eq!(second.next_stdout().await, b"line4\n");
    assert!(matches!(
        second.next().await,
        Some(ExecEvent::Exit { exit_code: 0, .. })
    ));

    let mut after_exit = follow(&agent, "reconnect-counter").await;
    assert!(matches!(
        after_exit.next().await,
        Some(ExecEvent::Start { .. })
    ));
    for line in [b"line1\n", b"line2\n", b"line3\n", b"line4\n"] {
        assert_eq!(after_exit.next_stdout().await, line);
    }
    assert!(matches!(
        after_exit.next().await,
        Some(ExecEvent::Exit { exit_code: 0, .. })
    ));
    assert_eq!(after_exit.next().await, None);
}

#[tokio::test]
async fn stdin_cat_echoes_and_exits_on_close() {
    let agent = TestAgent::start().await;
    let info = agent
        .client
        .start_process(&background("cat", Some("stdin-cat")))
        .await
        .unwrap();
    let mut reader = follow(&agent, "stdin-cat").await;
    assert!(matches!(reader.next().await, Some(ExecEvent::Start { .. })));

    agent
        .client
        .write_process_stdin("stdin-cat", body(b"hello\n"))
        .await
        .unwrap();
    assert_eq!(reader.next_stdout().await, b"hello\n");

    agent.client.close_process_stdin("stdin-cat").await.unwrap();
    let exited = agent
        .client
        .wait_process("stdin-cat", Some(5.0))
        .await
        .unwrap();
    assert_eq!(exited.pid, info.pid);
    assert_eq!(exited.state, ProcessState::Exited);
    assert_eq!(exited.exit_code, Some(0));
    assert!(exited.exited_at.is_some());

    let error = agent
        .client
        .write_process_stdin("stdin-cat", body(b"late\n"))
        .await
        .unwrap_err();
    let (status, code, _) = remote_code(error);
    assert_eq!(status, 409);
    assert_eq!(code, "stdin_closed");

    let (status, code, _) = remote_code(
        agent
            .client
            .close_process_stdin("stdin-cat")
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409);
    assert_eq!(code, "stdin_closed");
}

#[tokio::test]
async fn signal_term_records_exit_code_and_name() {
    let agent = TestAgent::start().await;
    agent
        .client
        .start_process(&background("sleep 100", Some("term-sleeper")))
        .await
        .unwrap();

    agent
        .client
        .signal_process(
            "term-sleeper",
            &SignalRequest {
                signal: "TERM".to_owned(),
            },
        )
        .await
        .unwrap();
    let exited = agent
        .client
        .wait_process("term-sleeper", Some(5.0))
        .await
        .unwrap();

    assert_eq!(exited.state, ProcessState::Exited);
    assert_eq!(exited.exit_code, Some(143));
    assert_eq!(exited.signal.as_deref(), Some("SIGTERM"));
    assert!(!exited.timed_out);
}

#[tokio::test]
async fn signal_unknown_name_is_rejected() {
    let agent = TestAgent::start().await;
    agent
        .client
        .start_process(&background("sleep 30", Some("badsignal-sleeper")))
        .await
        .unwrap();

    let error = agent
        .client
        .signal_process(
            "badsignal-sleeper",
            &SignalRequest {
                signal: "SIGBOGUS".to_owned(),
            },
        )
        .await
        .unwrap_err();
    let (status, code, message) = remote_code(error);
    assert_eq!(status, 400);
    assert_eq!(code, "invalid_signal");
    assert!(message.contains("`SIGBOGUS`"), "message: {message}");

    agent
        .client
        .kill_process("badsignal-sleeper")
        .await
        .unwrap();
}

#[tokio::test]
async fn kill_ends_whole_process_group() {
    let agent = TestAgent::start().await;
    let info = agent
        .client
        .start_process(&background("sleep 100 & sleep 100", Some("kill-tree")))
        .await
        .unwrap();
    let pgid = info.pid as i32;

    // The shell forks the background sleep right away; give it a moment to exist.
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_in_group(pgid).len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let members = processes_in_group(pgid);
    assert_eq!(members.len(), 3, "group members: {members:?}");

    agent.client.kill_process("kill-tree").await.unwrap();
    let exited = agent
        .client
        .wait_process("kill-tree", Some(5.0))
        .await
        .unwrap();
    assert_eq!(exited.exit_code, Some(137));
    assert_eq!(exited.signal.as_deref(), Some("SIGKILL"));

    let deadline = Instant::now() + Duration::from_secs(5);
    while members.iter().any(|&pid| is_running(pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for pid in members {
        assert!(!is_running(pid), "process {pid} survived the kill");
    }
}

#[tokio::test]
async fn wait_returns_exit_info_or_running_on_timeout() {
    let agent = TestAgent::start().await;
    agent
        .client
        .start_process(&background("sleep 1; exit 3", Some("wait-three")))
        .await
        .unwrap();

    let waited = Instant::now();
    let still_running = agent
        .client
        .wait_process("wait-three", Some(0.2))
        .await
        .unwrap();
    assert_eq!(still_running.state, ProcessState::Running);
    assert_eq!(still_running.exit_code, None);
    assert!(waited.elapsed() < Duration::from_millis(900));

    let exited = agent.client.wait_process("wait-three", None).await.unwrap();
    assert_eq!(exited.state, ProcessState::Exited);
    assert_eq!(exited.exit_code, Some(3));
    assert_eq!(exited.signal, None);
    assert!(!exited.timed_out);
}

#[tokio::test]
async fn timeout_kills_process_and_marks_it() {
    let agent = TestAgent::start().await;
    agent
        .client
        .start_process(&StartProcessRequest {
            timeout: Some(0.3),
            ..background("sleep 100", Some("timeout-sleeper"))
        })
        .await
        .unwrap();

    let exited = agent
        .client
        .wait_process("timeout-sleeper", Some(5.0))
        .await
        .unwrap();
    assert_eq!(exited.state, ProcessState::Exited);
    assert_eq!(exited.exit_code, Some(124));
    assert!(exited.timed_out);
}

#[tokio::test]
async fn unknown_selector_is_not_found() {
    let agent = TestAgent::start().await;
    for selector in ["no-such-tag", "999999999"] {
        let (status, code, message) =
            remote_code(agent.client.process(selector).await.unwrap_err());
        assert_eq!(status, 404);
        assert_eq!(code, "process_not_found");
        assert!(
            message.contains(&format!("`{selector}`")),
            "message: {message}"
        );
    }
    let (status, code, _) =
        remote_code(agent.client.kill_process("no-such-tag").await.unwrap_err());
    assert_eq!(status, 404);
    assert_eq!(code, "process_not_found");
}

#[tokio::test]
async fn duplicate_running_tag_conflicts() {
    let agent = TestAgent::start().await;
    let first = agent
        .client
        .start_process(&background("sleep 30", Some("dup-tag")))
        .await
        .unwrap();

    let (status, code, message) = remote_code(
        agent
            .client
            .start_process(&background("sleep 30", Some("dup-tag")))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409);
    assert_eq!(code, "tag_in_use");
    assert!(
        message.contains(&first.pid.to_string()),
        "message: {message}"
    );

    agent.client.kill_process("dup-tag").await.unwrap();
    agent
        .client
        .wait_process("dup-tag", Some(5.0))
        .await
        .unwrap();
    let second = agent
        .client
        .start_process(&background("true", Some("dup-tag")))
        .await
        .unwrap();
    assert_ne!(second.pid, first.pid);
    let found = agent.client.process("dup-tag").await.unwrap();
    assert_eq!(found.pid, second.pid);
}

#[tokio::test]
async fn start_reports_missing_cwd_like_exec() {
    let agent = TestAgent::start().await;
    let (status, code, _) = remote_code(
        agent
            .client
            .start_process(&StartProcessRequest {
                cwd: Some("/no/such/dir".to_owned()),
                ..background("true", None)
            })
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 400);
    assert_eq!(code, "cwd_not_found");
}
