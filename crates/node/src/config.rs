//! Configuration of a node, shared by `gitvm server start` and `gitvm-node`.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

/// Everything [`crate::serve`] needs to run a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Address the REST API listens on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Directory of the database and of the runtime's per-sandbox files.
    pub data_dir: PathBuf,
    /// Key clients must send; `None` leaves the API open, and [`crate::serve`] rejects an
    /// empty key.
    pub api_key: Option<String>,
    /// The `gitvm` binary that runs as the agent inside every sandbox.
    pub agent_bin: PathBuf,
    /// Time to live in seconds of sandboxes created without `timeout`; 0 means never.
    pub default_timeout_secs: i64,
    /// Template of sandboxes created without `template`.
    pub default_template: String,
    /// Maximum time create and start wait for a sandbox's agent to become ready.
    pub ready_timeout: Duration,
    /// Runtime of sandboxes created without `runtime`.
    pub default_runtime: String,
    /// Cache of template root disks, kernels and packages; `<data_dir>/cache` when `None`.
    pub cache_dir: Option<PathBuf>,
    /// Settings of the qemu runtime.
    pub qemu: QemuSettings,
}

/// Settings of the qemu runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuSettings {
    /// QEMU system emulator to run.
    pub qemu_bin: PathBuf,
    /// The `gitvm-init` binary put into every initramfs.
    pub init_bin: PathBuf,
    /// Guest kernel image; Debian's cloud kernel is downloaded when `None`.
    pub kernel: Option<PathBuf>,
    /// `lib/modules/<release>` directory of `kernel`.
    pub kernel_modules: Option<PathBuf>,
    /// Debian mirror to download the kernel from.
    pub debian_mirror: String,
    /// Debian suite of the kernel.
    pub debian_suite: String,
    /// `auto`, `kvm` or `tcg`.
    pub accel: String,
    /// Extra kernel command line parameters.
    pub kernel_args: String,
}

impl Default for QemuSettings {
    fn default() -> Self {
        Self {
            qemu_bin: PathBuf::from("qemu-system-x86_64"),
            init_bin: NodeConfig::sibling_binary("gitvm-init"),
            kernel: None,
            kernel_modules: None,
            debian_mirror: "http://deb.debian.org/debian".to_owned(),
            debian_suite: "bookworm".to_owned(),
            accel: "auto".to_owned(),
            kernel_args: String::new(),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            data_dir: Self::default_data_dir(),
            api_key: None,
            agent_bin: Self::default_agent_bin(),
            default_timeout_secs: 300,
            default_template: "base".to_owned(),
            ready_timeout: Duration::from_secs(30),
            default_runtime: "docker".to_owned(),
            cache_dir: None,
            qemu: QemuSettings::default(),
        }
    }
}

impl NodeConfig {
    /// Default data directory: `/var/lib/gitvm` for root, else `$XDG_DATA_HOME/gitvm`, else
    /// `~/.local/share/gitvm`.
    pub fn default_data_dir() -> PathBuf {
        // /proc/self is owned by the effective uid of the process.
        let is_root = std::fs::metadata("/proc/self")
            .map(|meta| meta.uid() == 0)
            .unwrap_or(false);
        if is_root {
            return PathBuf::from("/var/lib/gitvm");
        }
        if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|dir| !dir.is_empty()) {
            return PathBuf::from(dir).join("gitvm");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
        PathBuf::from(home).join(".local/share/gitvm")
    }

    /// Default agent binary: a file named `gitvm` in the directory of the current executable.
    pub fn default_agent_bin() -> PathBuf {
        Self::sibling_binary("gitvm")
    }

    /// Returns the path of a file named `name` in the directory of the current executable.
    pub fn sibling_binary(name: &str) -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
            .unwrap_or_else(|| PathBuf::from(name))
    }

    /// Returns the cache directory: [`NodeConfig::cache_dir`] or `<data_dir>/cache`.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cache"))
    }
}
