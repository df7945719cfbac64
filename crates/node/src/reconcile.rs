//! Reconciliation at node start: makes the store agree with what the runtime reports, since
//! sandboxes kept running, or died, while the node was down.

use std::collections::{HashMap, HashSet};

use gitvm_proto::SandboxState;
use gitvm_runtime::{ObservedState, Runtime};

use crate::sandbox::{Node, NodeError};
use crate::store::{SandboxFilter, SandboxRecord};

/// Reason recorded for a sandbox whose runtime resources vanished while the node was down.
pub const DISAPPEARED: &str = "container disappeared while the node was down";

/// Reason recorded for a sandbox whose create the node did not finish.
pub const INTERRUPTED: &str = "node restarted during create";

/// Counts of the changes reconciliation made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileSummary {
    /// Sandboxes moved to `error` because the runtime no longer has them.
    pub disappeared: usize,
    /// Sandboxes left in `creating` by a crash, removed and moved to `error`.
    pub interrupted: usize,
    /// Runtime sandboxes that the store marks deleted or does not know, removed.
    pub orphans_removed: usize,
    /// Sandboxes whose state was updated from the runtime's, such as a container that exited.
    pub updated: usize,
}

/// Compares the store with each runtime's sandboxes and fixes both sides. Sandboxes of a
/// runtime that is unavailable on this start keep their state.
pub async fn reconcile(node: &Node) -> Result<ReconcileSummary, NodeError> {
    let stored = node
        .store()
        .list_sandboxes(&SandboxFilter::default())
        .await?;
    let mut summary = ReconcileSummary::default();
    for runtime in node.runtimes().all() {
        reconcile_runtime(node, runtime.as_ref(), &stored, &mut summary).await?;
    }
    for record in &stored {
        let sandbox = &record.sandbox;
        if let Some(reason) = node.runtimes().unavailable().get(sandbox.runtime.as_str()) {
            if !matches!(sandbox.state, SandboxState::Deleted | SandboxState::Error) {
                tracing::warn!(sandbox_id = %sandbox.id, runtime = %sandbox.runtime, %reason, "runtime unavailable; sandbox left as it was");
            }
        }
    }
    Ok(summary)
}

async fn reconcile_runtime(
    node: &Node,
    runtime: &dyn Runtime,
    stored: &[SandboxRecord],
    summary: &mut ReconcileSummary,
) -> Result<(), NodeError> {
    let observed: HashMap<String, ObservedState> = runtime
        .list()
        .await?
        .into_iter()
        .map(|sandbox| (sandbox.id, sandbox.state))
        .collect();

    for record in stored
        .iter()
        .filter(|record| record.sandbox.runtime == runtime.name())
    {
        let sandbox = &record.sandbox;
        let id = sandbox.id.as_str();
        let seen = observed.get(id).copied().unwrap_or(ObservedState::Missing);

        match (sandbox.state, seen) {
            (SandboxState::Creating, _) => {
                if let Err(err) = runtime.delete(id).await {
                    tracing::warn!(sandbox_id = id, runtime = runtime.name(), error = %err, "cannot remove half-created sandbox");
                }
                node.store()
                    .set_state(id, SandboxState::Error, Some(INTERRUPTED))
                    .await?;
                summary.interrupted += 1;
                tracing::warn!(
                    sandbox_id = id,
                    runtime = runtime.name(),
                    "sandbox was being created when the node stopped; marked as error"
                );
            }
            (SandboxState::Error | SandboxState::Deleted, _) => {}
            (_, ObservedState::Missing) => {
                node.store()
                    .set_state(id, SandboxState::Error, Some(DISAPPEARED))
                    .await?;
                summary.disappeared += 1;
                tracing::warn!(sandbox_id = id, runtime = runtime.name(), previous_state = %sandbox.state, "sandbox disappeared while the node was down");
            }
            (stored_state, seen) => {
                let actual = match seen {
                    ObservedState::Running => SandboxState::Running,
                    ObservedState::Paused => SandboxState::Paused,
                    ObservedState::Stopped | ObservedState::Missing => SandboxState::Stopped,
                };
                if actual != stored_state {
                    node.store().set_state(id, actual, None).await?;
                    summary.updated += 1;
                    tracing::info!(sandbox_id = id, runtime = runtime.name(), from = %stored_state, to = %actual, "sandbox state updated from the runtime");
                }
            }
        }
    }

    // Ids of every runtime count, so a sandbox is never removed as an orphan of the wrong one.
    let live: HashSet<&str> = stored
        .iter()
        .map(|record| record.sandbox.id.as_str())
        .collect();
    for id in observed.keys().filter(|id| !live.contains(id.as_str())) {
        match runtime.delete(id).await {
            Ok(()) => {
                summary.orphans_removed += 1;
                tracing::info!(sandbox_id = %id, runtime = runtime.name(), "removed runtime sandbox that the store marks deleted or does not know");
            }
            Err(err) => {
                tracing::warn!(sandbox_id = %id, runtime = runtime.name(), error = %err, "cannot remove orphaned runtime sandbox");
            }
        }
    }
    Ok(())
}
