//! Request and response bodies of the node REST API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Lifecycle state of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// The runtime is building the sandbox and waiting for its agent.
    Creating,
    /// The agent is ready; commands and file operations are accepted.
    Running,
    /// Every process is frozen; memory is kept.
    Paused,
    /// Every process has exited; the filesystem is kept.
    Stopped,
    /// The sandbox and its runtime resources are gone.
    Deleted,
    /// An operation failed, and `error` on the sandbox gives the reason. Only delete is allowed.
    Error,
}

impl SandboxState {
    /// Lowercase name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Deleted => "deleted",
            Self::Error => "error",
        }
    }
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SandboxState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "creating" => Self::Creating,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "stopped" => Self::Stopped,
            "deleted" => Self::Deleted,
            "error" => Self::Error,
            other => {
                return Err(format!(
                    "unknown sandbox state `{other}`; expected one of creating, running, paused, stopped, deleted, error"
                ))
            }
        })
    }
}

/// Body of `POST /sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// Template name (`base`) or image reference; the node's default template when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Runtime backend (`docker`, `qemu` or `firecracker`); the node's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Number of virtual CPUs (whole CPUs; Docker enforces it as a CPU quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<i64>,
    /// Memory limit in MiB.
    #[serde(default, rename = "memoryMB", skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<i64>,
    /// Time to live in seconds; 0 means the sandbox never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Environment variables set for every command run in the sandbox.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// Free-form labels for the caller's own bookkeeping.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Outbound network access; `false` leaves only the loopback device. Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internet: Option<bool>,
}

/// A sandbox as returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    /// Sandbox id, such as `sb-k3j9x2m1qz7a`.
    pub id: String,
    /// Template the sandbox was created from, as requested.
    pub template: String,
    /// Runtime backend running the sandbox.
    pub runtime: String,
    /// Current lifecycle state.
    pub state: SandboxState,
    /// Number of virtual CPUs.
    pub vcpus: i64,
    /// Memory limit in MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: i64,
    /// Time to live in seconds; 0 means never.
    pub timeout: i64,
    /// Environment variables applied to every command.
    pub env_vars: BTreeMap<String, String>,
    /// Caller-provided labels.
    pub metadata: BTreeMap<String, String>,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
    /// Expiry time, RFC 3339 UTC; `null` when the timeout is 0.
    pub expires_at: Option<String>,
    /// Snapshot this sandbox was restored from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Whether the sandbox has outbound network access.
    #[serde(default = "default_true")]
    pub internet: bool,
    /// Reason for the `error` state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn default_true() -> bool {
    true
}

/// Body of `GET /sandboxes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxList {
    /// Sandboxes matching the filter, oldest first.
    pub sandboxes: Vec<Sandbox>,
}

/// Body of `POST /sandboxes/:id/exec`, and of the agent's `/exec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRequest {
    /// Shell command line, run as `/bin/sh -c COMMAND`.
    pub command: String,
    /// Working directory; must exist. Defaults to the user's home directory, else `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment variables; they override the sandbox's `envVars`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// User name or numeric uid to run as; `root` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Seconds after which the whole process group is killed; no limit when absent or 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
}

/// Exit code reported when a command was killed for exceeding its timeout, as coreutils
/// `timeout` does.
pub const EXIT_CODE_TIMED_OUT: i32 = 124;

/// Maximum bytes of stdout, and separately of stderr, that a buffered exec returns. Output past
/// this is discarded and the result is marked truncated.
pub const EXEC_OUTPUT_LIMIT: usize = 16 * 1024 * 1024;

/// Result of a buffered exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    /// Exit status. A command killed by signal N reports 128 + N (137 for SIGKILL); a timed-out
    /// command reports 124.
    pub exit_code: i32,
    /// Standard output, decoded as UTF-8 with invalid sequences replaced by U+FFFD.
    pub stdout: String,
    /// Standard error, decoded like `stdout`.
    pub stderr: String,
    /// The exact stdout bytes, base64-encoded, present only when stdout is not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_base64: Option<String>,
    /// The exact stderr bytes, base64-encoded, present only when stderr is not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_base64: Option<String>,
    /// True when the command was killed because its timeout elapsed.
    #[serde(default)]
    pub timed_out: bool,
    /// Name of the signal that ended the command (`SIGKILL`), if a signal did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// True when stdout or stderr exceeded the output limit and was cut.
    #[serde(default)]
    pub truncated: bool,
    /// Wall time from spawn to exit, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
}

/// Media type of a streamed exec: one JSON [`ExecEvent`] per line.
pub const NDJSON: &str = "application/x-ndjson";

/// One event of a streamed exec (`POST /sandboxes/:id/exec/stream`), sent as one JSON object
/// per line. Events come in this order: one `start`, any number of `stdout` and `stderr`
/// chunks in the order the command wrote them to each stream, then one `exit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ExecEvent {
    /// The command was spawned.
    Start {
        /// Process id of the shell inside the sandbox.
        pid: u32,
    },
    /// A chunk of standard output.
    Stdout {
        /// The bytes, base64-encoded (standard alphabet, padded), so binary output is exact.
        data: String,
    },
    /// A chunk of standard error.
    Stderr {
        /// The bytes, base64-encoded like `stdout` chunks.
        data: String,
    },
    /// The command ended; no event follows.
    #[serde(rename_all = "camelCase")]
    Exit {
        /// Exit status with the same conventions as [`ExecResult::exit_code`].
        exit_code: i32,
        /// Name of the signal that ended the command, if a signal did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
        /// True when the command was killed because its timeout elapsed.
        #[serde(default)]
        timed_out: bool,
        /// Wall time from spawn to exit, in milliseconds.
        #[serde(default)]
        duration_ms: u64,
    },
}

