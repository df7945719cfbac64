//! `gitvm-init`: PID 1 of the initramfs of gitvm's microVM guests.
//!
//! Boot steps:
//!
//! 1. Mount devtmpfs on `/dev`, proc on `/proc` and sysfs on `/sys`, and read `/proc/cmdline`.
//! 2. Load the modules listed in `/etc/gitvm-modules` (one absolute path per line, in load
//!    order) with `finit_module`. A module that fails to load is reported and skipped.
//! 3. With `gitvm.probe` on the command line, print `GITVM-PROBE-OK` and power off. The host
//!    uses this to check that an accelerator can boot a guest at all.
//! 4. Wait up to 10 s for `/dev/vda`, mount it as ext4 on `/newroot`, move `/dev`, `/proc` and
//!    `/sys` into it and delete the initramfs files to free guest memory.
//! 5. Make `/newroot` the root (`chdir`, `mount --move . /`, `chroot .`) and exec the agent,
//!    `/.gitvm/gitvm agent --vm`, or the program named by `gitvm.init=PATH` with no arguments.
//!
//! Any fatal error prints `gitvm-init: <step>: <error>` on the console and powers the VM off,
//! so QEMU exits and the end of the serial log gives the reason.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Module list written by the host's initramfs builder (`gitvm_runtime::qemu::initramfs`).
const MODULE_LIST: &str = "/etc/gitvm-modules";

/// Block device of the root disk: the first virtio-blk device.
const ROOT_DEVICE: &str = "/dev/vda";

/// Mount point of the root disk before it becomes `/`.
const NEW_ROOT: &str = "/newroot";

/// Time the root disk gets to appear after the modules are loaded.
const ROOT_WAIT: Duration = Duration::from_secs(10);

/// Agent started on the new root unless `gitvm.init=` names another program.
const AGENT: &str = "/.gitvm/gitvm";
const AGENT_ARGS: &[&str] = &["agent", "--vm"];

/// Line printed in probe mode; the host looks for it in the serial log.
const PROBE_MARKER: &str = "GITVM-PROBE-OK";

/// Search path for the started program, as the kernel gives init none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A fatal boot error: the step that failed and why.
struct Failure {
    step: String,
    cause: String,
}

impl Failure {
    fn os(step: impl Into<String>, err: io::Error) -> Self {
        Self {
            step: step.into(),
            cause: err.to_string(),
        }
    }
}

fn main() {
    let failure = match boot() {
        Ok(never) => match never {},
        Err(failure) => failure,
    };
    console(&format!("gitvm-init: {}: {}", failure.step, failure.cause));
    power_off();
}

/// Runs the boot steps; returns only on failure, because success ends in `exec`.
fn boot() -> Result<std::convert::Infallible, Failure> {
    mount_kernel_filesystems()?;
    ensure_console();

    let cmdline = fs::read_to_string("/proc/cmdline")
        .map_err(|err| Failure::os("reading /proc/cmdline", err))?;
    let options = BootOptions::parse(&cmdline);

    load_modules();

    if options.probe {
        console(PROBE_MARKER);
        power_off();
    }

    wait_for_root_device()?;
    mount(Some(ROOT_DEVICE), NEW_ROOT, Some("ext4"), 0)
        .map_err(|err| Failure::os(format!("mounting {ROOT_DEVICE} as ext4 on {NEW_ROOT}"), err))?;
    for dir in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEW_ROOT}{dir}");
        create_dir(&target).map_err(|err| Failure::os(format!("creating {target}"), err))?;
        mount(Some(dir), &target, None, libc::MS_MOVE)
            .map_err(|err| Failure::os(format!("moving {dir} to {target}"), err))?;
    }
    free_initramfs();
    switch_root()?;

    let (program, args) = match &options.init {
        Some(path) => (path.as_str(), &[][..]),
        None => (AGENT, AGENT_ARGS),
    };
    let mut command = Command::new(program);
    command.args(args);
    if std::env::var_os("PATH").is_none() {
        command.env("PATH", DEFAULT_PATH);
    }
    let err = command.exec();
    Err(Failure::os(format!("starting {program}"), err))
}

/// Options of gitvm-init on the kernel command line.
#[derive(Debug, Default, PartialEq, Eq)]
struct BootOptions {
    /// `gitvm.probe`: print the probe marker and power off.
    probe: bool,
    /// `gitvm.init=PATH`: program to exec on the new root in place of the agent.
    init: Option<String>,
}

impl BootOptions {
    fn parse(cmdline: &str) -> Self {
        let mut options = Self::default();
        for word in cmdline.split_whitespace() {
            if word == "gitvm.probe" || word.starts_with("gitvm.probe=") {
                options.probe = true;
            } else if let Some(path) = word.strip_prefix("gitvm.init=") {
                options.init = (!path.is_empty()).then(|| path.to_string());
            }
        }
        options
    }
}

fn mount_kernel_filesystems() -> Result<(), Failure> {
    for (fstype, target) in [("devtmpfs", "/dev"), ("proc", "/proc"), ("sysfs", "/sys")] {
        create_dir(target).map_err(|err| Failure::os(format!("creating {target}"), err))?;
        match mount(Some(fstype), target, Some(fstype), libc::MS_NOSUID) {
            Ok(()) => {}
            // Already mounted, such as devtmpfs with CONFIG_DEVTMPFS_MOUNT on some kernels.
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {}
            Err(err) => return Err(Failure::os(format!("mounting {fstype} on {target}"), err)),
        }
    }
    Ok(())
}

