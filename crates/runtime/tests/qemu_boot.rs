//! Boots real microVMs under QEMU with TCG: Debian's cloud kernel, the initramfs built by
//! `gitvm_runtime::qemu::initramfs` and the real `gitvm-init`.
//!
//! Requirements:
//! - `qemu-system-x86_64`, `mkfs.ext4` and `debugfs` (e2fsprogs), `dpkg-deb`;
//! - the `gitvm-init` binary, built by `cargo build` before the tests (scripts/test.sh builds
//!   the workspace first); tests never run cargo themselves;
//! - on the first run, HTTP access to deb.debian.org. The kernel is cached in
//!   `$GITVM_TEST_CACHE`, by default `target/gitvm-test-cache`, and later runs work offline.
//!
//! Run with `--nocapture` to see the measured boot times.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gitvm_runtime::qemu::initramfs::build_initramfs;
use gitvm_runtime::qemu::kernel::{debian_cloud_kernel, host_tsc_khz, user_kernel, Kernel};
use gitvm_runtime::qemu::machine::{initramfs_boot_args, Accel};

const MIRROR: &str = "http://deb.debian.org/debian";
const SUITE: &str = "bookworm";

/// Time allowed to download and unpack the kernel on the first run.
const KERNEL_DEADLINE: Duration = Duration::from_secs(600);

/// Time a guest gets from QEMU start to QEMU exit. A TCG boot takes about 2.4 s on an idle
/// 2-core machine, but the tests of this file run in parallel, so allow for contention.
const BOOT_DEADLINE: Duration = Duration::from_secs(60);

/// Time the guest without a root disk gets. gitvm-init waits 10 s for `/dev/vda`, then powers
/// off, so QEMU exits after the boot time plus 10 s: 12.2 to 12.6 s alone on an idle 2-core
/// machine, up to 21 s with the other boots and builds running.
const NO_DISK_DEADLINE: Duration = Duration::from_secs(BOOT_DEADLINE.as_secs() + 10);

/// Text the marker program prints on the root disk.
const MARKER: &str = "GITVM-ROOT-MARKER-OK";

#[test]
fn probe_prints_marker_and_powers_off() {
    let guest = Guest::prepare();
    let work = tempfile::tempdir().unwrap();

    let run = guest.boot(work.path(), &["gitvm.probe"], None, BOOT_DEADLINE);
    eprintln!("probe boot: QEMU ran {:?}", run.elapsed);

    assert!(
        run.status.success(),
        "QEMU exit status {}\n{}",
        run.status,
        run.report()
    );
    assert!(
        run.serial_lines().any(|line| line == "GITVM-PROBE-OK"),
        "no GITVM-PROBE-OK line\n{}",
        run.report()
    );
    assert!(
        !run.serial.contains("gitvm-init: loading module"),
        "a module failed to load\n{}",
        run.report()
    );
}

#[test]
fn root_disk_is_mounted_and_becomes_root() {
    let guest = Guest::prepare();
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    fs::create_dir(&tree).unwrap();
    let marker = tree.join("marker");
    fs::write(&marker, marker_program(MARKER)).unwrap();
    fs::set_permissions(&marker, fs::Permissions::from_mode(0o755)).unwrap();
    let image = work.path().join("root.ext4");
    make_ext4(&tree, &image);

    let run = guest.boot(
        work.path(),
        &["gitvm.init=/marker"],
        Some(&image),
        BOOT_DEADLINE,
    );
    eprintln!("switch-root boot: QEMU ran {:?}", run.elapsed);

    assert!(
        run.status.success(),
        "QEMU exit status {}\n{}",
        run.status,
        run.report()
    );
    assert!(
        run.serial_lines().any(|line| line == MARKER),
        "the marker program on the root disk did not run\n{}",
        run.report()
    );
    assert!(
        !run.serial.contains("gitvm-init:"),
        "gitvm-init reported an error\n{}",
        run.report()
    );
    // The tree had no mount points, so gitvm-init created them on the read-write root disk.
    let listing = debugfs_ls(&image);
    for dir in ["dev", "proc", "sys"] {
        assert!(
            listing.split_whitespace().any(|name| name == dir),
            "/{dir} missing on the root disk after boot; debugfs ls /:\n{listing}"
        );
    }
}

