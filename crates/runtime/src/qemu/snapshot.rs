//! Snapshots of microVMs and restores into new sandboxes.
//!
//! A snapshot directory `qemu/snapshots/<id>/` contains `machine.json`, `disk.qcow2` and, for a
//! full snapshot, `memory`: the device and RAM state written by QMP `migrate`. It is written
//! under a temporary name and renamed when complete, so a crash never leaves a partial
//! snapshot under its real name. A restore copies the disk into the new sandbox and leaves the
//! snapshot untouched, so one snapshot can be restored any number of times.

use std::path::Path;
use std::time::Instant;

use gitvm_proto::SnapshotKind;
use serde_json::json;

use super::files::{copy_sparse, disk_usage, io_error};
use super::machine::{self, Machine, DISK_FILE};
use super::qmp::Qmp;
use super::{backend, QemuRuntime, SNAPSHOT_PREFIX};
use crate::{RuntimeError, SandboxSpec, SnapshotInfo};

/// File of the saved device and memory state.
const MEMORY_FILE: &str = "memory";

/// Marker in a sandbox directory while a snapshot keeps a running guest stopped. A node that
/// crashes meanwhile resumes the guest at its next start.
const RESUME_MARKER: &str = "resume-after-snapshot";

/// Cleans up after a node that stopped during a snapshot: removes partial snapshot directories
/// and resumes guests that a snapshot had stopped.
pub(super) async fn recover(root: &Path) {
    if let Ok(entries) = std::fs::read_dir(root.join("snapshots")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".partial") {
                tracing::warn!(path = %entry.path().display(), "removing a snapshot the node did not finish");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let Ok(entries) = std::fs::read_dir(root.join("sandboxes")) else {
        return;
    };
    for entry in entries.flatten() {
        let marker = entry.path().join(RESUME_MARKER);
        if !marker.exists() {
            continue;
        }
        let id = entry.file_name().to_string_lossy().into_owned();
        if machine::running_pid(&entry.path(), &id).is_some() {
            let resumed = async {
                let mut qmp = Qmp::connect(&entry.path().join("qmp.sock")).await?;
                qmp.execute("cont", None).await
            }
            .await;
            match resumed {
                Ok(_) => {
                    tracing::warn!(sandbox_id = %id, "resumed a sandbox whose snapshot the node did not finish")
                }
                Err(error) => {
                    tracing::error!(sandbox_id = %id, %error, "cannot resume a sandbox after an unfinished snapshot")
                }
            }
        }
        let _ = std::fs::remove_file(marker);
    }
}

/// Takes a snapshot of sandbox `id`, whose directory is `dir`: full when QEMU runs, disk only
/// when the sandbox is stopped.
pub(super) async fn take(
    runtime: &QemuRuntime,
    id: &str,
    dir: &Path,
    snapshot_id: &str,
) -> Result<SnapshotInfo, RuntimeError> {
    let snapshots = runtime.root.join("snapshots");
    let target = snapshots.join(snapshot_id);
    let work = snapshots.join(format!(".{snapshot_id}.partial"));
    std::fs::create_dir_all(&work)
        .map_err(|source| io_error(format!("creating {}", work.display()), source))?;

    let result = write_snapshot(id, dir, &work).await;
    let kind = match result {
        Ok(kind) => kind,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(error);
        }
    };
    std::fs::rename(&work, &target).map_err(|source| {
        io_error(
            format!("moving the snapshot to {}", target.display()),
            source,
        )
    })?;
    Ok(SnapshotInfo {
        kind,
        image: format!("{SNAPSHOT_PREFIX}{}", target.display()),
        size_bytes: disk_usage(&target),
    })
}

