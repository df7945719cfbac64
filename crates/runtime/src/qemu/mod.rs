//! The `qemu` runtime: each sandbox is a microVM under QEMU's `microvm` machine, with its own
//! kernel, a root disk built from the template, and the gitvm agent as init.
//!
//! - Guest stack: [`kernel`] fetches Debian's cloud kernel, [`initramfs`] builds the stage-one
//!   initramfs around `gitvm-init`, and [`image`] turns a template's Docker image into a cached
//!   ext4 disk with the agent inside. Each sandbox boots from a qcow2 overlay of that disk.
//! - Agent channel: a virtio-serial port carrying the same protocol as the Docker runtime's Unix
//!   socket; the handshake resynchronises the stream on every host connection.
//! - Control: QMP over a Unix socket for pause, resume and snapshots. QEMU runs detached, so
//!   sandboxes keep running across node restarts and are found again through their pid files.
//! - Acceleration: KVM when a probe boot succeeds within a deadline, otherwise TCG with
//!   `tsc_early_khz` from the host, without which some TCG boots hang calibrating the clock.
//! - Snapshots: `kind: full` saves memory (QMP `migrate` to a file) and disk of a running or paused
//!   sandbox. A restore starts QEMU with `-incoming` in a new sandbox, so processes continue. A
//!   stopped sandbox gives a `filesystem` snapshot of its disk.

pub mod image;
pub mod initramfs;
pub mod kernel;
pub mod machine;
pub mod qmp;
pub mod relay;

mod accel;
mod files;
mod snapshot;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gitvm_agent::client::AgentClient;
use tokio::sync::OnceCell;

use crate::docker::DockerRuntime;
use crate::{
    ObservedSandbox, ObservedState, Progress, Runtime, RuntimeError, SandboxSpec, SnapshotInfo,
};
use files::io_error;
use machine::{Accel, Machine};
use qmp::Qmp;

/// Runtime name in the API.
pub const NAME: &str = "qemu";

/// Prefix of [`SandboxSpec::image`] values that name a snapshot directory to restore.
pub const SNAPSHOT_PREFIX: &str = "qemu-snapshot:";

/// Time a connection to a running guest's agent gets for its handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Source of the guest kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// Debian's cloud kernel package from a Debian mirror, downloaded once into the cache.
    Debian {
        /// Mirror URL, such as `http://deb.debian.org/debian`.
        mirror: String,
        /// Suite, such as `bookworm`.
        suite: String,
    },
    /// A kernel image on this host, with its modules directory when drivers are modules.
    Path {
        /// Kernel image (`vmlinuz`).
        kernel: PathBuf,
        /// `lib/modules/<release>` of that kernel.
        modules: Option<PathBuf>,
    },
}

/// Accelerator choice of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    /// KVM when a probe boot works, otherwise TCG.
    Auto,
    /// Always KVM.
    Kvm,
    /// Always TCG.
    Tcg,
}

/// Settings of the qemu runtime.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Node data directory; the runtime keeps sandboxes and snapshots under `qemu/` in it.
    pub data_dir: PathBuf,
    /// Cache of kernels, initramfs images and root disks, which nodes on one host may share.
    pub cache_dir: PathBuf,
    /// The QEMU system emulator.
    pub qemu_bin: PathBuf,
    /// Static `gitvm` binary that runs as the agent inside guests.
    pub agent_bin: PathBuf,
    /// Static `gitvm-init` binary, the initramfs's init.
    pub init_bin: PathBuf,
    /// Guest kernel.
    pub kernel: KernelSource,
    /// Accelerator choice.
    pub accel: AccelChoice,
    /// Time a booting guest gets until its agent responds.
    pub ready_timeout: Duration,
    /// Extra kernel command line parameters, appended last.
    pub kernel_args: String,
}

/// Kernel and initramfs every guest boots.
#[derive(Debug, Clone)]
struct BootFiles {
    kernel: PathBuf,
    initramfs: PathBuf,
}

/// The shared agent connection of one sandbox; the async lock makes callers wait for a
/// connection in progress instead of opening another.
type AgentSlot = Arc<tokio::sync::Mutex<Option<AgentClient>>>;

