//! The guest kernel: Debian's cloud kernel fetched from a Debian mirror, or one the user supplies.
//!
//! How [`debian_cloud_kernel`] gets a kernel:
//!
//! 1. If `<cache_dir>/kernels/` already contains a kernel, the newest one is returned and the
//!    network is not used. That pins the kernel: delete the directory to pick up a newer one.
//! 2. Otherwise it takes an exclusive `flock` on `<cache_dir>/kernels/.lock`, so concurrent
//!    processes download once, and checks the cache again.
//! 3. It reads `dists/<suite>/main/binary-amd64/Packages.gz`, where the metapackage
//!    `linux-image-cloud-amd64` depends on the versioned package, such as
//!    `linux-image-6.1.0-28-cloud-amd64`.
//! 4. It downloads that `.deb`, checks its size and SHA-256 against the index, and extracts
//!    `boot/vmlinuz-<release>` and `lib/modules/<release>/` with `dpkg-deb --fsys-tarfile` into
//!    a temporary directory next to the cache entry.
//! 5. It renames the temporary directory to `<cache_dir>/kernels/<release>/`.

use std::cmp::Ordering;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{Progress, RuntimeError};

/// Runtime name used in errors.
const RUNTIME: &str = "qemu";

/// Metapackage that depends on the current versioned cloud kernel package.
const METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Prefix of the versioned kernel package; the rest of its name is the kernel release.
const IMAGE_PREFIX: &str = "linux-image-";

/// Time allowed to connect to the mirror.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Time allowed between two reads from the mirror before the download counts as stalled.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Prefixes of the temporary entries in the kernels directory. Lookups skip names starting
/// with a dot, and a process holding the lock removes leftovers of interrupted runs.
const DOWNLOAD_PREFIX: &str = ".download-";
const UNPACK_PREFIX: &str = ".unpack-";

/// A guest kernel ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// Kernel release as `uname -r` prints it, such as `6.1.0-28-cloud-amd64`.
    pub release: String,
    /// Compressed kernel image (bzImage) to pass to QEMU's `-kernel`.
    pub vmlinuz: PathBuf,
    /// Module directory of this release (`.../lib/modules/<release>`), or `None` when the
    /// kernel has its drivers built in or the modules are unknown.
    pub modules_dir: Option<PathBuf>,
}

