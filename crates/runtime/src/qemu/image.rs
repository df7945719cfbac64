//! The guest image pipeline: a template's Docker image becomes a root filesystem tree, then an
//! ext4 disk image with the agent inside, cached by the image id and the agent's digest.
//!
//! `mkfs.ext4 -d` copies the tree into the new file system, so the image itself needs no loop
//! mount and no root privileges. Unpacking the image's files with their owners does need root,
//! as for any container runtime.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use bollard::Docker;
use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::files::{io_error, FileLock};
use crate::{Progress, RuntimeError};

/// Bumped when the layout of built images changes, so old cache entries are not reused.
const FORMAT_VERSION: &str = "gitvm-rootfs-1";

/// Size of every root disk; the file is sparse, so unused space costs nothing on the host.
pub const DISK_SIZE_MIB: u64 = 4096;

/// Path of the agent binary inside guest images.
pub const GUEST_AGENT: &str = ".gitvm/gitvm";

/// Returns the cached ext4 image of Docker image `image` (a local reference) with `agent`
/// inside, building it first when needed. Concurrent builds of the same image wait for each
/// other through a lock file.
pub async fn root_disk(
    docker: &Docker,
    image: &str,
    agent: &Path,
    cache_dir: &Path,
    progress: Progress,
) -> Result<PathBuf, RuntimeError> {
    let inspect =
        docker
            .inspect_image(image)
            .await
            .map_err(|error| RuntimeError::TemplateNotFound {
                template: image.to_owned(),
                reason: format!("cannot inspect the image: {error}"),
            })?;
    let image_id = inspect.id.unwrap_or_else(|| image.to_owned());
    let agent_digest = agent_digest(agent).await?;
    let key = {
        let mut hasher = Sha256::new();
        hasher.update(FORMAT_VERSION);
        hasher.update([0]);
        hasher.update(&image_id);
        hasher.update([0]);
        hasher.update(&agent_digest);
        hex::encode(&hasher.finalize()[..12])
    };

    let dir = cache_dir.join("rootfs");
    std::fs::create_dir_all(&dir)
        .map_err(|source| io_error(format!("creating {}", dir.display()), source))?;
    let target = dir.join(format!("{key}.ext4"));
    if target.exists() {
        return Ok(target);
    }

    let _lock = FileLock::acquire(&dir.join(format!("{key}.lock"))).await?;
    if target.exists() {
        return Ok(target);
    }
    let work = tempfile::Builder::new()
        .prefix(&format!(".build-{key}-"))
        .tempdir_in(&dir)
        .map_err(|source| {
            io_error(
                format!("creating a build directory in {}", dir.display()),
                source,
            )
        })?;
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree)
        .map_err(|source| io_error(format!("creating {}", tree.display()), source))?;

    progress(&format!("exporting the files of {image} ({image_id})"));
    export_image(docker, image, &tree).await?;
    install_agent(&tree, agent)?;

    progress(&format!("writing a {DISK_SIZE_MIB} MiB ext4 disk image"));
    let disk = work.path().join("disk.ext4");
    make_ext4(&tree, &disk).await?;
    std::fs::rename(&disk, &target).map_err(|source| {
        io_error(
            format!("moving the disk image to {}", target.display()),
            source,
        )
    })?;
    progress(&format!("root disk ready: {}", target.display()));
    Ok(target)
}

