//! Command-line grammar of `gitvm`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Self-hosted sandboxes for AI agents: create isolated Linux machines, run commands, move files,
/// snapshot them.
#[derive(Debug, Parser)]
#[command(name = "gitvm", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub connection: Connection,

    #[command(subcommand)]
    pub command: Command,
}

/// Server address and key of the client commands.
#[derive(Debug, Args)]
pub struct Connection {
    /// URL of the gitvm server.
    #[arg(
        long,
        global = true,
        env = "GITVM_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,

    /// API key sent as `X-API-Key`.
    #[arg(long, global = true, env = "GITVM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gitvm server.
    #[command(subcommand)]
    Server(ServerCommand),

    /// Manage sandboxes.
    #[command(subcommand)]
    Vm(VmCommand),

    /// Manage snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),

    /// Run and control background processes in a sandbox.
    #[command(subcommand)]
    Proc(ProcCommand),

    /// Build sandbox templates.
    #[command(subcommand)]
    Template(TemplateCommand),

    /// Measure how long sandboxes take to start.
    #[command(subcommand)]
    Bench(BenchCommand),

    /// Run the in-sandbox agent (PID 1 inside every sandbox; not for direct use).
    #[command(hide = true)]
    Agent(AgentArgs),

    /// Relay between a microVM's agent port and the node (started by the qemu runtime).
    #[command(hide = true, name = "qemu-relay")]
    QemuRelay {
        /// QEMU's virtio-serial socket.
        qemu_socket: PathBuf,
        /// Socket to serve the node on.
        listen: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Unix socket to listen on (Docker sandboxes).
    #[arg(long, required_unless_present = "vm", conflicts_with = "vm")]
    pub socket: Option<PathBuf>,

    /// Run as init of a microVM guest: set the machine up, then serve on the virtio-serial
    /// port named `gitvm`.
    #[arg(long)]
    pub vm: bool,
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Start a standalone node serving the REST API, with the Docker and qemu runtimes.
    Start(gitvm_node::cli::ServeArgs),
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a sandbox and print its id.
    Create(VmCreate),

    /// List sandboxes.
    #[command(alias = "ls")]
    List(VmList),

    /// Show one sandbox.
    Get(VmId),

    /// Run a command in a sandbox; copies its output as it arrives and exits with its exit code.
    ///
    /// One argument after `--` is a shell command line (`-- 'ls | wc -l'`); several are a
    /// program and its arguments, quoted for the shell (`-- echo hello world`). gitvm's own
    /// failures exit with 125.
    Exec(VmExec),

    /// Open an interactive terminal in a running sandbox; exits with the shell's exit code.
    ///
    /// Runs a login shell (`/bin/bash -l`, else `/bin/sh`) on a pseudo-terminal. gitvm's own
    /// failures exit with 125.
    Shell(VmShell),

    /// Start a stopped sandbox.
    Start(VmId),

    /// Stop a sandbox; its files are kept.
    Stop(VmId),

    /// Freeze every process of a sandbox.
    Pause(VmId),

    /// Thaw a paused sandbox.
    Resume(VmId),

    /// Delete a sandbox.
    #[command(alias = "delete")]
    Rm(VmId),

    /// Set a sandbox's time to live, counted from now.
    Timeout(VmTimeout),

    /// Move files in and out of a sandbox.
    #[command(subcommand)]
    Files(FilesCommand),
}

#[derive(Debug, Args)]
pub struct VmId {
    /// Sandbox id.
    pub id: String,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VmShell {
    /// Sandbox id.
    pub id: String,

    /// Shell command line to run on the terminal instead of a login shell, such as `top`.
    #[arg(long, short = 'c')]
    pub command: Option<String>,
}

#[derive(Debug, Args)]
pub struct VmTimeout {
    /// Sandbox id.
    pub id: String,

    /// Seconds from now until the sandbox is deleted; 0 means never.
    pub seconds: i64,

    /// Print the whole sandbox as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VmCreate {
    /// Template name or image reference [default: the server's, `base`].
    #[arg(long)]
    pub template: Option<String>,

    /// Runtime: docker (container), qemu (microVM) or firecracker [default: the server's].
    #[arg(long)]
    pub runtime: Option<String>,

    /// Cut the sandbox off from the network; only loopback works inside.
    #[arg(long)]
    pub no_internet: bool,

    /// Number of virtual CPUs.
    #[arg(long)]
    pub vcpus: Option<i64>,

    /// Memory limit in MiB.
    #[arg(long)]
    pub memory: Option<i64>,

    /// Time to live in seconds; 0 means never.
    #[arg(long)]
    pub timeout: Option<i64>,

    /// Environment variable for every command, as KEY=VALUE; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Metadata label, as KEY=VALUE; repeatable.
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,

    /// Print the whole sandbox as JSON instead of its id.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VmList {
    /// Only sandboxes in this state (running, paused, stopped, creating, error).
    #[arg(long)]
    pub state: Option<String>,