/// Downloads (once) and unpacks the newest `linux-image-*-cloud-amd64` of `suite` into
/// `<cache_dir>/kernels/<release>/`.
///
/// Later calls return the cached kernel without network access, and so does any call once
/// `<cache_dir>/kernels/` contains a kernel: the newest cached release wins. `mirror` is the
/// archive root, such as `http://deb.debian.org/debian` (plain HTTP; the SHA-256 from the
/// index protects the download). Extraction needs `dpkg-deb` on the host.
pub async fn debian_cloud_kernel(
    cache_dir: &Path,
    mirror: &str,
    suite: &str,
    progress: Progress,
) -> Result<Kernel, RuntimeError> {
    let kernels_dir = cache_dir.join("kernels");
    fs::create_dir_all(&kernels_dir).map_err(|source| RuntimeError::Io {
        context: format!("creating kernel cache {}", kernels_dir.display()),
        source,
    })?;
    if let Some(kernel) = newest_cached_kernel(&kernels_dir)? {
        return Ok(kernel);
    }

    let _lock = lock_kernel_cache(&kernels_dir, &progress).await?;
    // Another process may have finished the download while this one waited for the lock.
    if let Some(kernel) = newest_cached_kernel(&kernels_dir)? {
        return Ok(kernel);
    }
    remove_leftovers(&kernels_dir);

    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("gitvm/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| unavailable(format!("creating an HTTP client failed: {err}")))?;
    let mirror = mirror.trim_end_matches('/');
    let package = resolve_kernel_package(&client, mirror, suite, &progress).await?;
    let release = package.name[IMAGE_PREFIX.len()..].to_string();

    let deb = tempfile::Builder::new()
        .prefix(DOWNLOAD_PREFIX)
        .suffix(".deb")
        .tempfile_in(&kernels_dir)
        .map_err(|source| RuntimeError::Io {
            context: format!("creating a download file in {}", kernels_dir.display()),
            source,
        })?;
    let url = format!("{mirror}/{}", package.filename);
    download_verified(&client, &url, &package, deb.path(), &progress).await?;

    progress(&format!("unpacking {}", package.name));
    let deb_path = deb.path().to_path_buf();
    let target = kernels_dir.join(&release);
    let unpack_release = release.clone();
    let unpack_dir = kernels_dir.clone();
    tokio::task::spawn_blocking(move || {
        install_deb(&deb_path, &unpack_release, &unpack_dir, &target)
    })
    .await
    .map_err(|err| unavailable(format!("unpacking the kernel package panicked: {err}")))??;
    drop(deb);

    let kernel = cached_kernel(&kernels_dir.join(&release), &release).ok_or_else(|| {
        unavailable(format!(
            "kernel {release} was unpacked into {} but its boot/vmlinuz-{release} is missing",
            kernels_dir.display()
        ))
    })?;
    progress(&format!(
        "kernel {release} ready in {}",
        kernels_dir.display()
    ));
    Ok(kernel)
}

/// Checks a user-supplied kernel image, with an optional modules directory
/// (`lib/modules/<release>`), and reads its release.
///
/// The release comes from the version string in the bzImage header. For other image formats it
/// falls back to the modules directory's name, then to the part of the file name after
/// `vmlinuz-`, then to `unknown`. A modules directory must exist; without `modules.dep` the
/// initramfs builder reads dependencies from the modules themselves.
pub fn user_kernel(vmlinuz: &Path, modules_dir: Option<&Path>) -> Result<Kernel, RuntimeError> {
    let meta = fs::metadata(vmlinuz).map_err(|source| RuntimeError::Io {
        context: format!(
            "reading kernel image {} (set by --qemu-kernel)",
            vmlinuz.display()
        ),
        source,
    })?;
    if !meta.is_file() {
        return Err(unavailable(format!(
            "kernel image {} is not a regular file; pass the path of a bzImage to --qemu-kernel",
            vmlinuz.display()
        )));
    }
    if let Some(dir) = modules_dir {
        if !dir.is_dir() {
            return Err(unavailable(format!(
                "kernel modules directory {} is not a directory; pass lib/modules/<release> of \
                 the kernel, or no modules directory when the drivers are built in",
                dir.display()
            )));
        }
    }

    let image_release = bzimage_release(vmlinuz).map_err(|source| RuntimeError::Io {
        context: format!("reading kernel image {}", vmlinuz.display()),
        source,
    })?;
    let dir_release = modules_dir
        .and_then(|dir| dir.file_name())
        .map(|name| name.to_string_lossy().into_owned());
    if let (Some(image), Some(dir)) = (&image_release, &dir_release) {
        if image != dir {
            // The directory name is only a convention; the initramfs builder compares each
            // module's vermagic with the release and rejects real mismatches.
            tracing::warn!(
                kernel = %vmlinuz.display(),
                release = %image,
                modules_dir = %dir,
                "kernel release differs from the modules directory name"
            );
        }
    }
    let file_release = vmlinuz
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix("vmlinuz-"))
        .map(str::to_string);
    let release = image_release
        .or(dir_release)
        .or(file_release)
        .unwrap_or_else(|| "unknown".to_string());

    Ok(Kernel {
        release,
        vmlinuz: vmlinuz.to_path_buf(),
        modules_dir: modules_dir.map(Path::to_path_buf),
    })
}

/// Returns the host's TSC rate in kHz, for the guest's `tsc_early_khz=` parameter, or `None`
/// when the CPU has no constant-rate TSC or is not x86_64.
///
/// The rate is measured once per process: the TSC against `CLOCK_MONOTONIC_RAW` over three
/// 20 ms windows, taking the median. Without this parameter a Debian 6.1 guest under TCG
/// occasionally hangs after "Unable to calibrate against PIT".
pub fn host_tsc_khz() -> Option<u64> {
    static TSC_KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *TSC_KHZ.get_or_init(measure_tsc_khz)
}

#[cfg(target_arch = "x86_64")]
fn measure_tsc_khz() -> Option<u64> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = cpuinfo.lines().find(|line| line.starts_with("flags"))?;
    if !flags.split_whitespace().any(|flag| flag == "constant_tsc") {
        return None;
    }

    let mut rates: Vec<u64> = (0..3)
        .filter_map(|_| {
            let (tsc_start, ns_start) = tsc_and_monotonic_ns()?;
            std::thread::sleep(Duration::from_millis(20));
            let (tsc_end, ns_end) = tsc_and_monotonic_ns()?;
            let ticks = u128::from(tsc_end.checked_sub(tsc_start)?);
            let nanos = u128::from(ns_end.checked_sub(ns_start)?);
            // ticks per ns × 1e6 = ticks per ms = kHz.
            u64::try_from(ticks * 1_000_000 / nanos.max(1)).ok()
        })
        .collect();
    rates.sort_unstable();
    let median = *rates.get(rates.len() / 2)?;
    // Anything outside 100 MHz to 20 GHz is a broken measurement, not a TSC.
    (100_000..=20_000_000).contains(&median).then_some(median)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_tsc_khz() -> Option<u64> {
    None
}

