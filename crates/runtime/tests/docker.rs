//! Docker backend against the real Docker daemon.
//!
//! Tests that run the agent need the static `gitvm` binary from `cargo build -p gitvm-cli`, or
//! the one `GITVM_AGENT_BIN` names; they fail, not skip, when it is missing. Test images are built
//! here with `docker import` from trees holding the host's `/bin/sh` and `/bin/sleep` and their
//! libraries, because no registry is reachable. Every test uses its own node id and removes
//! its containers on exit, even when an assertion fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
use gitvm_proto::SnapshotKind;
use gitvm_runtime::docker::{build_base_image, DockerConfig, DockerRuntime, BASE_IMAGE};
use gitvm_runtime::{ObservedSandbox, ObservedState, Progress, Runtime, RuntimeError, SandboxSpec};
use tempfile::TempDir;

/// Image with `/bin/sh`, `/bin/sleep` and their libraries.
const SHELL_IMAGE: &str = "gitvm-test-shell:1";

/// Image whose `/.gitvm` is a regular file, so the agent's bind mounts cannot be made.
const BROKEN_MOUNT_IMAGE: &str = "gitvm-test-gitvm-file:1";

/// Readiness deadline of the tests' runtimes.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Returns the path of the static `gitvm` binary: `GITVM_AGENT_BIN` when set, otherwise the one built by
/// `cargo build -p gitvm-cli`.
fn built_agent() -> PathBuf {
    let path = match std::env::var_os("GITVM_AGENT_BIN") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/x86_64-unknown-linux-gnu/debug/gitvm"),
    };
    assert!(
        path.is_file(),
        "{} is missing; build the agent with `cargo build -p gitvm-cli` (or set GITVM_AGENT_BIN) \
         before running these tests",
        path.display()
    );
    path
}

/// A test's runtime, with its data directory and a guard that removes its containers.
struct Harness {
    runtime: DockerRuntime,
    data_dir: TempDir,
    node_id: String,
    _cleanup: Cleanup,
}

/// Removes every container labelled with a node id when dropped, so failed tests leave none.
struct Cleanup {
    node_id: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label=gitvm.node={}", self.node_id);
        let output = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
            .expect("docker ps runs");
        let ids = String::from_utf8_lossy(&output.stdout);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
    }
}

/// Connects a runtime with a fresh node id and data directory; `agent_bin` runs as the agent.
async fn harness(test: &str, agent_bin: &Path, ready_timeout: Duration) -> Harness {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let node_id = format!("test-{test}-{}", random_suffix());
    let runtime = DockerRuntime::connect(DockerConfig {
        data_dir: data_dir.path().to_path_buf(),
        agent_bin: agent_bin.to_path_buf(),
        node_id: node_id.clone(),
        ready_timeout,
    })
    .await
    .unwrap_or_else(|err| panic!("connecting to Docker failed: {err}"));

    Harness {
        runtime,
        data_dir,
        node_id: node_id.clone(),
        _cleanup: Cleanup { node_id },
    }
}

/// Returns eight random hex digits, to keep ids of concurrent tests apart.
fn random_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Builds a spec for `image` with a fresh id, 1 vCPU and 256 MiB.
fn spec(image: &str) -> SandboxSpec {
    SandboxSpec {
        id: format!("sb{}", random_suffix()),
        image: image.to_string(),
        vcpus: 1,
        memory_mb: 256,
        internet: true,
        labels: BTreeMap::from([("test.owner".to_string(), "runtime-tests".to_string())]),
    }
}

/// Creates a progress sink that records every line.
fn recording_progress() -> (Progress, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let progress: Progress =
        Arc::new(move |line: &str| sink.lock().unwrap().push(line.to_string()));
    (progress, lines)
}

/// Builds [`SHELL_IMAGE`] once per test run.
fn shell_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let tree = tempfile::tempdir().expect("temporary directory");
        for binary in ["/bin/sh", "/bin/sleep"] {
            copy_with_libraries(Path::new(binary), tree.path());
        }
        import_tree(tree.path(), SHELL_IMAGE);
    });
    SHELL_IMAGE
}