async fn write_snapshot(id: &str, dir: &Path, work: &Path) -> Result<SnapshotKind, RuntimeError> {
    let machine = Machine::load(dir)?;
    if machine::running_pid(dir, id).is_none() {
        copy_sparse(&dir.join(DISK_FILE), &work.join(DISK_FILE)).await?;
        machine.save(work)?;
        return Ok(SnapshotKind::Filesystem);
    }

    let started = Instant::now();
    let mut qmp = Qmp::connect(&dir.join("qmp.sock"))
        .await
        .map_err(|error| backend("snapshot", id, error))?;
    let was_running = qmp
        .status()
        .await
        .map_err(|error| backend("snapshot", id, error))?
        == "running";
    let marker = dir.join(RESUME_MARKER);
    if was_running {
        std::fs::write(&marker, b"")
            .map_err(|source| io_error(format!("writing {}", marker.display()), source))?;
        qmp.execute("stop", None)
            .await
            .map_err(|error| backend("snapshot", id, error))?;
    }

    let memory = work.join(MEMORY_FILE);
    let saved = async {
        let uri = format!("exec:cat > {}", shell_quote(&memory.display().to_string()));
        qmp.execute("migrate", Some(json!({ "uri": uri }))).await?;
        qmp.wait_migration().await
    }
    .await
    .map_err(|error| backend("snapshot", id, error));
    // Once the migration has completed QEMU has flushed the disk and released it, so the copy
    // is consistent.
    let copied = match &saved {
        Ok(()) => copy_sparse(&dir.join(DISK_FILE), &work.join(DISK_FILE)).await,
        Err(_) => Ok(()),
    };
    if was_running {
        if let Err(error) = qmp.execute("cont", None).await {
            tracing::error!(sandbox_id = %id, %error, "cannot resume the sandbox after its snapshot");
        }
        let _ = std::fs::remove_file(&marker);
    }
    saved?;
    copied?;
    sync_file(&memory)?;
    machine.save(work)?;
    tracing::info!(
        sandbox_id = %id,
        elapsed_ms = started.elapsed().as_millis() as u64,
        memory_bytes = std::fs::metadata(&memory).map(|m| m.len()).unwrap_or(0),
        "memory and disk saved"
    );
    Ok(SnapshotKind::Full)
}

impl QemuRuntime {
    /// Creates sandbox `spec.id` from the snapshot directory `snapshot`: a full snapshot
    /// continues where it was saved, a disk-only one boots.
    pub(super) async fn restore(
        &self,
        spec: &SandboxSpec,
        snapshot: &Path,
    ) -> Result<(), RuntimeError> {
        if !snapshot.join(machine::MACHINE_FILE).exists() {
            return Err(RuntimeError::NotFound {
                what: "snapshot",
                id: snapshot.display().to_string(),
            });
        }
        let machine = Machine::load(snapshot)?;
        let dir = self.dir(&spec.id);
        std::fs::create_dir_all(&dir)
            .map_err(|source| io_error(format!("creating {}", dir.display()), source))?;
        copy_sparse(&snapshot.join(DISK_FILE), &dir.join(DISK_FILE)).await?;
        machine.save(&dir)?;

        let memory = snapshot.join(MEMORY_FILE);
        if !memory.exists() {
            return self.boot_machine(&spec.id, &machine, &dir).await;
        }

        let started = Instant::now();
        machine::spawn(
            &self.config.qemu_bin,
            &self.config.agent_bin,
            &machine,
            &spec.id,
            &dir,
            true,
        )
        .await?;
        let loaded = async {
            let mut qmp = Qmp::connect(&dir.join("qmp.sock")).await?;
            let uri = format!("exec:cat {}", shell_quote(&memory.display().to_string()));
            qmp.execute("migrate-incoming", Some(json!({ "uri": uri })))
                .await?;
            qmp.wait_migration().await?;
            qmp.execute("cont", None).await?;
            Ok::<_, super::qmp::QmpError>(())
        }
        .await;
        if let Err(error) = loaded {
            machine::kill(&dir, &spec.id).await;
            return Err(backend(
                "restore",
                &spec.id,
                format!(
                    "{error}; last console output:\n{}",
                    machine::console_tail(&dir)
                ),
            ));
        }
        let resumed_ms = started.elapsed().as_millis() as u64;

        let client = self.wait_ready(&spec.id, &dir).await?;
        // The guest's clock stood still while the snapshot was stored, and every restore of it
        // starts with the same hostname and kernel random state.
        if let Err(error) = client.sync_clock().await {
            tracing::warn!(sandbox_id = %spec.id, %error, "cannot set the restored guest's clock");
        }
        if let Err(error) = client.set_identity(&spec.id).await {
            tracing::warn!(sandbox_id = %spec.id, %error, "cannot give the restored guest its identity");
        }
        *self.agent_slot(&spec.id).lock().await = Some(client);
        tracing::info!(
            sandbox_id = %spec.id,
            resumed_ms,
            ready_ms = started.elapsed().as_millis() as u64,
            "microVM restored"
        );
        Ok(())
    }
}

/// Flushes a finished file to disk, so a snapshot survives a host crash once it is listed.
fn sync_file(path: &Path) -> Result<(), RuntimeError> {
    std::fs::File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|source| io_error(format!("syncing {}", path.display()), source))
}

/// Quotes `text` for `/bin/sh`, which runs QEMU's `exec:` migration commands.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_paths_for_the_shell() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