/// QEMU implementation of [`Runtime`].
pub struct QemuRuntime {
    config: QemuConfig,
    root: PathBuf,
    docker: Option<Arc<DockerRuntime>>,
    boot: OnceCell<BootFiles>,
    accel: OnceCell<Accel>,
    /// One agent connection per sandbox, shared by every caller of `connect`: a serial port
    /// serves one host connection at a time, so a second connection would wait for the first
    /// to close.
    agents: Mutex<HashMap<String, AgentSlot>>,
}

impl QemuRuntime {
    /// Checks that QEMU and the tools the runtime needs are installed, and prepares the data
    /// directory. Templates come from Docker images, so `docker` is needed to create sandboxes
    /// from templates; restores and restarts work without it.
    pub async fn new(
        config: QemuConfig,
        docker: Option<Arc<DockerRuntime>>,
    ) -> Result<Self, RuntimeError> {
        let version = tokio::process::Command::new(&config.qemu_bin)
            .arg("--version")
            .output()
            .await;
        match version {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                return Err(RuntimeError::Unavailable {
                    runtime: NAME,
                    reason: format!(
                        "{} --version failed: {}",
                        config.qemu_bin.display(),
                        String::from_utf8_lossy(&output.stderr).trim()
                    ),
                })
            }
            Err(error) => {
                return Err(RuntimeError::Unavailable {
                    runtime: NAME,
                    reason: format!(
                    "cannot run {} ({error}); install QEMU with `apt-get install qemu-system-x86`",
                    config.qemu_bin.display()
                ),
                })
            }
        }
        for (tool, package) in [("qemu-img", "qemu-utils"), ("mkfs.ext4", "e2fsprogs")] {
            if !on_path(tool) {
                return Err(RuntimeError::Unavailable {
                    runtime: NAME,
                    reason: format!(
                        "{tool} is not installed; install it with `apt-get install {package}`"
                    ),
                });
            }
        }
        for (what, path) in [("agent", &config.agent_bin), ("init", &config.init_bin)] {
            if !path.is_file() {
                return Err(RuntimeError::Unavailable {
                    runtime: NAME,
                    reason: format!(
                        "the {what} binary {} does not exist; build the workspace with `cargo build`",
                        path.display()
                    ),
                });
            }
        }

