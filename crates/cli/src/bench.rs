//! `gitvm bench qemu`: times microVM boot and snapshot restore on a running server, against a
//! bare QEMU boot of the same kernel and initramfs.
//!
//! 1. A warm-up create, exec and delete checks that the server's qemu runtime works (its error
//!    message is shown otherwise) and makes the server fetch its kernel and build its initramfs
//!    and root disk, so no timed run pays for them.
//! 2. Bare boot and boot to agent ready alternate, one untimed warm-up and then `--runs` timed
//!    rounds, so load from other processes falls on both alike.
//!    - Bare boot: QEMU with the runtime's machine flags boots the kernel and initramfs from the
//!      server's cache with `gitvm.probe`, so `gitvm-init` loads its modules, prints
//!      `GITVM-PROBE-OK` and powers off. The time runs from spawning QEMU until the marker is in
//!      the serial log, which is polled every millisecond.
//!    - Boot to agent ready: `create_sandbox` with the qemu runtime, which returns once the
//!      agent has passed a health check, then the first `exec` of `true`, timed on its own.
//! 3. Restore to first exec: a sandbox with a background process gets a full snapshot and is
//!    deleted, then, after one warm-up, each run times `restore_snapshot` and the first `exec`
//!    of `true` and checks that the process still runs.
//!
//! Every sandbox carries the label `gitvm-bench=<run id>` and a time to live, so the cleanup
//! also finds sandboxes whose create was interrupted, and the server deletes any that are left.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use gitvm_runtime::qemu::machine::{initramfs_boot_args, Accel};
use gitvm_runtime::qemu::{initramfs, kernel};
use gitvm_sdk::{
    Client, CreateSandboxRequest, ExecRequest, ListFilter, ProcessState, RestoreRequest,
    SnapshotKind, StartProcessRequest,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::args::{BenchCommand, BenchQemu, Connection};

/// Line `gitvm-init` prints on the serial console when booted with `gitvm.probe`.
const PROBE_MARKER: &str = "GITVM-PROBE-OK";

/// Time a bare boot gets to print the probe marker.
const BARE_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Time a bare-boot guest gets to power off after the marker before QEMU is killed.
const BARE_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Interval between two reads of the serial log during a bare boot.
const POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Time to live of the benchmark's sandboxes, in seconds, so the server deletes them when this
/// process dies before its cleanup.
const SANDBOX_TTL_SECS: i64 = 900;

/// Metadata key whose value identifies one benchmark run.
const LABEL_KEY: &str = "gitvm-bench";

/// Tag of the background process that must survive snapshot and restore.
const SLEEPER_TAG: &str = "bench-sleeper";

/// Machine size of the bare boots and of the sandboxes, the server's defaults.
const VCPUS: u32 = 1;
const MEMORY_MB: u32 = 512;

/// Mirror and suite of the server's default kernel. With a kernel in the cache these are not
/// used, because the newest cached kernel is taken without network access.
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
const DEBIAN_SUITE: &str = "bookworm";

/// Runs `gitvm bench …`.
pub async fn run(connection: &Connection, command: BenchCommand) -> Result<ExitCode> {
    let args = match command {
        BenchCommand::Qemu(args) => args,
        BenchCommand::Docker(args) => return crate::bench_docker::run(connection, args).await,
    };
    let client = crate::vm::client(connection)?;
    let mut cleanup = Cleanup::new(run_label());
    let status = Status::new();

    // Dropping the measuring future on Ctrl-C kills a bare-boot QEMU (kill_on_drop) and leaves
    // the server's sandboxes to the cleanup below.
    let outcome = tokio::select! {
        result = measure(&client, &args, &mut cleanup, &status) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    finish(
        &client,
        &mut cleanup,
        &status,
        outcome,
        args.json,
        print_report,
    )
    .await
}

/// Deletes what a benchmark left on the server, then prints its report as a table with `print`
/// or as JSON, or returns its error.
pub(crate) async fn finish<R: Serialize>(
    client: &Client,
    cleanup: &mut Cleanup,
    status: &Status,
    outcome: Result<R>,
    json: bool,
    print: fn(&R),
) -> Result<ExitCode> {
    if cleanup.has_leftovers() {
        status.say("deleting the benchmark's sandboxes and snapshots");
    }
    let warnings = cleanup.run(client).await;
    status.finish();
    for warning in warnings {
        eprintln!("warning: {warning}");
    }

    let report = outcome?;
    if json {
        crate::output::print_json(&report)?;
    } else {
        print(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs every measure and returns the report.
async fn measure(
    client: &Client,
    args: &BenchQemu,
    cleanup: &mut Cleanup,
    status: &Status,
) -> Result<Report> {
    let server = client.base_url().to_owned();
    let health = client
        .health()
        .await
        .with_context(|| format!("cannot reach the gitvm server at {server}"))?;

    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| gitvm_node::NodeConfig::default_data_dir().join("cache"));
    // The server creates its cache directory at start, so a missing one is the wrong one.
    if !cache_dir.is_dir() {
        bail!(
            "the cache directory {} does not exist; pass the server's with --cache-dir (its \
             --cache-dir, else <its --data-dir>/cache)",
            cache_dir.display()
        );
    }

    status.say("warm-up: creating a qemu sandbox (the first one may build the root disk)");
    let warmup = boot_to_ready(client, cleanup)
        .await
        .with_context(|| format!("the qemu runtime of the server at {server} does not work"))?;

    let boot = BootFiles::from_cache(&cache_dir, status).await?;
    if boot.initramfs_built {
        status.warn(&format!(
            "initramfs {} was not in the cache, so the gitvm-init next to this binary differs \
             from the server's; the bare boots run this one",
            boot.initramfs.display()
        ));
    }
    let scratch = cleanup.scratch_dir()?;
    let bare = BareBoot {
        qemu: args.qemu_bin.clone(),
        accel: args.accel.clone(),
        kernel: boot.kernel.vmlinuz.clone(),
        initramfs: boot.initramfs.clone(),
        scratch,
        status: status.clone(),
    };

    let runs = args.runs as usize;
    let mut bare_samples = Vec::with_capacity(runs);
    let mut create_samples = Vec::with_capacity(runs);
    let mut exec_samples = Vec::with_capacity(runs);
    for round in 0..=runs {
        let name = round_name(round, runs);
        status.say(&format!("bare boot {name}"));
        let elapsed = bare.boot(round).await?;
        status.say(&format!("bare boot {name}: {}", format_ms(elapsed)));
        status.say(&format!("create to agent ready {name}"));
        let times = boot_to_ready(client, cleanup).await?;
        status.say(&format!(
            "create to agent ready {name}: {}, first exec {}",
            format_ms(times.create),
            format_ms(times.first_exec)
        ));
        if round > 0 {
            bare_samples.push(elapsed);
            create_samples.push(times.create);
            exec_samples.push(times.first_exec);
        }
    }

    let restores = restore_runs(client, args.runs, cleanup, status).await?;

    let create_to_exec: Vec<Duration> = create_samples
        .iter()
        .zip(&exec_samples)
        .map(|(create, exec)| *create + *exec)
        .collect();
    let bare_boot = Summary::of(&bare_samples);
    let create_to_ready = Summary::of(&create_samples);
    let ready_over_bare_p50 = round_to(create_to_ready.p50_ms / bare_boot.p50_ms, 2);
    Ok(Report {
        server,
        server_version: health.version,
        runs: args.runs,
        bare_boot_accel: args.accel.clone(),
        kernel_release: boot.kernel.release.clone(),
        kernel: boot.kernel.vmlinuz.clone(),
        initramfs: boot.initramfs.clone(),
        initramfs_built_by_bench: boot.initramfs_built,
        warmup_create_ms: to_ms(warmup.create),
        bare_boot,
        create_to_ready,
        first_exec_after_create: Summary::of(&exec_samples),
        create_to_first_exec: Summary::of(&create_to_exec),
        restore: Summary::of(&restores.restore),
        restore_to_first_exec: Summary::of(&restores.restore_to_exec),
        snapshot: restores.snapshot,
        ready_over_bare_p50,
    })
}

/// Names a round for progress lines: round 0 is the warm-up.
fn round_name(round: usize, runs: usize) -> String {
    match round {
        0 => "warm-up".to_owned(),
        _ => format!("{round}/{runs}"),
    }
}

/// Durations of one create and its first exec.
struct ReadyTimes {
    create: Duration,
    first_exec: Duration,
}

/// Creates a qemu sandbox, runs `true` in it and deletes it; only the create and the exec are
/// timed.
async fn boot_to_ready(client: &Client, cleanup: &mut Cleanup) -> Result<ReadyTimes> {
    let request = CreateSandboxRequest {
        runtime: Some("qemu".to_owned()),
        internet: Some(false),
        vcpus: Some(i64::from(VCPUS)),
        memory_mb: Some(i64::from(MEMORY_MB)),
        timeout: Some(SANDBOX_TTL_SECS),
        metadata: cleanup.labels(),
        ..Default::default()
    };
    let started = Instant::now();
    let sandbox = client
        .create_sandbox(&request)
        .await
        .context("creating a qemu sandbox failed")?;
    let create = started.elapsed();
    cleanup.sandboxes.push(sandbox.id.clone());

    let first_exec = exec_true(client, &sandbox.id).await?;
    cleanup.delete_sandbox(client, &sandbox.id).await?;
    Ok(ReadyTimes { create, first_exec })
}

/// Runs `true` in sandbox `id` and returns how long the call took.
async fn exec_true(client: &Client, id: &str) -> Result<Duration> {
    let request = ExecRequest {
        command: "true".to_owned(),
        ..Default::default()
    };
    let started = Instant::now();
    let result = client
        .exec(id, &request)
        .await
        .with_context(|| format!("running `true` in sandbox {id} failed"))?;
    let elapsed = started.elapsed();
    if result.exit_code != 0 {
        bail!(
            "`true` exited with {} in sandbox {id}: {}",
            result.exit_code,
            result.stderr.trim()
        );
    }
    Ok(elapsed)
}

/// Samples of the restore measures, and the snapshot they restore.
struct RestoreSamples {
    restore: Vec<Duration>,
    restore_to_exec: Vec<Duration>,
    snapshot: SnapshotMeasure,
}

/// Takes a full snapshot of a sandbox running a background process, then restores it
/// `runs` times after one warm-up.
async fn restore_runs(
    client: &Client,
    runs: u32,
    cleanup: &mut Cleanup,
    status: &Status,
) -> Result<RestoreSamples> {
    status.say("restore: creating the sandbox to snapshot");
    let request = CreateSandboxRequest {
        runtime: Some("qemu".to_owned()),
        internet: Some(false),
        vcpus: Some(i64::from(VCPUS)),
        memory_mb: Some(i64::from(MEMORY_MB)),
        timeout: Some(SANDBOX_TTL_SECS),
        metadata: cleanup.labels(),
        ..Default::default()
    };
    let source = client
        .create_sandbox(&request)
        .await
        .context("creating the qemu sandbox to snapshot failed")?;
    cleanup.sandboxes.push(source.id.clone());
    let sleeper = StartProcessRequest {
        command: "sleep 86400".to_owned(),
        tag: Some(SLEEPER_TAG.to_owned()),
        ..Default::default()
    };
    client
        .start_process(&source.id, &sleeper)
        .await
        .with_context(|| {
            format!(
                "starting a background process in sandbox {} failed",
                source.id
            )
        })?;

    status.say("restore: taking a full snapshot");
    let started = Instant::now();
    let snapshot = client
        .create_snapshot(&source.id)
        .await
        .with_context(|| format!("snapshotting sandbox {} failed", source.id))?;
    let snapshot_time = started.elapsed();
    cleanup.snapshots.push(snapshot.id.clone());
    if snapshot.kind != SnapshotKind::Full {
        bail!(
            "snapshot {} of running sandbox {} is `{}`, not `full`; the restore measures need memory and processes",
            snapshot.id,
            source.id,
            snapshot.kind.as_str()
        );
    }
    // The source's idle guest would only add load to the restores.
    cleanup.delete_sandbox(client, &source.id).await?;

    let mut samples = RestoreSamples {
        restore: Vec::with_capacity(runs as usize),
        restore_to_exec: Vec::with_capacity(runs as usize),
        snapshot: SnapshotMeasure {
            duration_ms: to_ms(snapshot_time),
            size_bytes: snapshot.size_bytes,
        },
    };
    let restore_request = RestoreRequest {
        timeout: Some(SANDBOX_TTL_SECS),
        metadata: Some(cleanup.labels()),
    };
    for round in 0..=runs as usize {
        let name = round_name(round, runs as usize);
        status.say(&format!("restore {name}"));
        let started = Instant::now();
        let sandbox = client
            .restore_snapshot(&snapshot.id, &restore_request)
            .await
            .with_context(|| format!("restoring snapshot {} failed", snapshot.id))?;
        let restored = started.elapsed();
        cleanup.sandboxes.push(sandbox.id.clone());
        exec_true(client, &sandbox.id).await?;
        let to_exec = started.elapsed();
        status.say(&format!(
            "restore {name}: {}, to first exec {}",
            format_ms(restored),
            format_ms(to_exec)
        ));

        let process = client
            .process(&sandbox.id, SLEEPER_TAG)
            .await
            .with_context(|| {
                format!(
                    "reading background process `{SLEEPER_TAG}` of restored sandbox {} failed",
                    sandbox.id
                )
            })?;
        if process.state != ProcessState::Running {
            bail!(
                "background process `{SLEEPER_TAG}` of restored sandbox {} is not running after the restore: {process:?}",
                sandbox.id
            );
        }
        cleanup.delete_sandbox(client, &sandbox.id).await?;
        if round > 0 {
            samples.restore.push(restored);
            samples.restore_to_exec.push(to_exec);
        }
    }
    Ok(samples)
}

/// Kernel and initramfs of the bare boots, as the server's runtime finds them.
struct BootFiles {
    kernel: kernel::Kernel,
    initramfs: PathBuf,
    /// True when the initramfs was not in the cache, so this process built it.
    initramfs_built: bool,
}

impl BootFiles {
    /// Finds the cached kernel in `cache_dir` and the initramfs of the `gitvm-init` next to
    /// the current executable, the same way the qemu runtime does.
    async fn from_cache(cache_dir: &Path, status: &Status) -> Result<Self> {
        let kernels = cache_dir.join("kernels");
        if !has_visible_entry(&kernels) {
            bail!(
                "no guest kernel in {}; pass the server's cache directory with --cache-dir (its \
                 --cache-dir, else <its --data-dir>/cache)",
                kernels.display()
            );
        }
        let progress: gitvm_runtime::Progress = {
            let status = status.clone();
            Arc::new(move |line: &str| status.say(line))
        };
        let kernel =
            kernel::debian_cloud_kernel(cache_dir, DEBIAN_MIRROR, DEBIAN_SUITE, progress).await?;

        let init_bin = gitvm_node::NodeConfig::sibling_binary("gitvm-init");
        let cached_before = cpio_files(&cache_dir.join("initramfs"));
        let initramfs = tokio::task::spawn_blocking({
            let kernel = kernel.clone();
            let cache_dir = cache_dir.to_path_buf();
            move || initramfs::build_initramfs(&kernel, &init_bin, &cache_dir)
        })
        .await
        .context("the initramfs build task panicked")??;
        let initramfs_built = !cached_before.contains(&initramfs);
        Ok(Self {
            kernel,
            initramfs,
            initramfs_built,
        })
    }
}

/// True when `dir` exists and contains an entry whose name does not start with a dot.
fn has_visible_entry(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        })
        .unwrap_or(false)
}

/// Lists the `.cpio` files in `dir`, none when it does not exist.
fn cpio_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cpio"))
        .collect()
}

/// A QEMU command that boots the initramfs in probe mode with the qemu runtime's machine flags.
struct BareBoot {
    qemu: PathBuf,
    accel: String,
    kernel: PathBuf,
    initramfs: PathBuf,
    /// Directory of the serial logs.
    scratch: PathBuf,
    status: Status,
}

impl BareBoot {
    /// Builds the kernel command line: the runtime's, with the probe option in place of the
    /// hostname.
    fn append(&self) -> String {
        let mut append = String::from("console=ttyS0 panic=-1 quiet");
        if self.accel == "tcg" {
            if let Some(khz) = kernel::host_tsc_khz() {
                append.push_str(&format!(" tsc_early_khz={khz}"));
            }
        }
        append.push_str(" gitvm.probe");
        append
    }

    /// Boots once and returns the time from spawning QEMU to the marker in the serial log.
    async fn boot(&self, round: usize) -> Result<Duration> {
        let console = self.scratch.join(format!("bare-{round}.log"));
        let stderr_path = self.scratch.join(format!("bare-{round}.stderr"));
        let stderr = std::fs::File::create(&stderr_path)
            .with_context(|| format!("cannot create {}", stderr_path.display()))?;
        let accel = match self.accel.as_str() {
            "kvm" => Accel::Kvm,
            _ => Accel::Tcg,
        };
        let mut command = tokio::process::Command::new(&self.qemu);
        command
            .args(initramfs_boot_args(
                accel,
                u64::from(MEMORY_MB),
                &console,
                &self.kernel,
                &self.initramfs,
                &self.append(),
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);

        let started = Instant::now();
        let mut child = command.spawn().with_context(|| {
            format!(
                "cannot run {} for the bare boot; install QEMU with `apt-get install qemu-system-x86` or pass --qemu-bin",
                self.qemu.display()
            )
        })?;
        let elapsed = loop {
            if log_contains_marker(&console) {
                break started.elapsed();
            }
            if let Some(exit) = child.try_wait().context("waiting for the bare-boot QEMU")? {
                if log_contains_marker(&console) {
                    break started.elapsed();
                }
                bail!(
                    "bare-boot QEMU exited with {exit} before `{PROBE_MARKER}` appeared on its console\nQEMU: {}\nconsole: {}",
                    read_tail(&stderr_path),
                    read_tail(&console)
                );
            }
            if started.elapsed() > BARE_BOOT_TIMEOUT {
                let _ = child.kill().await;
                bail!(
                    "bare boot timed out: `{PROBE_MARKER}` did not appear on the console within {} s\nconsole: {}",
                    BARE_BOOT_TIMEOUT.as_secs(),
                    read_tail(&console)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        };

        // The probe powers the guest off, and -no-reboot makes QEMU exit.
        if tokio::time::timeout(BARE_EXIT_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            self.status.warn(&format!(
                "the bare-boot guest of round {round} did not power off within {} s; killing QEMU",
                BARE_EXIT_TIMEOUT.as_secs()
            ));
            let _ = child.kill().await;
        }
        Ok(elapsed)
    }
}

fn log_contains_marker(path: &Path) -> bool {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).contains(PROBE_MARKER))
        .unwrap_or(false)
}

/// Returns the last 2 KiB of a file, for error messages.
fn read_tail(path: &Path) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return format!("({} is missing)", path.display());
    };
    let start = bytes.len().saturating_sub(2048);
    let text = String::from_utf8_lossy(&bytes[start..]).trim().to_owned();
    if text.is_empty() {
        "(empty)".to_owned()
    } else {
        text
    }
}

