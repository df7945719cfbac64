//! A small client of the QEMU Machine Protocol: JSON commands over QEMU's `-qmp` Unix socket.
//!
//! Each [`Qmp`] value is one connection. QEMU sends a greeting, the client enables commands
//! with `qmp_capabilities`, and then every command gets one `return` or `error` reply. Events
//! may arrive between replies; they are skipped.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Time a migration to or from a state file gets; a saved state is a few hundred MiB at most.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);

/// Time QEMU gets to reply to one command.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed QMP exchange.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be used, or QEMU closed it.
    #[error("QMP socket {path}: {message}")]
    Io {
        /// Socket path.
        path: String,
        /// What failed.
        message: String,
    },
    /// QEMU replied to the command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// Command name.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

/// One QMP connection, ready for commands.
pub struct Qmp {
    path: String,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Qmp {
    /// Connects to the socket at `path`, reads the greeting and enables commands.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let display = path.display().to_string();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|error| QmpError::Io {
                path: display.clone(),
                message: format!("cannot connect: {error}"),
            })?;
        let (reader, writer) = stream.into_split();
        let mut qmp = Self {
            path: display,
            reader: BufReader::new(reader),
            writer,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(qmp.io_error(format!("expected the QMP greeting, got {greeting}")));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs `command` with optional `arguments` and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|error| self.io_error(format!("cannot send {command}: {error}")))?;

        let reply = tokio::time::timeout(REPLY_TIMEOUT, async {
            loop {
                let message = self.read_message().await?;
                if message.get("event").is_some() {
                    continue;
                }
                return Ok::<_, QmpError>(message);
            }
        })
        .await
        .map_err(|_| {
            self.io_error(format!(
                "no reply to {command} within {}s",
                REPLY_TIMEOUT.as_secs()
            ))
        })??;

        if let Some(value) = reply.get("return") {
            return Ok(value.clone());
        }
        let error = reply.get("error").cloned().unwrap_or(Value::Null);
        Err(QmpError::Command {
            command: command.to_owned(),
            class: error["class"].as_str().unwrap_or("unknown").to_owned(),
            desc: error["desc"]
                .as_str()
                .unwrap_or("no description")
                .to_owned(),
        })
    }

    /// Returns QEMU's run state, such as `running`, `paused` or `inmigrate`.
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let value = self.execute("query-status", None).await?;
        Ok(value["status"].as_str().unwrap_or("unknown").to_owned())
    }

    /// Polls `query-migrate` until the migration completes, and fails when it fails or has
    /// not completed within [`MIGRATION_TIMEOUT`], cancelling it then.
    pub async fn wait_migration(&mut self) -> Result<(), QmpError> {
        let deadline = tokio::time::Instant::now() + MIGRATION_TIMEOUT;
        loop {
            if tokio::time::Instant::now() >= deadline {
                let _ = self.execute("migrate_cancel", None).await;
                return Err(QmpError::Command {
                    command: "migrate".to_owned(),
                    class: "timeout".to_owned(),
                    desc: format!(
                        "the state transfer did not complete within {}s and was cancelled",
                        MIGRATION_TIMEOUT.as_secs()
                    ),
                });
            }
            let value = self.execute("query-migrate", None).await?;
            match value["status"].as_str() {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    return Err(QmpError::Command {
                        command: "migrate".to_owned(),
                        class: value["status"].as_str().unwrap_or_default().to_owned(),
                        desc: value["error-desc"]
                            .as_str()
                            .unwrap_or("no description")
                            .to_owned(),
                    })
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|error| self.io_error(format!("cannot read: {error}")))?;
        if n == 0 {
            return Err(self.io_error("QEMU closed the connection".to_owned()));
        }
        serde_json::from_str(&line)
            .map_err(|error| self.io_error(format!("invalid JSON {line:?}: {error}")))
    }

    fn io_error(&self, message: String) -> QmpError {
        QmpError::Io {
            path: self.path.clone(),
            message,
        }
    }
}