        let root = config.data_dir.join("qemu");
        for dir in [
            root.join("sandboxes"),
            root.join("snapshots"),
            config.cache_dir.clone(),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| io_error(format!("creating {}", dir.display()), source))?;
        }
        // Guest disks, memory states and logs hold the sandboxes' data: only root may read them.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
                .map_err(|source| io_error(format!("restricting {}", root.display()), source))?;
        }
        snapshot::recover(&root).await;
        Ok(Self {
            config,
            root,
            docker,
            boot: OnceCell::new(),
            accel: OnceCell::new(),
            agents: Mutex::new(HashMap::new()),
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        machine::sandbox_dir(&self.root, id)
    }

    fn existing_dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        let dir = self.dir(id);
        if !dir.join(machine::MACHINE_FILE).exists() {
            return Err(RuntimeError::NotFound {
                what: "sandbox",
                id: id.to_owned(),
            });
        }
        Ok(dir)
    }

    /// Returns the kernel and initramfs, fetching and building them on first use.
    async fn boot_files(&self, progress: Progress) -> Result<&BootFiles, RuntimeError> {
        self.boot
            .get_or_try_init(|| boot_files(&self.config, progress))
            .await
    }

    /// Returns the accelerator, probing KVM on first use when the choice is `auto`.
    async fn accel(&self, boot: &BootFiles) -> Accel {
        *self
            .accel
            .get_or_init(|| async {
                match self.config.accel {
                    AccelChoice::Kvm => Accel::Kvm,
                    AccelChoice::Tcg => Accel::Tcg,
                    AccelChoice::Auto => {
                        accel::probe(
                            &self.config.qemu_bin,
                            &boot.kernel,
                            &boot.initramfs,
                            &self.root,
                        )
                        .await
                    }
                }
            })
            .await
    }

    /// Kernel command line of a new guest.
    fn append(&self, id: &str, internet: bool, accel: Accel) -> String {
        let mut append = String::from("console=ttyS0 panic=-1 quiet");
        if accel == Accel::Tcg {
            if let Some(khz) = kernel::host_tsc_khz() {
                append.push_str(&format!(" tsc_early_khz={khz}"));
            }
        }
        append.push_str(&format!(" gitvm.hostname={id}"));
        if internet {
            append.push_str(" gitvm.net=user");
        }
        if !self.config.kernel_args.trim().is_empty() {
            append.push(' ');
            append.push_str(self.config.kernel_args.trim());
        }
        append
    }

    /// Boots a new guest from the template disk `base`.
    async fn create_from_template(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let progress: Progress = {
            let id = spec.id.clone();
            Arc::new(move |line: &str| tracing::info!(sandbox_id = %id, "{line}"))
        };
        let boot = self.boot_files(progress).await?.clone();
        let accel = self.accel(&boot).await;
        let dir = self.dir(&spec.id);
        std::fs::create_dir_all(&dir)
            .map_err(|source| io_error(format!("creating {}", dir.display()), source))?;

        let base = Path::new(&spec.image);
        overlay(base, &dir.join(machine::DISK_FILE)).await?;
        let machine = Machine {
            vcpus: spec.vcpus,
            memory_mb: spec.memory_mb,
            kernel: boot.kernel,
            initramfs: boot.initramfs,
            append: self.append(&spec.id, spec.internet, accel),
            internet: spec.internet,
            accel,
        };
        machine.save(&dir)?;
        self.boot_machine(&spec.id, &machine, &dir).await
    }

    /// Starts QEMU for a saved machine and waits for its agent.
    async fn boot_machine(
        &self,
        id: &str,
        machine: &Machine,
        dir: &Path,
    ) -> Result<(), RuntimeError> {
        machine::spawn(
            &self.config.qemu_bin,
            &self.config.agent_bin,
            machine,
            id,
            dir,
            false,
        )
        .await?;
        let client = self.wait_ready(id, dir).await?;
        *self.agent_slot(id).lock().await = Some(client);
        Ok(())
    }

    /// Connects to the agent of a just-started guest, until the ready deadline. When the guest
    /// dies or the deadline passes, QEMU is killed and the error quotes the console's tail.
    async fn wait_ready(&self, id: &str, dir: &Path) -> Result<AgentClient, RuntimeError> {
        let limit = self.config.ready_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let socket = dir.join("relay.sock");
        let failure = loop {
            if machine::running_pid(dir, id).is_none() {
                break "QEMU exited".to_owned();
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                break format!("no answer within {}s", limit.as_secs());
            }
            let attempt = tokio::time::timeout(remaining, async {
                let client = AgentClient::connect_unix(&socket).await?;
                client.health().await?;
                Ok::<_, gitvm_agent::client::AgentError>(client)
            })
            .await;
            match attempt {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(error)) => {
                    tracing::debug!(sandbox_id = %id, %error, "agent not ready yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_elapsed) => {}
            }
        };
        machine::kill(dir, id).await;
        Err(RuntimeError::AgentNotReady {
            id: id.to_owned(),
            reason: format!(
                "{failure}; QEMU was stopped. Last console output:\n{}",
                machine::console_tail(dir)
            ),
        })
    }

    async fn qmp(&self, id: &str) -> Result<(PathBuf, Qmp), RuntimeError> {
        let dir = self.existing_dir(id)?;
        if machine::running_pid(&dir, id).is_none() {
            return Err(RuntimeError::Backend {
                runtime: NAME,
                operation: "control",
                id: id.to_owned(),
                message: "QEMU is not running".to_owned(),
            });
        }
        let qmp = Qmp::connect(&dir.join("qmp.sock"))
            .await
            .map_err(|error| backend("control", id, error))?;
        Ok((dir, qmp))
    }

    fn agent_slot(&self, id: &str) -> AgentSlot {
        let mut agents = self.agents.lock().expect("agent table poisoned");
        Arc::clone(agents.entry(id.to_owned()).or_default())
    }

    fn forget_agent(&self, id: &str) {
        self.agents.lock().expect("agent table poisoned").remove(id);
    }

    async fn stop_qemu(&self, id: &str, dir: &Path) {
        self.forget_agent(id);
        if machine::running_pid(dir, id).is_none() {
            return;
        }
        if let Ok(mut qmp) = Qmp::connect(&dir.join("qmp.sock")).await {
            let _ = qmp.execute("quit", None).await;
        }
        if !machine::wait_exit(dir, id, Duration::from_secs(5)).await {
            machine::kill(dir, id).await;
        }
    }
}

