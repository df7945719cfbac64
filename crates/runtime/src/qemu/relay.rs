//! The agent relay: a small detached process per microVM that stays connected to QEMU's
//! virtio-serial socket for the machine's whole life and passes bytes to one host client at a
//! time.
//!
//! QEMU's virtio-serial port mishandles a host that disconnects and reconnects: guest output
//! written while no client is connected throttles the port, and output after the next connect
//! can stay stuck in the queue. With the relay, QEMU's connection stays open for the machine's
//! life. When the node restarts, the relay keeps draining the guest's output and hands the
//! stream to the next client. The handshake of [`gitvm_agent::handshake`] then ends the guest's
//! stale session and starts a fresh one.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

/// Time QEMU's socket gets to appear after QEMU started.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// File in the machine directory with the relay's pid.
const PID_FILE: &str = "relay.pid";

/// Returns whether the relay of the machine in `dir` runs.
pub fn is_running(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(PID_FILE)) else {
        return false;
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return false;
    };
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let socket = dir.join("agent.sock");
    cmdline
        .split(|&b| b == 0)
        .any(|arg| arg == socket.as_os_str().as_encoded_bytes())
}

/// Hidden CLI subcommand that runs the relay: `gitvm qemu-relay QEMU_SOCKET LISTEN_SOCKET`.
pub const SUBCOMMAND: &str = "qemu-relay";

/// Runs the relay until QEMU closes its socket.
pub fn run(qemu_socket: PathBuf, listen: PathBuf) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(relay(qemu_socket, listen))
}

async fn relay(qemu_socket: PathBuf, listen: PathBuf) -> io::Result<()> {
    let qemu = connect_with_retry(&qemu_socket).await?;
    let _ = std::fs::remove_file(&listen);
    let listener = UnixListener::bind(&listen)?;
    let (mut from_guest, to_guest) = qemu.into_split();
    let to_guest = Arc::new(Mutex::new(to_guest));
    let client: Arc<Mutex<Option<OwnedWriteHalf>>> = Arc::new(Mutex::new(None));

    let accept = accept_clients(listener, Arc::clone(&client), to_guest);

    let forward = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = from_guest.read(&mut buffer).await?;
            if n == 0 {
                return Ok::<(), io::Error>(());
            }
            let mut current = client.lock().await;
            if let Some(writer) = current.as_mut() {
                if writer.write_all(&buffer[..n]).await.is_err() {
                    // The client went away; drop the guest's output until the next one.
                    *current = None;
                }
            }
        }
    };

    let result = tokio::select! {
        result = forward => result,
        result = accept => result,
    };
    let _ = std::fs::remove_file(&listen);
    result
}

/// Accepts node connections forever. Each new client replaces the previous one: it receives the
/// guest's output, and the previous client's input to the guest stops.
async fn accept_clients(
    listener: UnixListener,
    client: Arc<Mutex<Option<OwnedWriteHalf>>>,
    to_guest: Arc<Mutex<OwnedWriteHalf>>,
) -> io::Result<()> {
    let mut previous: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let (stream, _) = listener.accept().await?;
        let (mut from_client, to_client) = stream.into_split();
        if let Some(reader) = previous.take() {
            reader.abort();
        }
        *client.lock().await = Some(to_client);

        let to_guest = Arc::clone(&to_guest);
        previous = Some(tokio::spawn(async move {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match from_client.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if to_guest.lock().await.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }));
    }
}

async fn connect_with_retry(path: &Path) -> io::Result<UnixStream> {
    let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
    loop {
        match UnixStream::connect(path).await {
            Ok(stream) => return Ok(stream),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(io::Error::new(
                    error.kind(),
                    format!(
                        "cannot connect to QEMU's socket {}: {error}",
                        path.display()
                    ),
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Starts the relay of the machine in `dir` as a detached process running `gitvm` binary
/// `gitvm_bin`, logging to `relay.log`.
pub fn spawn(gitvm_bin: &Path, dir: &Path) -> Result<(), crate::RuntimeError> {
    use std::os::unix::process::CommandExt;

    let log = std::fs::File::create(dir.join("relay.log")).map_err(|source| {
        super::files::io_error(
            format!("creating {}", dir.join("relay.log").display()),
            source,
        )
    })?;
    let mut command = std::process::Command::new(gitvm_bin);
    command
        .arg(SUBCOMMAND)
        .arg(dir.join("agent.sock"))
        .arg(dir.join("relay.sock"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        // Its own session, so that signals to the node's process group do not reach it.
        .process_group(0);
    let mut child = command.spawn().map_err(|source| {
        super::files::io_error(
            format!("starting the agent relay {}", gitvm_bin.display()),
            source,
        )
    })?;
    super::files::write_atomic(&dir.join(PID_FILE), child.id().to_string().as_bytes())?;
    // Reap it in the background when it exits while the node runs.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}
