//! The qemu runtime against real microVMs under TCG: each test starts a `gitvm server` whose
//! default runtime is qemu, so every sandbox here boots Debian's cloud kernel with the agent as
//! init. Field cases C1, C5, C8 and C10 run on microVMs too.

mod common;

use std::time::{Duration, Instant};

use common::{api_error_message, read_to_vec, Server};
use gitvm_sdk::{CreateSandboxRequest, RestoreRequest, Sandbox, SandboxState, SnapshotKind};

/// Counter loop of the snapshot test: writes an increasing number to /tmp/n every 0.2 s.
const COUNTER: &str =
    "sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.2; done' >/dev/null 2>&1 &";

async fn create(server: &Server, internet: bool) -> Sandbox {
    server
        .client
        .create_sandbox(&CreateSandboxRequest {
            timeout: Some(600),
            internet: Some(internet),
            ..Default::default()
        })
        .await
        .expect("create qemu sandbox")
}

async fn counter(server: &Server, id: &str) -> u64 {
    let out = server.exec(id, "cat /tmp/n").await;
    out.stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("/tmp/n holds {:?} in {id}", out.stdout))
}

/// Builds a command that fetches `url` from inside a guest with Python and prints the status
/// or the error, within 5 s.
fn fetch(url: &str) -> String {
    format!(
        "python3 -c \"import urllib.request,sys\ntry:\n print(urllib.request.urlopen('{url}', timeout=5).status)\nexcept Exception as e:\n print('failed', e)\""
    )
}

/// Processes whose command line names QEMU's `-name` of sandbox `id`.
fn qemu_processes(id: &str) -> usize {
    let marker = format!("gitvm-{id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .map(|cmdline| {
                    cmdline
                        .split(|&b| b == 0)
                        .any(|arg| arg == marker.as_bytes())
                })
                .unwrap_or(false)
        })
        .count()
}

/// Kills with SIGKILL the process whose pid is in `file` of sandbox `id`'s directory.
fn kill_by_pid_file(server: &Server, id: &str, file: &str) {
    let path = server.data_dir.join("qemu/sandboxes").join(id).join(file);
    let pid = std::fs::read_to_string(&path).unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -9 {pid} from {}", path.display());
}

/// Runs `true` in sandbox `id` and returns the result, error included.
async fn exec_true(server: &Server, id: &str) -> Result<gitvm_sdk::ExecResult, gitvm_sdk::Error> {
    let request = gitvm_sdk::ExecRequest {
        command: "true".into(),
        ..Default::default()
    };
    server.client.exec(id, &request).await
}

#[tokio::test]
async fn guest_kernel_and_network() {
    let server = Server::start_qemu(&[]);
    let sandbox = create(&server, true).await;
    assert_eq!(sandbox.runtime, "qemu");
    assert!(sandbox.internet);
    // The time to live counts from the end of the boot, not from the request.
    let expires_at = time::OffsetDateTime::parse(
        sandbox.expires_at.as_deref().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = expires_at - time::OffsetDateTime::now_utc();
    assert!(left.whole_seconds() >= 598, "{left} left of 600 s");

    let guest = server.exec(&sandbox.id, "uname -r").await;
    let host = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&host.stdout).trim().to_owned();
    assert_eq!(guest.exit_code, 0);
    assert!(
        guest.stdout.trim().ends_with("-cloud-amd64"),
        "guest kernel {:?}",
        guest.stdout
    );
    assert_ne!(guest.stdout.trim(), host);

    // The guest reaches the host's loopback through QEMU's user network gateway.
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let url = format!("http://10.0.2.2:{port}/health");
    let online = server.exec(&sandbox.id, &fetch(&url)).await;
    assert_eq!(online.stdout.trim(), "200", "{online:?}");

    let offline = create(&server, false).await;
    assert!(!offline.internet);
    let cut = server.exec(&offline.id, &fetch(&url)).await;
    assert!(cut.stdout.starts_with("failed"), "{cut:?}");
    let devices = server.exec(&offline.id, "ls /sys/class/net").await;
    assert_eq!(devices.stdout.trim(), "lo");
}