#[test]
fn missing_root_disk_reports_error_and_exits() {
    let guest = Guest::prepare();
    let work = tempfile::tempdir().unwrap();

    let run = guest.boot(work.path(), &[], None, NO_DISK_DEADLINE);
    eprintln!("boot without root disk: QEMU ran {:?}", run.elapsed);

    assert!(
        run.serial
            .contains("gitvm-init: waiting for root disk /dev/vda: not found after 10 s"),
        "no error about the missing root disk\n{}",
        run.report()
    );
    assert!(
        run.status.success(),
        "QEMU exit status {}\n{}",
        run.status,
        run.report()
    );
    assert!(
        run.elapsed >= Duration::from_secs(10),
        "QEMU exited after {:?}, before the 10 s wait for the disk ended\n{}",
        run.elapsed,
        run.report()
    );
}

#[test]
fn initramfs_is_cached_by_content() {
    let guest = Guest::prepare();
    let again = build_initramfs(&guest.kernel, &init_binary(), &cache_dir()).unwrap();
    assert_eq!(again, guest.initramfs);

    let no_modules = Kernel {
        modules_dir: None,
        ..guest.kernel.clone()
    };
    let without = build_initramfs(&no_modules, &init_binary(), &cache_dir()).unwrap();
    assert_ne!(without, guest.initramfs);
    let with_size = fs::metadata(&guest.initramfs).unwrap().len();
    let without_size = fs::metadata(&without).unwrap().len();
    assert!(
        with_size > without_size + 100_000,
        "initramfs with modules is {with_size} bytes, without {without_size}"
    );
}

#[test]
fn user_kernel_reads_release_from_bzimage() {
    let guest = Guest::prepare();
    let kernel = user_kernel(&guest.kernel.vmlinuz, guest.kernel.modules_dir.as_deref()).unwrap();
    assert_eq!(kernel, guest.kernel);
}

#[test]
fn modules_of_other_release_are_rejected() {
    let guest = Guest::prepare();
    let other = Kernel {
        release: "6.1.0-1-cloud-amd64".to_string(),
        ..guest.kernel.clone()
    };
    let err = build_initramfs(&other, &init_binary(), &cache_dir())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("was built for kernel {}", guest.kernel.release)),
        "{err}"
    );
}

/// Kernel and initramfs shared by the boots.
struct Guest {
    kernel: Kernel,
    initramfs: PathBuf,
}