/// Reads the TSC and `CLOCK_MONOTONIC_RAW` together. The TSC value is the midpoint of two reads
/// around the clock call, which halves the error when the thread is preempted in between.
#[cfg(target_arch = "x86_64")]
fn tsc_and_monotonic_ns() -> Option<(u64, u64)> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: rdtsc has no preconditions on x86_64; clock_gettime writes only into `ts`.
    let (before, rc, after) = unsafe {
        let before = core::arch::x86_64::_rdtsc();
        let rc = libc::clock_gettime(libc::CLOCK_MONOTONIC_RAW, &mut ts);
        let after = core::arch::x86_64::_rdtsc();
        (before, rc, after)
    };
    if rc != 0 {
        return None;
    }
    let nanos = u64::try_from(ts.tv_sec).ok()? * 1_000_000_000 + u64::try_from(ts.tv_nsec).ok()?;
    Some((before + (after.checked_sub(before)?) / 2, nanos))
}

/// Returns the newest valid kernel in the cache, comparing releases the way dpkg compares
/// versions, so `6.1.0-50-cloud-amd64` is newer than `6.1.0-9-cloud-amd64`.
fn newest_cached_kernel(kernels_dir: &Path) -> Result<Option<Kernel>, RuntimeError> {
    let entries = fs::read_dir(kernels_dir).map_err(|source| RuntimeError::Io {
        context: format!("listing kernel cache {}", kernels_dir.display()),
        source,
    })?;
    let mut newest: Option<Kernel> = None;
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let Some(kernel) = cached_kernel(&entry.path(), &name) else {
            continue;
        };
        let is_newer = newest
            .as_ref()
            .is_none_or(|best| compare_version_part(&kernel.release, &best.release).is_gt());
        if is_newer {
            newest = Some(kernel);
        }
    }
    Ok(newest)
}

/// Reads one cache entry, `None` when it has no kernel image.
fn cached_kernel(dir: &Path, release: &str) -> Option<Kernel> {
    let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        return None;
    }
    let modules_dir = dir.join("lib/modules").join(release);
    Some(Kernel {
        release: release.to_string(),
        vmlinuz,
        modules_dir: modules_dir.is_dir().then_some(modules_dir),
    })
}

/// Takes the cache lock, telling `progress` when another process holds it.
async fn lock_kernel_cache(
    kernels_dir: &Path,
    progress: &Progress,
) -> Result<Flock<File>, RuntimeError> {
    let lock_path = kernels_dir.join(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| RuntimeError::Io {
            context: format!("opening kernel cache lock {}", lock_path.display()),
            source,
        })?;
    let lock_error = |errno: Errno| RuntimeError::Io {
        context: format!("locking kernel cache {}", lock_path.display()),
        source: io::Error::from(errno),
    };

    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => return Ok(lock),
        Err((file, Errno::EWOULDBLOCK)) => file,
        Err((_, errno)) => return Err(lock_error(errno)),
    };
    progress(&format!(
        "waiting for another gitvm process to finish downloading the kernel (lock {})",
        lock_path.display()
    ));
    tokio::task::spawn_blocking(move || Flock::lock(file, FlockArg::LockExclusive))
        .await
        .map_err(|err| unavailable(format!("waiting for the kernel cache lock panicked: {err}")))?
        .map_err(|(_, errno)| lock_error(errno))
}

/// Removes temporary entries of interrupted runs. Only call with the cache lock held.
fn remove_leftovers(kernels_dir: &Path) {
    let Ok(entries) = fs::read_dir(kernels_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(DOWNLOAD_PREFIX) && !name.starts_with(UNPACK_PREFIX) {
            continue;
        }
        let path = entry.path();
        let result = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        if let Err(err) = result {
            tracing::warn!(path = %path.display(), error = %err, "removing a leftover kernel download failed");
        }
    }
}

/// A binary package as the `Packages` index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PackageEntry {
    name: String,
    version: String,
    depends: String,
    filename: String,
    size: u64,
    sha256: String,
}