/// Builds [`BROKEN_MOUNT_IMAGE`] once per test run.
fn broken_mount_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let tree = tempfile::tempdir().expect("temporary directory");
        copy_with_libraries(Path::new("/bin/sh"), tree.path());
        std::fs::write(tree.path().join(".gitvm"), b"not a directory\n").unwrap();
        import_tree(tree.path(), BROKEN_MOUNT_IMAGE);
    });
    BROKEN_MOUNT_IMAGE
}

/// Copies `binary` and every library `ldd` lists for it into `tree` at the same paths.
fn copy_with_libraries(binary: &Path, tree: &Path) {
    let output = Command::new("ldd").arg(binary).output().expect("ldd runs");
    assert!(output.status.success(), "ldd {} failed", binary.display());
    let listing = String::from_utf8(output.stdout).unwrap();

    // Lines look like `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or
    // `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no path.
    let libraries = listing
        .lines()
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with('/')))
        .map(PathBuf::from);
    for source in std::iter::once(binary.to_path_buf()).chain(libraries) {
        let target = tree.join(source.strip_prefix("/").unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&source, &target)
            .unwrap_or_else(|err| panic!("copying {} failed: {err}", source.display()));
    }
}

/// Imports `tree` as `image` with `tar | docker import`, removing the image of an earlier run
/// first so that repeated runs leave no untagged images behind.
fn import_tree(tree: &Path, image: &str) {
    let _ = Command::new("docker")
        .args(["rmi", "-f", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    std::fs::set_permissions(tree, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(tree)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar runs");
    let import = Command::new("docker")
        .args(["import", "-", image])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .expect("docker import runs");
    assert!(
        tar.wait().unwrap().success(),
        "tar of {} failed",
        tree.display()
    );
    assert!(
        import.status.success(),
        "docker import of {image} failed: {}",
        String::from_utf8_lossy(&import.stderr)
    );
}

/// Writes an executable shell script to use as a fake agent that fails in a known way.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;

    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Counts the containers labelled with `node_id`, as Docker lists them.
async fn containers_of(runtime: &DockerRuntime, node_id: &str) -> usize {
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!("gitvm.node={node_id}")],
    )]);
    let options = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    runtime
        .docker()
        .list_containers(Some(options))
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn lifecycle_walks_every_state() {
    let agent = built_agent();
    let harness = harness("lifecycle", &agent, READY_TIMEOUT).await;
    let runtime = &harness.runtime;
    let spec = spec(shell_image());
    let id = spec.id.as_str();

    runtime.create(&spec).await.expect("create");
    assert_eq!(runtime.observe(id).await.unwrap(), ObservedState::Running);
    let health = runtime.connect(id).await.unwrap().health().await.unwrap();
    assert_eq!(health.pid, 1);
    assert!(health.shell);

    runtime.pause(id).await.expect("pause");
    assert_eq!(runtime.observe(id).await.unwrap(), ObservedState::Paused);
    runtime.resume(id).await.expect("resume");
    assert_eq!(runtime.observe(id).await.unwrap(), ObservedState::Running);

    runtime.stop(id).await.expect("stop");
    assert_eq!(runtime.observe(id).await.unwrap(), ObservedState::Stopped);
    runtime.start(id).await.expect("start");
    assert_eq!(runtime.observe(id).await.unwrap(), ObservedState::Running);
    let health = runtime.connect(id).await.unwrap().health().await.unwrap();
    assert_eq!(health.pid, 1);

    runtime.delete(id).await.expect("delete");
    assert_eq!(runtime.observe(id).await.unwrap(), ObservedState::Missing);
    assert!(!harness.data_dir.path().join("sandboxes").join(id).exists());
    runtime.delete(id).await.expect("second delete");
    assert_eq!(containers_of(runtime, harness.node_id.as_str()).await, 0);
}

#[tokio::test]
async fn stop_of_paused_sandbox_stops_it() {
    let agent = built_agent();
    let harness = harness("stop-paused", &agent, READY_TIMEOUT).await;
    let runtime = &harness.runtime;
    let spec = spec(shell_image());

    runtime.create(&spec).await.expect("create");
    runtime.pause(&spec.id).await.expect("pause");
    runtime.stop(&spec.id).await.expect("stop");
    assert_eq!(
        runtime.observe(&spec.id).await.unwrap(),
        ObservedState::Stopped
    );

    runtime.delete(&spec.id).await.expect("delete");
}

