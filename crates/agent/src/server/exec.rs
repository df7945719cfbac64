//! Command execution, buffered or streamed: `/bin/sh -c COMMAND` in its own session and process group.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gitvm_proto::{ExecRequest, ExecResult, EXEC_OUTPUT_LIMIT, EXIT_CODE_TIMED_OUT};
use http::StatusCode;
use nix::sys::wait::WaitStatus;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use super::users::{self, Account};
use super::{reaper, ApiError, SHELL};

/// Search path every command starts with.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Time to wait for end of file on stdout and stderr after the shell exits. A background child
/// that inherited the pipes can hold them open forever, so its later output is not waited for.
const PIPE_GRACE: Duration = Duration::from_millis(50);

/// Bytes read from a pipe per call, so also the maximum size of one output chunk.
const READ_CHUNK: usize = 32 * 1024;

/// Chunks queued between the pipe readers and the consumer of a command's output. With
/// [`READ_CHUNK`] this bounds the queued output at 128 KiB per command.
const OUTPUT_QUEUE: usize = 4;

/// Maximum bytes read from each pipe after the shell exited and the grace period ended. A
/// Linux pipe buffers 64 KiB by default.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// A validated exec request, ready to spawn.
struct Plan {
    command: String,
    cwd: PathBuf,
    env: BTreeMap<String, String>,
    account: Account,
    timeout: Option<Duration>,
}

/// Message from the task that drives one running command.
pub(super) enum Output {
    /// Bytes read from the command's stdout or stderr, at most [`READ_CHUNK`] of them.
    Chunk { stderr: bool, bytes: Vec<u8> },
    /// The command ended; nothing follows.
    Exit(Result<Finished, ApiError>),
}

/// Exit status of a finished command.
pub(super) struct Finished {
    pub exit_code: i32,
    pub signal: Option<String>,
    pub timed_out: bool,
    pub duration_ms: u64,
}

/// A spawned command whose output arrives on `output` as it is read.
pub(super) struct Running {
    /// Process id of the shell, which is also its process group id.
    pub pid: u32,
    /// Chunks in the order they were read from each pipe, then one [`Output::Exit`]. Dropping
    /// the receiver before the shell exits kills the command's process group.
    pub output: mpsc::Receiver<Output>,
}

/// Standard input of a spawned command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stdin {
    /// `/dev/null`: the command reads end of file at once.
    Null,
    /// A pipe whose write end the caller gets back from [`spawn`].
    Piped,
}

/// Validates `request`, spawns its command and starts the task that reads its pipes, waits for
/// its exit and enforces its timeout. Fails before anything runs when the request is invalid.
pub(super) fn start(request: ExecRequest) -> Result<Running, ApiError> {
    spawn(request, Stdin::Null).map(|(running, _)| running)
}

/// Does what [`start`] does, with `stdin` as the command's standard input. Returns the write
/// end of the stdin pipe for [`Stdin::Piped`].
pub(super) fn spawn(
    request: ExecRequest,
    stdin: Stdin,
) -> Result<(Running, Option<pipe::Sender>), ApiError> {
    let plan = prepare(request)?;
    let started = Instant::now();

    let mut command = build_command(&plan, stdin);
    let (mut child, exit) = reaper::spawn_tracked(&mut command)
        .map_err(|error| spawn_error(&error, &plan.account.name))?;
    let pid = child.id();
    // From here on the guard kills the group if setting up the pipes fails.
    let guard = GroupGuard {
        pgid: pid as i32,
        armed: true,
    };
    tracing::info!(pid, user = %plan.account.name, cwd = %plan.cwd.display(), "exec started");

    let stdout = watch_pipe(child.stdout.take().map(OwnedFd::from))?;
    let stderr = watch_pipe(child.stderr.take().map(OwnedFd::from))?;
    let input = child
        .stdin
        .take()
        .map(|fd| pipe::Sender::from_owned_fd(OwnedFd::from(fd)))
        .transpose()
        .map_err(|error| {
            ApiError::internal(
                "exec_failed",
                format!("cannot watch the command's stdin pipe: {error}"),
            )
        })?;
    let (sender, output) = mpsc::channel(OUTPUT_QUEUE);
    tokio::spawn(drive(
        Pipes { stdout, stderr },
        exit,
        guard,
        plan.timeout,
        started,
        sender,
    ));
    Ok((Running { pid, output }, input))
}

