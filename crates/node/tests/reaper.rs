//! The TTL reaper against a real store, with the runtime down so that deletes fail.

mod common;

use std::collections::HashSet;

use gitvm_node::reaper::reap_expired;
use gitvm_proto::SandboxState;

use common::record;

#[tokio::test]
async fn failed_delete_keeps_sandbox_and_is_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path()).await;
    let past = "2026-01-01T00:05:00Z";
    node.store()
        .insert_sandbox(&record(
            "sb-reap00000001",
            SandboxState::Paused,
            "2026-01-01T00:00:00Z",
            Some(past),
        ))
        .await
        .unwrap();
    node.store()
        .insert_sandbox(&record(
            "sb-reap00000002",
            SandboxState::Deleted,
            "2026-01-01T00:00:00Z",
            Some(past),
        ))
        .await
        .unwrap();
    node.store()
        .insert_sandbox(&record(
            "sb-reap00000003",
            SandboxState::Running,
            "2026-01-01T00:00:00Z",
            None,
        ))
        .await
        .unwrap();
    let mut failing = HashSet::new();

    let deleted = reap_expired(&node, &mut failing).await;

    assert_eq!(deleted, 0);
    assert_eq!(failing, HashSet::from(["sb-reap00000001".to_owned()]));
    assert_eq!(
        node.get("sb-reap00000001").await.unwrap().state,
        SandboxState::Paused
    );
    assert_eq!(
        node.get("sb-reap00000003").await.unwrap().state,
        SandboxState::Running
    );
}