#[tokio::test]
async fn container_carries_limits_labels_and_mounts() {
    let agent = built_agent();
    let harness = harness("config", &agent, READY_TIMEOUT).await;
    let runtime = &harness.runtime;
    let mut spec = spec(shell_image());
    spec.vcpus = 2;
    spec.memory_mb = 300;

    runtime.create(&spec).await.expect("create");
    let inspect = runtime
        .docker()
        .inspect_container(
            &format!("gitvm-{}", spec.id),
            None::<InspectContainerOptions>,
        )
        .await
        .unwrap();
    let config = inspect.config.unwrap();
    let host = inspect.host_config.unwrap();
    let labels = config.labels.unwrap();

    assert_eq!(labels.get("gitvm.sandbox"), Some(&spec.id));
    assert_eq!(
        labels.get("gitvm.node").map(String::as_str),
        Some(harness.node_id.as_str())
    );
    assert_eq!(
        labels.get("test.owner").map(String::as_str),
        Some("runtime-tests")
    );
    assert_eq!(
        config.entrypoint.unwrap(),
        [
            "/.gitvm/gitvm",
            "agent",
            "--socket",
            "/.gitvm/run/agent.sock"
        ]
    );
    assert_eq!(config.user.as_deref(), Some("0:0"));
    assert_eq!(config.working_dir.as_deref(), Some("/"));
    assert_eq!(host.nano_cpus, Some(2_000_000_000));
    assert_eq!(host.memory, Some(300 * 1024 * 1024));
    assert_eq!(host.memory_swap, Some(300 * 1024 * 1024));
    assert_eq!(host.pids_limit, Some(4096));
    assert_eq!(host.security_opt.unwrap(), ["no-new-privileges"]);
    assert_eq!(
        host.cap_drop.unwrap(),
        ["NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP"]
    );
    let data_dir = harness.data_dir.path().display();
    assert_eq!(
        host.binds.unwrap(),
        [
            format!("{data_dir}/sandboxes/{}/run:/.gitvm/run:rw", spec.id),
            format!("{data_dir}/agent/gitvm:/.gitvm/gitvm:ro"),
        ]
    );

    runtime.delete(&spec.id).await.expect("delete");
}

#[tokio::test]
async fn agent_copy_is_executable_and_identical() {
    let agent = built_agent();
    let harness = harness("agent-copy", &agent, READY_TIMEOUT).await;
    let copy = harness.data_dir.path().join("agent/gitvm");

    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&copy).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&agent).unwrap()
    );
}

#[tokio::test]
async fn list_shows_only_this_node() {
    let agent = built_agent();
    let first = harness("list-a", &agent, READY_TIMEOUT).await;
    let second = harness("list-b", &agent, READY_TIMEOUT).await;
    let first_spec = spec(shell_image());
    let second_spec = spec(shell_image());

    first
        .runtime
        .create(&first_spec)
        .await
        .expect("create on the first node");
    second
        .runtime
        .create(&second_spec)
        .await
        .expect("create on the second node");
    first.runtime.pause(&first_spec.id).await.expect("pause");

    assert_eq!(
        first.runtime.list().await.unwrap(),
        [ObservedSandbox {
            id: first_spec.id.clone(),
            state: ObservedState::Paused,
        }]
    );
    assert_eq!(
        second.runtime.list().await.unwrap(),
        [ObservedSandbox {
            id: second_spec.id.clone(),
            state: ObservedState::Running,
        }]
    );

    first.runtime.delete(&first_spec.id).await.expect("delete");
    second
        .runtime
        .delete(&second_spec.id)
        .await
        .expect("delete");
    assert_eq!(first.runtime.list().await.unwrap(), []);
}