/// Runs the command of `request` to completion and returns its exit status and output.
pub(super) async fn exec(request: ExecRequest) -> Result<ExecResult, ApiError> {
    let mut running = start(request)?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut truncated = false;

    while let Some(output) = running.output.recv().await {
        match output {
            Output::Chunk {
                stderr: false,
                bytes,
            } => append(&mut stdout, &mut truncated, &bytes),
            Output::Chunk {
                stderr: true,
                bytes,
            } => append(&mut stderr, &mut truncated, &bytes),
            Output::Exit(finished) => {
                let finished = finished?;
                let (stdout, stdout_base64) = gitvm_proto::output_text(stdout);
                let (stderr, stderr_base64) = gitvm_proto::output_text(stderr);
                return Ok(ExecResult {
                    exit_code: finished.exit_code,
                    truncated,
                    stdout,
                    stderr,
                    stdout_base64,
                    stderr_base64,
                    timed_out: finished.timed_out,
                    signal: finished.signal,
                    duration_ms: finished.duration_ms,
                });
            }
        }
    }
    Err(ApiError::internal(
        "exec_failed",
        format!(
            "the task running process {} stopped without an exit status",
            running.pid
        ),
    ))
}

/// Read ends of the command's stdout and stderr; `None` once at end of file.
struct Pipes {
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
}

/// Sends the command's output and then its exit to `sender`. Returns early, killing the
/// process group through `guard`, when the receiver is dropped before the shell exits.
async fn drive(
    mut pipes: Pipes,
    exit: oneshot::Receiver<WaitStatus>,
    mut guard: GroupGuard,
    timeout: Option<Duration>,
    started: Instant,
    sender: mpsc::Sender<Output>,
) {
    let pgid = guard.pgid;
    let outcome = {
        let waiting = wait_for_exit(exit, pgid, timeout);
        let reading = async {
            tokio::join!(
                pump(&mut pipes.stdout, false, &sender),
                pump(&mut pipes.stderr, true, &sender)
            )
        };
        tokio::pin!(waiting, reading);

        let mut read_done = false;
        let outcome = loop {
            tokio::select! {
                outcome = &mut waiting => break Some(outcome),
                _ = &mut reading, if !read_done => read_done = true,
                _ = sender.closed() => break None,
            }
        };
        if outcome.is_some() && !read_done {
            // NOTE: output a background child writes later than this is dropped by design.
            let _ = tokio::time::timeout(PIPE_GRACE, &mut reading).await;
        }
        outcome
    };
    let Some((status, timed_out)) = outcome else {
        return;
    };
    guard.armed = false;
    drain_ready(&mut pipes.stdout, false, &sender).await;
    drain_ready(&mut pipes.stderr, true, &sender).await;

    let finished = exit_status(status, timed_out, pgid, started);
    if let Ok(finished) = &finished {
        tracing::info!(
            pid = pgid,
            exit_code = finished.exit_code,
            timed_out,
            duration_ms = finished.duration_ms,
            "exec finished"
        );
    }
    let _ = sender.send(Output::Exit(finished)).await;
}

/// Converts the shell's wait status; a signal `N` gives exit code 128 + N, and a timeout 124.
fn exit_status(
    status: Option<WaitStatus>,
    timed_out: bool,
    pgid: i32,
    started: Instant,
) -> Result<Finished, ApiError> {
    let status = status.ok_or_else(|| {
        ApiError::internal(
            "exec_failed",
            format!("lost the exit status of process {pgid}"),
        )
    })?;
    let (code, signal) = match status {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, signal, _) => {
            (128 + signal as i32, Some(signal.as_str().to_owned()))
        }
        other => {
            return Err(ApiError::internal(
                "exec_failed",
                format!("unexpected wait status {other:?} of process {pgid}"),
            ))
        }
    };
    Ok(Finished {
        exit_code: if timed_out { EXIT_CODE_TIMED_OUT } else { code },
        signal,
        timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Validates `request` and resolves its user, working directory and environment.
fn prepare(request: ExecRequest) -> Result<Plan, ApiError> {
    if request.command.trim().is_empty() {
        return Err(ApiError::bad_request(
            "invalid_command",
            "command is empty; pass a shell command line such as `ls -la`",
        ));
    }
    if request.command.contains('\0') {
        return Err(ApiError::bad_request(
            "invalid_request",
            "command contains a NUL byte, which no command line can carry; remove it",
        ));
    }
    let timeout = parse_timeout(request.timeout)?;
    if !Path::new(SHELL).exists() {
        return Err(ApiError::bad_request(
            "shell_not_found",
            format!("`{SHELL}` does not exist in this sandbox; use an image with a POSIX shell"),
        ));
    }

    let user = request.user.as_deref().unwrap_or("root");
    let account = users::resolve(user)
        .map_err(|error| ApiError::bad_request("user_not_found", error.to_string()))?;
    let cwd = working_directory(request.cwd.as_deref(), &account)?;

    let mut env = BTreeMap::from([
        ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
        ("HOME".to_owned(), account.home.clone()),
        ("USER".to_owned(), account.name.clone()),
        ("LOGNAME".to_owned(), account.name.clone()),
    ]);
    for (name, value) in request.env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(ApiError::bad_request(
                "invalid_env",
                format!("environment variable name `{name}` is invalid; use a non-empty name without `=` or NUL"),
            ));
        }
        if value.contains('\0') {
            return Err(ApiError::bad_request(
                "invalid_env",
                format!("environment variable `{name}` contains a NUL byte; remove it"),
            ));
        }
        env.insert(name, value);
    }

    Ok(Plan {
        command: request.command,
        cwd,
        env,
        account,
        timeout,
    })
}