impl Guest {
    fn prepare() -> Self {
        require_tool("qemu-system-x86_64", "--version");
        let cache = cache_dir();
        let progress: gitvm_runtime::Progress = Arc::new(|line: &str| eprintln!("kernel: {line}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let kernel = runtime
            .block_on(async {
                tokio::time::timeout(
                    KERNEL_DEADLINE,
                    debian_cloud_kernel(&cache, MIRROR, SUITE, progress),
                )
                .await
            })
            .unwrap_or_else(|_| panic!("fetching the kernel took over {KERNEL_DEADLINE:?}"))
            .unwrap_or_else(|err| {
                panic!("fetching the kernel into {} failed: {err}", cache.display())
            });

        let started = Instant::now();
        let initramfs = build_initramfs(&kernel, &init_binary(), &cache)
            .unwrap_or_else(|err| panic!("building the initramfs failed: {err}"));
        eprintln!(
            "kernel {} with initramfs {} ({} bytes, {:?} to build or find)",
            kernel.release,
            initramfs.display(),
            fs::metadata(&initramfs).unwrap().len(),
            started.elapsed()
        );
        Self { kernel, initramfs }
    }

    /// Boots the guest with `extra_args` appended to the command line and `disk` as the root
    /// disk, and waits for QEMU to exit, killing it after `deadline`.
    fn boot(
        &self,
        work: &Path,
        extra_args: &[&str],
        disk: Option<&Path>,
        deadline: Duration,
    ) -> QemuRun {
        let serial_log = work.join("serial.log");
        let qemu_log = work.join("qemu.log");
        let mut append = vec!["console=ttyS0", "panic=-1", "quiet"];
        let tsc = host_tsc_khz().map(|khz| format!("tsc_early_khz={khz}"));
        append.extend(tsc.as_deref());
        append.extend(extra_args);

        let mut command = Command::new("qemu-system-x86_64");
        command.args(initramfs_boot_args(
            Accel::Tcg,
            256,
            &serial_log,
            &self.kernel.vmlinuz,
            &self.initramfs,
            &append.join(" "),
        ));
        if let Some(disk) = disk {
            command
                .arg("-drive")
                .arg(format!(
                    "id=root,file={},format=raw,if=none",
                    disk.display()
                ))
                .args(["-device", "virtio-blk-device,drive=root"]);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&qemu_log).unwrap());

        let started = Instant::now();
        let mut qemu = KillOnDrop(command.spawn().expect("starting qemu-system-x86_64"));
        let status = loop {
            if let Some(status) = qemu.0.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = started.elapsed();
        drop(qemu);

        let run = QemuRun {
            status: status.unwrap_or_default(),
            elapsed,
            serial: fs::read_to_string(&serial_log).unwrap_or_default(),
            qemu_stderr: fs::read_to_string(&qemu_log).unwrap_or_default(),
        };
        if status.is_none() {
            panic!(
                "QEMU did not exit within {deadline:?}; killed it\n{}",
                run.report()
            );
        }
        run
    }
}

/// Kills QEMU when a test fails halfway, so no guest outlives its test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Outcome of one QEMU run.
struct QemuRun {
    status: ExitStatus,
    elapsed: Duration,
    serial: String,
    qemu_stderr: String,
}

impl QemuRun {
    fn serial_lines(&self) -> impl Iterator<Item = &str> {
        self.serial.lines().map(str::trim)
    }

    /// Formats the end of the serial log and QEMU's stderr for assertion messages.
    fn report(&self) -> String {
        let lines: Vec<&str> = self.serial.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!(
            "--- serial log (last 40 lines) ---\n{tail}\n--- QEMU stderr ---\n{}",
            self.qemu_stderr
        )
    }
}

fn cache_dir() -> PathBuf {
    match std::env::var_os("GITVM_TEST_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(2)
            .expect("the runtime crate is at <workspace>/crates/runtime")
            .join("target/gitvm-test-cache"),
    }
}

/// Returns the `gitvm-init` binary of the same build as this test. The test binary lives in
/// `target/<triple>/<profile>/deps/`, and binaries in `target/<triple>/<profile>/`.
fn init_binary() -> PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("test binary is in target/<triple>/<profile>/deps");
    let init = profile_dir.join("gitvm-init");
    assert!(
        init.is_file(),
        "{} not found; build it first with `cargo build -p gitvm-init` (scripts/test.sh builds \
         the workspace before the tests)",
        init.display()
    );
    init
}

/// Fails the test when `tool` cannot be started.
fn require_tool(tool: &str, version_arg: &str) {
    match Command::new(tool).arg(version_arg).output() {
        Ok(_) => {}
        Err(err) if err.kind() == ErrorKind::NotFound => {
            panic!("{tool} not found; run scripts/setup.sh to install the QEMU runtime's tools")
        }
        Err(err) => panic!("starting {tool} failed: {err}"),
    }
}

fn make_ext4(tree: &Path, image: &Path) {
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(tree)
        .arg(image)
        .arg("64M")
        .output()
        .expect("starting mkfs.ext4 (e2fsprogs)");
    assert!(
        output.status.success(),
        "mkfs.ext4 failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Lists the root directory of an ext4 image without mounting it.
fn debugfs_ls(image: &Path) -> String {
    let output = Command::new("debugfs")
        .args(["-R", "ls -l /"])
        .arg(image)
        .output()
        .expect("starting debugfs (e2fsprogs)");
    assert!(
        output.status.success(),
        "debugfs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Builds a static x86_64 Linux ELF executable that writes `text` and a newline to stdout,
/// then syncs and powers the machine off. If power-off fails, it exits with status 0.
///
/// It is assembled here so the root disk needs nothing from the host and nothing from gitvm:
/// its output can only come from the root disk's own program.
fn marker_program(text: &str) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: usize = 64 + 56; // ELF header + one program header

    let message = format!("{text}\n");
    let mut code: Vec<u8> = Vec::new();
    code.extend([0xb8, 1, 0, 0, 0]); // mov eax, 1 (write)
    code.extend([0xbf, 1, 0, 0, 0]); // mov edi, 1 (stdout)
    code.extend([0x48, 0x8d, 0x35]); // lea rsi, [rip + message]
    let displacement_at = code.len();
    code.extend([0, 0, 0, 0]);
    let after_lea = code.len();
    code.push(0xba); // mov edx, message length
    code.extend(u32::try_from(message.len()).unwrap().to_le_bytes());
    code.extend([0x0f, 0x05]); // syscall
    code.extend([0xb8, 162, 0, 0, 0]); // mov eax, 162 (sync)
    code.extend([0x0f, 0x05]); // syscall
    code.extend([0xb8, 169, 0, 0, 0]); // mov eax, 169 (reboot)
    code.push(0xbf); // mov edi, LINUX_REBOOT_MAGIC1
    code.extend(0xfee1_deadu32.to_le_bytes());
    code.push(0xbe); // mov esi, LINUX_REBOOT_MAGIC2
    code.extend(0x2812_1969u32.to_le_bytes());
    code.push(0xba); // mov edx, LINUX_REBOOT_CMD_POWER_OFF
    code.extend(0x4321_fedcu32.to_le_bytes());
    code.extend([0x0f, 0x05]); // syscall
    code.extend([0xb8, 60, 0, 0, 0]); // mov eax, 60 (exit)
    code.extend([0x31, 0xff]); // xor edi, edi
    code.extend([0x0f, 0x05]); // syscall
    let displacement = i32::try_from(code.len() - after_lea).unwrap();
    code[displacement_at..after_lea].copy_from_slice(&displacement.to_le_bytes());
    code.extend(message.as_bytes());

    let file_size = (HEADERS + code.len()) as u64;
    let mut elf: Vec<u8> = Vec::new();
    // ELF header: 64-bit, little-endian, version 1, System V ABI.
    elf.extend([0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend(2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend(0x3eu16.to_le_bytes()); // e_machine: x86-64
    elf.extend(1u32.to_le_bytes()); // e_version
    elf.extend((BASE + HEADERS as u64).to_le_bytes()); // e_entry: first code byte
    elf.extend(64u64.to_le_bytes()); // e_phoff
    elf.extend(0u64.to_le_bytes()); // e_shoff: no sections
    elf.extend(0u32.to_le_bytes()); // e_flags
    elf.extend(64u16.to_le_bytes()); // e_ehsize
    elf.extend(56u16.to_le_bytes()); // e_phentsize
    elf.extend(1u16.to_le_bytes()); // e_phnum
    elf.extend(64u16.to_le_bytes()); // e_shentsize
    elf.extend(0u16.to_le_bytes()); // e_shnum
    elf.extend(0u16.to_le_bytes()); // e_shstrndx
                                    // Program header: load the whole file read + execute at BASE.
    elf.extend(1u32.to_le_bytes()); // p_type: PT_LOAD
    elf.extend(5u32.to_le_bytes()); // p_flags: R + X
    elf.extend(0u64.to_le_bytes()); // p_offset
    elf.extend(BASE.to_le_bytes()); // p_vaddr
    elf.extend(BASE.to_le_bytes()); // p_paddr
    elf.extend(file_size.to_le_bytes()); // p_filesz
    elf.extend(file_size.to_le_bytes()); // p_memsz
    elf.extend(0x1000u64.to_le_bytes()); // p_align
    assert_eq!(elf.len(), HEADERS);
    elf.extend(code);
    elf
}
