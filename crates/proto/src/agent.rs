//! The agent protocol: how the host talks to the gitvm agent inside a sandbox.
//!
//! One protocol runs over any byte stream: a Unix socket (Docker), hybrid vsock (Firecracker) or
//! a virtio-serial port (QEMU). A serial port is one long-lived stream that can still carry bytes
//! of an earlier host connection, so every connection starts with a resynchronisation:
//!
//! 1. The host opens the stream and sends `GITVM-HELLO <nonce>\n`, with a fresh random nonce of
//!    32 lowercase hex digits.
//! 2. The agent discards input until it reads a complete hello line, then sends
//!    `GITVM-READY <nonce>\n` with the same nonce. A newer hello restarts this step.
//! 3. The host discards input until it reads the ready line carrying its own nonce.
//! 4. Both sides speak HTTP/2 with prior knowledge, the host as client. HTTP/2 multiplexes many
//!    requests over the one stream and gives each a flow-controlled body.
//!
//! Routes served by the agent (errors are [`crate::ErrorBody`] JSON):
//!
//! | method | path | body | response |
//! |---|---|---|---|
//! | GET | `/health` | | [`AgentHealth`] |
//! | POST | `/clock` | [`SetClockRequest`] | 204; sets the guest's wall clock (microVMs) |
//! | POST | `/identity` | [`SetIdentityRequest`] | 204; new hostname and fresh randomness for a restored microVM |
//! | POST | `/exec` | [`crate::ExecRequest`] | [`crate::ExecResult`] |
//! | GET | `/files?path=P` | | the file's bytes, streamed |
//! | PUT | `/files?path=P` | the file's bytes, streamed | 204; parents are created |
//! | DELETE | `/files?path=P` | | 204; directories are removed recursively |
//! | GET | `/files/list?path=P` | | [`crate::FileList`] |
//! | POST | `/files/mkdir?path=P` | | 204; like `mkdir -p` |

use serde::{Deserialize, Serialize};

/// First word of the host's hello line.
pub const HELLO: &str = "GITVM-HELLO";

/// First word of the agent's reply line.
pub const READY: &str = "GITVM-READY";

/// Maximum length of a handshake line either side accepts, in bytes. Longer lines are discarded.
pub const MAX_HANDSHAKE_LINE: usize = 128;

/// Directory inside a Docker sandbox where the host bind-mounts the agent binary and the
/// directory holding the agent's socket.
pub const GUEST_DIR: &str = "/.gitvm";

/// Path of the agent binary inside a Docker sandbox.
pub const GUEST_AGENT_BIN: &str = "/.gitvm/gitvm";

/// Directory inside a Docker sandbox, bind-mounted from the host, where the agent listens.
pub const GUEST_RUN_DIR: &str = "/.gitvm/run";

/// File name of the agent's Unix socket inside [`GUEST_RUN_DIR`].
pub const SOCKET_NAME: &str = "agent.sock";

/// Body of the agent's `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentHealth {
    /// Agent version, the gitvm version it was built from.
    pub version: String,
    /// The agent's own pid; 1 when it runs as init.
    pub pid: u32,
    /// Whether `/bin/sh` exists, so that `exec` can work.
    pub shell: bool,
}

/// Body of the agent's `POST /clock`: the wall-clock time to set, which the host sends after
/// restoring a microVM whose clock stood still while it was saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetClockRequest {
    /// Whole seconds since the Unix epoch.
    pub unix_seconds: i64,
    /// Nanoseconds past `unix_seconds`, below one billion.
    pub nanos: u32,
}

/// Body of the agent's `POST /identity`, which the host sends to every microVM restored from a
/// snapshot. Restores of one snapshot start from the same memory, kernel random state included,
/// so each gets its own hostname and fresh entropy that reseeds the kernel's generator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetIdentityRequest {
    /// Hostname to set, the new sandbox's id.
    pub hostname: String,
    /// Random bytes from the host, as lowercase hex; 16 to 512 bytes.
    pub entropy_hex: String,
}

/// Name of the virtio-serial port that carries the agent protocol in QEMU guests.
pub const SERIAL_PORT_NAME: &str = "gitvm";
