//! The TTL reaper: once a second, deletes every sandbox whose expiry time has passed, whatever
//! its state.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::task::JoinHandle;

use crate::sandbox::Node;
use crate::timestamp;

/// Time between two scans for expired sandboxes.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Starts the reaper task; it runs until aborted.
pub fn spawn(node: Arc<Node>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = HashSet::new();
        loop {
            ticker.tick().await;
            reap_expired(&node, &mut failing).await;
        }
    })
}

/// Deletes every expired sandbox, concurrently, and returns how many were deleted. Ids whose
/// delete failed are kept in `failing`, so that a sandbox that keeps failing is logged at warn
/// level once rather than every second.
pub async fn reap_expired(node: &Node, failing: &mut HashSet<String>) -> usize {
    let expired = match node.store().expired_sandboxes(timestamp::now()).await {
        Ok(ids) => ids,
        Err(err) => {
            tracing::error!(error = %err, "cannot query expired sandboxes");
            return 0;
        }
    };

    let results = join_all(expired.iter().map(|id| node.delete(id))).await;
    let mut deleted = 0;
    for (id, result) in expired.iter().zip(results) {
        match result {
            Ok(()) => {
                deleted += 1;
                failing.remove(id);
                tracing::info!(sandbox_id = %id, "expired sandbox deleted");
            }
            Err(err) if failing.insert(id.clone()) => {
                tracing::warn!(sandbox_id = %id, error = %err, "cannot delete expired sandbox; retrying every second");
            }
            Err(err) => {
                tracing::debug!(sandbox_id = %id, error = %err, "cannot delete expired sandbox");
            }
        }
    }
    deleted
}