/// Finds the versioned kernel package that `linux-image-cloud-amd64` depends on.
async fn resolve_kernel_package(
    client: &reqwest::Client,
    mirror: &str,
    suite: &str,
    progress: &Progress,
) -> Result<PackageEntry, RuntimeError> {
    let index_url = format!("{mirror}/dists/{suite}/main/binary-amd64/Packages.gz");
    progress(&format!("reading the package index {index_url}"));
    let compressed = fetch_bytes(client, &index_url).await?;

    let url = index_url.clone();
    let text = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        flate2::read::GzDecoder::new(compressed.as_slice())
            .read_to_string(&mut text)
            .map(|_| text)
            .map_err(|err| unavailable(format!("decompressing {url} failed: {err}")))
    })
    .await
    .map_err(|err| unavailable(format!("decompressing the package index panicked: {err}")))??;

    let meta = newest_package(&text, METAPACKAGE, None).ok_or_else(|| {
        unavailable(format!(
            "package {METAPACKAGE} not found in {index_url}; check the suite name `{suite}`, \
             or pass --qemu-kernel PATH"
        ))
    })?;
    let (name, version) = kernel_dependency(&meta.depends).ok_or_else(|| {
        unavailable(format!(
            "{METAPACKAGE} {} in {index_url} depends on no {IMAGE_PREFIX}* package (Depends: \
             {}); pass --qemu-kernel PATH",
            meta.version, meta.depends
        ))
    })?;
    newest_package(&text, &name, version.as_deref()).ok_or_else(|| {
        unavailable(format!(
            "package {name} {}, required by {METAPACKAGE} {}, not found in {index_url}; the \
             mirror may be in the middle of a sync, so retry later or pass --qemu-kernel PATH",
            version.as_deref().unwrap_or("(any version)"),
            meta.version
        ))
    })
}

/// Downloads a whole small file, such as the package index.
async fn fetch_bytes(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, RuntimeError> {
    let response = send_get(client, url).await?;
    let body = response
        .bytes()
        .await
        .map_err(|err| network_error(url, &err))?;
    Ok(body.to_vec())
}

/// Sends a GET request and rejects any status but success.
async fn send_get(client: &reqwest::Client, url: &str) -> Result<reqwest::Response, RuntimeError> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|err| network_error(url, &err))?;
    if !response.status().is_success() {
        return Err(unavailable(format!(
            "downloading {url} failed with HTTP status {}; check the mirror and suite, or pass \
             --qemu-kernel PATH to use a local kernel",
            response.status()
        )));
    }
    Ok(response)
}

/// Streams `url` into `dest`, then checks the size and SHA-256 that the index lists.
async fn download_verified(
    client: &reqwest::Client,
    url: &str,
    package: &PackageEntry,
    dest: &Path,
    progress: &Progress,
) -> Result<(), RuntimeError> {
    let size_mb = package.size.div_ceil(1_000_000);
    progress(&format!("downloading {} ({size_mb} MB)", package.name));
    let mut response = send_get(client, url).await?;

    let io_error = |source| RuntimeError::Io {
        context: format!("writing {}", dest.display()),
        source,
    };
    let mut file = tokio::fs::File::create(dest).await.map_err(io_error)?;
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut next_report = 25;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| network_error(url, &err))?
    {
        received += chunk.len() as u64;
        if received > package.size {
            return Err(download_mismatch(
                url,
                format!(
                    "the server sent more than the {} bytes that the index lists",
                    package.size
                ),
            ));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io_error)?;
        let percent = received * 100 / package.size.max(1);
        if percent >= next_report && percent < 100 {
            progress(&format!("downloading {}: {percent}%", package.name));
            next_report = percent - percent % 25 + 25;
        }
    }
    file.flush().await.map_err(io_error)?;

    if received != package.size {
        return Err(download_mismatch(
            url,
            format!(
                "received {received} bytes, the index lists {}",
                package.size
            ),
        ));
    }
    let digest = hex::encode(hasher.finalize());
    if !digest.eq_ignore_ascii_case(&package.sha256) {
        return Err(download_mismatch(
            url,
            format!("SHA-256 is {digest}, the index lists {}", package.sha256),
        ));
    }
    Ok(())
}

/// Extracts the kernel image and modules of `release` from a `.deb` and moves them into
/// `target` atomically. Call with the cache lock held.
fn install_deb(
    deb: &Path,
    release: &str,
    kernels_dir: &Path,
    target: &Path,
) -> Result<(), RuntimeError> {
    let unpack = tempfile::Builder::new()
        .prefix(UNPACK_PREFIX)
        .tempdir_in(kernels_dir)
        .map_err(|source| RuntimeError::Io {
            context: format!("creating an unpack directory in {}", kernels_dir.display()),
            source,
        })?;
    extract_kernel_files(deb, release, unpack.path())?;
    let vmlinuz = unpack.path().join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        return Err(unavailable(format!(
            "kernel package {} contains no boot/vmlinuz-{release}; pass --qemu-kernel PATH",
            deb.display()
        )));
    }

    // Lookups skip an entry without a kernel image, so one here is the rest of a manual change
    // and can be replaced.
    if target.exists() {
        tracing::warn!(path = %target.display(), "replacing an incomplete kernel cache entry");
        fs::remove_dir_all(target).map_err(|source| RuntimeError::Io {
            context: format!(
                "removing incomplete kernel cache entry {}",
                target.display()
            ),
            source,
        })?;
    }
    fs::rename(unpack.path(), target).map_err(|source| RuntimeError::Io {
        context: format!("moving {} to {}", unpack.path().display(), target.display()),
        source,
    })
}

