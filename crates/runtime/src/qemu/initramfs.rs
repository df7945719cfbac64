//! The guest initramfs: `gitvm-init` as `/init` plus the kernel modules it loads before it
//! mounts the root disk.
//!
//! Layout of the archive (uncompressed newc cpio, every entry owned by root):
//!
//! | path | contents |
//! |---|---|
//! | `/init` | the `gitvm-init` binary, mode 0755 |
//! | `/etc/gitvm-modules` | absolute paths of the modules, one per line, in load order |
//! | `/lib/modules/<name>.ko` | uncompressed modules |
//! | `/dev/console` | character device 5:1, so the kernel gives init a console |
//! | `/dev`, `/proc`, `/sys`, `/newroot` | empty mount points |
//!
//! The load order comes from `modules.dep` when the modules directory has one. Debian's kernel
//! packages do not ship it (their maintainer scripts run `depmod`), so without it the order comes
//! from the `depends=` entry in each module's `.modinfo` ELF section. Modules listed in
//! `modules.builtin` are part of the kernel image and are skipped.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::kernel::Kernel;
use crate::error::path_io_error;
use crate::RuntimeError;

/// Archive path (cpio names have no leading `/`) of the module list that `gitvm-init` reads as
/// `/etc/gitvm-modules`. The init crate defines the same path.
pub const MODULE_LIST_PATH: &str = "etc/gitvm-modules";

/// Modules the guest needs, with whether booting without them is an error. Their dependencies
/// (`virtio`, `virtio_ring`, `failover`, `net_failover`, `vsock`,
/// `vmw_vsock_virtio_transport_common` on Debian 6.1) are added in load order.
const GUEST_MODULES: &[(&str, Requirement)] = &[
    ("virtio_mmio", Requirement::Required),
    ("virtio_blk", Requirement::Required),
    ("virtio_console", Requirement::Required),
    ("virtio_net", Requirement::Required),
    ("vmw_vsock_virtio_transport", Requirement::Required),
    ("virtio_rng", Requirement::Optional),
];

/// Version of the archive layout, part of the cache key so a layout change rebuilds.
const LAYOUT_VERSION: &str = "gitvm-initramfs-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requirement {
    Required,
    Optional,
}

/// Builds (once) `<cache_dir>/initramfs/<hash>.cpio` and returns its path.
///
/// The archive is an uncompressed newc cpio. The hash covers the layout version, the kernel
/// release, the init binary and the name and contents of every module, in load order, so any
/// change to them gives a new file. With `kernel.modules_dir` set to `None`, the archive contains
/// no modules and the kernel must have the virtio drivers built in. The file is written to a
/// temporary name and renamed, so readers never see a partial archive.
pub fn build_initramfs(
    kernel: &Kernel,
    init_binary: &Path,
    cache_dir: &Path,
) -> Result<PathBuf, RuntimeError> {
    let init = read_init_binary(init_binary)?;
    let modules = match &kernel.modules_dir {
        Some(dir) => resolve_modules(dir, &kernel.release)?,
        None => Vec::new(),
    };

    let mut hasher = Sha256::new();
    for part in [LAYOUT_VERSION.as_bytes(), kernel.release.as_bytes(), &init] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    for module in &modules {
        for part in [module.name.as_bytes(), &module.contents] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    }
    let key = hex::encode(&hasher.finalize()[..16]);

    // NOTE: archives of older init binaries or kernels stay in this directory until someone
    // deletes them; each is a few MB.
    let out_dir = cache_dir.join("initramfs");
    let out_path = out_dir.join(format!("{key}.cpio"));
    if out_path.is_file() {
        return Ok(out_path);
    }
    fs::create_dir_all(&out_dir).map_err(|source| path_io_error("creating", &out_dir, source))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".build-")
        .suffix(".cpio")
        .tempfile_in(&out_dir)
        .map_err(|source| path_io_error("creating a temporary file in", &out_dir, source))?;
    write_archive(temp.as_file_mut(), &init, &modules)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|source| path_io_error("writing", temp.path(), source))?;
    // Concurrent builders of the same key write identical bytes, so either rename may win.
    temp.persist(&out_path)
        .map_err(|err| path_io_error("renaming a temporary initramfs to", &out_path, err.error))?;
    tracing::debug!(
        path = %out_path.display(),
        release = %kernel.release,
        modules = modules.len(),
        "built initramfs"
    );
    Ok(out_path)
}

