//! Shutdown signals of the agent: SIGTERM, SIGINT and SIGHUP.
//!
//! As PID 1 of a sandbox the agent must not obey such a signal from a process inside the
//! sandbox: `kill -TERM 1` in a command would otherwise stop the whole sandbox behind the
//! node's back. The kernel reports `si_pid` 0 for a sender outside the PID namespace (such as
//! `docker stop`) and for signals it generates itself (such as a terminal hangup), so only those
//! shut the agent down. Reading `si_pid` needs an `SA_SIGINFO` handler, which passes the signal
//! to the runtime through a pipe. Outside PID 1 (tests, `gitvm agent` run by hand) every sender
//! counts, and tokio's signal streams are used.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::signal::unix::{signal, SignalKind};

/// Write end of the pipe from the signal handler to the runtime; -1 before installation.
static HANDLER_PIPE: AtomicI32 = AtomicI32::new(-1);

/// Size of one message on the handler pipe: the signal number and the sender's pid, as
/// native-endian `i32`s. Writes of this size to a pipe are atomic.
const MESSAGE_LEN: usize = 8;

/// Source of the signals that shut the agent down.
pub(super) enum ShutdownSignals {
    /// Every sender counts: tokio's streams.
    AnySender {
        terminate: tokio::signal::unix::Signal,
        interrupt: tokio::signal::unix::Signal,
        hangup: tokio::signal::unix::Signal,
    },
    /// Only senders outside the PID namespace count: messages from the `SA_SIGINFO` handler.
    OutsideSenders(pipe::Receiver),
}

impl ShutdownSignals {
    /// Installs the handlers on the current tokio runtime; `init` selects the PID 1 rule.
    pub(super) fn install(init: bool) -> io::Result<Self> {
        if !init {
            return Ok(Self::AnySender {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
                hangup: signal(SignalKind::hangup())?,
            });
        }

        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and have no other owner.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let receiver = pipe::Receiver::from_owned_fd(read_end)?;
        // The write end stays open for the life of the process, since a handler may run at
        // any time.
        HANDLER_PIPE.store(
            std::os::fd::IntoRawFd::into_raw_fd(write_end),
            Ordering::SeqCst,
        );

        let action = SigAction::new(
            SigHandler::SigAction(forward_to_pipe),
            SaFlags::SA_SIGINFO | SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            // SAFETY: the handler only loads an atomic and calls write(2), both
            // async-signal-safe.
            unsafe { sigaction(signal, &action) }.map_err(io::Error::from)?;
        }
        Ok(Self::OutsideSenders(receiver))
    }

    /// Waits for the next signal that shuts the agent down, logging and skipping the ones a
    /// process inside the sandbox sent.
    pub(super) async fn recv(&mut self) -> io::Result<Signal> {
        match self {
            Self::AnySender {
                terminate,
                interrupt,
                hangup,
            } => Ok(tokio::select! {
                _ = terminate.recv() => Signal::SIGTERM,
                _ = interrupt.recv() => Signal::SIGINT,
                _ = hangup.recv() => Signal::SIGHUP,
            }),
            Self::OutsideSenders(receiver) => loop {
                let mut message = [0u8; MESSAGE_LEN];
                receiver.read_exact(&mut message).await?;
                let (number, sender) = decode(message);
                let Ok(signal) = Signal::try_from(number) else {
                    continue;
                };
                if sender == 0 {
                    return Ok(signal);
                }
                tracing::warn!(%signal, sender_pid = sender, "ignoring a shutdown signal sent from inside the sandbox; stop the sandbox through the gitvm API");
            },
        }
    }
}

/// Sends the signal number and the sender's pid to the runtime. Runs in signal context.
extern "C" fn forward_to_pipe(
    number: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t, and for SIGTERM, SIGINT and
    // SIGHUP its sender fields are set (0 when the sender is outside the namespace).
    let sender = unsafe { (*info).si_pid() };
    let message = encode(number, sender);
    let fd = HANDLER_PIPE.load(Ordering::Relaxed);
    // A full pipe drops the message: the runtime already has shutdown signals to read.
    // SAFETY: write(2) reads MESSAGE_LEN bytes from a live stack buffer.
    unsafe { libc::write(fd, message.as_ptr().cast(), MESSAGE_LEN) };
}

fn encode(number: libc::c_int, sender: libc::pid_t) -> [u8; MESSAGE_LEN] {
    let mut message = [0u8; MESSAGE_LEN];
    message[..4].copy_from_slice(&number.to_ne_bytes());
    message[4..].copy_from_slice(&sender.to_ne_bytes());
    message
}

fn decode(message: [u8; MESSAGE_LEN]) -> (libc::c_int, libc::pid_t) {
    let number = libc::c_int::from_ne_bytes(message[..4].try_into().expect("4 bytes"));
    let sender = libc::pid_t::from_ne_bytes(message[4..].try_into().expect("4 bytes"));
    (number, sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips() {
        assert_eq!(decode(encode(libc::SIGTERM, 0)), (libc::SIGTERM, 0));
        assert_eq!(decode(encode(libc::SIGHUP, 4321)), (libc::SIGHUP, 4321));
    }
}
