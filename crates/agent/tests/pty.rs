//! Interactive terminals (`POST /pty`) of a real agent server, over a real Unix socket.

mod common;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{is_running, TestAgent};
use gitvm_agent::client::{AgentError, BoxError, RequestBody};
use gitvm_proto::ExecEvent;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use tokio::sync::mpsc;

/// Upper bound of every wait for terminal output.
const WAIT: Duration = Duration::from_secs(10);

/// Request body fed from a channel, standing in for a user typing.
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|bytes| bytes.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// One open terminal: its input channel, its event body and the output seen so far.
struct Terminal {
    input: mpsc::UnboundedSender<Bytes>,
    body: Incoming,
    buffer: Vec<u8>,
    output: String,
    pid: u32,
}

impl Terminal {
    async fn open(agent: &TestAgent, cols: u16, rows: u16, command: Option<&str>) -> Terminal {
        let (input, receiver) = mpsc::unbounded_channel();
        let body: RequestBody = ChannelBody(receiver).boxed();
        let body = agent
            .client
            .pty(cols, rows, command, &BTreeMap::new(), body)
            .await
            .unwrap();
        let mut terminal = Terminal {
            input,
            body,
            buffer: Vec::new(),
            output: String::new(),
            pid: 0,
        };
        match terminal.next_event().await {
            Some(ExecEvent::Start { pid }) => terminal.pid = pid,
            other => panic!("expected a start event, got {other:?}"),
        }
        terminal
    }

    fn type_line(&self, line: &str) {
        self.input
            .send(Bytes::from(format!("{line}\n")))
            .expect("terminal input closed");
    }

    async fn next_event(&mut self) -> Option<ExecEvent> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&byte| byte == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let frame = self.body.frame().await?.unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffer.extend_from_slice(&data);
            }
        }
    }

    /// Reads output until it contains `needle`; panics with the output after [`WAIT`].
    async fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.output.contains(needle) {
            let event = tokio::time::timeout_at(deadline.into(), self.next_event())
                .await
                .unwrap_or_else(|_| {
                    panic!("no `{needle}` within {WAIT:?}; output: {:?}", self.output)
                });
            match event {
                Some(event @ ExecEvent::Stdout { .. }) => {
                    let bytes = event.bytes().unwrap().unwrap();
                    self.output.push_str(&String::from_utf8_lossy(&bytes));
                }
                other => panic!(
                    "expected output containing `{needle}`, got {other:?}; output: {:?}",
                    self.output
                ),
            }
        }
    }

    /// Reads events until `exit` and returns its exit code.
    async fn wait_for_exit(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            let event = tokio::time::timeout_at(deadline.into(), self.next_event())
                .await
                .expect("no exit event in time");
            match event {
                Some(ExecEvent::Stdout { .. }) => {}
                Some(ExecEvent::Exit { exit_code, .. }) => return exit_code,
                other => panic!("expected output or exit, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn pty_shell_runs_on_terminal() {
    let agent = TestAgent::start().await;
    let mut terminal = Terminal::open(&agent, 80, 24, Some("/bin/sh")).await;

    terminal.type_line("tty");
    terminal.wait_for("/dev/pts/").await;
    // The echoed input shows `$((6*7))`, so only the shell's output can end a line with 42.
    terminal.type_line("echo $((6*7))");
    terminal.wait_for("42\r\n").await;
    terminal.type_line("exit");

    assert_eq!(terminal.wait_for_exit().await, 0);
    assert!(terminal.next_event().await.is_none());
}

#[tokio::test]
async fn pty_exit_code_of_shell() {
    let agent = TestAgent::start().await;
    let mut terminal = Terminal::open(&agent, 80, 24, Some("/bin/sh")).await;

    terminal.type_line("exit 7");

    assert_eq!(terminal.wait_for_exit().await, 7);
}

#[tokio::test]
async fn pty_resize_changes_stty_size() {
    let agent = TestAgent::start().await;
    let mut terminal = Terminal::open(&agent, 80, 24, Some("/bin/sh")).await;
    terminal.type_line("stty size");
    terminal.wait_for("24 80\r\n").await;

    agent
        .client
        .pty_resize(terminal.pid, 132, 43)
        .await
        .unwrap();
    terminal.type_line("stty size");

    terminal.wait_for("43 132\r\n").await;
    terminal.type_line("exit");
    assert_eq!(terminal.wait_for_exit().await, 0);
}

#[tokio::test]
async fn pty_resize_unknown_pid_not_found() {
    let agent = TestAgent::start().await;

    let error = agent.client.pty_resize(999_999, 80, 24).await.unwrap_err();

    match error {
        AgentError::Remote { status, body } => {
            assert_eq!(status, 404);
            assert_eq!(body.code, "pty_not_found");
        }
        other => panic!("expected a 404, got {other}"),
    }
}

#[tokio::test]
async fn pty_zero_size_rejected() {
    let agent = TestAgent::start().await;
    let (_input, receiver) = mpsc::unbounded_channel();

    let error = agent
        .client
        .pty(0, 24, None, &BTreeMap::new(), ChannelBody(receiver).boxed())
        .await
        .unwrap_err();

    match error {
        AgentError::Remote { status, body } => {
            assert_eq!(status, 400);
            assert_eq!(body.code, "invalid_size");
        }
        other => panic!("expected a 400, got {other}"),
    }
}

#[tokio::test]
async fn pty_dropped_stream_hangs_up_shell() {
    let agent = TestAgent::start().await;
    let mut terminal = Terminal::open(&agent, 80, 24, Some("/bin/sh")).await;
    terminal.type_line("echo rea''dy");
    terminal.wait_for("ready\r\n").await;
    let pid = terminal.pid as i32;
    assert!(is_running(pid));

    drop(terminal);

    let deadline = Instant::now() + WAIT;
    while is_running(pid) {
        assert!(
            Instant::now() < deadline,
            "shell {pid} still running after the stream was dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
