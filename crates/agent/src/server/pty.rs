//! Interactive terminals: a command on a pseudo-terminal, with its input streamed in the request
//! body and its output streamed back as NDJSON [`gitvm_proto::ExecEvent`]s.
//!
//! 1. `POST /pty?cols=C&rows=R` opens a PTY of that size (default 80x24). An optional header
//!    `x-gitvm-pty` contains a JSON object `{"command": "...", "cwd": "/...", "env": {...}}`. Without a command
//!    the agent runs `/bin/bash -l`, or `/bin/sh` when bash is missing. A command runs as
//!    `/bin/sh -c COMMAND`. Every command runs as root with `TERM=xterm-256color`.
//! 2. The command becomes a session leader with the PTY as its controlling terminal and as its
//!    stdin, stdout and stderr.
//! 3. Request body bytes are written to the PTY master as typed input. The response body
//!    carries `start {pid}`, then `stdout` chunks of terminal output, then `exit`.
//! 4. `POST /pty/{pid}/resize?cols=C&rows=R` sets the window size of that session (204, or 404
//!    for an unknown pid).
//! 5. Dropping the response stream before the command exits sends SIGHUP to its process group,
//!    then SIGKILL after [`HANGUP_GRACE`].

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::pty::{openpty, Winsize};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use super::exec::{Finished, Output, Running};
use super::stream::EventBody;
use super::{reaper, users, ApiError, ResponseBody, SHELL};

/// Name of the optional request header carrying [`PtyOptions`] as JSON.
pub(super) const OPTIONS_HEADER: &str = "x-gitvm-pty";

/// Shell started when the request names no command, if it exists.
const LOGIN_SHELL: &str = "/bin/bash";

/// Search path of the terminal's command.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Terminal type announced to the command.
const TERM: &str = "xterm-256color";

/// Window size used when the request gives none.
const DEFAULT_COLS: u16 = 80;
const DEFAULT_ROWS: u16 = 24;

/// Bytes read from the PTY master per call, so also the maximum size of one output chunk.
const READ_CHUNK: usize = 16 * 1024;

/// Chunks queued between the master reader and the response body.
const OUTPUT_QUEUE: usize = 8;

/// Time the command gets to exit after SIGHUP, once the client is gone, before SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_secs(2);

/// Time to wait for the last output after the command exited. A background child that keeps
/// the terminal open would otherwise hold the `exit` event back.
const OUTPUT_GRACE: Duration = Duration::from_millis(100);

/// PTY masters of the running sessions, keyed by the pid of their command, for resizing.
static SESSIONS: Mutex<BTreeMap<i32, Arc<AsyncFd<OwnedFd>>>> = Mutex::new(BTreeMap::new());

fn sessions() -> MutexGuard<'static, BTreeMap<i32, Arc<AsyncFd<OwnedFd>>>> {
    SESSIONS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Options of `POST /pty` carried in the [`OPTIONS_HEADER`] header.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PtyOptions {
    /// Shell command line; absent means an interactive login shell.
    command: Option<String>,
    /// Absolute working directory; absent means root's home, else `/`.
    cwd: Option<String>,
    /// Environment variables over the defaults, such as the sandbox's `envVars`.
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
}

