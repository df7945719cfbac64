//! The agent's transport inside a QEMU guest: a virtio-serial port.
//!
//! A port is one byte stream shared by every host connection in turn, and QEMU accepts one
//! host client at a time. The agent serves one session at a time: the handshake of
//! [`crate::handshake`], then HTTP/2 until the stream ends. While no host is connected a read
//! returns end of file at once, so the agent polls for the next host at a short interval.

use std::fs::OpenOptions;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::handshake::server_handshake;

/// Directory where the kernel lists virtio-serial ports with their names.
const PORTS_DIR: &str = "/sys/class/virtio-ports";

/// Pause between looks for a host while none is connected.
const HOST_POLL: Duration = Duration::from_millis(20);

/// Pause before a write that would block is tried again without a readiness event.
const WRITE_RETRY: Duration = Duration::from_millis(2);

/// Time the kernel gets to create the port after boot.
const PORT_WAIT: Duration = Duration::from_secs(10);

/// Finds the device of the virtio-serial port named `name`, waiting for it to appear.
pub async fn find_port(name: &str) -> io::Result<PathBuf> {
    let deadline = tokio::time::Instant::now() + PORT_WAIT;
    loop {
        if let Some(device) = lookup_port(Path::new(PORTS_DIR), name)? {
            return Ok(device);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no virtio-serial port named {name} under {PORTS_DIR} after {}s; \
                     the host must add `-device virtserialport,name={name}`",
                    PORT_WAIT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Returns `/dev/<port>` for the entry of `ports_dir` whose `name` file contains `name`.
fn lookup_port(ports_dir: &Path, name: &str) -> io::Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(ports_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim() == name {
            return Ok(Some(Path::new("/dev").join(entry.file_name())));
        }
    }
    Ok(None)
}

/// An open virtio-serial port; clones share the descriptor.
pub struct SerialPort {
    fd: Arc<AsyncFd<std::fs::File>>,
    retry: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Clone for SerialPort {
    fn clone(&self) -> Self {
        Self {
            fd: Arc::clone(&self.fd),
            retry: None,
        }
    }
}

impl SerialPort {
    /// Opens the port device in non-blocking mode.
    pub fn open(device: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(device)
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot open {}: {error}", device.display()),
                )
            })?;
        // SAFETY: `file` owns an open descriptor, and the AsyncFd keeps it for its lifetime.
        let fd = unsafe { AsyncFd::register(file) }.map_err(io::Error::from)?;
        Ok(Self {
            fd: Arc::new(fd),
            retry: None,
        })
    }
}

impl AsyncRead for SerialPort {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(error)) => return Poll::Ready(Err(error)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl SerialPort {
    /// Runs `write` once the port is writable. The virtio console driver does not always
    /// signal that the host consumed earlier output, so a write that would block is also tried
    /// again after [`WRITE_RETRY`].
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl Fn(&std::fs::File) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            if let Poll::Ready(ready) = self.fd.poll_write_ready(cx) {
                let mut guard = ready?;
                match guard.try_io(|fd| write(fd.get_ref())) {
                    Ok(result) => {
                        self.retry = None;
                        return Poll::Ready(result);
                    }
                    Err(_would_block) => continue,
                }
            }
            let retry = self
                .retry
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_RETRY)));
            ready!(retry.as_mut().poll(cx));
            self.retry = None;
            match write(self.fd.get_ref()) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncWrite for SerialPort {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |mut file| file.write(data))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |mut file| file.write_vectored(buffers))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Serves host sessions on `port` one after another until `shutdown` is cancelled.
pub async fn serve(port: SerialPort, shutdown: CancellationToken) -> io::Result<()> {
    loop {
        let handshake = tokio::select! {
            handshake = server_handshake(port.clone()) => handshake,
            _ = shutdown.cancelled() => return Ok(()),
        };
        match handshake {
            Ok(stream) => {
                tracing::debug!("host connected over virtio-serial");
                super::serve_stream(stream, shutdown.clone()).await;
            }
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                // No host is connected.
                tokio::time::sleep(HOST_POLL).await;
            }
            Err(error) => {
                tracing::debug!(%error, "virtio-serial handshake failed");
                tokio::time::sleep(HOST_POLL).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_port_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (port, name) in [("vport0p1", "other\n"), ("vport1p1", "gitvm\n")] {
            std::fs::create_dir(dir.path().join(port)).unwrap();
            std::fs::write(dir.path().join(port).join("name"), name).unwrap();
        }
        assert_eq!(
            lookup_port(dir.path(), "gitvm").unwrap(),
            Some(PathBuf::from("/dev/vport1p1"))
        );
        assert_eq!(lookup_port(dir.path(), "missing").unwrap(), None);
        assert_eq!(
            lookup_port(&dir.path().join("none"), "gitvm").unwrap(),
            None
        );
    }
}
