//! The `gitvm-node` binary starts the node engine against the real dockerd.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn gitvm_node_serves_health() {
    let data_dir = tempfile::tempdir().unwrap();
    // Any existing file will do as the agent here: this test creates no sandbox.
    let agent_bin = env!("CARGO_BIN_EXE_gitvm-node");
    let mut child = Command::new(agent_bin)
        .args(["--port", "0", "--data-dir"])
        .arg(data_dir.path())
        .args(["--agent-bin", agent_bin])
        // Without QEMU the node runs Docker alone.
        .args(["--qemu-bin", "/nonexistent/qemu-system-x86_64"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("gitvm server listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let body: serde_json::Value = runtime.block_on(async {
        let response = http_get(&format!("{url}/health")).await;
        serde_json::from_str(&response).unwrap()
    });
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(body["status"], "ok");
    assert_eq!(body["runtimes"], serde_json::json!(["docker"]));
    assert!(data_dir.path().join("gitvm.db").exists());
}

/// Fetches `url` with a plain HTTP/1.1 request over TCP.
async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

#[test]
fn empty_api_key_fails_at_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_gitvm-node");
    let from_flag = Command::new(binary)
        .args(["--port", "0", "--api-key", "", "--data-dir"])
        .arg(data_dir.path())
        .args(["--agent-bin", binary])
        .env_remove("GITVM_API_KEY")
        .output()
        .unwrap();
    let from_env = Command::new(binary)
        .args(["--port", "0", "--data-dir"])
        .arg(data_dir.path())
        .args(["--agent-bin", binary])
        .env("GITVM_API_KEY", "")
        .output()
        .unwrap();

    for output in [from_flag, from_env] {
        assert!(!output.status.success());
        assert!(output.stdout.is_empty(), "the API must not start");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--api-key is empty; pass a non-empty key or leave the option out"),
            "{stderr}"
        );
    }
}

#[test]
fn second_node_on_locked_data_dir_fails() {
    let data_dir = tempfile::tempdir().unwrap();
    let _held = gitvm_node::lock::DataDirLock::acquire(data_dir.path()).unwrap();
    let binary = env!("CARGO_BIN_EXE_gitvm-node");

    let output = Command::new(binary)
        .args(["--port", "0", "--data-dir"])
        .arg(data_dir.path())
        .args(["--agent-bin", binary])
        .output()
        .unwrap();

    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "the API must not start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "data directory {} is in use by another gitvm server (pid {}); stop it or pass another --data-dir",
        data_dir.path().display(),
        std::process::id()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(
        !data_dir.path().join("gitvm.db").exists(),
        "the store must not be opened"
    );
}
