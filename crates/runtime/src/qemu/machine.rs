//! One microVM on disk and as a process: its directory, its settings, the QEMU command line,
//! and the QEMU process found through its pid file.
//!
//! A sandbox directory holds:
//! - `machine.json`: the [`Machine`] settings, so that a restarted node can start it again;
//! - `disk.qcow2`: the root disk, a copy-on-write overlay over the template's cached ext4 image;
//! - `qmp.sock`, `agent.sock`: QEMU's control socket and the agent's virtio-serial port;
//! - `relay.sock`: where the node reaches the agent, through the relay of [`super::relay`];
//! - `console.log`: the serial console, which shows kernel and agent messages;
//! - `qemu.pid`: the pid of the QEMU process, which runs detached from the node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::files::{io_error, write_atomic};
use crate::RuntimeError;

/// Settings file name inside a sandbox or snapshot directory.
pub const MACHINE_FILE: &str = "machine.json";
/// Root disk file name inside a sandbox or snapshot directory.
pub const DISK_FILE: &str = "disk.qcow2";
/// Serial console log file name inside a sandbox directory.
pub const CONSOLE_FILE: &str = "console.log";
/// Bytes of the console log quoted in errors.
const CONSOLE_TAIL: usize = 2048;

/// Accelerator that executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation, which works everywhere and is 5 to 15 times slower.
    Tcg,
}

impl Accel {
    /// Name as in QEMU's `accel=` option.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Everything needed to run one microVM again, stored as `machine.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mb: u64,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs built by gitvm for that kernel.
    pub initramfs: PathBuf,
    /// Kernel command line.
    pub append: String,
    /// Whether the guest has a network card with outbound access.
    pub internet: bool,
    /// Accelerator the machine runs under; a restored snapshot keeps it.
    pub accel: Accel,
}

impl Machine {
    /// Reads `machine.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, RuntimeError> {
        let path = dir.join(MACHINE_FILE);
        let bytes = std::fs::read(&path)
            .map_err(|source| io_error(format!("reading {}", path.display()), source))?;
        serde_json::from_slice(&bytes).map_err(|error| {
            io_error(
                format!("parsing {}", path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, error),
            )
        })
    }

    /// Writes `machine.json` into `dir` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), RuntimeError> {
        let bytes = serde_json::to_vec_pretty(self).expect("machine settings serialise");
        write_atomic(&dir.join(MACHINE_FILE), &bytes)
    }

    /// QEMU arguments to run this machine from the files in `dir`. With `incoming`, QEMU waits
    /// for a `migrate-incoming` command that loads a saved state.
    pub fn qemu_args(&self, name: &str, dir: &Path, incoming: bool) -> Vec<String> {
        let path = |file: &str| dir.join(file).display().to_string();
        let cpu = match self.accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        };
        let mut args: Vec<String> = vec![
            "-name".into(),
            format!("gitvm-{name}"),
            "-M".into(),
            format!("microvm,acpi=on,accel={}", self.accel.as_str()),
            "-cpu".into(),
            cpu.into(),
            "-m".into(),
            format!("{}M", self.memory_mb),
            "-smp".into(),
            self.vcpus.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-chardev".into(),
            format!("file,id=console,path={},append=on", path(CONSOLE_FILE)),
            "-serial".into(),
            "chardev:console".into(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initramfs.display().to_string(),
            "-append".into(),
            self.append.clone(),
            "-drive".into(),
            // Blocks the guest trims go back to the host.
            format!(
                "id=root,file={},format=qcow2,if=none,discard=unmap",
                path(DISK_FILE)
            ),
            "-device".into(),
            "virtio-blk-device,drive=root".into(),
            "-device".into(),
            "virtio-serial-device".into(),
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},server=on,wait=off",
                path("agent.sock")
            ),
            "-device".into(),
            format!(
                "virtserialport,chardev=agent,name={}",
                gitvm_proto::agent::SERIAL_PORT_NAME
            ),
            "-device".into(),
            "virtio-rng-device".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", path("qmp.sock")),
            "-pidfile".into(),
            path("qemu.pid"),
            "-daemonize".into(),
        ];
        if self.internet {
            // NOTE: QEMU's user-mode network forwards the guest's 10.0.2.2 to the host's
            // 127.0.0.1, so the guest reaches services that listen on the host's loopback.
            args.extend([
                "-netdev".into(),
                "user,id=net0".into(),
                "-device".into(),
                "virtio-net-device,netdev=net0".into(),
            ]);
        }
        if incoming {
            args.extend(["-incoming".into(), "defer".into()]);
        }
        args
    }
}

