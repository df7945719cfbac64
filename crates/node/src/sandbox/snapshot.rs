use std::time::Instant;

use gitvm_proto::{RestoreRequest, Sandbox, Snapshot};
use gitvm_runtime::{RuntimeError, SnapshotInfo};

use super::create::{new_record, Limits};
use super::{transition, validate, Node, NodeError, Operation};
use crate::store::{SnapshotRecord, StoreError};
use crate::{ids, timestamp};

impl Node {
    /// Captures a snapshot of a running, paused or stopped sandbox.
    pub async fn snapshot(&self, id: &str) -> Result<Snapshot, NodeError> {
        let _guard = self.lock(id).await;
        let sandbox = self.record(id).await?.sandbox;
        transition::check(&sandbox, Operation::Snapshot)?;

        let snapshot_id = ids::snapshot_id();
        let started = Instant::now();
        let info = match self.runtime_of(&sandbox)?.snapshot(id, &snapshot_id).await {
            Ok(info) => info,
            Err(err) => return Err(self.runtime_failed(&sandbox, "snapshot", err).await),
        };

        let record = SnapshotRecord {
            snapshot: Snapshot {
                id: snapshot_id,
                sandbox_id: id.to_owned(),
                runtime: sandbox.runtime.clone(),
                kind: info.kind,
                size_bytes: info.size_bytes,
                created_at: timestamp::format(timestamp::now()),
            },
            image: info.image,
        };
        self.store.insert_snapshot(&record).await?;
        tracing::info!(
            sandbox_id = %id,
            runtime = %sandbox.runtime,
            snapshot_id = %record.snapshot.id,
            kind = record.snapshot.kind.as_str(),
            size_bytes = record.snapshot.size_bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot taken"
        );
        Ok(record.snapshot)
    }

    /// Lists every snapshot, oldest first.
    pub async fn list_snapshots(&self) -> Result<Vec<Snapshot>, NodeError> {
        let records = self.store.list_snapshots().await?;
        Ok(records.into_iter().map(|record| record.snapshot).collect())
    }

    /// Deletes a snapshot and its runtime data. Data the runtime no longer has counts as
    /// deleted.
    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), NodeError> {
        let record = self.snapshot_record(snapshot_id).await?;
        let info = SnapshotInfo {
            kind: record.snapshot.kind,
            image: record.image.clone(),
            size_bytes: record.snapshot.size_bytes,
        };

        match self
            .runtimes
            .get(Some(&record.snapshot.runtime))?
            .delete_snapshot(&info)
            .await
        {
            Ok(()) => {}
            Err(RuntimeError::NotFound { .. }) => {
                tracing::info!(snapshot_id, image = %record.image, "snapshot data already gone");
            }
            Err(err) => {
                tracing::error!(snapshot_id, runtime = %record.snapshot.runtime, error = %err, "cannot delete snapshot");
                return Err(err.into());
            }
        }
        self.store.delete_snapshot(snapshot_id).await?;
        tracing::info!(snapshot_id, runtime = %record.snapshot.runtime, "snapshot deleted");
        Ok(())
    }

    /// Creates a new sandbox from a snapshot, with the source sandbox's template, vCPUs,
    /// memory and environment; `request` overrides the time to live and the metadata.
    pub async fn restore(
        &self,
        snapshot_id: &str,
        request: RestoreRequest,
    ) -> Result<Sandbox, NodeError> {
        let snapshot = self.snapshot_record(snapshot_id).await?;
        // The sandbox is restored by the runtime that took the snapshot.
        let runtime = self.runtimes.get(Some(&snapshot.snapshot.runtime))?.name();

        // Sandbox rows are kept as tombstones after delete, so the source is always found
        // unless the database was edited by hand.
        let source = self
            .store
            .get_sandbox(&snapshot.snapshot.sandbox_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                id: snapshot_id.to_owned(),
                reason: format!(
                    "its source sandbox {} has no row",
                    snapshot.snapshot.sandbox_id
                ),
            })?
            .sandbox;
        let timeout = validate::timeout(request.timeout.unwrap_or(source.timeout))?;

        let record = new_record(
            runtime,
            source.template,
            snapshot.image,
            Limits {
                vcpus: source.vcpus,
                memory_mb: source.memory_mb,
                timeout,
                internet: source.internet,
            },
            source.env_vars,
            request.metadata.unwrap_or(source.metadata),
            Some(snapshot_id.to_owned()),
        );
        self.launch(record, "restore").await
    }

    async fn snapshot_record(&self, snapshot_id: &str) -> Result<SnapshotRecord, NodeError> {
        self.store
            .get_snapshot(snapshot_id)
            .await?
            .ok_or_else(|| NodeError::SnapshotNotFound {
                id: snapshot_id.to_owned(),
            })
    }
}