/// Streams the package's file system tree from `dpkg-deb --fsys-tarfile` and writes
/// `boot/vmlinuz-<release>` and `lib/modules/<release>/` (also accepted under `usr/lib/modules`,
/// where merged-/usr packages put it) below `dest`. Everything else is skipped.
fn extract_kernel_files(deb: &Path, release: &str, dest: &Path) -> Result<(), RuntimeError> {
    let mut child = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| {
            if err.kind() == io::ErrorKind::NotFound {
                unavailable(
                    "dpkg-deb not found; install the dpkg package (apt-get install dpkg), or pass \
                     --qemu-kernel PATH to use a local kernel"
                        .to_string(),
                )
            } else {
                unavailable(format!("starting dpkg-deb failed: {err}"))
            }
        })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let vmlinuz_name = format!("vmlinuz-{release}");
    let extract_result = (|| -> io::Result<()> {
        let mut archive = tar::Archive::new(stdout);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.into_owned();
            let Some(relative) = kernel_file_destination(&path, release, &vmlinuz_name) else {
                continue;
            };
            let out = dest.join(relative);
            match entry.header().entry_type() {
                tar::EntryType::Directory => fs::create_dir_all(&out)?,
                tar::EntryType::Regular => {
                    if let Some(parent) = out.parent() {
                        fs::create_dir_all(parent)?;
                    }
                    entry.unpack(&out)?;
                }
                // Kernel packages carry no links or devices among these files; skip any.
                _ => {}
            }
        }
        // Read to the end so dpkg-deb does not die of a broken pipe on trailing padding.
        io::copy(&mut archive.into_inner(), &mut io::sink())?;
        Ok(())
    })();

    let status = child.wait().map_err(|source| RuntimeError::Io {
        context: "waiting for dpkg-deb".to_string(),
        source,
    })?;
    let stderr_text = stderr_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(unavailable(format!(
            "dpkg-deb --fsys-tarfile {} failed ({status}): {}",
            deb.display(),
            stderr_text.trim()
        )));
    }
    extract_result.map_err(|source| RuntimeError::Io {
        context: format!(
            "extracting kernel files from {} into {}",
            deb.display(),
            dest.display()
        ),
        source,
    })
}

/// Maps a path inside the package to its place in the cache entry, `None` to skip it. Paths
/// with `..` or absolute components are skipped.
fn kernel_file_destination(path: &Path, release: &str, vmlinuz_name: &str) -> Option<PathBuf> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => parts.push(part.to_str()?),
            _ => return None,
        }
    }
    match parts.as_slice() {
        ["boot", name] if *name == vmlinuz_name => Some(PathBuf::from("boot").join(name)),
        ["lib", "modules", rel, rest @ ..] | ["usr", "lib", "modules", rel, rest @ ..]
            if *rel == release =>
        {
            let mut out = PathBuf::from("lib/modules").join(rel);
            out.extend(rest);
            Some(out)
        }
        _ => None,
    }
}

/// Reads the release from a bzImage's setup header (the first word of the `kernel_version`
/// string), `None` when the file is not a bzImage or has no version string.
fn bzimage_release(path: &Path) -> io::Result<Option<String>> {
    // The header's `kernel_version` field is a 16-bit offset from 0x200, so the string starts
    // within the first 0x10200 bytes; 256 bytes more cover it.
    let mut head = Vec::new();
    File::open(path)?
        .take(0x10200 + 256)
        .read_to_end(&mut head)?;
    Ok(parse_bzimage_release(&head))
}

/// Parses the release out of the first bytes of a bzImage (x86 boot protocol 2.00 and later).
fn parse_bzimage_release(head: &[u8]) -> Option<String> {
    if head.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let pointer = u16::from_le_bytes(head.get(0x20e..0x210)?.try_into().ok()?);
    if pointer == 0 {
        return None;
    }
    let start = usize::from(pointer) + 0x200;
    let rest = head.get(start..)?;
    let end = rest.iter().position(|&byte| byte == 0)?;
    let version = std::str::from_utf8(&rest[..end]).ok()?;
    let release = version.split_whitespace().next()?;
    (!release.is_empty()).then(|| release.to_string())
}

/// Returns the stanza of `name` with the highest version, restricted to `version` when given.
fn newest_package(index: &str, name: &str, version: Option<&str>) -> Option<PackageEntry> {
    parse_packages(index, name)
        .into_iter()
        .filter(|entry| version.is_none_or(|wanted| entry.version == wanted))
        .max_by(|a, b| compare_debian_versions(&a.version, &b.version))
}