/// QEMU arguments that boot `kernel` and `initramfs` on a one-vCPU `microvm` machine whose only
/// device is the serial console, written to `console`. The KVM probe, the bare-boot benchmark
/// and the boot tests use it; callers add devices after it.
pub fn initramfs_boot_args(
    accel: Accel,
    memory_mb: u64,
    console: &Path,
    kernel: &Path,
    initramfs: &Path,
    append: &str,
) -> Vec<String> {
    let cpu = match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    };
    [
        "-M",
        &format!("microvm,acpi=on,accel={}", accel.as_str()),
        "-cpu",
        cpu,
        "-m",
        &format!("{memory_mb}M"),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        &format!("file:{}", console.display()),
        "-kernel",
        &kernel.display().to_string(),
        "-initrd",
        &initramfs.display().to_string(),
        "-append",
        append,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Starts QEMU for `machine` in `dir`. QEMU detaches once its sockets exist, so a node restart
/// leaves it running; errors before that come back with QEMU's message.
pub async fn spawn(
    qemu: &Path,
    relay_bin: &Path,
    machine: &Machine,
    name: &str,
    dir: &Path,
    incoming: bool,
) -> Result<(), RuntimeError> {
    for stale in ["qmp.sock", "agent.sock", "relay.sock", "qemu.pid"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let output = tokio::process::Command::new(qemu)
        .args(machine.qemu_args(name, dir, incoming))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|error| RuntimeError::Unavailable {
            runtime: "qemu",
            reason: format!(
                "cannot run {} ({error}); install QEMU with `apt-get install qemu-system-x86`",
                qemu.display()
            ),
        })?;
    if !output.status.success() {
        return Err(RuntimeError::Backend {
            runtime: "qemu",
            operation: "start",
            id: name.to_owned(),
            message: format!(
                "QEMU exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    super::relay::spawn(relay_bin, dir)
}

/// Returns the pid of the running QEMU of `dir`, or `None` when it is not running. A pid
/// that now belongs to another process does not count.
pub fn running_pid(dir: &Path, name: &str) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join("qemu.pid")).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let marker = format!("gitvm-{name}");
    let ours = cmdline
        .split(|&b| b == 0)
        .any(|arg| arg == marker.as_bytes());
    // A zombie has an empty command line and no longer runs.
    ours.then_some(pid)
}

/// Kills the QEMU of `dir` and waits until it is gone.
pub async fn kill(dir: &Path, name: &str) {
    let Some(pid) = running_pid(dir, name) else {
        return;
    };
    // SAFETY: sending a signal to a pid read from our pid file and checked above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_exit(dir, name, Duration::from_secs(5)).await;
}

/// Waits up to `limit` for the QEMU of `dir` to exit; true when it did.
pub async fn wait_exit(dir: &Path, name: &str, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while running_pid(dir, name).is_some() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Returns the last lines of the serial console of `dir`, for error messages.
pub fn console_tail(dir: &Path) -> String {
    let Ok(bytes) = std::fs::read(dir.join(CONSOLE_FILE)) else {
        return "(no console output)".to_owned();
    };
    let start = bytes.len().saturating_sub(CONSOLE_TAIL);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let text = text.trim();
    if text.is_empty() {
        "(no console output)".to_owned()
    } else {
        text.to_owned()
    }
}

/// Returns the directory path of sandbox `id` under `root`.
pub fn sandbox_dir(root: &Path, id: &str) -> PathBuf {
    root.join("sandboxes").join(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(internet: bool) -> Machine {
        Machine {
            vcpus: 2,
            memory_mb: 512,
            kernel: "/k".into(),
            initramfs: "/i".into(),
            append: "console=ttyS0".into(),
            internet,
            accel: Accel::Tcg,
        }
    }

    #[test]
    fn arguments_follow_the_settings() {
        let args = machine(true).qemu_args("sb-1", Path::new("/d"), false);
        let joined = args.join(" ");
        assert!(joined.contains("-M microvm,acpi=on,accel=tcg -cpu max -m 512M -smp 2"));
        assert!(joined.contains("-netdev user,id=net0"));
        assert!(joined.contains("file=/d/disk.qcow2,format=qcow2"));
        assert!(!joined.contains("-incoming"));

        let args = machine(false).qemu_args("sb-1", Path::new("/d"), true);
        let joined = args.join(" ");
        assert!(!joined.contains("-netdev"));
        assert!(joined.ends_with("-incoming defer"));
    }

    #[test]
    fn settings_survive_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        machine(true).save(dir.path()).unwrap();
        assert_eq!(Machine::load(dir.path()).unwrap(), machine(true));
    }
}