/// A module to load in the guest, uncompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModuleImage {
    /// Module name with `_` for `-`, such as `virtio_rng`.
    name: String,
    /// The `.ko` file's contents.
    contents: Vec<u8>,
}

/// Reads the init binary and checks that the kernel can run it as `/init`.
fn read_init_binary(path: &Path) -> Result<Vec<u8>, RuntimeError> {
    let contents = fs::read(path).map_err(|source| RuntimeError::Io {
        context: format!(
            "reading init binary {}; build it with `cargo build -p gitvm-init`",
            path.display()
        ),
        source,
    })?;
    if !contents.starts_with(b"\x7fELF") {
        return Err(invalid_init(path, "it is not an ELF executable"));
    }
    if elf_has_interpreter(&contents) {
        return Err(invalid_init(
            path,
            "it is dynamically linked, but the initramfs has no libc; link it statically \
             (-C target-feature=+crt-static)",
        ));
    }
    Ok(contents)
}

fn invalid_init(path: &Path, reason: &str) -> RuntimeError {
    RuntimeError::Unavailable {
        runtime: "qemu",
        reason: format!(
            "init binary {} cannot be the initramfs /init: {reason}",
            path.display()
        ),
    }
}

/// Checks whether a 64-bit little-endian ELF file has a `PT_INTERP` program header, which
/// makes it a dynamically linked executable.
fn elf_has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let (Some(headers), Some(entry_size), Some(count)) =
        (le_u64(elf, 0x20), le_u16(elf, 0x36), le_u16(elf, 0x38))
    else {
        return false;
    };
    (0..usize::from(count)).any(|index| {
        let at = usize::try_from(headers)
            .ok()
            .and_then(|start| start.checked_add(index.checked_mul(usize::from(entry_size))?));
        at.and_then(|at| le_u32(elf, at)) == Some(PT_INTERP)
    })
}

/// Reads a little-endian integer at byte offset `at`, `None` past the end of `data`.
fn le_u16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        data.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn le_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn le_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        data.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Returns [`GUEST_MODULES`] and their dependencies, dependencies first, read from
/// `modules_dir` and checked against `release`.
fn resolve_modules(modules_dir: &Path, release: &str) -> Result<Vec<ModuleImage>, RuntimeError> {
    let index = ModuleIndex::load(modules_dir)?;
    let mut resolver = Resolver {
        index: &index,
        release,
        done: HashSet::new(),
        visiting: Vec::new(),
        order: Vec::new(),
    };
    for &(name, requirement) in GUEST_MODULES {
        if index.builtin.contains(name) {
            continue;
        }
        if !index.paths.contains_key(name) {
            if requirement == Requirement::Optional {
                tracing::debug!(module = name, dir = %modules_dir.display(), "optional module not found");
                continue;
            }
            return Err(RuntimeError::Unavailable {
                runtime: "qemu",
                reason: format!(
                    "kernel module {name} is neither a module in {} nor listed in its \
                     modules.builtin; use a kernel that has the virtio and vsock drivers",
                    modules_dir.display()
                ),
            });
        }
        resolver.visit(name)?;
    }
    Ok(resolver.order)
}

/// Index of a modules directory: module paths, dependencies and built-in modules.
struct ModuleIndex {
    dir: PathBuf,
    /// Module name to path relative to `dir`.
    paths: HashMap<String, PathBuf>,
    /// Dependencies from `modules.dep`, by module name; `None` when the directory has no
    /// `modules.dep` and dependencies come from each module's `.modinfo`.
    dep_file: Option<HashMap<String, Vec<String>>>,
    /// Names from `modules.builtin` (empty when the file is missing).
    builtin: HashSet<String>,
}