/// Unpacks the file system of `image` into `tree` through a created, never started container.
async fn export_image(docker: &Docker, image: &str, tree: &Path) -> Result<(), RuntimeError> {
    let name = format!("gitvm-export-{}", rand::random::<u64>());
    let config = ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(vec!["/bin/true".to_owned()]),
        labels: Some([("gitvm.export".to_owned(), "true".to_owned())].into()),
        ..Default::default()
    };
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            config,
        )
        .await
        .map_err(|error| RuntimeError::TemplateBuild {
            template: image.to_owned(),
            reason: format!("cannot create a container to export the image: {error}"),
        })?;

    let stream = docker
        .export_container(&name)
        .map_err(|error| std::io::Error::other(error.to_string()));
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    let destination = tree.to_owned();
    let unpacked = tokio::task::spawn_blocking(move || {
        let mut archive = tar::Archive::new(reader);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_overwrite(true);
        archive.unpack(&destination)
    })
    .await
    .expect("unpack task panicked");

    let removed = docker
        .remove_container(
            &name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    if let Err(error) = removed {
        tracing::warn!(container = %name, %error, "cannot remove export container");
    }
    unpacked.map_err(|error| RuntimeError::TemplateBuild {
        template: image.to_owned(),
        reason: format!(
            "cannot unpack the image's files into {}: {error}",
            tree.display()
        ),
    })
}

/// Puts the agent and the directories a guest needs into `tree`.
fn install_agent(tree: &Path, agent: &Path) -> Result<(), RuntimeError> {
    for dir in ["dev", "proc", "sys", "tmp", "run", ".gitvm", "etc"] {
        let path = tree.join(dir);
        std::fs::create_dir_all(&path)
            .map_err(|source| io_error(format!("creating {}", path.display()), source))?;
    }
    let _ = std::fs::set_permissions(tree.join("tmp"), std::fs::Permissions::from_mode(0o1777));

    let target = tree.join(GUEST_AGENT);
    std::fs::copy(agent, &target)
        .and_then(|_| std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)))
        .map_err(|source| {
            io_error(
                format!("copying the agent {} into the image", agent.display()),
                source,
            )
        })?;

    let hosts = tree.join("etc/hosts");
    let current = std::fs::read_to_string(&hosts).unwrap_or_default();
    if !current.contains("localhost") {
        std::fs::write(
            &hosts,
            format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n{current}"),
        )
        .map_err(|source| io_error(format!("writing {}", hosts.display()), source))?;
    }
    Ok(())
}

/// Runs `mkfs.ext4 -d tree` into a new sparse file of [`DISK_SIZE_MIB`].
async fn make_ext4(tree: &Path, disk: &Path) -> Result<(), RuntimeError> {
    let output = tokio::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "gitvm-root", "-d"])
        .arg(tree)
        .arg(disk)
        .arg(format!("{DISK_SIZE_MIB}M"))
        .output()
        .await
        .map_err(|error| RuntimeError::Unavailable {
            runtime: "qemu",
            reason: format!(
                "cannot run mkfs.ext4 ({error}); install e2fsprogs with `apt-get install e2fsprogs`"
            ),
        })?;
    if !output.status.success() {
        return Err(RuntimeError::TemplateBuild {
            template: tree.display().to_string(),
            reason: format!(
                "mkfs.ext4 failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Returns the hex SHA-256 of the agent binary at `path`. Every create from a template needs it,
/// so it is computed again only when the file's size or modification time changes.
async fn agent_digest(path: &Path) -> Result<String, RuntimeError> {
    type Key = (std::path::PathBuf, u64, std::time::SystemTime);
    static CACHE: std::sync::Mutex<Option<(Key, String)>> = std::sync::Mutex::new(None);

    let metadata = std::fs::metadata(path)
        .map_err(|source| io_error(format!("reading {}", path.display()), source))?;
    let key: Key = (
        path.to_owned(),
        metadata.len(),
        metadata.modified().unwrap_or(std::time::UNIX_EPOCH),
    );
    if let Some((cached, digest)) = CACHE.lock().expect("digest cache poisoned").as_ref() {
        if *cached == key {
            return Ok(digest.clone());
        }
    }
    let digest = file_digest(path).await?;
    *CACHE.lock().expect("digest cache poisoned") = Some((key, digest.clone()));
    Ok(digest)
}

/// Returns the hex SHA-256 of the file at `path`.
pub async fn file_digest(path: &Path) -> Result<String, RuntimeError> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut file = File::open(&owned)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .expect("digest task panicked")
    .map_err(|source| io_error(format!("reading {}", path.display()), source))
}