#[tokio::test]
async fn files_round_trip_and_c8_odd_names() {
    let server = Server::start_qemu(&[]);
    let id = create(&server, false).await.id;
    let client = &server.client;

    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|_| rand::random::<u8>()).collect();
    client
        .write_file(&id, "/root/big.bin", big.clone())
        .await
        .unwrap();
    assert_eq!(read_to_vec(&server, &id, "/root/big.bin").await, big);
    let sum = server.exec(&id, "sha256sum /root/big.bin").await;
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&big))
    };
    assert!(sum.stdout.starts_with(&expected), "{sum:?}");

    client.make_dir(&id, "/root/a/b").await.unwrap();
    client.remove_file(&id, "/root/a").await.unwrap();
    let gone = server.exec(&id, "test -e /root/a; echo $?").await;
    assert_eq!(gone.stdout.trim(), "1");

    // C8: a name with a space and non-ASCII characters, and bytes including NUL.
    let mut data: Vec<u8> = (0..256).map(|_| rand::random::<u8>()).collect();
    data[0] = 0;
    data[128] = 0;
    let path = "/tmp/dir with space/naïve ✓.bin";
    client.write_file(&id, path, data.clone()).await.unwrap();
    let entries = client.list_files(&id, "/tmp/dir with space").await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, "naïve ✓.bin");
    assert_eq!(entries[0].size, 256);
    assert_eq!(read_to_vec(&server, &id, path).await, data);
}

#[tokio::test]
async fn c1_and_c5_on_qemu() {
    let server = Server::start_qemu(&[]);
    let id = create(&server, false).await.id;
    let client = &server.client;

    // C1: files survive pause/resume cycles and exec works after each resume.
    client.write_file(&id, "/root/a.txt", "1").await.unwrap();
    for round in 0..5 {
        let paused = client.lifecycle(&id, "pause").await.unwrap();
        assert_eq!(paused.state, SandboxState::Paused);
        let resumed = client.lifecycle(&id, "resume").await.unwrap();
        assert_eq!(resumed.state, SandboxState::Running);
        let result = server.exec(&id, &format!("echo {round}")).await;
        assert_eq!(result.stdout, format!("{round}\n"));
    }
    assert_eq!(read_to_vec(&server, &id, "/root/a.txt").await, b"1");

    // The clock is set again after a long pause.
    client.lifecycle(&id, "pause").await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    client.lifecycle(&id, "resume").await.unwrap();
    let guest: i64 = server
        .exec(&id, "date +%s")
        .await
        .stdout
        .trim()
        .parse()
        .unwrap();
    let host = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (guest - host).abs() <= 2,
        "guest clock {guest}, host {host}"
    );

    // C5: stop, start, exec at once; a file written before the stop is on the disk.
    client
        .write_file(&id, "/root/kept.txt", "kept")
        .await
        .unwrap();
    client.lifecycle(&id, "stop").await.unwrap();
    assert_eq!(qemu_processes(&id), 0, "QEMU still runs after stop");
    let started = client.lifecycle(&id, "start").await.unwrap();
    assert_eq!(started.state, SandboxState::Running);
    let result = server.exec(&id, "cat /root/kept.txt").await;
    assert_eq!(result.stdout, "kept");
    assert_eq!(result.exit_code, 0);

    // A relay that dies makes the agent unreachable with a clear error; stop and start heal it.
    kill_by_pid_file(&server, &id, "relay.pid");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, _, message) = api_error_message(exec_true(&server, &id).await);
    assert!(message.contains("agent relay exited"), "{message}");
    client.lifecycle(&id, "stop").await.unwrap();
    client.lifecycle(&id, "start").await.unwrap();
    assert_eq!(server.exec(&id, "echo back").await.stdout, "back\n");

    // QEMU exiting on its own (here killed) leaves a stopped sandbox that starts again.
    kill_by_pid_file(&server, &id, "qemu.pid");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, code, message) = api_error_message(exec_true(&server, &id).await);
    assert_eq!((status, code.as_str()), (409, "invalid_state"), "{message}");
    let stopped = client.get_sandbox(&id).await.unwrap();
    assert_eq!(stopped.state, SandboxState::Stopped);
    client.lifecycle(&id, "start").await.unwrap();
    assert_eq!(server.exec(&id, "cat /root/kept.txt").await.stdout, "kept");

    client.delete_sandbox(&id).await.unwrap();
    assert_eq!(qemu_processes(&id), 0, "QEMU still runs after delete");
}