/// Decodes `bytes` as the `stdout`/`stderr` string of an [`ExecResult`], with the base64 copy
/// of the exact bytes when they are not valid UTF-8.
pub fn output_text(bytes: Vec<u8>) -> (String, Option<String>) {
    match String::from_utf8(bytes) {
        Ok(text) => (text, None),
        Err(err) => {
            use base64::Engine;
            let exact = base64::engine::general_purpose::STANDARD.encode(err.as_bytes());
            (
                String::from_utf8_lossy(err.as_bytes()).into_owned(),
                Some(exact),
            )
        }
    }
}

impl ExecResult {
    /// Exact stdout bytes, from `stdoutBase64` when present, else from `stdout`.
    pub fn stdout_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        exact_bytes(&self.stdout, self.stdout_base64.as_deref())
    }

    /// Exact stderr bytes, from `stderrBase64` when present, else from `stderr`.
    pub fn stderr_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        exact_bytes(&self.stderr, self.stderr_base64.as_deref())
    }
}

fn exact_bytes(text: &str, base64_copy: Option<&str>) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine;
    match base64_copy {
        Some(encoded) => base64::engine::general_purpose::STANDARD.decode(encoded),
        None => Ok(text.as_bytes().to_vec()),
    }
}

impl ExecEvent {
    /// Builds a `stdout` or `stderr` chunk event from raw bytes.
    pub fn chunk(stderr: bool, bytes: &[u8]) -> Self {
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.encode(bytes);
        if stderr {
            Self::Stderr { data }
        } else {
            Self::Stdout { data }
        }
    }

    /// Decodes the bytes of a `stdout` or `stderr` event; `None` for other events.
    pub fn bytes(&self) -> Option<Result<Vec<u8>, base64::DecodeError>> {
        use base64::Engine;
        match self {
            Self::Stdout { data } | Self::Stderr { data } => {
                Some(base64::engine::general_purpose::STANDARD.decode(data))
            }
            _ => None,
        }
    }
}

/// Body of `POST /sandboxes/:id/processes`: a command started in the background.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartProcessRequest {
    /// Shell command line, run as `/bin/sh -c COMMAND`.
    pub command: String,
    /// Working directory; must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment variables; they override the sandbox's `envVars`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// User name or numeric uid to run as; `root` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Name to find the process by later, unique among the sandbox's running processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Seconds after which the process group is killed; no limit when absent or 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
}

/// Lifecycle state of a background process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    /// The shell has not exited yet.
    Running,
    /// The shell exited; `exitCode` is set.
    Exited,
}

/// A background process as returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInfo {
    /// Process id of the shell inside the sandbox.
    pub pid: u32,
    /// Tag given at start, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Command line as given.
    pub command: String,
    /// Whether the process still runs.
    pub state: ProcessState,
    /// Exit status once exited, with the conventions of [`ExecResult::exit_code`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Name of the signal that ended the process, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// True when the process was killed because its timeout elapsed.
    #[serde(default)]
    pub timed_out: bool,
    /// Start time, RFC 3339 UTC.
    pub started_at: String,
    /// Exit time, RFC 3339 UTC, once exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited_at: Option<String>,
}

/// Body of `GET /sandboxes/:id/processes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessList {
    /// Processes started in the background, running ones and recently exited ones, oldest
    /// first.
    pub processes: Vec<ProcessInfo>,
}

/// Body of `POST /sandboxes/:id/processes/:pid/signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignalRequest {
    /// Signal name (`SIGTERM` or `TERM`) or number (`15`).
    pub signal: String,
}

/// Kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (not followed).
    Symlink,
    /// Anything else: socket, FIFO, device.
    Other,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// File name within its directory.
    pub name: String,
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Entry kind.
    #[serde(rename = "type")]
    pub file_type: FileType,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits, such as 420 for 0644.
    pub mode: u32,
    /// Last modification time, RFC 3339 UTC.
    pub modified_at: String,
}

/// Body of `GET /sandboxes/:id/files/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileList {
    /// Entries sorted by name.
    pub entries: Vec<FileEntry>,
}

/// Contents of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// The root filesystem only; processes are not kept (Docker commit).
    Filesystem,
    /// Memory, devices and disk; a restore resumes running processes.
    Full,
}

impl SnapshotKind {
    /// Lowercase name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filesystem => "filesystem",
            Self::Full => "full",
        }
    }
}

/// A snapshot as returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Snapshot id, such as `snap-4m2k9d0x1c3b`.
    pub id: String,
    /// Sandbox the snapshot was taken from.
    pub sandbox_id: String,
    /// Runtime that took it; restores use the same runtime.
    pub runtime: String,
    /// Snapshot contents: filesystem only, or full.
    pub kind: SnapshotKind,
    /// Size on disk in bytes.
    pub size_bytes: u64,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
}

/// Body of `GET /snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotList {
    /// Snapshots, oldest first.
    pub snapshots: Vec<Snapshot>,
}

/// Body of `POST /snapshots/:id/restore`; every field overrides the source sandbox's value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreRequest {
    /// Time to live in seconds for the new sandbox; 0 means never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Labels for the new sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Body of `POST /sandboxes/:id/timeout`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetTimeoutRequest {
    /// New time to live in seconds, counted from now; 0 means the sandbox never expires.
    pub timeout: i64,
}

/// Body of `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `ok` when the node can serve requests.
    pub status: String,
    /// gitvm version.
    pub version: String,
    /// Runtimes this node can run, such as `["docker"]`.
    pub runtimes: Vec<String>,
}