/// Opens `/dev/console` as stdin, stdout and stderr when the kernel could not (it does so
/// before starting init only if the initramfs has `/dev/console`).
fn ensure_console() {
    // SAFETY: F_GETFD on any descriptor number only queries it.
    if unsafe { libc::fcntl(2, libc::F_GETFD) } != -1 {
        return;
    }
    let Ok(console) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which are closed.
        unsafe { libc::dup2(console.as_raw_fd(), fd) };
    }
}

/// Loads every module in [`MODULE_LIST`]; failures are printed and boot goes on, because a
/// missing optional driver should not stop the guest.
fn load_modules() {
    let list = match fs::read_to_string(MODULE_LIST) {
        Ok(list) => list,
        // A kernel with the drivers built in needs no modules.
        Err(err) if err.kind() == io::ErrorKind::NotFound => return,
        Err(err) => {
            console(&format!("gitvm-init: reading {MODULE_LIST}: {err}"));
            return;
        }
    };
    for path in list.lines().map(str::trim) {
        if path.is_empty() || path.starts_with('#') {
            continue;
        }
        if let Err(err) = load_module(path) {
            console(&format!("gitvm-init: loading module {path}: {err}"));
        }
    }
}

fn load_module(path: &str) -> io::Result<()> {
    let file = fs::File::open(path)?;
    // SAFETY: finit_module reads the open module file and an empty, NUL-terminated parameter
    // string; both outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            c"".as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    // Already loaded, as a dependency listed twice or a driver that is also built in.
    if err.raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    Err(err)
}

fn wait_for_root_device() -> Result<(), Failure> {
    let started = Instant::now();
    while !Path::new(ROOT_DEVICE).exists() {
        if started.elapsed() >= ROOT_WAIT {
            return Err(Failure {
                step: format!("waiting for root disk {ROOT_DEVICE}"),
                cause: format!(
                    "not found after {} s; attach the root image as a virtio-blk device",
                    ROOT_WAIT.as_secs()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Deletes the initramfs files, which would otherwise hold guest RAM for good. Mount points
/// (only `/newroot` by now) are skipped; failures are reported and do not stop the boot.
fn free_initramfs() {
    let root_device = match fs::symlink_metadata("/") {
        Ok(meta) => meta.dev(),
        Err(err) => {
            console(&format!(
                "gitvm-init: reading / to free the initramfs: {err}"
            ));
            return;
        }
    };
    remove_contents(Path::new("/"), root_device);
}

fn remove_contents(dir: &Path, root_device: u64) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            console(&format!("gitvm-init: listing {}: {err}", dir.display()));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != root_device {
            continue;
        }
        let result = if meta.is_dir() {
            remove_contents(&path, root_device);
            fs::remove_dir(&path)
        } else {
            fs::remove_file(&path)
        };
        if let Err(err) = result {
            console(&format!("gitvm-init: removing {}: {err}", path.display()));
        }
    }
}

/// Makes [`NEW_ROOT`] the root directory, as `switch_root` does.
fn switch_root() -> Result<(), Failure> {
    std::env::set_current_dir(NEW_ROOT)
        .map_err(|err| Failure::os(format!("changing directory to {NEW_ROOT}"), err))?;
    mount(Some("."), "/", None, libc::MS_MOVE)
        .map_err(|err| Failure::os(format!("moving {NEW_ROOT} to /"), err))?;
    // SAFETY: chroot takes a NUL-terminated path that outlives the call.
    if unsafe { libc::chroot(c".".as_ptr()) } != 0 {
        return Err(Failure::os(
            "changing root to the root disk",
            io::Error::last_os_error(),
        ));
    }
    std::env::set_current_dir("/").map_err(|err| Failure::os("changing directory to /", err))
}

fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let to_c =
        |text: &str| CString::new(text).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let source = source.map(to_c).transpose()?;
    let target = to_c(target)?;
    let fstype = fstype.map(to_c).transpose()?;
    let as_ptr = |value: &Option<CString>| value.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            as_ptr(&source),
            target.as_ptr(),
            as_ptr(&fstype),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Creates a directory with mode 0755; an existing one is fine.
fn create_dir(path: &str) -> io::Result<()> {
    let path = CString::new(Path::new(path).as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: mkdir takes a NUL-terminated path that outlives the call.
    if unsafe { libc::mkdir(path.as_ptr(), 0o755) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Writes one line to the console; errors are ignored, as there is nowhere else to report them.
fn console(line: &str) {
    let mut stderr = io::stderr().lock();
    let _ = stderr.write_all(line.as_bytes());
    let _ = stderr.write_all(b"\n");
}

/// Flushes file systems and powers the VM off. If that fails (not PID 1, or no way to power
/// off), the process exits. As PID 1 that makes the kernel panic, and with `panic=-1` and
/// QEMU's `-no-reboot` the VM still ends.
fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    let err = io::Error::last_os_error();
    console(&format!("gitvm-init: powering off: {err}"));
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_without_options_boots_agent() {
        let options = BootOptions::parse("console=ttyS0 panic=-1 quiet tsc_early_khz=2596146\n");
        assert_eq!(options, BootOptions::default());
    }

    #[test]
    fn cmdline_probe_and_init_are_read() {
        let options = BootOptions::parse("console=ttyS0 gitvm.probe gitvm.init=/sbin/marker\n");
        assert!(options.probe);
        assert_eq!(options.init.as_deref(), Some("/sbin/marker"));
    }

    #[test]
    fn cmdline_empty_init_is_ignored() {
        let options = BootOptions::parse("gitvm.init= quiet");
        assert_eq!(options.init, None);
    }
}
