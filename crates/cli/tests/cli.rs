//! The `gitvm` command line, run as a real binary against a real server.

mod common;

use common::Server;

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Creates a sandbox with `gitvm vm create` and returns its id.
fn create_with_cli(server: &Server) -> String {
    let created = server.cli(&["vm", "create", "--timeout", "600"]);
    assert!(created.status.success(), "{}", stderr(&created));
    stdout(&created).trim().to_string()
}

#[tokio::test]
async fn vm_commands_end_to_end() {
    let server = Server::start();
    let created = server.cli(&["vm", "create", "--timeout", "600", "--env", "NAME=gitvm"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let id = stdout(&created).trim().to_string();
    assert!(id.starts_with("sb-"), "{id}");

    let hello = server.cli(&["vm", "exec", &id, "--", "echo", "hello", "world"]);
    assert_eq!(stdout(&hello), "hello world\n");
    assert_eq!(hello.status.code(), Some(0));

    let exit3 = server.cli(&["vm", "exec", &id, "--", "sh", "-c", "exit 3"]);
    assert_eq!(exit3.status.code(), Some(3));

    let binary = server.cli(&["vm", "exec", &id, "--", "printf '\\377\\000\\001'"]);
    assert_eq!(binary.stdout, vec![0xff, 0x00, 0x01]);

    let env = server.cli(&["vm", "exec", &id, "--", "echo $NAME"]);
    assert_eq!(stdout(&env), "gitvm\n");

    let stderr_only = server.cli(&["vm", "exec", &id, "--", "echo oops >&2"]);
    assert_eq!(stdout(&stderr_only), "");
    assert_eq!(stderr(&stderr_only), "oops\n");

    let cwd = server.cli(&["vm", "exec", &id, "--cwd", "/tmp", "--", "pwd"]);
    assert_eq!(stdout(&cwd), "/tmp\n");

    let listed = server.cli(&["vm", "list", "--json"]);
    let sandboxes: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(sandboxes[0]["id"], id.as_str());
    assert_eq!(sandboxes[0]["state"], "running");

    let table = server.cli(&["vm", "list"]);
    assert!(stdout(&table).starts_with("ID"), "{}", stdout(&table));
    assert!(stdout(&table).contains(&id));

    for (action, state) in [
        ("pause", "paused"),
        ("resume", "running"),
        ("stop", "stopped"),
        ("start", "running"),
    ] {
        let output = server.cli(&["vm", action, &id]);
        assert!(output.status.success(), "{action}: {}", stderr(&output));
        assert_eq!(stdout(&output), format!("{id} {state}\n"));
    }

    let never = server.cli(&["vm", "timeout", &id, "0"]);
    assert_eq!(stdout(&never), format!("{id} expires never\n"));

    let got = server.cli(&["vm", "get", &id, "--json"]);
    let sandbox: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(sandbox["envVars"]["NAME"], "gitvm");
    assert_eq!(sandbox["expiresAt"], serde_json::Value::Null);

    let removed = server.cli(&["vm", "rm", &id]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    let gone = server.cli(&["vm", "exec", &id, "--", "true"]);
    assert_eq!(gone.status.code(), Some(125));
    assert!(
        stderr(&gone).contains("invalid_state") || stderr(&gone).contains("deleted"),
        "{}",
        stderr(&gone)
    );
}

#[tokio::test]
async fn files_and_snapshot_commands() {
    let server = Server::start();
    let id = create_with_cli(&server);
    let local = tempfile::tempdir().unwrap();
    let source = local.path().join("in.txt");
    std::fs::write(&source, "payload\n").unwrap();

    let put = server.cli(&[
        "vm",
        "files",
        "put",
        &id,
        source.to_str().unwrap(),
        "/work/dir/in.txt",
    ]);
    assert!(put.status.success(), "{}", stderr(&put));
    let ls = server.cli(&["vm", "files", "ls", &id, "/work/dir", "--json"]);
    let entries: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(entries[0]["name"], "in.txt");
    assert_eq!(entries[0]["size"], 8);
    let cat = server.cli(&["vm", "files", "get", &id, "/work/dir/in.txt"]);
    assert_eq!(stdout(&cat), "payload\n");
    let target = local.path().join("out.txt");
    let get = server.cli(&[
        "vm",
        "files",
        "get",
        &id,
        "/work/dir/in.txt",
        target.to_str().unwrap(),
    ]);
    assert!(get.status.success(), "{}", stderr(&get));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "payload\n");
    let mkdir = server.cli(&["vm", "files", "mkdir", &id, "/work/new/deep"]);
    assert!(mkdir.status.success(), "{}", stderr(&mkdir));

    let snap = server.cli(&["snapshot", "create", &id]);
    assert!(snap.status.success(), "{}", stderr(&snap));
    let snap_id = stdout(&snap).trim().to_string();
    let list = server.cli(&["snapshot", "list"]);
    assert!(stdout(&list).contains(&snap_id));
    assert!(stdout(&list).contains("filesystem"));
    let restored = server.cli(&["snapshot", "restore", &snap_id, "--timeout", "600"]);
    assert!(restored.status.success(), "{}", stderr(&restored));
    let new_id = stdout(&restored).trim().to_string();
    let check = server.cli(&["vm", "exec", &new_id, "--", "cat", "/work/dir/in.txt"]);
    assert_eq!(stdout(&check), "payload\n");
    let rm = server.cli(&["vm", "files", "rm", &id, "/work/dir"]);
    assert!(rm.status.success(), "{}", stderr(&rm));
    let missing = server.cli(&["vm", "files", "get", &id, "/work/dir/in.txt"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("/work/dir/in.txt"),
        "{}",
        stderr(&missing)
    );
    let snap_rm = server.cli(&["snapshot", "rm", &snap_id]);
    assert!(snap_rm.status.success(), "{}", stderr(&snap_rm));
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let output = std::process::Command::new(common::gitvm_bin())
        .args(["vm", "list"])
        .env("GITVM_SERVER", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("127.0.0.1:9"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bad_env_pair_is_rejected_before_any_request() {
    let output = std::process::Command::new(common::gitvm_bin())
        .args(["vm", "create", "--env", "NOEQUALS"])
        .env("GITVM_SERVER", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("invalid --env `NOEQUALS`"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn files_to_directories_keep_names() {
    let server = Server::start();
    let id = create_with_cli(&server);
    let local = tempfile::tempdir().unwrap();
    let source = local.path().join("report.txt");
    std::fs::write(&source, "numbers\n").unwrap();

    let put = server.cli(&[
        "vm",
        "files",
        "put",
        &id,
        source.to_str().unwrap(),
        "/work/out/",
    ]);
    assert!(put.status.success(), "{}", stderr(&put));
    let cat = server.cli(&["vm", "exec", &id, "--", "cat", "/work/out/report.txt"]);
    assert_eq!(stdout(&cat), "numbers\n");

    let downloads = tempfile::tempdir().unwrap();
    let get = server.cli(&[
        "vm",
        "files",
        "get",
        &id,
        "/work/out/report.txt",
        downloads.path().to_str().unwrap(),
    ]);
    assert!(get.status.success(), "{}", stderr(&get));
    assert_eq!(
        std::fs::read_to_string(downloads.path().join("report.txt")).unwrap(),
        "numbers\n"
    );
}

#[tokio::test]
async fn closed_output_pipe_ends_quietly() {
    let server = Server::start();
    let id = create_with_cli(&server);
    let script = format!(
        "'{}' vm exec {id} -- 'seq 1 200000' | head -1; echo \"status=${{PIPESTATUS[0]}}\"",
        common::gitvm_bin().display()
    );
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("GITVM_SERVER", &server.url)
        .output()
        .unwrap();
    // 141 = 128 + SIGPIPE, what `seq 1 200000 | head -1` reports for seq too.
    assert_eq!(stdout(&output), "1\nstatus=141\n");
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
}

#[tokio::test]
async fn proc_commands_start_follow_signal() {
    let server = Server::start();
    let id = create_with_cli(&server);

    let started = server.cli(&[
        "proc",
        "start",
        &id,
        "--tag",
        "counter",
        "--",
        "for i in 1 2 3; do echo $i; sleep 0.2; done; exit 4",
    ]);
    assert!(started.status.success(), "{}", stderr(&started));
    let pid = stdout(&started).trim().to_string();
    assert!(pid.parse::<u32>().is_ok(), "{pid}");

    let listed = server.cli(&["proc", "list", &id]);
    assert!(stdout(&listed).contains("counter"), "{}", stdout(&listed));

    let logs = server.cli(&["proc", "logs", &id, "counter"]);
    assert_eq!(stdout(&logs), "1\n2\n3\n");
    assert_eq!(logs.status.code(), Some(4));

    let sleeper = server.cli(&["proc", "start", &id, "--tag", "sleeper", "--", "sleep 600"]);
    assert!(sleeper.status.success(), "{}", stderr(&sleeper));
    let signal = server.cli(&["proc", "signal", &id, "sleeper", "TERM"]);
    assert!(signal.status.success(), "{}", stderr(&signal));
    let unknown = server.cli(&["proc", "signal", &id, "no-such-tag", "TERM"]);
    assert_eq!(unknown.status.code(), Some(125), "{}", stderr(&unknown));
    assert!(
        stderr(&unknown).contains("no-such-tag"),
        "{}",
        stderr(&unknown)
    );

    let waited = server.cli(&["proc", "wait", &id, "sleeper", "--timeout", "10"]);
    assert_eq!(waited.status.code(), Some(143));
    let info: serde_json::Value = serde_json::from_slice(&waited.stdout).unwrap();
    assert_eq!(info["signal"], "SIGTERM");
    assert_eq!(info["state"], "exited");
}

#[test]
fn bench_docker_reports_and_cleans_up() {
    let server = Server::start();
    let output = server.cli(&[
        "bench",
        "docker",
        "--exec-runs",
        "3",
        "--create-runs",
        "1",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["execGitvm"]["runs"], 3);
    assert_eq!(report["createToFirstExecDocker"]["runs"], 1);
    assert!(report["execDocker"]["p50Ms"].as_f64().unwrap() > 0.0);
    assert!(report["agentAnonKib"].as_u64().unwrap() > 0);

    let left = std::process::Command::new("docker")
        .args(["ps", "-a", "--filter", "name=gitvm-bench-raw", "-q"])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "baseline containers left");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sandboxes = runtime
        .block_on(server.client.list_sandboxes(&Default::default()))
        .unwrap();
    assert!(sandboxes.is_empty(), "{sandboxes:?}");
}