impl ModuleIndex {
    fn load(dir: &Path) -> Result<Self, RuntimeError> {
        let builtin = match fs::read_to_string(dir.join("modules.builtin")) {
            Ok(text) => text.lines().filter_map(module_name).collect(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => HashSet::new(),
            Err(source) => {
                return Err(path_io_error(
                    "reading",
                    &dir.join("modules.builtin"),
                    source,
                ))
            }
        };

        let mut paths = HashMap::new();
        let dep_file = match fs::read_to_string(dir.join("modules.dep")) {
            Ok(text) => {
                let mut deps = HashMap::new();
                for line in text.lines() {
                    let Some((path, dep_paths)) = line.split_once(':') else {
                        continue;
                    };
                    let Some(name) = module_name(path) else {
                        continue;
                    };
                    let dep_names = dep_paths
                        .split_whitespace()
                        .filter_map(module_name)
                        .collect();
                    paths.insert(name.clone(), PathBuf::from(path.trim()));
                    deps.insert(name, dep_names);
                }
                Some(deps)
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                find_module_files(dir, Path::new(""), &mut paths)
                    .map_err(|source| path_io_error("listing modules in", dir, source))?;
                None
            }
            Err(source) => return Err(path_io_error("reading", &dir.join("modules.dep"), source)),
        };

        Ok(Self {
            dir: dir.to_path_buf(),
            paths,
            dep_file,
            builtin,
        })
    }
}

/// Records every module file below `dir/relative` in `paths`, by module name.
fn find_module_files(
    dir: &Path,
    relative: &Path,
    paths: &mut HashMap<String, PathBuf>,
) -> io::Result<()> {
    for entry in fs::read_dir(dir.join(relative))? {
        let entry = entry?;
        let path = relative.join(entry.file_name());
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            find_module_files(dir, &path, paths)?;
        } else if let Some(name) = path.to_str().and_then(module_name) {
            paths.entry(name).or_insert(path);
        }
    }
    Ok(())
}

/// Depth-first walk that emits each module after its dependencies.
struct Resolver<'a> {
    index: &'a ModuleIndex,
    release: &'a str,
    done: HashSet<String>,
    /// Modules on the current path, to report dependency cycles.
    visiting: Vec<String>,
    order: Vec<ModuleImage>,
}

impl Resolver<'_> {
    fn visit(&mut self, name: &str) -> Result<(), RuntimeError> {
        if self.done.contains(name) || self.index.builtin.contains(name) {
            return Ok(());
        }
        if self.visiting.iter().any(|n| n == name) {
            return Err(self.unavailable(format!(
                "kernel modules depend on each other in a cycle: {} -> {name}",
                self.visiting.join(" -> ")
            )));
        }
        let relative = self.index.paths.get(name).ok_or_else(|| {
            self.unavailable(format!(
                "kernel module {name}, needed by {}, is not in {}",
                self.visiting.last().map_or("gitvm", String::as_str),
                self.index.dir.display()
            ))
        })?;
        let path = if relative.is_absolute() {
            relative.clone()
        } else {
            self.index.dir.join(relative)
        };
        let contents = read_module(&path)?;
        let modinfo = modinfo_entries(&contents);
        check_vermagic(&path, &modinfo, self.release)?;

        let deps: Vec<String> = match &self.index.dep_file {
            Some(deps) => deps.get(name).cloned().unwrap_or_default(),
            None => modinfo
                .iter()
                .find_map(|(key, value)| (*key == "depends").then_some(*value))
                .map(|list| list.split(',').filter_map(module_name).collect())
                .unwrap_or_default(),
        };

        self.visiting.push(name.to_string());
        // modules.dep lists dependencies so that the last one loads first, as modprobe does.
        for dep in deps.iter().rev() {
            self.visit(dep)?;
        }
        self.visiting.pop();

        self.done.insert(name.to_string());
        self.order.push(ModuleImage {
            name: name.to_string(),
            contents,
        });
        Ok(())
    }

    fn unavailable(&self, reason: String) -> RuntimeError {
        RuntimeError::Unavailable {
            runtime: "qemu",
            reason,
        }
    }
}