/// Opens a terminal session for `request` and returns its event stream.
pub(super) async fn open(request: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let (cols, rows) = window_size(request.uri().query())?;
    let options = options(&request)?;
    // `root` resolves even without a passwd entry, with home `/root`.
    let root = users::resolve("root")
        .map_err(|error| ApiError::internal("pty_failed", error.to_string()))?;
    let cwd = super::exec::working_directory(options.cwd.as_deref(), &root)?;

    let size = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).map_err(|error| {
        ApiError::internal(
            "pty_failed",
            format!("cannot open a pseudo-terminal: {error}"),
        )
    })?;

    let mut command = build_command(options.command.as_deref(), &cwd, &pty.slave)?;
    command.envs(&options.env);
    let started = Instant::now();
    let (child, exit) = reaper::spawn_tracked(&mut command).map_err(|error| {
        ApiError::internal(
            "spawn_failed",
            format!("cannot start the terminal's command: {error}"),
        )
    })?;
    // The child has its own copies of the slave; the parent's must close, so that reading
    // the master reports EIO once the command and its children are gone.
    drop(command);
    drop(pty.slave);
    let pid = child.id() as i32;

    let master = match watch_master(pty.master) {
        Ok(master) => Arc::new(master),
        Err(error) => {
            reaper::kill_group(pid);
            return Err(error);
        }
    };
    sessions().insert(pid, master.clone());
    tracing::info!(pid, cols, rows, cwd = %cwd.display(), "pty session started");

    let input = tokio::spawn(forward_input(request.into_body(), master.clone(), pid));
    let (sender, output) = mpsc::channel(OUTPUT_QUEUE);
    tokio::spawn(drive(master, pid, exit, sender, input, started));

    let running = Running {
        pid: pid as u32,
        output,
    };
    let mut response = Response::new(EventBody::new(running).boxed());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(gitvm_proto::NDJSON),
    );
    Ok(response)
}

/// Sets the window size of the session at `/pty/{pid}/resize`; the kernel then sends SIGWINCH
/// to the terminal's foreground process group.
pub(super) fn resize(request: &Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let path = request.uri().path();
    let pid = path
        .strip_prefix("/pty/")
        .and_then(|rest| rest.strip_suffix("/resize"))
        .and_then(|pid| pid.parse::<i32>().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "route_not_found",
                format!("no agent route POST {path}; resize a terminal with POST /pty/PID/resize"),
            )
        })?;
    let (cols, rows) = window_size(request.uri().query())?;

    let Some(master) = sessions().get(&pid).cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "pty_not_found",
            format!("no terminal session with pid {pid}; it may have exited"),
        ));
    };
    set_window_size(master.get_ref().as_raw_fd(), cols, rows).map_err(|error| {
        ApiError::internal(
            "pty_failed",
            format!("cannot resize the terminal of pid {pid}: {error}"),
        )
    })?;
    tracing::debug!(pid, cols, rows, "pty resized");
    Ok(super::no_content())
}

/// Parses `cols` and `rows` from a query string; each is 1 to 65535 and defaults to 80x24.
fn window_size(query: Option<&str>) -> Result<(u16, u16), ApiError> {
    let mut cols = DEFAULT_COLS;
    let mut rows = DEFAULT_ROWS;
    for pair in query.unwrap_or_default().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let target = match name {
            "cols" => &mut cols,
            "rows" => &mut rows,
            _ => continue,
        };
        *target = value.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_size",
                format!("{name}={value} is invalid; pass a whole number from 1 to 65535"),
            )
        })?;
    }
    Ok((cols, rows))
}

fn options(request: &Request<Incoming>) -> Result<PtyOptions, ApiError> {
    let Some(value) = request.headers().get(OPTIONS_HEADER) else {
        return Ok(PtyOptions::default());
    };
    let options: PtyOptions = serde_json::from_slice(value.as_bytes()).map_err(|error| {
        ApiError::bad_request(
            "invalid_request",
            format!(
                "header {OPTIONS_HEADER} is not a valid JSON object of command and cwd: {error}"
            ),
        )
    })?;
    if let Some(command) = &options.command {
        if command.trim().is_empty() || command.contains('\0') {
            return Err(ApiError::bad_request(
                "invalid_command",
                "command is empty or contains a NUL byte; pass a shell command line such as `top`, or none for a login shell",
            ));
        }
    }
    Ok(options)
}