#[tokio::test]
async fn snapshot_commits_an_image_that_boots() {
    let agent = built_agent();
    let harness = harness("snapshot", &agent, READY_TIMEOUT).await;
    let runtime = &harness.runtime;
    let spec = spec(shell_image());
    let snapshot_id = format!("snap{}", random_suffix());

    runtime.create(&spec).await.expect("create");
    let info = runtime
        .snapshot(&spec.id, &snapshot_id)
        .await
        .expect("snapshot");
    assert_eq!(
        runtime.observe(&spec.id).await.unwrap(),
        ObservedState::Running
    );
    assert_eq!(info.kind, SnapshotKind::Filesystem);
    assert_eq!(info.image, format!("gitvm-snapshot:{snapshot_id}"));

    let image = runtime.docker().inspect_image(&info.image).await.unwrap();
    assert_eq!(image.size, Some(info.size_bytes as i64));
    assert!(info.size_bytes > 0);
    assert_eq!(
        image.repo_tags.unwrap(),
        [format!("gitvm-snapshot:{snapshot_id}")]
    );
    let labels = image.config.unwrap().labels.unwrap();
    assert_eq!(
        labels.get("gitvm.node").map(String::as_str),
        Some(harness.node_id.as_str())
    );

    let mut restored = self::spec(&info.image);
    restored.labels.clear();
    runtime
        .create(&restored)
        .await
        .expect("create from the snapshot");
    assert_eq!(
        runtime.observe(&restored.id).await.unwrap(),
        ObservedState::Running
    );

    runtime.delete(&restored.id).await.expect("delete restored");
    runtime.delete(&spec.id).await.expect("delete");
    runtime
        .delete_snapshot(&info)
        .await
        .expect("delete snapshot");
    let gone = runtime
        .docker()
        .inspect_image(&info.image)
        .await
        .unwrap_err();
    assert!(
        gone.to_string().contains("404"),
        "inspect after delete: {gone}"
    );
    runtime
        .delete_snapshot(&info)
        .await
        .expect("second delete of the snapshot");
}