/// Turns a module path or name (`kernel/drivers/char/hw_random/virtio-rng.ko.xz`) into the
/// module name the kernel uses (`virtio_rng`).
fn module_name(path: &str) -> Option<String> {
    let path = path.trim();
    let file = path.rsplit('/').next()?;
    let suffix_stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix));
    let stem = match suffix_stem {
        Some(stem) => stem,
        // A bare module name, as in a `depends=` list.
        None if !path.contains(['/', '.']) => file,
        None => return None,
    };
    (!stem.is_empty()).then(|| stem.replace('-', "_"))
}

/// Reads a module file, decompressing `.ko.gz` in process and `.ko.xz` and `.ko.zst` with the
/// `xz` and `zstd` tools.
fn read_module(path: &Path) -> Result<Vec<u8>, RuntimeError> {
    let raw =
        fs::read(path).map_err(|source| path_io_error("reading kernel module", path, source))?;
    let name = path.to_string_lossy();
    let contents = if name.ends_with(".ko.gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|source| path_io_error("decompressing kernel module", path, source))?;
        out
    } else if name.ends_with(".ko.xz") {
        decompress_with("xz", path, raw)?
    } else if name.ends_with(".ko.zst") {
        decompress_with("zstd", path, raw)?
    } else {
        raw
    };
    if !contents.starts_with(b"\x7fELF") {
        return Err(RuntimeError::Unavailable {
            runtime: "qemu",
            reason: format!("kernel module {} is not an ELF file", path.display()),
        });
    }
    Ok(contents)
}

/// Runs `tool -dc` with `input` on stdin and returns its stdout.
fn decompress_with(tool: &str, path: &Path, input: Vec<u8>) -> Result<Vec<u8>, RuntimeError> {
    let missing = |err: io::Error| RuntimeError::Unavailable {
        runtime: "qemu",
        reason: format!(
            "decompressing kernel module {} needs `{tool}`, which failed to start ({err}); \
             install it",
            path.display()
        ),
    };
    let mut child = Command::new(tool)
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(missing)?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child
        .wait_with_output()
        .map_err(|source| path_io_error("decompressing kernel module", path, source))?;
    let written = writer.join().unwrap_or(Ok(()));
    if !output.status.success() || written.is_err() {
        return Err(RuntimeError::Unavailable {
            runtime: "qemu",
            reason: format!(
                "`{tool} -dc` failed on kernel module {} ({}): {}",
                path.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(output.stdout)
}

/// Rejects a module built for another kernel, which the guest would refuse with a less clear
/// message. The first word of `vermagic=` is the release the module was built for.
fn check_vermagic(
    path: &Path,
    modinfo: &[(&str, &str)],
    release: &str,
) -> Result<(), RuntimeError> {
    let Some(built_for) = modinfo
        .iter()
        .find_map(|(key, value)| (*key == "vermagic").then_some(*value))
        .and_then(|value| value.split_whitespace().next())
    else {
        return Ok(());
    };
    if release == "unknown" || built_for == release {
        return Ok(());
    }
    Err(RuntimeError::Unavailable {
        runtime: "qemu",
        reason: format!(
            "kernel module {} was built for kernel {built_for}, but the kernel is {release}; \
             pass the lib/modules directory that belongs to this kernel",
            path.display()
        ),
    })
}

/// Returns the `key=value` entries of a module's `.modinfo` section (64-bit little-endian ELF);
/// empty when the file has none.
fn modinfo_entries(elf: &[u8]) -> Vec<(&str, &str)> {
    let Some(section) = elf_section(elf, ".modinfo") else {
        return Vec::new();
    };
    section
        .split(|&byte| byte == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok()?.split_once('='))
        .collect()
}

/// Finds a section by name in a 64-bit little-endian ELF file.
fn elf_section<'a>(elf: &'a [u8], section_name: &str) -> Option<&'a [u8]> {
    // e_ident[EI_CLASS] = ELFCLASS64, e_ident[EI_DATA] = ELFDATA2LSB.
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return None;
    }
    let section_headers = usize::try_from(le_u64(elf, 0x28)?).ok()?;
    let entry_size = usize::from(le_u16(elf, 0x3a)?);
    let count = usize::from(le_u16(elf, 0x3c)?);
    let names_index = usize::from(le_u16(elf, 0x3e)?);

    // Section header fields: sh_name at 0, sh_offset at 24, sh_size at 32.
    let header = |index: usize| section_headers.checked_add(index.checked_mul(entry_size)?);
    let contents = |index: usize| -> Option<&'a [u8]> {
        let at = header(index)?;
        let offset = usize::try_from(le_u64(elf, at.checked_add(24)?)?).ok()?;
        let size = usize::try_from(le_u64(elf, at.checked_add(32)?)?).ok()?;
        elf.get(offset..offset.checked_add(size)?)
    };
    let names = contents(names_index)?;
    (0..count).find_map(|index| {
        let name_offset = usize::try_from(le_u32(elf, header(index)?)?).ok()?;
        let name = names.get(name_offset..)?.split(|&byte| byte == 0).next()?;
        (name == section_name.as_bytes())
            .then(|| contents(index))
            .flatten()
    })
}