#[async_trait]
impl Runtime for QemuRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn min_memory_mb(&self) -> i64 {
        // The guest kernel exits at once with 64 MiB; 96 MiB boots, 128 MiB leaves room.
        128
    }

    async fn prepare_template(
        &self,
        template: &str,
        progress: Progress,
    ) -> Result<String, RuntimeError> {
        let Some(docker) = &self.docker else {
            return Err(RuntimeError::Unavailable {
                runtime: NAME,
                reason: "qemu templates are built from Docker images, and Docker is not \
                         reachable; start dockerd"
                    .to_owned(),
            });
        };
        let image = docker
            .prepare_template(template, Arc::clone(&progress))
            .await?;
        let disk = image::root_disk(
            docker.docker(),
            &image,
            &self.config.agent_bin,
            &self.config.cache_dir,
            progress,
        )
        .await?;
        Ok(disk.display().to_string())
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        match spec.image.strip_prefix(SNAPSHOT_PREFIX) {
            Some(snapshot) => self.restore(spec, Path::new(snapshot)).await,
            None => self.create_from_template(spec).await,
        }
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.existing_dir(id)?;
        if machine::running_pid(&dir, id).is_some() {
            return Ok(());
        }
        let machine = Machine::load(&dir)?;
        self.boot_machine(id, &machine, &dir).await
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.existing_dir(id)?;
        // Write the guest's dirty pages to its disk before QEMU ends.
        if let Ok(Ok(agent)) = tokio::time::timeout(Duration::from_secs(2), self.connect(id)).await
        {
            let sync = gitvm_proto::ExecRequest {
                command: "sync".to_owned(),
                timeout: Some(5.0),
                ..Default::default()
            };
            let _ = tokio::time::timeout(Duration::from_secs(6), agent.exec(&sync)).await;
        }
        self.stop_qemu(id, &dir).await;
        Ok(())
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        let (_, mut qmp) = self.qmp(id).await?;
        qmp.execute("stop", None)
            .await
            .map_err(|error| backend("pause", id, error))?;
        Ok(())
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        let (_, mut qmp) = self.qmp(id).await?;
        qmp.execute("cont", None)
            .await
            .map_err(|error| backend("resume", id, error))?;
        // The guest's clock stood still while it was paused.
        let synced = tokio::time::timeout(CONNECT_TIMEOUT, async {
            self.connect(id).await?.sync_clock().await?;
            Ok::<_, RuntimeError>(())
        })
        .await;
        if !matches!(synced, Ok(Ok(()))) {
            tracing::warn!(sandbox_id = %id, result = ?synced, "cannot set the resumed guest's clock");
        }
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.dir(id);
        self.forget_agent(id);
        machine::kill(&dir, id).await;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(io_error(format!("removing {}", dir.display()), source)),
        }
    }

    async fn connect(&self, id: &str) -> Result<AgentClient, RuntimeError> {
        let slot = self.agent_slot(id);
        let mut slot = slot.lock().await;
        if let Some(client) = slot.as_ref().filter(|client| !client.is_closed()) {
            return Ok(client.clone());
        }
        let dir = self.existing_dir(id)?;
        if machine::running_pid(&dir, id).is_none() {
            return Err(RuntimeError::AgentNotReady {
                id: id.to_owned(),
                reason: "QEMU is not running".to_owned(),
            });
        }
        // A new relay would reconnect to QEMU's port, which stalls the guest's output.
        if !relay::is_running(&dir) {
            return Err(RuntimeError::AgentNotReady {
                id: id.to_owned(),
                reason: "the microVM's agent relay exited; stop and start the sandbox".to_owned(),
            });
        }
        let client = tokio::time::timeout(
            CONNECT_TIMEOUT,
            AgentClient::connect_unix(&dir.join("relay.sock")),
        )
        .await
        .map_err(|_| RuntimeError::AgentNotReady {
            id: id.to_owned(),
            reason: format!(
                "no handshake within {}s; the guest may be hung. Last console output:\n{}",
                CONNECT_TIMEOUT.as_secs(),
                machine::console_tail(&dir)
            ),
        })??;
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn snapshot(&self, id: &str, snapshot_id: &str) -> Result<SnapshotInfo, RuntimeError> {
        let dir = self.existing_dir(id)?;
        snapshot::take(self, id, &dir, snapshot_id).await
    }

    async fn delete_snapshot(&self, snapshot: &SnapshotInfo) -> Result<(), RuntimeError> {
        let Some(path) = snapshot.image.strip_prefix(SNAPSHOT_PREFIX) else {
            return Err(RuntimeError::NotFound {
                what: "snapshot",
                id: snapshot.image.clone(),
            });
        };
        match std::fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Err(RuntimeError::NotFound {
                    what: "snapshot",
                    id: snapshot.image.clone(),
                })
            }
            Err(source) => Err(io_error(format!("removing {path}"), source)),
        }
    }

    async fn list(&self) -> Result<Vec<ObservedSandbox>, RuntimeError> {
        let sandboxes = self.root.join("sandboxes");
        let entries = std::fs::read_dir(&sandboxes)
            .map_err(|source| io_error(format!("listing {}", sandboxes.display()), source))?;
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            // A directory without settings is left from a create that did not finish. It counts
            // as stopped, so reconciliation removes it when the store does not know the id.
            let state = match self.observe(&id).await? {
                ObservedState::Missing => ObservedState::Stopped,
                state => state,
            };
            found.push(ObservedSandbox { id, state });
        }
        Ok(found)
    }

    async fn observe(&self, id: &str) -> Result<ObservedState, RuntimeError> {
        let Ok(dir) = self.existing_dir(id) else {
            return Ok(ObservedState::Missing);
        };
        if machine::running_pid(&dir, id).is_none() {
            return Ok(ObservedState::Stopped);
        }
        let status = match Qmp::connect(&dir.join("qmp.sock")).await {
            Ok(mut qmp) => qmp
                .status()
                .await
                .map_err(|error| backend("observe", id, error))?,
            Err(error) => return Err(backend("observe", id, error)),
        };
        Ok(match status.as_str() {
            "running" => ObservedState::Running,
            "paused" | "postmigrate" | "finish-migrate" | "suspended" => ObservedState::Paused,
            _ => ObservedState::Stopped,
        })
    }
}