/// Maps a failure to start the shell: arguments and environment over the kernel's limits are
/// the caller's to fix, and EAGAIN means the sandbox has no room for another process.
fn spawn_error(error: &io::Error, user: &str) -> ApiError {
    match error.raw_os_error() {
        Some(libc::E2BIG) => ApiError::bad_request(
            "invalid_request",
            "cannot start the command: its command line and environment exceed the kernel's \
             limits (each string under 131072 bytes, all of them about a quarter of the stack \
             limit); pass large data as a file",
        ),
        Some(libc::EAGAIN) => {
            let limit = pids_limit().map_or_else(String::new, |limit| format!(" ({limit})"));
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "resource_exhausted",
                format!(
                    "cannot start the command: the sandbox reached its process limit{limit}; stop some processes"
                ),
            )
        }
        _ => ApiError::internal(
            "spawn_failed",
            format!("cannot start `{SHELL}` as user `{user}`: {error}"),
        ),
    }
}

/// Reads the process limit of the sandbox's cgroup (cgroup v2 `pids.max`), when there is one.
fn pids_limit() -> Option<u64> {
    std::fs::read_to_string("/sys/fs/cgroup/pids.max")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Converts the request's timeout in seconds; absent or 0 means no limit.
fn parse_timeout(seconds: Option<f64>) -> Result<Option<Duration>, ApiError> {
    let Some(seconds) = seconds.filter(|&s| s != 0.0) else {
        return Ok(None);
    };
    if seconds.is_nan() || seconds < 0.0 {
        return Err(ApiError::bad_request(
            "invalid_timeout",
            format!(
                "timeout {seconds} is invalid; pass a number of seconds >= 0 (0 means no limit)"
            ),
        ));
    }
    Duration::try_from_secs_f64(seconds).map(Some).map_err(|_| {
        ApiError::bad_request(
            "invalid_timeout",
            format!("timeout {seconds} is too large; pass 0 for no limit"),
        )
    })
}

/// Checks the requested directory, or picks the user's home (else `/`) when none was given.
pub(super) fn working_directory(cwd: Option<&str>, account: &Account) -> Result<PathBuf, ApiError> {
    let Some(cwd) = cwd else {
        let home = Path::new(&account.home);
        return Ok(if home.is_dir() {
            home.to_owned()
        } else {
            PathBuf::from("/")
        });
    };

    if !cwd.starts_with('/') {
        return Err(ApiError::bad_request(
            "invalid_path",
            format!(
                "working directory `{cwd}` is not absolute; use an absolute path such as `/tmp`"
            ),
        ));
    }
    match std::fs::metadata(cwd) {
        Ok(metadata) if metadata.is_dir() => Ok(PathBuf::from(cwd)),
        Ok(_) => Err(ApiError::bad_request(
            "not_a_directory",
            format!("working directory `{cwd}` is not a directory"),
        )),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Err(ApiError::bad_request(
            "cwd_not_found",
            format!("working directory `{cwd}` does not exist"),
        )),
        Err(error) => Err(ApiError::from_io(
            "working directory",
            Path::new(cwd),
            &error,
        )),
    }
}

fn build_command(plan: &Plan, stdin: Stdin) -> Command {
    let mut command = Command::new(SHELL);
    command
        .arg("-c")
        .arg(&plan.command)
        .env_clear()
        .envs(&plan.env)
        .current_dir(&plan.cwd)
        .stdin(match stdin {
            Stdin::Null => Stdio::null(),
            Stdin::Piped => Stdio::piped(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let Account { uid, gid, .. } = plan.account;
    let groups: Vec<libc::gid_t> = plan.account.groups.clone();
    // SAFETY: geteuid has no preconditions.
    let switch_user = unsafe { libc::geteuid() } == 0 || uid != unsafe { libc::geteuid() };

    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls on memory allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            // A new session makes the shell a process group leader, so the whole group can be
            // signalled at once.
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            if switch_user {
                if libc::setgroups(groups.len(), groups.as_ptr()) == -1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setgid(gid) == -1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setuid(uid) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command
}

/// Waits for the shell's exit status, killing its process group when `limit` elapses first.
/// Returns the status (`None` if the reaper dropped the waiter) and whether it timed out.
async fn wait_for_exit(
    mut exit: oneshot::Receiver<WaitStatus>,
    pgid: i32,
    limit: Option<Duration>,
) -> (Option<WaitStatus>, bool) {
    let Some(limit) = limit else {
        return (exit.await.ok(), false);
    };
    tokio::select! {
        status = &mut exit => (status.ok(), false),
        _ = tokio::time::sleep(limit) => {
            tracing::info!(pid = pgid, timeout_ms = limit.as_millis() as u64, "exec timed out; killing its process group");
            reaper::kill_group(pgid);
            (exit.await.ok(), true)
        }
    }
}

/// Kills the command's process group if the request is dropped before the shell exits, such
/// as when the host resets the stream.
struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            tracing::info!(
                pid = self.pgid,
                "exec request cancelled; killing its process group"
            );
            reaper::kill_group(self.pgid);
        }
    }
}

fn watch_pipe(fd: Option<OwnedFd>) -> Result<Option<pipe::Receiver>, ApiError> {
    fd.map(pipe::Receiver::from_owned_fd)
        .transpose()
        .map_err(|error| {
            ApiError::internal(
                "exec_failed",
                format!("cannot watch the command's output pipe: {error}"),
            )
        })
}

/// Sends chunks read from `pipe` until end of file, then clears it. A queue slot is reserved
/// before each read, so a slow receiver stops the reading (and then the command, once the pipe
/// is full), and cancelling this future loses no bytes. Stops when the receiver is dropped.
async fn pump(pipe: &mut Option<pipe::Receiver>, stderr: bool, sender: &mpsc::Sender<Output>) {
    let Some(reader) = pipe.as_mut() else {
        return;
    };
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let Ok(permit) = sender.reserve().await else {
            return;
        };
        match reader.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => permit.send(Output::Chunk {
                stderr,
                bytes: chunk[..n].to_vec(),
            }),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::warn!(%error, "reading command output failed");
                break;
            }
        }
    }
    *pipe = None;
}

