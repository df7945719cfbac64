//! Helpers shared by the agent's integration tests.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use gitvm_agent::client::AgentClient;
use gitvm_agent::server;
use tempfile::TempDir;

/// A real agent server on a Unix socket in a temporary directory, with a connected client.
pub struct TestAgent {
    /// Temporary directory holding the socket; also free for test files.
    pub dir: TempDir,
    /// Path of the agent's socket.
    pub socket: PathBuf,
    /// Client connected to the agent.
    pub client: AgentClient,
}

impl TestAgent {
    /// Starts the server as a task on the current runtime and connects to it.
    pub async fn start() -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = server::bind(&socket).unwrap();
        tokio::spawn(server::serve(listener));
        let client = AgentClient::connect_unix(&socket).await.unwrap();
        TestAgent {
            dir,
            socket,
            client,
        }
    }

    /// Returns `name` inside the temporary directory, as a string.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }
}

/// Returns the pids of live or zombie processes whose process group is `pgid`, read from
/// `/proc/PID/stat`.
pub fn processes_in_group(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name, which may itself contain spaces and parentheses:
        // state ppid pgrp ...
        let Some(after_comm) = stat.rfind(')').map(|end| &stat[end + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        if fields.get(2).and_then(|pgrp| pgrp.parse::<i32>().ok()) == Some(pgid) {
            pids.push(pid);
        }
    }
    pids
}

/// Returns true when `/proc/PID` exists and the process is not a zombie.
pub fn is_running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
    else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// Splits an NDJSON body of [`gitvm_proto::ExecEvent`]s into events as its frames arrive.
pub struct EventReader {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
}

impl EventReader {
    /// Reads `body`.
    pub fn new(body: hyper::body::Incoming) -> EventReader {
        EventReader {
            body,
            buffer: Vec::new(),
        }
    }

    /// Returns the next event, or `None` at the end of the body.
    pub async fn next(&mut self) -> Option<gitvm_proto::ExecEvent> {
        use http_body_util::BodyExt;

        loop {
            if let Some(end) = self.buffer.iter().position(|&byte| byte == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame.unwrap().into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                None => {
                    assert!(self.buffer.is_empty(), "unterminated line at end of body");
                    return None;
                }
            }
        }
    }

    /// Reads every remaining event.
    pub async fn rest(&mut self) -> Vec<gitvm_proto::ExecEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }

    /// Returns the bytes of the next event, which must be a stdout chunk.
    pub async fn next_stdout(&mut self) -> Vec<u8> {
        match self.next().await {
            Some(event @ gitvm_proto::ExecEvent::Stdout { .. }) => event.bytes().unwrap().unwrap(),
            other => panic!("expected a stdout chunk, got {other:?}"),
        }
    }
}
