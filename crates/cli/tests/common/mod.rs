//! Test harness: runs the real `gitvm` binary as a server on a loopback port with its own data
//! directory, against the real dockerd, and cleans up its sandboxes afterwards.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use gitvm_sdk::{Client, CreateSandboxRequest, ExecRequest, ExecResult, Sandbox};

/// Cache of guest kernels and root disks shared by the tests of one checkout:
/// `GITVM_TEST_CACHE`, or `target/gitvm-test-cache`.
pub fn test_cache_dir() -> PathBuf {
    std::env::var_os("GITVM_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/gitvm-test-cache")
        })
}

/// Path of the `gitvm` binary under test.
pub fn gitvm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gitvm"))
}

/// A running `gitvm server start` process.
pub struct Server {
    child: Option<Child>,
    /// Base URL, such as `http://127.0.0.1:40123`.
    pub url: String,
    /// Data directory; kept across restarts of the same test.
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    /// API key the server requires, if any.
    pub api_key: Option<String>,
    /// SDK client bound to this server.
    pub client: Client,
    /// Extra `server start` arguments, reused by [`Server::restart`].
    extra: Vec<String>,
}

impl Server {
    /// Starts a server with a fresh data directory.
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// Starts a server with a fresh data directory and extra `server start` arguments.
    pub fn start_with(extra: &[&str]) -> Server {
        let temp = tempfile::Builder::new()
            .prefix("gitvm-test-")
            .tempdir()
            .expect("create data dir");
        let data_dir = temp.path().to_path_buf();
        let mut server = Self::spawn(&data_dir, extra);
        server._temp = Some(temp);
        server
    }

    /// Starts a server on an existing data directory.
    pub fn spawn(data_dir: &Path, extra: &[&str]) -> Server {
        ensure_base_image();
        let mut command = Command::new(gitvm_bin());
        command
            .args(["server", "start", "--port", "0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(data_dir.join("server.log"))
                    .expect("open server log"),
            ));
        let mut child = command.spawn().expect("spawn gitvm server");
        let stdout = child.stdout.take().expect("server stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let url = loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("gitvm server listening on ") {
                        break url.trim().to_string();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let log =
                        std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default();
                    panic!("server did not print its address within 30 s; log:\n{log}");
                }
            }
        };
        let api_key = extra
            .windows(2)
            .find(|pair| pair[0] == "--api-key")
            .map(|pair| pair[1].to_string());
        let client = Client::new(&url, api_key.clone()).expect("client");
        Server {
            child: Some(child),
            url,
            data_dir: data_dir.to_path_buf(),
            _temp: None,
            api_key,
            client,
            extra: extra.iter().map(|arg| arg.to_string()).collect(),
        }
    }

    /// Starts a server whose default runtime is qemu, under TCG, with the test cache of
    /// kernels and root disks that every test shares.
    pub fn start_qemu(extra: &[&str]) -> Server {
        let cache = test_cache_dir();
        let mut args = vec![
            "--default-runtime",
            "qemu",
            "--qemu-accel",
            "tcg",
            "--cache-dir",
            cache.to_str().expect("UTF-8 cache path"),
        ];
        // Several TCG guests boot at once on the test machine, each slower than alone.
        if !extra.contains(&"--ready-timeout") {
            args.extend(["--ready-timeout", "120"]);
        }
        args.extend_from_slice(extra);
        Self::start_with(&args)
    }

    /// Kills the server with SIGKILL, leaving its sandboxes running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9 server");
            child.wait().expect("reap server");
        }
    }

    /// Starts the server again on the same data directory, after [`Server::kill9`].
    pub fn restart(&mut self) {
        self.kill9();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let fresh = Self::spawn(&self.data_dir, &extra);
        self.url = fresh.url.clone();
        self.client = fresh.client.clone();
        self.child = fresh.child_take();
    }

    fn child_take(mut self) -> Option<Child> {
        self.child.take()
    }

    /// Runs the `gitvm` CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(gitvm_bin());
        command.args(args).env("GITVM_SERVER", &self.url);
        match &self.api_key {
            Some(key) => command.env("GITVM_API_KEY", key),
            None => command.env_remove("GITVM_API_KEY"),
        };
        command.output().expect("run gitvm CLI")
    }

    /// Creates a sandbox from the base template that lives for 10 minutes.
    pub async fn create(&self) -> Sandbox {
        self.client
            .create_sandbox(&CreateSandboxRequest {
                timeout: Some(600),
                ..Default::default()
            })
            .await
            .expect("create sandbox")
    }

    /// Runs `command` in sandbox `id` with default options.
    pub async fn exec(&self, id: &str, command: &str) -> ExecResult {
        self.client
            .exec(
                id,
                &ExecRequest {
                    command: command.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("exec `{command}` in {id}: {e}"))
    }

    /// Reads the server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Drop cannot be async: delete what the test left behind on a runtime of its own,
            // with a client of its own, because the test's client keeps its connections on the
            // test's runtime, which is blocked here.
            let client = Client::new(&self.url, self.api_key.clone()).expect("cleanup client");
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("cleanup runtime");
                runtime.block_on(async {
                    let filter = gitvm_sdk::ListFilter::default();
                    if let Ok(sandboxes) = client.list_sandboxes(&filter).await {
                        for sandbox in sandboxes {
                            let _ = client.delete_sandbox(&sandbox.id).await;
                        }
                    }
                    if let Ok(snapshots) = client.list_snapshots().await {
                        for snapshot in snapshots {
                            let _ = client.delete_snapshot(&snapshot.id).await;
                        }
                    }
                });
            })
            .join();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Fails with the fix when the base template has not been built.
