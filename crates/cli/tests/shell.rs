//! `gitvm vm shell` end to end: the real server, real dockerd, the agent inside the sandbox, and
//! a real terminal from tmux for the interactive case.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{gitvm_bin, Server};

/// Upper bound of every wait for terminal output.
const WAIT: Duration = Duration::from_secs(10);

/// A tmux server of its own (`tmux -L NAME`), killed on drop.
struct Tmux {
    socket: String,
    socket_path: String,
}

impl Tmux {
    /// Starts a detached 100x30 session whose pane runs `sh` with a prompt the sandbox's
    /// shell does not use.
    fn start(name: &str) -> Tmux {
        let mut tmux = Tmux {
            socket: format!("gitvm-test-{name}-{}", std::process::id()),
            socket_path: String::new(),
        };
        let status = tmux
            .command()
            .args(["-f", "/dev/null", "new-session", "-d", "-s", "main"])
            .args(["-x", "100", "-y", "30", "env PS1='local$ ' sh"])
            .status()
            .expect("run tmux; install it with `apt-get install tmux`");
        assert!(status.success(), "tmux new-session failed");
        tmux.socket_path = tmux.display("#{socket_path}");
        tmux
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.args(["-L", &self.socket]);
        command
    }

    /// Types `text` and presses Enter.
    fn type_line(&self, text: &str) {
        let status = self
            .command()
            .args(["send-keys", "-t", "main", "-l", text])
            .status()
            .unwrap();
        assert!(status.success());
        let status = self
            .command()
            .args(["send-keys", "-t", "main", "Enter"])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Returns the pane's visible text, wrapped lines joined.
    fn capture(&self) -> String {
        let output = self
            .command()
            .args(["capture-pane", "-p", "-J", "-t", "main"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Polls the pane until it contains `needle`, for up to [`WAIT`]; returns the pane text.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let pane = self.capture();
            if pane.contains(needle) {
                return pane;
            }
            assert!(
                Instant::now() < deadline,
                "pane shows no `{needle}` within {WAIT:?}:\n{pane}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Returns the path of the pane's terminal, such as `/dev/pts/3`.
    fn pane_tty(&self) -> String {
        self.display("#{pane_tty}")
    }

    /// Expands a tmux format string for the session.
    fn display(&self, format: &str) -> String {
        let output = self
            .command()
            .args(["display-message", "-p", "-t", "main", format])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").status();
        // tmux leaves its socket file behind when the server is killed.
        if !self.socket_path.is_empty() {
            let _ = std::fs::remove_file(&self.socket_path);
        }
    }
}

/// Returns the settings words of `stty -a` output, such as `icanon` or `-echo`.
fn stty_words(stty: &str) -> Vec<String> {
    stty.split([' ', ';', '\n'])
        .map(str::to_owned)
        .filter(|word| !word.is_empty())
        .collect()
}

fn stty_of(tty: &str) -> Vec<String> {
    let output = Command::new("stty")
        .args(["-a", "-F", tty])
        .output()
        .unwrap();
    assert!(output.status.success(), "stty -F {tty} failed");
    stty_words(&String::from_utf8_lossy(&output.stdout))
}

/// Returns true when `pane` shows a terminal path `/dev/pts/N` with N a number.
fn shows_pts_path(pane: &str) -> bool {
    pane.match_indices("/dev/pts/").any(|(start, needle)| {
        pane[start + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

#[tokio::test]
async fn shell_under_tmux_runs_and_restores_terminal() {
    let server = Server::start();
    let sandbox = server.create().await;
    let tmux = Tmux::start("interactive");
    let pane_tty = tmux.pane_tty();
    let dir = tempfile::tempdir().unwrap();
    let stty_file = dir.path().join("stty.txt");

    tmux.type_line(&format!(
        "GITVM_SERVER={} {} vm shell {}; echo gitvm-exit=$?",
        server.url,
        gitvm_bin().display(),
        sandbox.id
    ));
    // The pane's own prompt is `local$ `, so `root@` comes from the sandbox's login shell.
    tmux.wait_for("root@");
    let raw = stty_of(&pane_tty);
    assert!(raw.contains(&"-icanon".to_owned()), "not raw: {raw:?}");
    assert!(raw.contains(&"-echo".to_owned()), "not raw: {raw:?}");

    tmux.type_line("tty");
    let pane = tmux.wait_for("/dev/pts/");
    assert!(shows_pts_path(&pane), "no /dev/pts/N in:\n{pane}");
    tmux.type_line("echo $((6*7))");
    let pane = tmux.wait_for("\n42\n");
    // The typed command line shows `gitvm-exit=$?` once; a second match would be its output.
    assert_eq!(
        pane.matches("gitvm-exit=").count(),
        1,
        "gitvm exited early:\n{pane}"
    );

    tmux.type_line("exit");
    tmux.wait_for("gitvm-exit=0");
    tmux.type_line(&format!("stty -a > {}", stty_file.display()));
    let stty = wait_for_file(&stty_file);
    let words = stty_words(&stty);
    assert!(words.contains(&"icanon".to_owned()), "stty -a: {stty}");
    assert!(words.contains(&"echo".to_owned()), "stty -a: {stty}");
    assert!(!words.contains(&"-icanon".to_owned()), "stty -a: {stty}");
}

/// Waits until `path` exists with a complete last line, for up to [`WAIT`].
fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} not written within {WAIT:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `gitvm vm shell ID` with `input` on a pipe, killing it after 30 s.
fn shell_with_piped_input(server: &Server, id: &str, input: &str) -> Output {
    let mut command = Command::new(gitvm_bin());
    command
        .args(["vm", "shell", id])
        .env("GITVM_SERVER", &server.url);
    match &server.api_key {
        Some(key) => command.env("GITVM_API_KEY", key),
        None => command.env_remove("GITVM_API_KEY"),
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "gitvm vm shell still running after 30 s; stdout: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn shell_piped_input_exit_code() {
    let server = Server::start();
    let sandbox = server.create().await;

    // The terminal echoes the input line, so only the shell's output contains `hi-42`.
    let output = shell_with_piped_input(&server, &sandbox.id, "echo hi-$((6*7)); exit 3\n");

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("hi-42"), "stdout: {stdout}");
    assert_eq!(output.status.code(), Some(3), "stdout: {stdout}");
}

#[tokio::test]
async fn shell_piped_input_ends_at_eof() {
    let server = Server::start();
    let sandbox = server.create().await;

    let output = shell_with_piped_input(&server, &sandbox.id, "echo done-$((1+1))\n");

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("done-2"), "stdout: {stdout}");
    assert_eq!(output.status.code(), Some(0), "stdout: {stdout}");
}

#[tokio::test]
async fn shell_stopped_sandbox_conflict() {
    let server = Server::start();
    let sandbox = server.create().await;
    server.client.lifecycle(&sandbox.id, "stop").await.unwrap();

    let response = reqwest::get(format!("{}/sandboxes/{}/pty", server.url, sandbox.id))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "invalid_state");

    let output = server.cli(&["vm", "shell", &sandbox.id]);
    assert_eq!(output.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot open a terminal in sandbox {}", sandbox.id)),
        "stderr: {stderr}"
    );
}

#[tokio::test]
async fn shell_sends_api_key() {
    let server = Server::start_with(&["--api-key", "pty-test-key"]);
    let sandbox = server.create().await;

    let output = shell_with_piped_input(&server, &sandbox.id, "echo key-$((2*3)); exit 0\n");

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("key-6"), "stdout: {stdout}");
    assert_eq!(output.status.code(), Some(0), "stdout: {stdout}");

    let unauthorized = Command::new(gitvm_bin())
        .args(["vm", "shell", &sandbox.id])
        .env("GITVM_SERVER", &server.url)
        .env_remove("GITVM_API_KEY")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(unauthorized.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&unauthorized.stderr);
    assert!(stderr.contains("missing API key"), "stderr: {stderr}");
}

#[tokio::test]
async fn shell_sees_sandbox_env_vars() {
    let server = Server::start();
    let sandbox = server
        .client
        .create_sandbox(&gitvm_sdk::CreateSandboxRequest {
            timeout: Some(600),
            env_vars: [("PROJECT".to_string(), "gitvm-shell".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // `${PROJECT}-ok` appears only in the shell's output, not in the echoed input line.
    let output = shell_with_piped_input(&server, &sandbox.id, "echo ${PROJECT}-ok; exit 0\n");

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("gitvm-shell-ok"), "stdout: {stdout}");
    assert_eq!(output.status.code(), Some(0), "stdout: {stdout}");
}
