//! Filesystem snapshots: `docker commit` of a sandbox's container to an image.

use std::collections::HashMap;

use bollard::models::ContainerConfig;
use bollard::query_parameters::{CommitContainerOptions, RemoveImageOptions};
use gitvm_proto::SnapshotKind;

use super::{
    container_name, docker_message, is_not_found, sandbox_error, DockerRuntime, LABEL_NODE,
    LABEL_SANDBOX, RUNTIME,
};
use crate::{RuntimeError, SnapshotInfo};

/// Repository of every snapshot image; the tag is the snapshot id.
pub const SNAPSHOT_REPO: &str = "gitvm-snapshot";

/// Label carrying the snapshot id on a snapshot image.
const LABEL_SNAPSHOT: &str = "gitvm.snapshot";

impl DockerRuntime {
    /// Commits the container of sandbox `id` to `gitvm-snapshot:<snapshot_id>`. The container
    /// is paused during the commit, so the tree is consistent; processes are not captured.
    pub(super) async fn commit_snapshot(
        &self,
        id: &str,
        snapshot_id: &str,
    ) -> Result<SnapshotInfo, RuntimeError> {
        let options = CommitContainerOptions {
            container: Some(container_name(id)),
            repo: Some(SNAPSHOT_REPO.to_string()),
            tag: Some(snapshot_id.to_string()),
            pause: true,
            ..Default::default()
        };
        // Docker fills every unset field of this config from the container's, so only the
        // labels change.
        let labels = HashMap::from([
            (LABEL_NODE.to_string(), self.config.node_id.clone()),
            (LABEL_SANDBOX.to_string(), id.to_string()),
            (LABEL_SNAPSHOT.to_string(), snapshot_id.to_string()),
        ]);
        let config = ContainerConfig {
            labels: Some(labels),
            ..Default::default()
        };
        let committed = self
            .docker
            .commit_container(options, config)
            .await
            .map_err(|err| sandbox_error("snapshot", id, err))?;
        let image_id = committed.id;
        // Restores and deletes go through the tag: removing a tag that a running sandbox still
        // uses only untags it, where removing the image id would fail with a conflict.
        let reference = format!("{SNAPSHOT_REPO}:{snapshot_id}");

        let inspect =
            self.docker
                .inspect_image(&image_id)
                .await
                .map_err(|err| RuntimeError::Backend {
                    runtime: RUNTIME,
                    operation: "inspect snapshot image",
                    id: image_id.clone(),
                    message: docker_message(&err),
                })?;
        let size_bytes = inspect
            .size
            .map_or(0, |size| u64::try_from(size).unwrap_or(0));
        tracing::info!(
            sandbox_id = %id,
            snapshot_id = %snapshot_id,
            runtime = RUNTIME,
            image = %image_id,
            size_bytes,
            "snapshot committed"
        );

        Ok(SnapshotInfo {
            kind: SnapshotKind::Filesystem,
            image: reference,
            size_bytes,
        })
    }

    /// Removes a snapshot's tag, and its image unless sandboxes restored from it still use
    /// it; [`DockerRuntime::remove_orphan_snapshot_image`] removes such an image later. An image
    /// that is already gone is success.
    pub(super) async fn remove_snapshot(
        &self,
        snapshot: &SnapshotInfo,
    ) -> Result<(), RuntimeError> {
        let options = RemoveImageOptions {
            force: true,
            ..Default::default()
        };
        match self
            .docker
            .remove_image(&snapshot.image, Some(options), None)
            .await
        {
            Ok(_) => {}
            Err(err) if is_not_found(&err) => {}
            Err(err) => {
                return Err(RuntimeError::Backend {
                    runtime: RUNTIME,
                    operation: "delete snapshot",
                    id: snapshot.image.clone(),
                    message: docker_message(&err),
                })
            }
        }
        tracing::info!(image = %snapshot.image, runtime = RUNTIME, "snapshot image removed");
        Ok(())
    }

    /// Removes the image of a deleted snapshot once no container uses it any more: an untagged
    /// image carrying [`LABEL_SNAPSHOT`]. Failures are logged, because the sandbox is gone
    /// either way.
    pub(super) async fn remove_orphan_snapshot_image(&self, image_id: &str) {
        let Ok(image) = self.docker.inspect_image(image_id).await else {
            return;
        };
        let is_snapshot = image
            .config
            .as_ref()
            .and_then(|config| config.labels.as_ref())
            .is_some_and(|labels| labels.contains_key(LABEL_SNAPSHOT));
        let untagged = image.repo_tags.as_ref().is_none_or(|tags| tags.is_empty());
        if !is_snapshot || !untagged {
            return;
        }
        match self
            .docker
            .remove_image(image_id, None::<RemoveImageOptions>, None)
            .await
        {
            Ok(_) => {
                tracing::info!(image = %image_id, runtime = RUNTIME, "unused snapshot image removed")
            }
            // Another sandbox restored from the same snapshot still uses it.
            Err(err) if is_conflict(&err) => {}
            Err(err) => tracing::warn!(
                image = %image_id,
                runtime = RUNTIME,
                error = %docker_message(&err),
                "cannot remove unused snapshot image"
            ),
        }
    }
}

fn is_conflict(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}