pub fn ensure_base_image() {
    let output = Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            "gitvm-base:bookworm",
        ])
        .output()
        .expect("run docker; is docker.io installed?");
    assert!(
        output.status.success(),
        "the base template image is missing; build it with `gitvm template build base` (scripts/test.sh does): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Ids of containers that carry the label `gitvm.sandbox=<id>`, in any state.
pub fn containers_labelled(sandbox_id: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=gitvm.sandbox={sandbox_id}"),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Returns the status and API error code of an SDK error; panics on any other result.
pub fn api_error(result: Result<impl std::fmt::Debug, gitvm_sdk::Error>) -> (u16, String) {
    let (status, code, _) = api_error_message(result);
    (status, code)
}

/// Returns the status, code and message of an API error; panics on success or another error.
pub fn api_error_message(
    result: Result<impl std::fmt::Debug, gitvm_sdk::Error>,
) -> (u16, String, String) {
    match result {
        Err(gitvm_sdk::Error::Api { status, body }) => (status, body.code, body.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Reads the NDJSON events of a streamed response (`exec/stream`, process output) as its
/// chunks arrive.
pub struct EventReader {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl EventReader {
    /// Checks that `response` is a 200 NDJSON stream and reads it.
    pub fn new(response: reqwest::Response) -> EventReader {
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "application/x-ndjson"
        );
        EventReader {
            response,
            buffer: Vec::new(),
        }
    }

    /// Returns the next event, or `None` at the end of the body.
    pub async fn next(&mut self) -> Option<gitvm_sdk::ExecEvent> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&byte| byte == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            match self.response.chunk().await.expect("read stream") {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => {
                    assert!(self.buffer.is_empty(), "unterminated line at end of body");
                    return None;
                }
            }
        }
    }

    /// Reads every remaining event.
    pub async fn rest(&mut self) -> Vec<gitvm_sdk::ExecEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }

    /// Returns the text of the next event, which must be a stdout chunk.
    pub async fn next_stdout(&mut self) -> String {
        match self.next().await {
            Some(event @ gitvm_sdk::ExecEvent::Stdout { .. }) => {
                String::from_utf8(event.bytes().unwrap().unwrap()).unwrap()
            }
            other => panic!("expected a stdout chunk, got {other:?}"),
        }
    }
}

/// Reads a whole file out of sandbox `id`.
pub async fn read_to_vec(server: &Server, id: &str, path: &str) -> Vec<u8> {
    use futures_util::StreamExt;
    let mut stream = server.client.read_file(id, path).await.unwrap();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk.unwrap());
    }
    data
}
