//! Child reaping and signal forwarding for the agent as init (or as a child subreaper).
//!
//! Every exit status is collected by `waitpid(-1)`: orphans reparented to the agent would
//! otherwise stay zombies. Statuses of commands spawned through [`spawn_tracked`] are routed to
//! their waiter. Spawning and reaping take the same lock, so the reaper cannot collect a child
//! before its waiter is registered.

use std::collections::BTreeMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// Waiters for the exit status of tracked children, keyed by pid. Process-wide because
/// `waitpid(-1)` collects every child of the process, whichever runtime spawned it.
static WAITERS: Mutex<BTreeMap<i32, oneshot::Sender<WaitStatus>>> = Mutex::new(BTreeMap::new());

/// Interval between checks for remaining children during shutdown.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

fn waiters() -> MutexGuard<'static, BTreeMap<i32, oneshot::Sender<WaitStatus>>> {
    WAITERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Returns true when this process is init of its PID namespace.
pub fn is_init() -> bool {
    std::process::id() == 1
}

/// Starts reaping on the current tokio runtime: a task that collects exit statuses on every
/// SIGCHLD. Outside PID 1 the process first becomes a child subreaper, so orphans of its
/// commands are reparented to it instead of to init.
pub fn start() -> io::Result<()> {
    if !is_init() {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
        let result = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if result == -1 {
            return Err(io::Error::last_os_error());
        }
    }

    let mut sigchld = signal(SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            // The first pass collects children that exited before the handler was installed.
            reap_all();
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    });
    Ok(())
}

/// Spawns `command` and registers a waiter for its exit status. Use this instead of
/// [`Child::wait`], which would race with the reaper.
pub fn spawn_tracked(command: &mut Command) -> io::Result<(Child, oneshot::Receiver<WaitStatus>)> {
    let mut waiters = waiters();
    let child = command.spawn()?;
    let (sender, receiver) = oneshot::channel();
    waiters.insert(child.id() as i32, sender);
    Ok((child, receiver))
}

/// Collects every exited child, routing statuses to their waiters. Returns true while the
/// process still has children.
pub fn reap_all() -> bool {
    let mut waiters = waiters();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(status) => {
                let Some(pid) = status.pid() else { continue };
                match waiters.remove(&pid.as_raw()) {
                    Some(waiter) => {
                        // The receiver is gone when the request was cancelled; nothing to do.
                        let _ = waiter.send(status);
                    }
                    None => tracing::debug!(pid = pid.as_raw(), ?status, "reaped orphan"),
                }
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => return false,
            Err(error) => {
                tracing::warn!(%error, "waitpid failed");
                return true;
            }
        }
    }
}

/// Sends `signal` to the process group of every tracked command and, as init, to every other
/// process of the namespace.
pub fn forward_signal(signal: Signal) {
    let groups: Vec<i32> = waiters().keys().copied().collect();
    for group in groups {
        if let Err(error) = killpg(Pid::from_raw(group), signal) {
            tracing::debug!(pgid = group, %signal, %error, "cannot signal process group");
        }
    }

    // As init, kill(-1) reaches every process in the namespace except the agent itself.
    // Elsewhere it would reach every process of the user, so it is skipped.
    if is_init() {
        if let Err(error) = kill(Pid::from_raw(-1), signal) {
            tracing::debug!(%signal, %error, "cannot signal all processes");
        }
    }
}

/// Forwards `signal`, waits up to `grace` for every child to exit, then kills the rest.
pub async fn shut_down(signal: Signal, grace: Duration) {
    tracing::info!(%signal, grace_ms = grace.as_millis() as u64, "forwarding signal and shutting down");
    forward_signal(signal);

    let deadline = tokio::time::Instant::now() + grace;
    while reap_all() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("children still running after the grace period; killing them");
            forward_signal(Signal::SIGKILL);
            tokio::time::sleep(SHUTDOWN_POLL).await;
            reap_all();
            return;
        }
        tokio::time::sleep(SHUTDOWN_POLL).await;
    }
}

/// Sends SIGKILL to the process group `pgid`, ignoring a group that is already gone.
pub fn kill_group(pgid: i32) {
    match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => tracing::warn!(pgid, %error, "cannot kill process group"),
    }
}