/// Fetches the kernel and builds the initramfs that guests of `config` boot.
async fn boot_files(config: &QemuConfig, progress: Progress) -> Result<BootFiles, RuntimeError> {
    let kernel = match &config.kernel {
        KernelSource::Debian { mirror, suite } => {
            kernel::debian_cloud_kernel(&config.cache_dir, mirror, suite, progress).await?
        }
        KernelSource::Path { kernel, modules } => kernel::user_kernel(kernel, modules.as_deref())?,
    };
    let cache = config.cache_dir.clone();
    let init = config.init_bin.clone();
    let vmlinuz = kernel.vmlinuz.clone();
    let initramfs =
        tokio::task::spawn_blocking(move || initramfs::build_initramfs(&kernel, &init, &cache))
            .await
            .expect("initramfs task panicked")?;
    Ok(BootFiles {
        kernel: vmlinuz,
        initramfs,
    })
}

/// The files a qemu sandbox of one template boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFiles {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs around `gitvm-init`.
    pub initramfs: PathBuf,
    /// Cached ext4 root disk of the template.
    pub disk: PathBuf,
}

/// Prepares the kernel, initramfs and root disk for sandboxes of the local Docker image
/// `image` ahead of the first create, with progress. Later creates find them in the cache.
pub async fn prepare_guest(
    docker: &bollard::Docker,
    image: &str,
    config: &QemuConfig,
    progress: Progress,
) -> Result<GuestFiles, RuntimeError> {
    let boot = boot_files(config, Arc::clone(&progress)).await?;
    let disk = image::root_disk(
        docker,
        image,
        &config.agent_bin,
        &config.cache_dir,
        progress,
    )
    .await?;
    Ok(GuestFiles {
        kernel: boot.kernel,
        initramfs: boot.initramfs,
        disk,
    })
}

/// Creates `target`, a qcow2 overlay whose backing file is the template disk `base`.
async fn overlay(base: &Path, target: &Path) -> Result<(), RuntimeError> {
    let output = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(target)
        .output()
        .await
        .map_err(|error| RuntimeError::Unavailable {
            runtime: NAME,
            reason: format!(
                "cannot run qemu-img ({error}); install it with `apt-get install qemu-utils`"
            ),
        })?;
    if !output.status.success() {
        return Err(io_error(
            format!(
                "creating the disk overlay {} over {}",
                target.display(),
                base.display()
            ),
            std::io::Error::other(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
        ));
    }
    Ok(())
}

fn backend(operation: &'static str, id: &str, error: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Backend {
        runtime: NAME,
        operation,
        id: id.to_owned(),
        message: error.to_string(),
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false)
}
