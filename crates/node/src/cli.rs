//! Command-line flags and logging shared by `gitvm server start` and `gitvm-node`.

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::NodeConfig;

/// Flags that configure a node.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address the REST API listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// TCP port of the REST API; 0 picks a free port.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Directory of the database, sandbox sockets and the agent binary
    /// [default: /var/lib/gitvm for root, else $XDG_DATA_HOME/gitvm or ~/.local/share/gitvm].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// API key clients must send as `X-API-Key` or `Authorization: Bearer` on every route but
    /// /health; unset leaves the API open, and an empty key is rejected at start.
    #[arg(long, env = "GITVM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Time to live, in seconds, of sandboxes created without `timeout`; 0 means never.
    #[arg(long, default_value_t = 300)]
    pub default_timeout: i64,

    /// Seconds that create and start wait for a sandbox's agent before they fail.
    #[arg(long, default_value_t = 30)]
    pub ready_timeout: u64,

    /// Runtime of sandboxes created without `runtime`: docker, qemu or firecracker.
    #[arg(long, default_value = "docker", env = "GITVM_DEFAULT_RUNTIME")]
    pub default_runtime: String,

    /// Cache of template root disks, guest kernels and packages, which several nodes on one
    /// host may share [default: <data-dir>/cache].
    #[arg(long, env = "GITVM_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// QEMU system emulator of the qemu runtime.
    #[arg(long, default_value = "qemu-system-x86_64", env = "GITVM_QEMU_BIN")]
    pub qemu_bin: PathBuf,

    /// Guest kernel image of the qemu runtime; without it Debian's cloud kernel is downloaded
    /// once from --debian-mirror.
    #[arg(long, env = "GITVM_QEMU_KERNEL")]
    pub qemu_kernel: Option<PathBuf>,

    /// `lib/modules/<release>` directory of --qemu-kernel, when its virtio drivers are modules.
    #[arg(long, requires = "qemu_kernel")]
    pub qemu_kernel_modules: Option<PathBuf>,

    /// Accelerator of the qemu runtime: `auto` boots a probe guest under KVM and falls back to
    /// TCG (software emulation) when it does not come up. `kvm` or `tcg` skip the probe.
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"], env = "GITVM_QEMU_ACCEL")]
    pub qemu_accel: String,

    /// Extra kernel command line parameters for qemu guests.
    #[arg(long, default_value = "", env = "GITVM_QEMU_KERNEL_ARGS")]
    pub qemu_kernel_args: String,

    /// Debian mirror the guest kernel is downloaded from.
    #[arg(long, default_value = "http://deb.debian.org/debian")]
    pub debian_mirror: String,
}

impl ServeArgs {
    /// Builds the node configuration, with `agent_bin` as the binary mounted into sandboxes.
    pub fn into_config(self, agent_bin: PathBuf) -> NodeConfig {
        NodeConfig {
            listen: SocketAddr::new(self.host, self.port),
            data_dir: self.data_dir.unwrap_or_else(NodeConfig::default_data_dir),
            // An empty key is kept, so that `serve` rejects it instead of leaving the API open.
            api_key: self.api_key,
            agent_bin,
            default_timeout_secs: self.default_timeout,
            ready_timeout: Duration::from_secs(self.ready_timeout),
            default_runtime: self.default_runtime,
            cache_dir: self.cache_dir,
            qemu: crate::config::QemuSettings {
                qemu_bin: self.qemu_bin,
                kernel: self.qemu_kernel,
                kernel_modules: self.qemu_kernel_modules,
                accel: self.qemu_accel,
                kernel_args: self.qemu_kernel_args,
                debian_mirror: self.debian_mirror,
                ..Default::default()
            },
            ..NodeConfig::default()
        }
    }
}

/// Sends logs to stderr, filtered by `RUST_LOG` (default `info`), in colour on a terminal only.
pub fn init_logging() {
    init_logging_at("info");
}

/// Sends logs to stderr like [`init_logging`], at `default_level` when `RUST_LOG` is unset.
pub fn init_logging_at(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