#[tokio::test]
async fn full_snapshot_restores_twice() {
    let mut server = Server::start_qemu(&[]);
    let source = create(&server, false).await.id;
    let started = server.exec(&source, COUNTER).await;
    assert_eq!(started.exit_code, 0);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let snapshot = server.client.create_snapshot(&source).await.unwrap();
    assert_eq!(snapshot.kind, SnapshotKind::Full);
    let at_snapshot = counter(&server, &source).await;
    assert!(at_snapshot >= 3, "counter only reached {at_snapshot}");

    // The snapshot files and the running source survive a node crash.
    server.restart();
    let after_restart = server.client.get_sandbox(&source).await.unwrap();
    assert_eq!(after_restart.state, SandboxState::Running);
    assert!(counter(&server, &source).await > at_snapshot);

    let mut restored = Vec::new();
    for _ in 0..2 {
        let sandbox = server
            .client
            .restore_snapshot(&snapshot.id, &RestoreRequest::default())
            .await
            .unwrap();
        assert_eq!(sandbox.runtime, "qemu");
        restored.push(sandbox.id);
    }
    for id in &restored {
        let value = counter(&server, id).await;
        // Continues from the snapshot's value, not from 0; the source had reached at most
        // `at_snapshot` plus a step or two when the snapshot was taken.
        assert!(
            value + 3 >= at_snapshot,
            "{id} counts from {value}, snapshot had about {at_snapshot}"
        );
    }

    // Each restore has its own hostname and its own random numbers.
    let mut identities = Vec::new();
    for id in &restored {
        let out = server
            .exec(id, "hostname; head -c 16 /dev/urandom | od -An -tx1")
            .await;
        let mut lines = out.stdout.lines();
        assert_eq!(lines.next(), Some(id.as_str()));
        identities.push(lines.next().unwrap_or_default().to_owned());
    }
    assert_ne!(identities[0], identities[1]);

    // Each restored sandbox diverges on its own.
    server
        .exec(&restored[0], "echo only-in-first > /root/mark")
        .await;
    let second = server
        .exec(&restored[1], "cat /root/mark 2>&1 || true")
        .await;
    assert!(second.stdout.contains("No such file"), "{second:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = counter(&server, &restored[0]).await;
    let b = counter(&server, &restored[1]).await;
    assert!(
        a > at_snapshot && b > at_snapshot,
        "counters {a} and {b} stopped"
    );

    // The guest clock was set after the restore: it is within a few seconds of the host's.
    let guest = server.exec(&restored[0], "date +%s").await;
    let guest: i64 = guest.stdout.trim().parse().unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (guest - host).abs() <= 5,
        "guest clock {guest}, host {host}"
    );
}

#[tokio::test]
async fn c10_snapshot_under_write_load() {
    let server = Server::start_qemu(&[]);
    let id = create(&server, false).await.id;
    // Each round replaces /root/cur atomically and appends the same number to /root/all.
    let writer = "sh -c 'i=0; while true; do i=$((i+1)); echo $i > /root/tmp; mv /root/tmp /root/cur; echo $i >> /root/all; done' >/dev/null 2>&1 & echo $! > /root/writer.pid";
    server.exec(&id, writer).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    let snapshot = server.client.create_snapshot(&id).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "snapshot took {:?}",
        started.elapsed()
    );
    let restored = server
        .client
        .restore_snapshot(&snapshot.id, &RestoreRequest::default())
        .await
        .unwrap();
    // Stop the writer in the copy, then compare its two files.
    let stopped = server
        .exec(&restored.id, "kill $(cat /root/writer.pid) && sleep 0.5")
        .await;
    assert_eq!(stopped.exit_code, 0, "{stopped:?}");
    let check = server
        .exec(
            &restored.id,
            "cur=$(cat /root/cur); last=$(tail -n 1 /root/all); lines=$(wc -l < /root/all); echo $cur $last $lines",
        )
        .await;
    let numbers: Vec<u64> = check
        .stdout
        .split_whitespace()
        .map(|word| word.parse().unwrap())
        .collect();
    let [cur, last, lines] = numbers[..] else {
        panic!("unexpected check output {check:?}");
    };
    assert!(cur >= 1, "{check:?}");
    assert!(
        last == cur || last + 1 == cur || last == cur + 1,
        "{check:?}"
    );
    assert!(
        lines >= last.saturating_sub(1) && lines <= last + 1,
        "{check:?}"
    );
}

