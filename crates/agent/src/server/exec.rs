//! Buffered command execution: `/bin/sh -c COMMAND` in its own session and process group.

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
use tokio::sync::oneshot;

use super::users::{self, Account};
use super::{reaper, ApiError, SHELL};

/// Search path every command starts with.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Time to wait for end of file on stdout and stderr after the shell exits. A background child
/// that inherited the pipes can hold them open forever, so its later output is not waited for.
const PIPE_GRACE: Duration = Duration::from_millis(50);

/// Bytes read from a pipe per call.
const READ_CHUNK: usize = 16 * 1024;

/// A validated exec request, ready to spawn.
struct Plan {
    command: String,
    cwd: PathBuf,
    env: BTreeMap<String, String>,
    account: Account,
    timeout: Option<Duration>,
}

/// Runs the command of `request` to completion and returns its exit status and output.
pub(super) async fn exec(request: ExecRequest) -> Result<ExecResult, ApiError> {
    let plan = prepare(request)?;
    let started = Instant::now();

    let mut command = build_command(&plan);
    let (mut child, exit) = reaper::spawn_tracked(&mut command)
        .map_err(|error| spawn_error(&error, &plan.account.name))?;
    let pgid = child.id() as i32;
    let mut guard = GroupGuard { pgid, armed: true };
    tracing::info!(pid = pgid, user = %plan.account.name, cwd = %plan.cwd.display(), "exec started");

    let mut stdout = Capture::new(child.stdout.take().map(OwnedFd::from))?;
    let mut stderr = Capture::new(child.stderr.take().map(OwnedFd::from))?;

    let (status, timed_out) = {
        let waiting = wait_for_exit(exit, pgid, plan.timeout);
        let reading = async { tokio::join!(stdout.fill(), stderr.fill()) };
        tokio::pin!(waiting, reading);

        let mut read_done = false;
        let outcome = loop {
            tokio::select! {
                outcome = &mut waiting => break outcome,
                _ = &mut reading, if !read_done => read_done = true,
            }
        };
        if !read_done {
            // NOTE: output a background child writes later than this is dropped by design.
            let _ = tokio::time::timeout(PIPE_GRACE, &mut reading).await;
        }
        outcome
    };
    guard.armed = false;
    stdout.drain_ready();
    stderr.drain_ready();

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

    let result = ExecResult {
        exit_code: if timed_out { EXIT_CODE_TIMED_OUT } else { code },
        truncated: stdout.truncated || stderr.truncated,
        stdout: String::from_utf8_lossy(&stdout.data).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.data).into_owned(),
        timed_out,
        signal,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(
        pid = pgid,
        exit_code = result.exit_code,
        timed_out,
        duration_ms = result.duration_ms,
        "exec finished"
    );
    Ok(result)
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
fn working_directory(cwd: Option<&str>, account: &Account) -> Result<PathBuf, ApiError> {
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

fn build_command(plan: &Plan) -> Command {
    let mut command = Command::new(SHELL);
    command
        .arg("-c")
        .arg(&plan.command)
        .env_clear()
        .envs(&plan.env)
        .current_dir(&plan.cwd)
        .stdin(Stdio::null())
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

/// Output of one pipe, capped at [`EXEC_OUTPUT_LIMIT`].
struct Capture {
    pipe: Option<pipe::Receiver>,
    data: Vec<u8>,
    truncated: bool,
}

impl Capture {
    fn new(fd: Option<OwnedFd>) -> Result<Self, ApiError> {
        let pipe = fd
            .map(pipe::Receiver::from_owned_fd)
            .transpose()
            .map_err(|error| {
                ApiError::internal(
                    "exec_failed",
                    format!("cannot watch the command's output pipe: {error}"),
                )
            })?;
        Ok(Self {
            pipe,
            data: Vec::new(),
            truncated: false,
        })
    }

    /// Reads until end of file. Output past the cap is read and discarded, so that the command
    /// does not block on a full pipe.
    async fn fill(&mut self) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => append(&mut self.data, &mut self.truncated, &chunk[..n]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::warn!(%error, "reading command output failed");
                    break;
                }
            }
        }
        self.pipe = None;
    }

    /// Appends the bytes the pipe contains right now, without waiting for more.
    fn drain_ready(&mut self) {
        let Some(pipe) = self.pipe.as_ref() else {
            return;
        };
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            match pipe.try_read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => append(&mut self.data, &mut self.truncated, &chunk[..n]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.pipe = None;
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