/// Parses the stanzas of package `name` from a `Packages` index. Stanzas missing a field this
/// module needs are skipped.
fn parse_packages(index: &str, name: &str) -> Vec<PackageEntry> {
    let mut found = Vec::new();
    for stanza in index.split("\n\n") {
        let field = |key: &str| -> Option<&str> {
            stanza.lines().find_map(|line| {
                let (field_name, value) = line.split_once(':')?;
                (field_name == key).then(|| value.trim())
            })
        };
        if field("Package") != Some(name) {
            continue;
        }
        let entry = (|| {
            Some(PackageEntry {
                name: name.to_string(),
                version: field("Version")?.to_string(),
                depends: field("Depends").unwrap_or("").to_string(),
                filename: field("Filename")?.to_string(),
                size: field("Size")?.parse().ok()?,
                sha256: field("SHA256")?.to_string(),
            })
        })();
        found.extend(entry);
    }
    found
}

/// Picks the first `linux-image-*` package in a `Depends` field, with its exact version when
/// the relation is `(= VERSION)`.
fn kernel_dependency(depends: &str) -> Option<(String, Option<String>)> {
    depends
        .split([',', '|'])
        .map(str::trim)
        .find(|relation| relation.starts_with(IMAGE_PREFIX))
        .map(|relation| {
            let (name, constraint) = match relation.split_once('(') {
                Some((name, constraint)) => (name.trim(), Some(constraint)),
                None => (relation, None),
            };
            let version = constraint
                .and_then(|c| c.trim_end_matches(')').trim().strip_prefix('='))
                .map(|v| v.trim().to_string());
            (name.to_string(), version)
        })
        // The release names a cache directory, so it must be a plain file name; Debian package
        // names use only these characters.
        .filter(|(name, _)| {
            let release = &name[IMAGE_PREFIX.len()..];
            !release.is_empty()
                && !release.starts_with('.')
                && release
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'))
        })
}

/// Compares two Debian versions (`[epoch:]upstream[-revision]`) as dpkg does.
fn compare_debian_versions(a: &str, b: &str) -> Ordering {
    fn split(version: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match version.split_once(':') {
            Some((epoch, rest)) => (epoch.parse().unwrap_or(0), rest),
            None => (0, version),
        };
        match rest.rsplit_once('-') {
            Some((upstream, revision)) => (epoch, upstream, revision),
            None => (epoch, rest, ""),
        }
    }
    let (epoch_a, upstream_a, revision_a) = split(a);
    let (epoch_b, upstream_b, revision_b) = split(b);
    epoch_a
        .cmp(&epoch_b)
        .then_with(|| compare_version_part(upstream_a, upstream_b))
        .then_with(|| compare_version_part(revision_a, revision_b))
}