/// Everything the benchmark created, deleted again by [`Cleanup::run`].
pub(crate) struct Cleanup {
    /// Value of the [`LABEL_KEY`] label of this run's sandboxes.
    label: String,
    pub(crate) sandboxes: Vec<String>,
    snapshots: Vec<String>,
    scratch: Option<PathBuf>,
}

impl Cleanup {
    pub(crate) fn new(label: String) -> Self {
        Self {
            label,
            sandboxes: Vec::new(),
            snapshots: Vec::new(),
            scratch: None,
        }
    }

    /// Metadata that marks this run's sandboxes.
    pub(crate) fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(LABEL_KEY.to_owned(), self.label.clone())])
    }

    /// Creates the directory of the bare boots' logs, removed by [`Cleanup::run`].
    fn scratch_dir(&mut self) -> Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!("gitvm-bench-{}", self.label));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the scratch directory {}", dir.display()))?;
        self.scratch = Some(dir.clone());
        Ok(dir)
    }

    /// True when a sandbox or snapshot of this run is known to exist.
    pub(crate) fn has_leftovers(&self) -> bool {
        !self.sandboxes.is_empty() || !self.snapshots.is_empty()
    }

    /// Deletes sandbox `id` and removes it from the leftovers.
    async fn delete_sandbox(&mut self, client: &Client, id: &str) -> Result<()> {
        client
            .delete_sandbox(id)
            .await
            .with_context(|| format!("deleting sandbox {id} failed"))?;
        self.sandboxes.retain(|known| known != id);
        Ok(())
    }

    /// Deletes every sandbox and snapshot left, best effort, and returns a warning for each
    /// failure.
    pub(crate) async fn run(&mut self, client: &Client) -> Vec<String> {
        let mut warnings = Vec::new();
        // A create interrupted by Ctrl-C may have made a sandbox whose id never arrived; the
        // label finds it.
        let filter = ListFilter {
            state: None,
            metadata: self.labels(),
        };
        if let Ok(listed) = client.list_sandboxes(&filter).await {
            for sandbox in listed {
                if !self.sandboxes.contains(&sandbox.id) {
                    self.sandboxes.push(sandbox.id);
                }
            }
        }
        for id in std::mem::take(&mut self.sandboxes) {
            if let Err(error) = client.delete_sandbox(&id).await {
                warnings.push(format!("cannot delete benchmark sandbox {id}: {error}"));
            }
        }
        for id in std::mem::take(&mut self.snapshots) {
            if let Err(error) = client.delete_snapshot(&id).await {
                warnings.push(format!("cannot delete benchmark snapshot {id}: {error}"));
            }
        }
        if let Some(dir) = self.scratch.take() {
            if let Err(error) = std::fs::remove_dir_all(&dir) {
                warnings.push(format!("cannot remove {}: {error}", dir.display()));
            }
        }
        warnings
    }
}