fn build_command(command: Option<&str>, cwd: &Path, slave: &OwnedFd) -> Result<Command, ApiError> {
    let mut process = match command {
        Some(line) => {
            let mut process = Command::new(SHELL);
            process.arg("-c").arg(line);
            process
        }
        None if Path::new(LOGIN_SHELL).exists() => {
            let mut process = Command::new(LOGIN_SHELL);
            process.arg("-l");
            process
        }
        None => Command::new(SHELL),
    };

    let home = users::resolve("root")
        .map(|account| account.home)
        .unwrap_or_else(|_| "/".to_owned());
    let stdio = || -> Result<Stdio, ApiError> {
        slave.try_clone().map(Stdio::from).map_err(|error| {
            ApiError::internal(
                "pty_failed",
                format!("cannot duplicate the terminal: {error}"),
            )
        })
    };
    process
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", home)
        .env("USER", "root")
        .env("LOGNAME", "root")
        .env("TERM", TERM)
        .current_dir(cwd)
        .stdin(stdio()?)
        .stdout(stdio()?)
        .stderr(stdio()?);

    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls.
    unsafe {
        process.pre_exec(|| {
            // A new session has no controlling terminal; TIOCSCTTY then makes the slave, which
            // is already stdin, the controlling terminal, so that job control and ^C work.
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(process)
}

/// Makes the master non-blocking and registers it with the tokio reactor.
fn watch_master(master: OwnedFd) -> Result<AsyncFd<OwnedFd>, ApiError> {
    let watch = || -> io::Result<AsyncFd<OwnedFd>> {
        let flags = OFlag::from_bits_truncate(fcntl(master.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(
            master.as_raw_fd(),
            FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
        )?;
        // SAFETY: an OwnedFd keeps its descriptor open and unchanged until it is dropped.
        unsafe { AsyncFd::register(master) }.map_err(io::Error::from)
    };
    watch().map_err(|error| {
        ApiError::internal(
            "pty_failed",
            format!("cannot watch the terminal's master: {error}"),
        )
    })
}

fn set_window_size(fd: RawFd, cols: u16, rows: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size as *const libc::winsize) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes the request body to the master until the body ends or fails.
async fn forward_input(mut body: Incoming, master: Arc<AsyncFd<OwnedFd>>, pid: i32) {
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Err(error) => {
                tracing::debug!(pid, %error, "pty input stream failed");
                return;
            }
        };
        if let Err(error) = write_all(&master, &data).await {
            tracing::debug!(pid, %error, "writing pty input failed");
            return;
        }
    }
}

async fn write_all(master: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = master.writable().await?;
        match guard.try_io(|fd| raw_io(|| write_fd(fd.get_ref().as_raw_fd(), data))) {
            Ok(Ok(written)) => data = &data[written..],
            Ok(Err(error)) if error.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(error)) => return Err(error),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

/// Reads one chunk from the master. Returns 0 at the end of the terminal, which Linux reports
/// as EIO on the master once every slave descriptor is closed.
async fn read_chunk(master: &AsyncFd<OwnedFd>, buffer: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = master.readable().await?;
        match guard.try_io(|fd| raw_io(|| read_fd(fd.get_ref().as_raw_fd(), buffer))) {
            Ok(Ok(n)) => return Ok(n),
            Ok(Err(error)) if error.raw_os_error() == Some(libc::EIO) => return Ok(0),
            Ok(Err(error)) if error.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(error)) => return Err(error),
            Err(_would_block) => {}
        }
    }
}

fn raw_io(call: impl FnOnce() -> isize) -> io::Result<usize> {
    let result = call();
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result as usize)
    }
}

fn read_fd(fd: RawFd, buffer: &mut [u8]) -> isize {
    // SAFETY: the buffer is valid for writes of its length.
    unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) }
}

fn write_fd(fd: RawFd, data: &[u8]) -> isize {
    // SAFETY: the slice is valid for reads of its length.
    unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) }
}