    /// Only sandboxes with this metadata label, as KEY=VALUE; repeatable.
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VmExec {
    /// Sandbox id.
    pub id: String,

    /// Working directory inside the sandbox.
    #[arg(long)]
    pub cwd: Option<String>,

    /// Environment variable, as KEY=VALUE; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// User name or uid to run as.
    #[arg(long)]
    pub user: Option<String>,

    /// Seconds after which the command is killed (exit code 124).
    #[arg(long)]
    pub timeout: Option<f64>,

    /// Print the buffered result as JSON instead of streaming the command's output.
    #[arg(long)]
    pub json: bool,

    /// The command, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// Copy a file out of a sandbox to LOCAL (into it, when LOCAL is a directory), or to
    /// standard output when LOCAL is `-` or absent.
    Get {
        /// Sandbox id.
        id: String,
        /// Absolute path inside the sandbox.
        path: String,
        /// Local destination file.
        local: Option<PathBuf>,
    },

    /// Copy LOCAL (or standard input when `-`) into a sandbox, creating parent directories; a
    /// PATH ending in `/` is a directory to put the file into.
    Put {
        /// Sandbox id.
        id: String,
        /// Local source file, or `-`.
        local: PathBuf,
        /// Absolute destination path inside the sandbox.
        path: String,
    },

    /// List a directory in a sandbox.
    Ls {
        /// Sandbox id.
        id: String,
        /// Absolute directory path inside the sandbox.
        path: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },

    /// Create a directory and its parents in a sandbox.
    Mkdir {
        /// Sandbox id.
        id: String,
        /// Absolute path inside the sandbox.
        path: String,
    },

    /// Remove a file or a directory tree in a sandbox.
    Rm {
        /// Sandbox id.
        id: String,
        /// Absolute path inside the sandbox.
        path: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProcCommand {
    /// Start a command in the background and print its pid.
    Start {
        /// Sandbox id.
        id: String,
        /// Name to find the process by later.
        #[arg(long)]
        tag: Option<String>,
        /// Working directory inside the sandbox.
        #[arg(long)]
        cwd: Option<String>,
        /// Environment variable, as KEY=VALUE; repeatable.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Print the whole process as JSON.
        #[arg(long)]
        json: bool,
        /// The command, after `--`; one word is a shell line, several are quoted.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },

    /// List background processes.
    #[command(alias = "ls")]
    List {
        /// Sandbox id.
        id: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },

    /// Print a process's output from its replay buffer on, follow it until it exits, and exit
    /// with its exit code.
    Logs {
        /// Sandbox id.
        id: String,
        /// Pid or tag.
        process: String,
    },

    /// Send a signal (TERM, SIGINT, 9, ...) to a process's group.
    Signal {
        /// Sandbox id.
        id: String,
        /// Pid or tag.
        process: String,
        /// Signal name or number.
        signal: String,
    },

    /// Kill a process and its whole process group.
    Kill {
        /// Sandbox id.
        id: String,
        /// Pid or tag.
        process: String,
    },

    /// Wait until a process exits; print it as JSON and exit with its exit code.
    Wait {
        /// Sandbox id.
        id: String,
        /// Pid or tag.
        process: String,
        /// Give up after this many seconds (exit 1).
        #[arg(long)]
        timeout: Option<f64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a sandbox and print the snapshot id.
    Create {
        /// Sandbox id.
        id: String,
        /// Print the whole snapshot as JSON.
        #[arg(long)]
        json: bool,
    },

    /// List snapshots.
    #[command(alias = "ls")]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },

    /// Create a new sandbox from a snapshot and print its id.
    Restore {
        /// Snapshot id.
        id: String,
        /// Time to live of the new sandbox in seconds; 0 means never.
        #[arg(long)]
        timeout: Option<i64>,
        /// Print the whole sandbox as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Delete a snapshot.
    #[command(alias = "delete")]
    Rm {
        /// Snapshot id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Build a template image locally. `base` is Debian bookworm made with debootstrap
    /// (bash, coreutils, python3, git, ca-certificates), imported into Docker.
    Build(TemplateBuild),
}

#[derive(Debug, Args)]
pub struct TemplateBuild {
    /// Template to build; only `base` exists today.
    pub name: String,

    /// Rebuild even when the image already exists.
    #[arg(long)]
    pub force: bool,

    /// Data directory whose `cache/` keeps downloaded Debian packages between builds.
    /// [default: /var/lib/gitvm for root, else ~/.local/share/gitvm]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// Also prepare what qemu microVMs of this template boot: download the guest kernel, build
    /// the initramfs and write the root disk, so that the first create does not wait for them.
    #[arg(long)]
    pub microvm: bool,

    /// Cache the server uses for microVM files, when not `<data-dir>/cache`.
    #[arg(long, env = "GITVM_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Debian mirror the guest kernel is downloaded from.
    #[arg(long, default_value = "http://deb.debian.org/debian")]
    pub debian_mirror: String,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time microVM boot to agent ready and snapshot restore to first exec on the server's qemu
    /// runtime, against a bare QEMU boot of the same kernel and initramfs.
    ///
    /// Creates and deletes sandboxes and a snapshot on the server; run it on the server's host,
    /// because the bare boots read the server's kernel cache.
    Qemu(BenchQemu),

    /// Time exec round trips and create to first exec on the server's Docker runtime, against
    /// the same work through the Docker Engine API, and report the agent's memory.
    ///
    /// Run it on the server's host as root: it talks to dockerd and reads the agent's memory
    /// from /proc.
    Docker(BenchDocker),
}

#[derive(Debug, Args)]
pub struct BenchDocker {
    /// Timed exec round trips of each kind, after one untimed warm-up.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub exec_runs: u32,

    /// Timed creates of each kind, after one untimed warm-up.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub create_runs: u32,

    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchQemu {
    /// Timed repetitions of each measure, after one untimed warm-up.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,

    /// The server's cache directory, which contains its guest kernel and initramfs
    /// [default: <default data dir>/cache, /var/lib/gitvm/cache for root].
    #[arg(long, env = "GITVM_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Accelerator of the bare QEMU boots: `tcg` or `kvm`; use the server's `--qemu-accel`.
    #[arg(long, default_value = "tcg", value_parser = ["tcg", "kvm"])]
    pub accel: String,

    /// QEMU system emulator of the bare boots.
    #[arg(long, default_value = "qemu-system-x86_64", env = "GITVM_QEMU_BIN")]
    pub qemu_bin: PathBuf,

    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
