//! Choice between KVM and TCG. `/dev/kvm` can exist and open yet be unable to run a stock guest
//! kernel, such as a paravirtual KVM that hangs at early boot. So the probe boots one: the
//! initramfs with `gitvm.probe`, whose init prints a marker and powers off. A probe that has not printed it by the deadline means TCG.

use std::path::Path;
use std::time::Duration;

use super::machine::Accel;

/// Time a KVM probe boot gets. A working KVM boots the initramfs in well under a second.
const PROBE_DEADLINE: Duration = Duration::from_secs(10);

/// Line the initramfs's init prints in probe mode.
const PROBE_MARKER: &str = "GITVM-PROBE-OK";

/// Returns [`Accel::Kvm`] when a guest boots under KVM within the deadline, else [`Accel::Tcg`].
/// Returns no error: every problem means TCG, logged with its reason.
pub async fn probe(qemu: &Path, kernel: &Path, initramfs: &Path, work: &Path) -> Accel {
    if let Err(error) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        tracing::info!(%error, "KVM is not available; microVMs run under TCG");
        return Accel::Tcg;
    }
    let dir = match tempfile::Builder::new()
        .prefix(".kvm-probe-")
        .tempdir_in(work)
    {
        Ok(dir) => dir,
        Err(error) => {
            tracing::warn!(%error, "cannot create the KVM probe directory; microVMs run under TCG");
            return Accel::Tcg;
        }
    };
    let log = dir.path().join("console.log");
    let child = tokio::process::Command::new(qemu)
        .args(super::machine::initramfs_boot_args(
            Accel::Kvm,
            128,
            &log,
            kernel,
            initramfs,
            "console=ttyS0 panic=-1 quiet gitvm.probe",
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            tracing::warn!(%error, "cannot start the KVM probe; microVMs run under TCG");
            return Accel::Tcg;
        }
    };
    let started = std::time::Instant::now();
    let exited = tokio::time::timeout(PROBE_DEADLINE, child.wait()).await;
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    match exited {
        Ok(_) if console.contains(PROBE_MARKER) => {
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "KVM probe booted; microVMs use KVM"
            );
            Accel::Kvm
        }
        Ok(status) => {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = pipe.read_to_string(&mut stderr).await;
            }
            tracing::warn!(
                ?status,
                qemu_stderr = %stderr.trim(),
                "KVM probe guest exited without booting; microVMs run under TCG"
            );
            Accel::Tcg
        }
        Err(_) => {
            let _ = child.kill().await;
            tracing::warn!(
                deadline_secs = PROBE_DEADLINE.as_secs(),
                "KVM probe guest did not boot in time (a KVM that cannot run stock kernels); microVMs run under TCG"
            );
            Accel::Tcg
        }
    }
}
