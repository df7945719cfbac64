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
            image: image_id,
            size_bytes,
        })
    }

    /// Force-removes a snapshot's image; an image that is already gone is success.
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
}