#[tokio::test]
async fn missing_template_fails_fast() {
    let harness = harness("template", Path::new("/bin/true"), READY_TIMEOUT).await;
    let (progress, _lines) = recording_progress();

    let started = Instant::now();
    let err = harness
        .runtime
        .prepare_template("gitvm-does-not-exist:1", progress)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();

    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    match err {
        RuntimeError::TemplateNotFound { template, reason } => {
            assert_eq!(template, "gitvm-does-not-exist:1");
            assert!(
                reason.contains("gitvm-does-not-exist:1"),
                "reason: {reason}"
            );
        }
        other => panic!("expected TemplateNotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn local_template_resolves_without_pull() {
    let harness = harness("local-template", Path::new("/bin/true"), READY_TIMEOUT).await;
    let (progress, lines) = recording_progress();

    let image = harness
        .runtime
        .prepare_template(shell_image(), progress)
        .await
        .expect("prepare");

    assert_eq!(image, SHELL_IMAGE);
    assert_eq!(lines.lock().unwrap().len(), 0);
}

/// C4: an image where the agent's mount points cannot be created.
#[tokio::test]
async fn create_fails_when_bind_mounts_fail() {
    // The agent never runs in this test, so any file serves as the agent binary.
    let harness = harness("c4", Path::new("/bin/true"), READY_TIMEOUT).await;
    let runtime = &harness.runtime;
    let spec = spec(broken_mount_image());

    let started = Instant::now();
    let err = runtime.create(&spec).await.unwrap_err();
    let elapsed = started.elapsed();

    assert!(elapsed < READY_TIMEOUT, "took {elapsed:?}");
    match err {
        RuntimeError::AgentNotReady { id, reason } => {
            assert_eq!(id, spec.id);
            assert!(reason.contains("not a directory"), "reason: {reason}");
        }
        other => panic!("expected AgentNotReady, got {other:?}"),
    }
    assert_eq!(
        runtime.list().await.unwrap(),
        [ObservedSandbox {
            id: spec.id.clone(),
            state: ObservedState::Stopped,
        }]
    );

    runtime.delete(&spec.id).await.expect("delete");
    assert_eq!(
        runtime.observe(&spec.id).await.unwrap(),
        ObservedState::Missing
    );
    assert_eq!(containers_of(runtime, harness.node_id.as_str()).await, 0);
}

#[tokio::test]
async fn create_reports_exit_code_and_log() {
    let scripts = tempfile::tempdir().unwrap();
    let agent = script(
        scripts.path(),
        "exits",
        "echo agent cannot start >&2\nexit 3",
    );
    let harness = harness("exit", &agent, READY_TIMEOUT).await;
    let runtime = &harness.runtime;
    let spec = spec(shell_image());

    let started = Instant::now();
    let err = runtime.create(&spec).await.unwrap_err();

    assert!(
        started.elapsed() < READY_TIMEOUT,
        "took {:?}",
        started.elapsed()
    );
    match err {
        RuntimeError::AgentNotReady { id, reason } => {
            assert_eq!(id, spec.id);
            assert!(reason.contains("exited with code 3"), "reason: {reason}");
            assert!(reason.contains("agent cannot start"), "reason: {reason}");
        }
        other => panic!("expected AgentNotReady, got {other:?}"),
    }
    runtime.delete(&spec.id).await.expect("delete");
    assert_eq!(containers_of(runtime, harness.node_id.as_str()).await, 0);
}

#[tokio::test]
async fn create_times_out_when_agent_never_listens() {
    let scripts = tempfile::tempdir().unwrap();
    let agent = script(
        scripts.path(),
        "hangs",
        "echo waiting forever\nexec sleep 600",
    );
    let timeout = Duration::from_millis(1500);
    let harness = harness("timeout", &agent, timeout).await;
    let runtime = &harness.runtime;
    let spec = spec(shell_image());

    let started = Instant::now();
    let err = runtime.create(&spec).await.unwrap_err();
    let elapsed = started.elapsed();

    assert!(elapsed >= timeout, "took {elapsed:?}");
    assert!(
        elapsed < timeout + Duration::from_secs(3),
        "took {elapsed:?}"
    );
    match err {
        RuntimeError::AgentNotReady { id, reason } => {
            assert_eq!(id, spec.id);
            assert!(
                reason.contains("no answer within 1500 ms"),
                "reason: {reason}"
            );
            assert!(reason.contains("waiting forever"), "reason: {reason}");
        }
        other => panic!("expected AgentNotReady, got {other:?}"),
    }
    runtime.delete(&spec.id).await.expect("delete");
    assert_eq!(
        runtime.observe(&spec.id).await.unwrap(),
        ObservedState::Missing
    );
}

#[tokio::test]
async fn operations_on_unknown_sandbox_are_not_found() {
    let harness = harness("unknown", Path::new("/bin/true"), READY_TIMEOUT).await;
    let runtime = &harness.runtime;

    assert_eq!(
        runtime.observe("nosuch").await.unwrap(),
        ObservedState::Missing
    );
    for result in [
        runtime.pause("nosuch").await,
        runtime.resume("nosuch").await,
        runtime.stop("nosuch").await,
        runtime.start("nosuch").await,
    ] {
        match result {
            Err(RuntimeError::NotFound { what, id }) => {
                assert_eq!(what, "sandbox");
                assert_eq!(id, "nosuch");
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    runtime
        .delete("nosuch")
        .await
        .expect("delete of an unknown sandbox");
}

#[tokio::test]
#[ignore = "runs debootstrap against the Debian mirror for minutes when gitvm-base:bookworm is missing"]
async fn base_template_boots_agent_with_shell() {
    let agent = built_agent();
    let harness = harness("base", &agent, READY_TIMEOUT).await;
    let runtime = &harness.runtime;
    let cache = tempfile::tempdir().unwrap();
    let (progress, _lines) = recording_progress();

    let built = build_base_image(runtime.docker(), cache.path(), false, Arc::clone(&progress))
        .await
        .expect("base image build");
    assert_eq!(built, BASE_IMAGE);
    let image = runtime.prepare_template("base", progress).await.unwrap();
    assert_eq!(image, BASE_IMAGE);

    let spec = spec(&image);
    runtime
        .create(&spec)
        .await
        .expect("create from the base image");
    let health = runtime
        .connect(&spec.id)
        .await
        .unwrap()
        .health()
        .await
        .unwrap();
    assert_eq!(health.pid, 1);
    assert!(health.shell);

    runtime.delete(&spec.id).await.expect("delete");
    // The package cache stays for the next build; the temporary tree must not.
    let trees: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("base-rootfs-"))
        .collect();
    assert_eq!(trees, Vec::<String>::new());
}
