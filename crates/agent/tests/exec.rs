//! Exec behaviour of a real agent server, over a real Unix socket.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{is_running, processes_in_group, TestAgent};
use gitvm_agent::client::AgentError;
use gitvm_proto::{ExecRequest, ExecResult, EXEC_OUTPUT_LIMIT, EXIT_CODE_TIMED_OUT};

fn command(line: &str) -> ExecRequest {
    ExecRequest {
        command: line.to_owned(),
        ..ExecRequest::default()
    }
}

async fn run(agent: &TestAgent, request: ExecRequest) -> ExecResult {
    agent.client.exec(&request).await.unwrap()
}

/// Runs `request`, expects an error response, and returns its status, code and message.
async fn run_err(agent: &TestAgent, request: ExecRequest) -> (u16, String, String) {
    match agent.client.exec(&request).await {
        Err(AgentError::Remote { status, body }) => (status, body.code, body.message),
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test]
async fn exec_echo_returns_stdout() {
    let agent = TestAgent::start().await;
    let result = run(&agent, command("echo hello; echo oops >&2")).await;
    assert_eq!(result.exit_code, 0);
    assert_eq!(result.stdout, "hello\n");
    assert_eq!(result.stderr, "oops\n");
    assert!(!result.timed_out);
    assert_eq!(result.signal, None);
    assert!(!result.truncated);
}

#[tokio::test]
async fn exec_exit_3_returns_3() {
    let agent = TestAgent::start().await;
    let result = run(&agent, command("exit 3")).await;
    assert_eq!(result.exit_code, 3);
    assert_eq!(result.signal, None);
}

#[tokio::test]
async fn exec_kill_self_reports_sigkill() {
    let agent = TestAgent::start().await;
    let result = run(&agent, command("kill -9 $$")).await;
    assert_eq!(result.exit_code, 137);
    assert_eq!(result.signal.as_deref(), Some("SIGKILL"));
    assert!(!result.timed_out);
}

#[tokio::test]
async fn exec_background_child_returns_promptly() {
    let agent = TestAgent::start().await;
    let started = Instant::now();
    let result = run(&agent, command("sleep 1000 & echo started; echo $! >&2")).await;
    let elapsed = started.elapsed();

    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert_eq!(result.exit_code, 0);
    assert_eq!(result.stdout, "started\n");
    let sleeper: i32 = result.stderr.trim().parse().unwrap();
    assert!(
        is_running(sleeper),
        "background sleep {sleeper} should keep running"
    );

    // SAFETY: plain kill(2) of the background child this test started.
    unsafe { libc::kill(sleeper, libc::SIGKILL) };
}

#[tokio::test]
async fn exec_timeout_kills_process_group() {
    let agent = TestAgent::start().await;
    let started = Instant::now();
    let result = run(
        &agent,
        ExecRequest {
            timeout: Some(1.0),
            ..command("echo $$; sleep 30; echo never")
        },
    )
    .await;
    let elapsed = started.elapsed();

    assert!(elapsed >= Duration::from_secs(1), "took {elapsed:?}");
    assert!(elapsed < Duration::from_millis(1800), "took {elapsed:?}");
    assert_eq!(result.exit_code, EXIT_CODE_TIMED_OUT);
    assert!(result.timed_out);
    assert_eq!(result.signal.as_deref(), Some("SIGKILL"));
    let pgid: i32 = result.stdout.trim().parse().unwrap();

    // The killed sleep is reparented to the agent and reaped; give that a moment.
    let deadline = Instant::now() + Duration::from_secs(1);
    while !processes_in_group(pgid).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(processes_in_group(pgid), Vec::<i32>::new());
}

#[tokio::test]
async fn exec_missing_cwd_is_rejected() {
    let agent = TestAgent::start().await;
    let (status, code, message) = run_err(
        &agent,
        ExecRequest {
            cwd: Some("/nope".into()),
            ..command("pwd")
        },
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(code, "cwd_not_found");
    assert_eq!(message, "working directory `/nope` does not exist");
}

#[tokio::test]
async fn exec_cwd_file_is_rejected() {
    let agent = TestAgent::start().await;
    let (status, code, message) = run_err(
        &agent,
        ExecRequest {
            cwd: Some("/etc/passwd".into()),
            ..command("pwd")
        },
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(code, "not_a_directory");
    assert_eq!(
        message,
        "working directory `/etc/passwd` is not a directory"
    );
}

#[tokio::test]
async fn exec_runs_in_cwd() {
    let agent = TestAgent::start().await;
    let dir = agent.path("work dir");
    std::fs::create_dir(&dir).unwrap();
    let result = run(
        &agent,
        ExecRequest {
            cwd: Some(dir.clone()),
            ..command("pwd")
        },
    )
    .await;
    assert_eq!(result.stdout, format!("{dir}\n"));
}

#[tokio::test]
async fn exec_invalid_requests_are_rejected() {
    let agent = TestAgent::start().await;
    let cases = [
        (command("   "), "invalid_command"),
        (
            ExecRequest {
                timeout: Some(-1.0),
                ..command("true")
            },
            "invalid_timeout",
        ),
        (
            ExecRequest {
                user: Some("no-such-user".into()),
                ..command("true")
            },
            "user_not_found",
        ),
        (
            ExecRequest {
                env: BTreeMap::from([("A=B".to_owned(), "x".to_owned())]),
                ..command("true")
            },
            "invalid_env",
        ),
        (
            ExecRequest {
                cwd: Some("relative".into()),
                ..command("true")
            },
            "invalid_path",
        ),
    ];
    for (request, expected_code) in cases {
        let (status, code, _) = run_err(&agent, request).await;
        assert_eq!(status, 400, "{expected_code}");
        assert_eq!(code, expected_code);
    }
}

#[tokio::test]
async fn exec_unknown_user_names_user() {
    let agent = TestAgent::start().await;
    let (_, _, message) = run_err(
        &agent,
        ExecRequest {
            user: Some("no-such-user".into()),
            ..command("true")
        },
    )
    .await;
    assert_eq!(
        message,
        "user `no-such-user` not found in /etc/passwd; pass an existing user name or a numeric uid"
    );
}

#[tokio::test]
async fn exec_env_defaults_and_overrides() {
    let agent = TestAgent::start().await;
    let result = run(
        &agent,
        ExecRequest {
            env: BTreeMap::from([
                ("FOO".to_owned(), "a b=c ✓".to_owned()),
                ("HOME".to_owned(), "/custom".to_owned()),
            ]),
            ..command(r#"printf '%s|%s|%s|%s|%s' "$FOO" "$HOME" "$USER" "$LOGNAME" "$PATH""#)
        },
    )
    .await;
    assert_eq!(
        result.stdout,
        "a b=c ✓|/custom|root|root|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
}

#[tokio::test]
async fn exec_environment_is_not_inherited() {
    let agent = TestAgent::start().await;
    // cargo sets CARGO_MANIFEST_DIR for the test process; the command must not see it.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let result = run(&agent, command("env | cut -d= -f1 | sort")).await;
    let names: Vec<&str> = result.stdout.lines().collect();
    for expected in ["HOME", "LOGNAME", "PATH", "USER"] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(!names.contains(&"CARGO_MANIFEST_DIR"), "{names:?}");
}

#[tokio::test]
async fn exec_as_nobody_switches_ids() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let agent = TestAgent::start().await;
    let result = run(
        &agent,
        ExecRequest {
            user: Some("nobody".into()),
            ..command("id -u; id -g; echo $USER; pwd")
        },
    )
    .await;
    // nobody's home, /nonexistent, does not exist, so the command starts in `/`.
    assert_eq!(result.stdout, "65534\n65534\nnobody\n/\n");
}

#[tokio::test]
async fn exec_numeric_uid_without_entry() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let agent = TestAgent::start().await;
    let result = run(
        &agent,
        ExecRequest {
            user: Some("4242".into()),
            ..command("id -u; id -g; id -G")
        },
    )
    .await;
    assert_eq!(result.stdout, "4242\n4242\n4242\n");
}

#[tokio::test]
async fn exec_output_is_capped() {
    let agent = TestAgent::start().await;
    let result = run(
        &agent,
        command("head -c 17000000 /dev/zero | tr '\\0' a; echo done >&2"),
    )
    .await;
    assert_eq!(result.exit_code, 0);
    assert!(result.truncated);
    assert_eq!(result.stdout.len(), EXEC_OUTPUT_LIMIT);
    assert!(result.stdout.bytes().all(|b| b == b'a'));
    assert_eq!(result.stderr, "done\n");
}

#[tokio::test]
async fn exec_invalid_utf8_is_replaced() {
    let agent = TestAgent::start().await;
    let result = run(&agent, command(r"printf 'a\377b'")).await;
    assert_eq!(result.stdout, "a\u{FFFD}b");
}

#[tokio::test]
async fn exec_reports_duration() {
    let agent = TestAgent::start().await;
    let result = run(&agent, command("sleep 0.2")).await;
    assert!(result.duration_ms >= 200, "{}", result.duration_ms);
    assert!(result.duration_ms < 1000, "{}", result.duration_ms);
}

#[tokio::test]
async fn exec_20_concurrent_on_one_connection() {
    let agent = TestAgent::start().await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let client = agent.client.clone();
            tokio::spawn(async move {
                client
                    .exec(&command(&format!("sleep 0.5; echo {i}")))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        assert_eq!(result.exit_code, 0);
        assert_eq!(result.stdout, format!("{i}\n"));
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

#[tokio::test]
async fn exec_cancelled_request_kills_group() {
    let agent = TestAgent::start().await;
    let marker = agent.path("pid");
    let request = command(&format!("echo $$ > '{marker}'; sleep 30"));
    let cancelled =
        tokio::time::timeout(Duration::from_millis(500), agent.client.exec(&request)).await;
    assert!(cancelled.is_err(), "the exec should still be running");

    let pgid: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !processes_in_group(pgid).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(processes_in_group(pgid), Vec::<i32>::new());
}

#[tokio::test]
async fn health_reports_version_pid_and_shell() {
    let agent = TestAgent::start().await;
    let health = agent.client.health().await.unwrap();
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(health.pid, std::process::id());
    assert!(health.shell);
    assert!(!agent.client.is_closed());
}
