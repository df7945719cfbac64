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