/// Sends the bytes `pipe` contains right now, up to [`DRAIN_LIMIT`], without waiting for more,
/// and closes it. The limit stops a background child that keeps writing from holding the exit.
async fn drain_ready(
    pipe: &mut Option<pipe::Receiver>,
    stderr: bool,
    sender: &mpsc::Sender<Output>,
) {
    let Some(reader) = pipe.take() else {
        return;
    };
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut drained = 0;
    while drained < DRAIN_LIMIT {
        match reader.try_read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                drained += n;
                let bytes = chunk[..n].to_vec();
                if sender.send(Output::Chunk { stderr, bytes }).await.is_err() {
                    break;
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
}

fn append(data: &mut Vec<u8>, truncated: &mut bool, bytes: &[u8]) {
    let room = EXEC_OUTPUT_LIMIT.saturating_sub(data.len());
    if bytes.len() > room {
        *truncated = true;
    }
    data.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_timeout_cases() {
        assert_eq!(parse_timeout(None).unwrap(), None);
        assert_eq!(parse_timeout(Some(0.0)).unwrap(), None);
        assert_eq!(
            parse_timeout(Some(1.5)).unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_timeout(Some(-1.0)).unwrap_err().body.code,
            "invalid_timeout"
        );
        assert_eq!(
            parse_timeout(Some(f64::NAN)).unwrap_err().body.code,
            "invalid_timeout"
        );
        assert_eq!(
            parse_timeout(Some(1e30)).unwrap_err().body.code,
            "invalid_timeout"
        );
    }

    #[test]
    fn spawn_error_maps_errno() {
        let too_big = spawn_error(&io::Error::from_raw_os_error(libc::E2BIG), "root");
        assert_eq!(too_big.status, StatusCode::BAD_REQUEST);
        assert_eq!(too_big.body.code, "invalid_request");

        let no_process = spawn_error(&io::Error::from_raw_os_error(libc::EAGAIN), "root");
        assert_eq!(no_process.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(no_process.body.code, "resource_exhausted");
        let limit = pids_limit().map_or_else(String::new, |limit| format!(" ({limit})"));
        assert_eq!(
            no_process.body.message,
            format!("cannot start the command: the sandbox reached its process limit{limit}; stop some processes")
        );

        let other = spawn_error(&io::Error::from_raw_os_error(libc::EACCES), "ana");
        assert_eq!(other.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(other.body.code, "spawn_failed");
    }

    #[test]
    fn append_caps_output() {
        let mut data = vec![0u8; EXEC_OUTPUT_LIMIT - 2];
        let mut truncated = false;
        append(&mut data, &mut truncated, b"ab");
        assert!(!truncated);
        append(&mut data, &mut truncated, b"cd");
        assert!(truncated);
        assert_eq!(data.len(), EXEC_OUTPUT_LIMIT);
        assert_eq!(&data[EXEC_OUTPUT_LIMIT - 2..], b"ab");
    }
}