/// Sends the terminal's output, then its exit, to `sender`. Hangs up on the command when the
/// receiver is dropped first. Ends the session and stops `input` on every path.
async fn drive(
    master: Arc<AsyncFd<OwnedFd>>,
    pid: i32,
    mut exit: oneshot::Receiver<WaitStatus>,
    sender: mpsc::Sender<Output>,
    input: tokio::task::JoinHandle<()>,
    started: Instant,
) {
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut output_ended = false;
    let status = loop {
        tokio::select! {
            status = &mut exit => break status.ok(),
            _ = sender.closed() => {
                hang_up(pid, &mut exit).await;
                end_session(pid, &input);
                return;
            }
            read = forward_chunk(&master, &mut buffer, &sender), if !output_ended => {
                output_ended = !read;
            }
        }
    };

    // Output the command wrote just before exiting may still sit in the terminal's buffer.
    while !output_ended {
        match tokio::time::timeout(OUTPUT_GRACE, forward_chunk(&master, &mut buffer, &sender)).await
        {
            Ok(true) => {}
            Ok(false) | Err(_) => output_ended = true,
        }
    }
    end_session(pid, &input);

    let finished = finished(status, pid, started);
    if let Ok(finished) = &finished {
        tracing::info!(
            pid,
            exit_code = finished.exit_code,
            duration_ms = finished.duration_ms,
            "pty session finished"
        );
    }
    let _ = sender.send(Output::Exit(finished)).await;
}

/// Reads one chunk and queues it. Returns false when the terminal or the receiver is gone.
async fn forward_chunk(
    master: &AsyncFd<OwnedFd>,
    buffer: &mut [u8],
    sender: &mpsc::Sender<Output>,
) -> bool {
    // Reserving first makes a slow client stop the reading, so the terminal's buffer fills
    // and the command blocks, instead of output piling up here.
    let Ok(permit) = sender.reserve().await else {
        return false;
    };
    match read_chunk(master, buffer).await {
        Ok(0) => false,
        Ok(n) => {
            permit.send(Output::Chunk {
                stderr: false,
                bytes: buffer[..n].to_vec(),
            });
            true
        }
        Err(error) => {
            tracing::warn!(%error, "reading terminal output failed");
            false
        }
    }
}

/// Sends SIGHUP to the session's process group, as a terminal hang-up would, then SIGKILL if
/// the command has not exited after [`HANGUP_GRACE`].
async fn hang_up(pid: i32, exit: &mut oneshot::Receiver<WaitStatus>) {
    tracing::info!(pid, "pty client disconnected; hanging up");
    match killpg(Pid::from_raw(pid), Signal::SIGHUP) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => {
            tracing::warn!(pid, %error, "cannot send SIGHUP to the terminal's process group")
        }
    }
    if tokio::time::timeout(HANGUP_GRACE, &mut *exit)
        .await
        .is_err()
    {
        tracing::info!(
            pid,
            "terminal command ignored SIGHUP; killing its process group"
        );
    }
    // The group may outlive its leader, such as a background job that ignores SIGHUP.
    reaper::kill_group(pid);
}

fn end_session(pid: i32, input: &tokio::task::JoinHandle<()>) {
    sessions().remove(&pid);
    input.abort();
}

/// Converts the command's wait status; a signal `N` gives exit code 128 + N.
fn finished(status: Option<WaitStatus>, pid: i32, started: Instant) -> Result<Finished, ApiError> {
    let (exit_code, signal) = match status {
        Some(WaitStatus::Exited(_, code)) => (code, None),
        Some(WaitStatus::Signaled(_, signal, _)) => {
            (128 + signal as i32, Some(signal.as_str().to_owned()))
        }
        other => {
            return Err(ApiError::internal(
                "pty_failed",
                format!("lost the exit status of terminal process {pid}: {other:?}"),
            ))
        }
    };
    Ok(Finished {
        exit_code,
        signal,
        timed_out: false,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_size_cases() {
        assert_eq!(window_size(None).unwrap(), (80, 24));
        assert_eq!(window_size(Some("cols=120&rows=40")).unwrap(), (120, 40));
        assert_eq!(window_size(Some("rows=10")).unwrap(), (80, 10));
        assert_eq!(
            window_size(Some("cols=0")).unwrap_err().body.code,
            "invalid_size"
        );
        assert_eq!(
            window_size(Some("rows=70000")).unwrap_err().body.code,
            "invalid_size"
        );
        assert_eq!(
            window_size(Some("cols=abc")).unwrap_err().body.code,
            "invalid_size"
        );
    }
}