/// Writes the whole archive described in the module documentation.
fn write_archive(out: &mut fs::File, init: &[u8], modules: &[ModuleImage]) -> io::Result<()> {
    let mut out = io::BufWriter::new(out);
    let mut inode = 0;
    let mut next_inode = || {
        inode += 1;
        inode
    };

    for dir in ["dev", "proc", "sys", "newroot", "etc", "lib", "lib/modules"] {
        write_entry(&mut out, dir, 0o040_755, next_inode(), &[])?;
    }
    cpio::newc::Builder::new("dev/console")
        .ino(next_inode())
        .mode(0o020_600)
        .rdev_major(5)
        .rdev_minor(1)
        .write(&mut out, 0)
        .finish()?;

    let mut list = String::new();
    for module in modules {
        let path = format!("lib/modules/{}.ko", module.name);
        write_entry(&mut out, &path, 0o100_644, next_inode(), &module.contents)?;
        list.push('/');
        list.push_str(&path);
        list.push('\n');
    }
    write_entry(
        &mut out,
        MODULE_LIST_PATH,
        0o100_644,
        next_inode(),
        list.as_bytes(),
    )?;
    write_entry(&mut out, "init", 0o100_755, next_inode(), init)?;

    cpio::newc::trailer(&mut out)?;
    out.flush()
}

