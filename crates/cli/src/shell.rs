//! `gitvm vm shell ID`: an interactive terminal in a sandbox, over the node's WebSocket route
//! `GET /sandboxes/{id}/pty`.
//!
//! 1. Connect with [`gitvm_sdk::Client::open_pty`], passing the local window size.
//! 2. When stdin is a terminal, switch it to raw mode, so every key (^C, arrows, tab) goes to
//!    the sandbox's terminal, which does its own echo and line editing. A guard restores the
//!    saved mode on every way out, including errors and panics.
//! 3. Send stdin bytes as binary frames, and a resize text frame at start and on SIGWINCH.
//!    Write binary frames from the server to stdout.
//! 4. Exit with the exit code in the server's final `exit` text frame.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use gitvm_sdk::{PtyEvent, PtyOptions, PtyReader, PtyWriter};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::args::{Connection, VmShell};

/// Window size sent when neither stdout nor stdin is a terminal.
const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// End-of-transmission byte (^D), which a terminal in canonical mode reads as end of input.
const EOT: u8 = 0x04;

/// Interval between repeated ^D bytes once piped stdin has ended.
const EOT_REPEAT: std::time::Duration = std::time::Duration::from_millis(500);

/// Bytes read from stdin per call.
const STDIN_CHUNK: usize = 4096;

/// Opens the terminal and runs it until the sandbox's command exits; returns its exit code, or
/// 125 when gitvm fails.
pub async fn run(connection: &Connection, args: VmShell) -> ExitCode {
    match run_inner(connection, &args).await {
        Ok(code) => code,
        Err(error) => {
            // The raw-mode guard is gone by now, so the message prints on a sane terminal.
            crate::command_failed(&error)
        }
    }
}

async fn run_inner(connection: &Connection, args: &VmShell) -> Result<ExitCode> {
    let client = crate::vm::client(connection)?;
    let (cols, rows) = window_size();
    let options = PtyOptions {
        cols,
        rows,
        command: args.command.clone(),
    };
    let session = match client.open_pty(&args.id, &options).await {
        Ok(session) => session,
        Err(gitvm_sdk::Error::Api { body, .. }) => {
            bail!(
                "cannot open a terminal in sandbox {}: {}",
                args.id,
                body.message
            );
        }
        Err(error @ gitvm_sdk::Error::WebSocket { .. }) => {
            let server = &connection.server;
            let context = format!(
                "cannot connect to {server}; is the server running? Point GITVM_SERVER (or --server) at it"
            );
            return Err(anyhow!(error).context(context));
        }
        Err(error) => {
            return Err(
                anyhow!(error).context(format!("cannot open a terminal in sandbox {}", args.id))
            )
        }
    };

    let interactive = std::io::stdin().is_terminal();
    let _raw = if interactive {
        Some(RawMode::enable()?)
    } else {
        None
    };
    let input = spawn_stdin_reader(!interactive);
    let (writer, reader) = session.split();
    bridge(writer, reader, input).await
}

/// Copies stdin to the terminal and the terminal's output to stdout until the command exits.
async fn bridge(
    mut writer: PtyWriter,
    mut reader: PtyReader,
    mut input: mpsc::UnboundedReceiver<Vec<u8>>,
) -> Result<ExitCode> {
    let mut window_changes = signal(SignalKind::window_change())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hang_up = signal(SignalKind::hangup())?;
    let (cols, rows) = window_size();
    writer.resize(cols, rows).await?;

    let mut input_open = true;
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            chunk = input.recv(), if input_open => match chunk {
                Some(bytes) => writer.send_input(&bytes).await?,
                // The socket stays open, because output and the exit status are still to come.
                None => input_open = false,
            },
            _ = window_changes.recv() => {
                let (cols, rows) = window_size();
                writer.resize(cols, rows).await?;
            }
            _ = terminate.recv() => return Ok(ExitCode::from(128 + libc::SIGTERM as u8)),
            _ = hang_up.recv() => return Ok(ExitCode::from(128 + libc::SIGHUP as u8)),
            event = reader.next_event() => match event.context("the terminal connection failed")? {
                PtyEvent::Output(bytes) => {
                    stdout.write_all(&bytes)?;
                    stdout.flush()?;
                }
                PtyEvent::Exit { exit_code, .. } => {
                    let _ = writer.close().await;
                    return Ok(ExitCode::from(exit_status(exit_code)));
                }
                PtyEvent::Closed { reason: Some(reason) } => {
                    bail!("the server closed the terminal before the shell exited: {reason}");
                }
                PtyEvent::Closed { reason: None } => {
                    bail!("the terminal connection closed before the shell exited");
                }
            },
        }
    }
}

/// Clamps a sandbox exit code to the 0..=255 a process can exit with.
fn exit_status(exit_code: i32) -> u8 {
    exit_code.clamp(0, 255) as u8
}

/// Returns the local terminal's (columns, rows), from stdout or else stdin.
fn window_size() -> (u16, u16) {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize to the pointer, which outlives the call.
        let result = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size as *mut libc::winsize) };
        if result == 0 && size.ws_col > 0 && size.ws_row > 0 {
            return (size.ws_col, size.ws_row);
        }
    }
    DEFAULT_SIZE
}

/// Reads stdin on a thread of its own, because a blocking read cannot be cancelled and the
/// runtime waits for its blocking tasks when it shuts down. When `send_eot` is set, end of
/// file is passed on as ^D, so that `echo CMD | gitvm vm shell ID` ends like a script. The ^D
/// is repeated every [`EOT_REPEAT`] until the session ends. A ^D that arrives before the shell
/// has put the terminal in its own mode becomes a NUL byte when the mode changes (Linux n_tty
/// behaviour). A shell still running an earlier line also needs one more.
fn spawn_stdin_reader(send_eot: bool) -> mpsc::UnboundedReceiver<Vec<u8>> {
    let (sender, receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buffer = vec![0u8; STDIN_CHUNK];
        loop {
            match stdin.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    if sender.send(buffer[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::debug!(%error, "reading stdin failed");
                    break;
                }
            }
        }
        if send_eot {
            while sender.send(vec![EOT]).is_ok() {
                std::thread::sleep(EOT_REPEAT);
            }
        }
    });
    receiver
}

/// Raw mode of the terminal on stdin, restored to the saved settings on drop.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enable() -> Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).context("cannot read the terminal mode")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .context("cannot switch the terminal to raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        // TCSAFLUSH drops unread typed input, which was meant for the remote shell.
        if let Err(error) = termios::tcsetattr(stdin.as_fd(), SetArg::TCSAFLUSH, &self.saved) {
            eprintln!(
                "error: cannot restore the terminal mode of fd {}: {error}; run `stty sane`",
                stdin.as_raw_fd()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_clamps_to_byte() {
        assert_eq!(exit_status(3), 3);
        assert_eq!(exit_status(255), 255);
        assert_eq!(exit_status(300), 255);
        assert_eq!(exit_status(-1), 0);
    }
}