/// Compares one part of a Debian version with dpkg's algorithm. Runs of non-digits compare
/// character by character, with `~` before everything (even the end) and letters before other
/// characters. Runs of digits compare numerically.
fn compare_version_part(a: &str, b: &str) -> Ordering {
    fn weight(byte: Option<u8>) -> i32 {
        match byte {
            None => 0,
            Some(b'~') => -1,
            Some(byte) if byte.is_ascii_digit() => 0,
            Some(byte) if byte.is_ascii_alphabetic() => i32::from(byte),
            Some(byte) => i32::from(byte) + 256,
        }
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let is_digit = |bytes: &[u8], i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !is_digit(a, i)) || (j < b.len() && !is_digit(b, j)) {
            let (wa, wb) = (weight(a.get(i).copied()), weight(b.get(j).copied()));
            if wa != wb {
                return wa.cmp(&wb);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_difference = Ordering::Equal;
        while is_digit(a, i) && is_digit(b, j) {
            if first_difference.is_eq() {
                first_difference = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if is_digit(a, i) {
            return Ordering::Greater;
        }
        if is_digit(b, j) {
            return Ordering::Less;
        }
        if first_difference.is_ne() {
            return first_difference;
        }
    }
    Ordering::Equal
}

fn unavailable(reason: String) -> RuntimeError {
    RuntimeError::Unavailable {
        runtime: RUNTIME,
        reason,
    }
}

fn network_error(url: &str, err: &reqwest::Error) -> RuntimeError {
    unavailable(format!(
        "downloading {url} failed: {err}; check network access to the mirror, or pass \
         --qemu-kernel PATH to use a local kernel"
    ))
}

fn download_mismatch(url: &str, detail: String) -> RuntimeError {
    unavailable(format!(
        "download of {url} does not match the package index: {detail}; the mirror may be in the \
         middle of a sync, so retry later or pass --qemu-kernel PATH"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "\
Package: linux-image-cloud-amd64
Version: 6.1.176-1
Depends: linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)
Filename: pool/main/l/linux-signed-amd64/linux-image-cloud-amd64_6.1.176-1_amd64.deb
Size: 1500
SHA256: 6f32a25a6ee7b58852de01577ba261fda873c3002c736a2148bf0a6593bd93c8

Package: linux-image-6.1.0-50-cloud-amd64
Version: 6.1.176-1
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Description: Linux 6.1 for x86-64 cloud (signed)
 continuation line: with a colon
Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-50-cloud-amd64_6.1.176-1_amd64.deb
Size: 26484304
SHA256: efe19f605b6f54a8352e68d85a629abb2d30b72a085faef603a9152590baa791

Package: linux-image-cloud-amd64
Version: 6.1.99-1~bpo
Depends: linux-image-6.1.0-9-cloud-amd64 (= 6.1.99-1~bpo)
Filename: pool/old.deb
Size: 1
SHA256: 00
";

    #[test]
    fn metapackage_resolves_to_versioned_package() {
        let meta = newest_package(INDEX, METAPACKAGE, None).unwrap();
        assert_eq!(meta.version, "6.1.176-1");
        let (name, version) = kernel_dependency(&meta.depends).unwrap();
        assert_eq!(name, "linux-image-6.1.0-50-cloud-amd64");
        assert_eq!(version.as_deref(), Some("6.1.176-1"));

        let image = newest_package(INDEX, &name, version.as_deref()).unwrap();
        assert_eq!(image.size, 26_484_304);
        assert_eq!(
            image.sha256,
            "efe19f605b6f54a8352e68d85a629abb2d30b72a085faef603a9152590baa791"
        );
        assert!(image
            .filename
            .ends_with("linux-image-6.1.0-50-cloud-amd64_6.1.176-1_amd64.deb"));
    }

    #[test]
    fn kernel_dependency_rejects_unsafe_release() {
        assert_eq!(kernel_dependency("linux-image-.. (= 1)"), None);
        assert_eq!(kernel_dependency("linux-image-a/b"), None);
        assert_eq!(kernel_dependency("kmod, linux-base"), None);
        assert_eq!(
            kernel_dependency("kmod, linux-image-6.1.0-9-cloud-amd64 (>= 6.1)"),
            Some(("linux-image-6.1.0-9-cloud-amd64".to_string(), None))
        );
    }

    #[test]
    fn versioned_package_with_other_version_is_not_found() {
        assert_eq!(
            newest_package(INDEX, "linux-image-6.1.0-50-cloud-amd64", Some("6.1.177-1")),
            None
        );
    }

    #[test]
    fn debian_versions_compare_like_dpkg() {
        let cases = [
            ("1.0", "1.0", Ordering::Equal),
            ("1.0~rc1", "1.0", Ordering::Less),
            ("1.0", "1.0a", Ordering::Less),
            ("1.0a", "1.0+", Ordering::Less),
            ("1:0.9", "2.0", Ordering::Greater),
            ("6.1.176-1", "6.1.99-1~bpo", Ordering::Greater),
            ("1.0-1", "1.0-1~bpo1", Ordering::Greater),
            ("001.2", "1.2", Ordering::Equal),
            ("1.2.10", "1.2.9", Ordering::Greater),
        ];
        for (a, b, expected) in cases {
            assert_eq!(compare_debian_versions(a, b), expected, "{a} vs {b}");
            assert_eq!(
                compare_debian_versions(b, a),
                expected.reverse(),
                "{b} vs {a}"
            );
        }
    }

    #[test]
    fn releases_compare_numerically() {
        assert!(compare_version_part("6.1.0-50-cloud-amd64", "6.1.0-9-cloud-amd64").is_gt());
        assert!(compare_version_part("6.12.0-1-cloud-amd64", "6.1.0-50-cloud-amd64").is_gt());
    }

    #[test]
    fn package_paths_map_into_cache_entry() {
        let release = "6.1.0-50-cloud-amd64";
        let vmlinuz = format!("vmlinuz-{release}");
        let map = |path: &str| kernel_file_destination(Path::new(path), release, &vmlinuz);
        assert_eq!(
            map("./boot/vmlinuz-6.1.0-50-cloud-amd64"),
            Some(PathBuf::from("boot/vmlinuz-6.1.0-50-cloud-amd64"))
        );
        assert_eq!(
            map("./lib/modules/6.1.0-50-cloud-amd64/kernel/drivers/block/virtio_blk.ko"),
            Some(PathBuf::from(
                "lib/modules/6.1.0-50-cloud-amd64/kernel/drivers/block/virtio_blk.ko"
            ))
        );
        assert_eq!(
            map("./usr/lib/modules/6.1.0-50-cloud-amd64/modules.builtin"),
            Some(PathBuf::from(
                "lib/modules/6.1.0-50-cloud-amd64/modules.builtin"
            ))
        );
        assert_eq!(map("./boot/System.map-6.1.0-50-cloud-amd64"), None);
        assert_eq!(
            map("./lib/modules/6.1.0-49-cloud-amd64/modules.builtin"),
            None
        );
        assert_eq!(
            map("./lib/modules/6.1.0-50-cloud-amd64/../../../etc/passwd"),
            None
        );
        assert_eq!(map("/boot/vmlinuz-6.1.0-50-cloud-amd64"), None);
    }

    #[test]
    fn bzimage_header_gives_release() {
        let mut head = vec![0u8; 0x400];
        head[0x202..0x206].copy_from_slice(b"HdrS");
        head[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        let version = b"6.1.0-50-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        head[0x300..0x300 + version.len()].copy_from_slice(version);
        assert_eq!(
            parse_bzimage_release(&head).as_deref(),
            Some("6.1.0-50-cloud-amd64")
        );

        head[0x202] = b'X';
        assert_eq!(parse_bzimage_release(&head), None);
    }

    #[test]
    fn newest_cached_kernel_skips_incomplete_entries() {
        let dir = tempfile::tempdir().unwrap();
        for release in ["6.1.0-9-cloud-amd64", "6.1.0-28-cloud-amd64"] {
            let boot = dir.path().join(release).join("boot");
            fs::create_dir_all(&boot).unwrap();
            fs::write(boot.join(format!("vmlinuz-{release}")), b"x").unwrap();
        }
        fs::create_dir_all(dir.path().join("6.1.0-99-cloud-amd64/boot")).unwrap();
        fs::create_dir_all(dir.path().join(".unpack-abc/boot")).unwrap();

        let kernel = newest_cached_kernel(dir.path()).unwrap().unwrap();
        assert_eq!(kernel.release, "6.1.0-28-cloud-amd64");
        assert_eq!(kernel.modules_dir, None);
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn silent() -> Progress {
        std::sync::Arc::new(|_: &str| {})
    }

    /// Port 1 on loopback has no listener, so any request to this mirror fails at once.
    const DEAD_MIRROR: &str = "http://127.0.0.1:1/debian";

    #[test]
    fn cached_kernel_is_used_without_network() {
        let cache = tempfile::tempdir().unwrap();
        let release = "6.1.0-28-cloud-amd64";
        let entry = cache.path().join("kernels").join(release);
        fs::create_dir_all(entry.join("boot")).unwrap();
        fs::create_dir_all(entry.join("lib/modules").join(release)).unwrap();
        fs::write(entry.join(format!("boot/vmlinuz-{release}")), b"x").unwrap();

        let kernel = block_on(debian_cloud_kernel(
            cache.path(),
            DEAD_MIRROR,
            "bookworm",
            silent(),
        ))
        .unwrap();
        assert_eq!(kernel.release, release);
        assert_eq!(
            kernel.vmlinuz,
            entry.join(format!("boot/vmlinuz-{release}"))
        );
        assert_eq!(
            kernel.modules_dir,
            Some(entry.join("lib/modules").join(release))
        );
    }

    #[test]
    fn unreachable_mirror_error_names_url_and_flag() {
        let cache = tempfile::tempdir().unwrap();
        let err = block_on(debian_cloud_kernel(
            cache.path(),
            DEAD_MIRROR,
            "bookworm",
            silent(),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("http://127.0.0.1:1/debian/dists/bookworm/main/binary-amd64/Packages.gz"),
            "{err}"
        );
        assert!(err.contains("--qemu-kernel PATH"), "{err}");
    }

    #[test]
    fn user_kernel_release_falls_back_to_names() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("vmlinuz-6.6.0-custom");
        fs::write(&image, b"not a bzImage").unwrap();
        let modules = dir.path().join("lib/modules/6.6.0-mods");
        fs::create_dir_all(&modules).unwrap();

        let kernel = user_kernel(&image, None).unwrap();
        assert_eq!(kernel.release, "6.6.0-custom");
        assert_eq!(kernel.modules_dir, None);

        let kernel = user_kernel(&image, Some(&modules)).unwrap();
        assert_eq!(kernel.release, "6.6.0-mods");
        assert_eq!(kernel.modules_dir, Some(modules));
    }

    #[test]
    fn user_kernel_rejects_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let err = user_kernel(&dir.path().join("nope"), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope") && err.contains("--qemu-kernel"),
            "{err}"
        );

        let image = dir.path().join("vmlinuz");
        fs::write(&image, b"x").unwrap();
        let err = user_kernel(&image, Some(&dir.path().join("missing-modules")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing-modules"), "{err}");
    }

    #[test]
    fn tsc_rate_is_plausible() {
        if let Some(khz) = host_tsc_khz() {
            assert!((100_000..=20_000_000).contains(&khz), "{khz} kHz");
            assert_eq!(
                host_tsc_khz(),
                Some(khz),
                "the rate is measured once per process"
            );
        }
    }
}