/// Returns a label value unique to this process and second.
pub(crate) fn run_label() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    format!("{}-{seconds}", std::process::id())
}

/// Progress lines: the latest one on a spinner on a terminal, otherwise every line on stderr.
#[derive(Clone)]
pub(crate) struct Status {
    bar: Option<ProgressBar>,
}

impl Status {
    pub(crate) fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { bar: None };
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar: Some(bar) }
    }

    pub(crate) fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(line.trim().to_owned()),
            None => eprintln!("{}", line.trim_end()),
        }
    }

    /// Prints a warning on its own line, above the spinner on a terminal.
    fn warn(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("warning: {message}")),
            None => eprintln!("warning: {message}"),
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Results of `gitvm bench qemu`, as printed by `--json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    server: String,
    server_version: String,
    /// Timed runs per measure.
    runs: u32,
    bare_boot_accel: String,
    kernel_release: String,
    kernel: PathBuf,
    initramfs: PathBuf,
    /// True when the initramfs was not in the cache, so the bare boots may run another init.
    initramfs_built_by_bench: bool,
    /// The first create, which may include building the template's root disk.
    warmup_create_ms: f64,
    bare_boot: Summary,
    create_to_ready: Summary,
    first_exec_after_create: Summary,
    create_to_first_exec: Summary,
    restore: Summary,
    restore_to_first_exec: Summary,
    snapshot: SnapshotMeasure,
    /// `createToReady.p50Ms / bareBoot.p50Ms`.
    ready_over_bare_p50: f64,
}

/// The one full snapshot the restores start from.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotMeasure {
    duration_ms: f64,
    size_bytes: u64,
}

/// Order statistics of one measure, in milliseconds rounded to 0.1 ms.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Summary {
    pub(crate) runs: usize,
    pub(crate) min_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) max_ms: f64,
    /// Every sample in run order.
    samples_ms: Vec<f64>,
}

impl Summary {
    /// Summarises `samples`. Panics when it is empty, which `--runs` (at least 1) rules out.
    pub(crate) fn of(samples: &[Duration]) -> Self {
        assert!(!samples.is_empty(), "a summary needs at least one sample");
        let samples_ms: Vec<f64> = samples.iter().map(|sample| to_ms(*sample)).collect();
        let mut sorted = samples_ms.clone();
        sorted.sort_by(f64::total_cmp);
        Self {
            runs: sorted.len(),
            min_ms: sorted[0],
            p50_ms: percentile(&sorted, 50),
            p90_ms: percentile(&sorted, 90),
            max_ms: sorted[sorted.len() - 1],
            samples_ms,
        }
    }
}

/// Nearest-rank percentile of ascending `sorted`: the value at rank ⌈percent × n / 100⌉, so
/// p50 of 10 samples is the 5th smallest and p90 the 9th.
fn percentile(sorted: &[f64], percent: usize) -> f64 {
    let rank = (percent * sorted.len())
        .div_ceil(100)
        .clamp(1, sorted.len());
    sorted[rank - 1]
}

fn to_ms(duration: Duration) -> f64 {
    round_to(duration.as_secs_f64() * 1000.0, 1)
}

fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

fn format_ms(duration: Duration) -> String {
    format!("{:.1} ms", to_ms(duration))
}

fn print_report(report: &Report) {
    println!(
        "gitvm bench qemu: server {} ({}), timed runs per measure: {} after one warm-up",
        report.server, report.server_version, report.runs
    );
    println!(
        "kernel {}, initramfs {}, bare boots under {}",
        report.kernel_release,
        report.initramfs.display(),
        report.bare_boot_accel
    );
    println!();

    let rows = [
        ("bare QEMU boot to init marker", &report.bare_boot),
        ("create to agent ready", &report.create_to_ready),
        ("first exec after create", &report.first_exec_after_create),
        ("create + first exec", &report.create_to_first_exec),
        ("restore call", &report.restore),
        ("restore + first exec", &report.restore_to_first_exec),
    ];
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    println!(
        "{:<width$}  {:>9}  {:>9}  {:>9}  {:>9}",
        "MEASURE (ms)", "MIN", "P50", "P90", "MAX"
    );
    for (name, summary) in rows {
        println!(
            "{name:<width$}  {:>9.1}  {:>9.1}  {:>9.1}  {:>9.1}",
            summary.min_ms, summary.p50_ms, summary.p90_ms, summary.max_ms
        );
    }
    println!();
    println!(
        "full snapshot: {:.1} ms, {:.1} MiB on disk",
        report.snapshot.duration_ms,
        report.snapshot.size_bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "create to agent ready p50 / bare boot p50: {:.2}",
        report.ready_over_bare_p50
    );
    println!("warm-up create: {:.1} ms", report.warmup_create_ms);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|ms| Duration::from_millis(*ms)).collect()
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let sorted: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50), 5.0);
        assert_eq!(percentile(&sorted, 90), 9.0);
        assert_eq!(percentile(&sorted, 100), 10.0);
        assert_eq!(percentile(&sorted, 0), 1.0);
        assert_eq!(percentile(&sorted, 1), 1.0);
        assert_eq!(percentile(&sorted, 91), 10.0);
    }

    #[test]
    fn percentile_of_one_sample_is_that_sample() {
        assert_eq!(percentile(&[7.5], 50), 7.5);
        assert_eq!(percentile(&[7.5], 90), 7.5);
    }

    #[test]
    fn percentile_of_odd_count() {
        let sorted = [1.0, 2.0, 3.0];
        assert_eq!(percentile(&sorted, 50), 2.0);
        assert_eq!(percentile(&sorted, 90), 3.0);
    }

    #[test]
    fn summary_sorts_and_keeps_run_order() {
        let summary = Summary::of(&millis(&[30, 10, 50, 20, 40]));
        assert_eq!(summary.runs, 5);
        assert_eq!(summary.min_ms, 10.0);
        assert_eq!(summary.p50_ms, 30.0);
        assert_eq!(summary.p90_ms, 50.0);
        assert_eq!(summary.max_ms, 50.0);
        assert_eq!(summary.samples_ms, vec![30.0, 10.0, 50.0, 20.0, 40.0]);
    }

    #[test]
    fn summary_rounds_to_tenths_of_a_millisecond() {
        let summary = Summary::of(&[Duration::from_micros(1_234_567)]);
        assert_eq!(summary.min_ms, 1234.6);
        assert_eq!(summary.samples_ms, vec![1234.6]);
    }

    #[test]
    fn summary_serialises_in_camel_case() {
        let json = serde_json::to_value(Summary::of(&millis(&[2, 1]))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "runs": 2, "minMs": 1.0, "p50Ms": 1.0, "p90Ms": 2.0, "maxMs": 2.0,
                "samplesMs": [2.0, 1.0]
            })
        );
    }

    #[test]
    fn bare_boot_append_follows_the_accelerator() {
        let bare = |accel: &str| BareBoot {
            qemu: "qemu".into(),
            accel: accel.to_owned(),
            kernel: "/k".into(),
            initramfs: "/i".into(),
            scratch: "/s".into(),
            status: Status { bar: None },
        };
        let kvm = bare("kvm").append();
        assert_eq!(kvm, "console=ttyS0 panic=-1 quiet gitvm.probe");
        let tcg = bare("tcg").append();
        assert!(tcg.starts_with("console=ttyS0 panic=-1 quiet"), "{tcg}");
        assert!(tcg.ends_with(" gitvm.probe"), "{tcg}");
    }
}