/// Writes one entry; `mode` includes the file type bits.
fn write_entry(
    out: &mut impl Write,
    name: &str,
    mode: u32,
    inode: u32,
    data: &[u8],
) -> io::Result<()> {
    let size = u32::try_from(data.len()).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{name} is over 4 GiB"))
    })?;
    let mut writer = cpio::newc::Builder::new(name)
        .ino(inode)
        .mode(mode)
        .write(out, size);
    writer.write_all(data)?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Seek;

    use super::*;

    #[test]
    fn module_names_are_normalized() {
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko").as_deref(),
            Some("virtio_rng")
        );
        assert_eq!(
            module_name("kernel/net/vmw_vsock/vsock.ko.xz").as_deref(),
            Some("vsock")
        );
        assert_eq!(module_name("virtio_ring").as_deref(), Some("virtio_ring"));
        assert_eq!(module_name("kernel/drivers/virtio/modules.order"), None);
        assert_eq!(module_name(""), None);
    }

    /// Writes a fake module: just the ELF magic, which is all the resolver checks when the
    /// dependencies come from modules.dep.
    fn fake_module(dir: &Path, relative: &str) {
        let path = dir.join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"\x7fELF").unwrap();
    }

    fn fake_modules_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let modules = [
            "kernel/drivers/virtio/virtio_ring.ko",
            "kernel/drivers/virtio/virtio.ko",
            "kernel/drivers/virtio/virtio_mmio.ko",
            "kernel/drivers/block/virtio_blk.ko",
            "kernel/drivers/net/virtio_net.ko",
            "kernel/drivers/net/net_failover.ko",
            "kernel/net/core/failover.ko",
            "kernel/net/vmw_vsock/vsock.ko",
            "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
            "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
        ];
        for module in modules {
            fake_module(dir.path(), module);
        }
        fs::write(
            dir.path().join("modules.dep"),
            "\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko kernel/net/vmw_vsock/vsock.ko
",
        )
        .unwrap();
        fs::write(
            dir.path().join("modules.builtin"),
            "kernel/drivers/char/virtio_console.ko\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn modules_dep_gives_load_order() {
        let dir = fake_modules_dir();
        let names: Vec<String> = resolve_modules(dir.path(), "6.1.0-1-test")
            .unwrap()
            .into_iter()
            .map(|module| module.name)
            .collect();
        // virtio_console is built in and virtio_rng is optional and absent, so neither appears.
        assert_eq!(
            names,
            [
                "virtio",
                "virtio_ring",
                "virtio_mmio",
                "virtio_blk",
                "failover",
                "net_failover",
                "virtio_net",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport",
            ]
        );
    }

    #[test]
    fn missing_required_module_is_an_error() {
        let dir = fake_modules_dir();
        fs::write(dir.path().join("modules.builtin"), "").unwrap();
        let err = resolve_modules(dir.path(), "6.1.0-1-test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("virtio_console"), "{err}");
    }

    #[test]
    fn interpreter_check_handles_bad_headers() {
        assert!(!elf_has_interpreter(b"\x7fELF"));

        let mut header = vec![0u8; 64];
        header[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        header[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        header[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        assert!(!elf_has_interpreter(&header));

        // Debian's /bin/sh is dynamically linked.
        if let Ok(shell) = fs::read("/bin/sh") {
            assert!(elf_has_interpreter(&shell));
        }
    }

    #[test]
    fn init_binary_must_be_elf() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("init");
        fs::write(&script, "#!/bin/sh\n").unwrap();
        let err = read_init_binary(&script).unwrap_err().to_string();
        assert!(err.contains("not an ELF executable"), "{err}");
    }

    #[test]
    fn archive_without_modules_has_console_and_init() {
        let dir = tempfile::tempdir().unwrap();
        let init = fs::read(std::env::current_exe().unwrap()).unwrap();
        let mut file = tempfile::tempfile_in(dir.path()).unwrap();
        write_archive(&mut file, &init, &[]).unwrap();

        file.rewind().unwrap();
        let mut reader: Box<dyn Read> = Box::new(file);
        let mut entries = Vec::new();
        loop {
            let entry = cpio::newc::Reader::new(reader).unwrap();
            if entry.entry().is_trailer() {
                break;
            }
            let meta = entry.entry();
            entries.push((
                meta.name().to_string(),
                meta.mode(),
                meta.rdev_major(),
                meta.rdev_minor(),
                meta.file_size(),
            ));
            reader = Box::new(entry.finish().unwrap());
        }
        let find = |name: &str| entries.iter().find(|e| e.0 == name).cloned();
        assert_eq!(
            find("dev/console"),
            Some(("dev/console".into(), 0o020_600, 5, 1, 0))
        );
        assert_eq!(
            find("init"),
            Some(("init".into(), 0o100_755, 0, 0, init.len() as u32))
        );
        assert_eq!(
            find(MODULE_LIST_PATH),
            Some((MODULE_LIST_PATH.into(), 0o100_644, 0, 0, 0))
        );
        for dir in ["dev", "proc", "sys", "newroot"] {
            assert_eq!(find(dir).map(|e| e.1), Some(0o040_755), "{dir}");
        }
    }
}
