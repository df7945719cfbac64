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
use crate::RuntimeError;

/// File that lists the modules for `gitvm-init`; `crates/init` reads the same path.
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
/// change to them gives a new file. With `kernel.modules_dir` set to `None`, the archive holds
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

    let out_dir = cache_dir.join("initramfs");
    let out_path = out_dir.join(format!("{key}.cpio"));
    if out_path.is_file() {
        return Ok(out_path);
    }
    fs::create_dir_all(&out_dir).map_err(|source| io_error("creating", &out_dir, source))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".build-")
        .suffix(".cpio")
        .tempfile_in(&out_dir)
        .map_err(|source| io_error("creating a temporary file in", &out_dir, source))?;
    write_archive(temp.as_file_mut(), &init, &modules)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|source| io_error("writing", temp.path(), source))?;
    // Concurrent builders of the same key write identical bytes, so either rename may win.
    temp.persist(&out_path)
        .map_err(|err| io_error("renaming a temporary initramfs to", &out_path, err.error))?;
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

fn invalid_init(path: &Path, why: &str) -> RuntimeError {
    RuntimeError::Unavailable {
        runtime: "qemu",
        reason: format!(
            "init binary {} cannot be the initramfs /init: {why}",
            path.display()
        ),
    }
}

/// Whether a 64-bit little-endian ELF file has a `PT_INTERP` program header.
fn elf_has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read_u16 = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let read_u64 = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("slice of 8 bytes")))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (read_u64(0x20), read_u16(0x36), read_u16(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).any(|index| {
        let at = usize::try_from(phoff).unwrap_or(usize::MAX) + index * usize::from(phentsize);
        elf.get(at..at + 4)
            .is_some_and(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == PT_INTERP)
    })
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

/// What a modules directory offers: where each module is and what it depends on.
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
            Err(source) => return Err(io_error("reading", &dir.join("modules.builtin"), source)),
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
                    .map_err(|source| io_error("listing modules in", dir, source))?;
                None
            }
            Err(source) => return Err(io_error("reading", &dir.join("modules.dep"), source)),
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
    let raw = fs::read(path).map_err(|source| io_error("reading kernel module", path, source))?;
    let name = path.to_string_lossy();
    let contents = if name.ends_with(".ko.gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|source| io_error("decompressing kernel module", path, source))?;
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
        .map_err(|source| io_error("decompressing kernel module", path, source))?;
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
fn elf_section<'a>(elf: &'a [u8], wanted: &str) -> Option<&'a [u8]> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    // e_ident[EI_CLASS] = ELFCLASS64, e_ident[EI_DATA] = ELFDATA2LSB.
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return None;
    }
    let section_headers = usize::try_from(u64_at(0x28)?).ok()?;
    let entry_size = usize::from(u16_at(0x3a)?);
    let count = usize::from(u16_at(0x3c)?);
    let names_index = usize::from(u16_at(0x3e)?);

    // Section header fields: sh_name at 0, sh_offset at 24, sh_size at 32.
    let header = |index: usize| section_headers.checked_add(index.checked_mul(entry_size)?);
    let contents = |index: usize| -> Option<&'a [u8]> {
        let at = header(index)?;
        let offset = usize::try_from(u64_at(at + 24)?).ok()?;
        let size = usize::try_from(u64_at(at + 32)?).ok()?;
        elf.get(offset..offset.checked_add(size)?)
    };
    let names = contents(names_index)?;
    (0..count).find_map(|index| {
        let name_offset = usize::try_from(u32_at(header(index)?)?).ok()?;
        let name = names.get(name_offset..)?.split(|&byte| byte == 0).next()?;
        (name == wanted.as_bytes())
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

fn io_error(what: &str, path: &Path, source: io::Error) -> RuntimeError {
    RuntimeError::Io {
        context: format!("{what} {}", path.display()),
        source,
    }
}

#[cfg(test)]
mod tests {
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
}