#[tokio::test]
async fn never_ready_guest_is_stopped() {
    // The kernel finds no init, panics, and with panic=0 waits forever.
    let server = Server::start_qemu(&[
        "--ready-timeout",
        "8",
        "--qemu-kernel-args",
        "panic=0 rdinit=/nonexistent",
    ]);
    let started = Instant::now();
    let (status, _, message) = api_error_message(
        server
            .client
            .create_sandbox(&CreateSandboxRequest {
                internet: Some(false),
                ..Default::default()
            })
            .await,
    );
    let elapsed = started.elapsed();
    assert_eq!(status, 500, "{message}");
    assert!(message.contains("no answer within 8s"), "{message}");
    assert!(message.contains("Kernel panic"), "{message}");
    assert!(elapsed < Duration::from_secs(40), "took {elapsed:?}");

    let sandboxes = server
        .client
        .list_sandboxes(&Default::default())
        .await
        .unwrap();
    assert_eq!(sandboxes.len(), 1);
    assert_eq!(sandboxes[0].state, SandboxState::Error);
    assert_eq!(qemu_processes(&sandboxes[0].id), 0, "QEMU left running");
    assert!(!server
        .data_dir
        .join("qemu/sandboxes")
        .join(&sandboxes[0].id)
        .exists());
}

#[tokio::test]
async fn runtime_selection_errors() {
    let server = Server::start_qemu(&[]);
    let (status, _, message) = api_error_message(
        server
            .client
            .create_sandbox(&CreateSandboxRequest {
                runtime: Some("firecracker".into()),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(status, 503, "{message}");
    assert!(
        message.contains("runtime `firecracker` is unavailable"),
        "{message}"
    );
    assert!(message.contains("use `qemu`"), "{message}");

    let (status, _, message) = api_error_message(
        server
            .client
            .create_sandbox(&CreateSandboxRequest {
                runtime: Some("vmware".into()),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("docker, qemu, firecracker"), "{message}");

    let (status, _, message) = api_error_message(
        server
            .client
            .create_sandbox(&CreateSandboxRequest {
                memory_mb: Some(64),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(status, 400, "{message}");
    assert_eq!(
        message,
        "invalid memoryMB 64: qemu sandboxes need at least 128 MiB"
    );

    // A QEMU binary that does not exist makes qemu unavailable, with what to install.
    let missing = Server::start_with(&["--qemu-bin", "/nonexistent/qemu-system-x86_64"]);
    let (status, _, message) = api_error_message(
        missing
            .client
            .create_sandbox(&CreateSandboxRequest {
                runtime: Some("qemu".into()),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(status, 503, "{message}");
    assert!(
        message.contains("apt-get install qemu-system-x86"),
        "{message}"
    );
    assert!(server
        .client
        .list_sandboxes(&Default::default())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn auto_accel_probe() {
    let cache = common::test_cache_dir();
    let server = Server::start_with(&[
        "--default-runtime",
        "qemu",
        "--qemu-accel",
        "auto",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    let started = Instant::now();
    let sandbox = create(&server, false).await;
    // The probe gives up after 10 s; a boot under either accelerator then follows.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(server.exec(&sandbox.id, "echo up").await.stdout, "up\n");
    let log = server.log();
    assert!(
        log.contains("microVMs use KVM") || log.contains("microVMs run under TCG"),
        "no accelerator decision in the log:\n{log}"
    );
}

#[tokio::test]
async fn user_supplied_kernel_boots() {
    // `template build base --microvm` fills the cache; its kernel then serves as the user's own.
    let cache = common::test_cache_dir();
    let prepared = std::process::Command::new(common::gitvm_bin())
        .args(["template", "build", "base", "--microvm", "--cache-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&prepared.stdout).into_owned();
    assert!(
        prepared.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&prepared.stderr)
    );
    let kernel = stdout
        .lines()
        .find_map(|line| line.strip_prefix("kernel"))
        .map(|path| std::path::PathBuf::from(path.trim()))
        .unwrap_or_else(|| panic!("no kernel line in {stdout}"));
    assert!(kernel.is_file(), "{}", kernel.display());
    let release = kernel
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_owned();
    let modules = kernel
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("lib/modules")
        .join(&release);
    assert!(modules.is_dir(), "{}", modules.display());

    let server = Server::start_qemu(&[
        "--qemu-kernel",
        kernel.to_str().unwrap(),
        "--qemu-kernel-modules",
        modules.to_str().unwrap(),
    ]);
    let sandbox = create(&server, false).await;
    let guest = server.exec(&sandbox.id, "uname -r").await;
    assert_eq!(guest.stdout.trim(), release);
}
