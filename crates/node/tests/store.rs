//! The SQLite store against a real database file in a temporary directory.

mod common;

use std::collections::BTreeMap;

use gitvm_node::store::{SandboxFilter, SnapshotRecord, Store};
use gitvm_proto::{SandboxState, Snapshot, SnapshotKind};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use common::record;

#[tokio::test]
async fn open_creates_data_dir_and_wal_database() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested/data");

    let store = Store::open(&dir).await.unwrap();
    store
        .insert_sandbox(&record(
            "sb-aaaaaaaaaaaa",
            SandboxState::Running,
            "2026-01-01T00:00:00Z",
            None,
        ))
        .await
        .unwrap();

    assert!(dir.join("gitvm.db").is_file());
    assert!(
        dir.join("gitvm.db-wal").is_file(),
        "journal mode is not WAL"
    );
}

#[tokio::test]
async fn node_id_is_stable_across_reopen() {
    let tmp = tempfile::tempdir().unwrap();

    let first = Store::open(tmp.path())
        .await
        .unwrap()
        .node_id()
        .await
        .unwrap();
    let again = Store::open(tmp.path())
        .await
        .unwrap()
        .node_id()
        .await
        .unwrap();

    assert_eq!(first.len(), 16);
    assert!(first
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    assert_eq!(first, again);
}

#[tokio::test]
async fn sandbox_round_trips_every_field() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).await.unwrap();
    let mut row = record(
        "sb-roundtrip0001",
        SandboxState::Error,
        "2026-01-01T00:00:00Z",
        Some("2026-01-01T00:05:00Z"),
    );
    row.sandbox.snapshot_id = Some("snap-abcdefabcdef".to_owned());
    row.sandbox.error = Some("agent did not become ready".to_owned());
    row.sandbox
        .env_vars
        .insert("WITH SPACE".to_owned(), "naïve ✓".to_owned());

    store.insert_sandbox(&row).await.unwrap();
    let loaded = store.get_sandbox("sb-roundtrip0001").await.unwrap();

    assert_eq!(loaded, Some(row));
    assert_eq!(store.get_sandbox("sb-unknown00000").await.unwrap(), None);
}

#[tokio::test]
async fn set_state_updates_state_and_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).await.unwrap();
    store
        .insert_sandbox(&record(
            "sb-state0000001",
            SandboxState::Creating,
            "2026-01-01T00:00:00Z",
            None,
        ))
        .await
        .unwrap();

    let found = store
        .set_state(
            "sb-state0000001",
            SandboxState::Error,
            Some("image has no /bin"),
        )
        .await
        .unwrap();
    let sandbox = store
        .get_sandbox("sb-state0000001")
        .await
        .unwrap()
        .unwrap()
        .sandbox;
    assert!(found);
    assert_eq!(sandbox.state, SandboxState::Error);
    assert_eq!(sandbox.error.as_deref(), Some("image has no /bin"));

    store
        .set_state("sb-state0000001", SandboxState::Running, None)
        .await
        .unwrap();
    let sandbox = store
        .get_sandbox("sb-state0000001")
        .await
        .unwrap()
        .unwrap()
        .sandbox;
    assert_eq!(sandbox.state, SandboxState::Running);
    assert_eq!(sandbox.error, None);

    let missing = store
        .set_state("sb-nothere00000", SandboxState::Running, None)
        .await
        .unwrap();
    assert!(!missing);
}

#[tokio::test]
async fn list_filters_and_hides_tombstones() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).await.unwrap();
    let t = "2026-01-01T00:00:00Z";
    let mut ml = record("sb-list00000002", SandboxState::Running, t, None);
    ml.sandbox.metadata = BTreeMap::from([
        ("team".to_owned(), "ml".to_owned()),
        ("owner".to_owned(), "ana".to_owned()),
    ]);
    store
        .insert_sandbox(&record("sb-list00000001", SandboxState::Running, t, None))
        .await
        .unwrap();
    store.insert_sandbox(&ml).await.unwrap();
    store
        .insert_sandbox(&record("sb-list00000003", SandboxState::Paused, t, None))
        .await
        .unwrap();
    store
        .insert_sandbox(&record("sb-list00000004", SandboxState::Deleted, t, None))
        .await
        .unwrap();

    let ids = |records: Vec<gitvm_node::store::SandboxRecord>| {
        records
            .into_iter()
            .map(|r| r.sandbox.id)
            .collect::<Vec<_>>()
    };
    let all = store
        .list_sandboxes(&SandboxFilter::default())
        .await
        .unwrap();
    assert_eq!(
        ids(all),
        ["sb-list00000001", "sb-list00000002", "sb-list00000003"]
    );

    let running = SandboxFilter {
        state: Some(SandboxState::Running),
        ..SandboxFilter::default()
    };
    let running = store.list_sandboxes(&running).await.unwrap();
    assert_eq!(ids(running), ["sb-list00000001", "sb-list00000002"]);

    let infra = SandboxFilter {
        metadata: BTreeMap::from([("team".to_owned(), "infra".to_owned())]),
        ..SandboxFilter::default()
    };
    let infra = store.list_sandboxes(&infra).await.unwrap();
    assert_eq!(ids(infra), ["sb-list00000001", "sb-list00000003"]);

    let ana_ml = SandboxFilter {
        state: Some(SandboxState::Running),
        metadata: BTreeMap::from([
            ("team".to_owned(), "ml".to_owned()),
            ("owner".to_owned(), "ana".to_owned()),
        ]),
    };
    let ana_ml = store.list_sandboxes(&ana_ml).await.unwrap();
    assert_eq!(ids(ana_ml), ["sb-list00000002"]);

    let deleted = SandboxFilter {
        state: Some(SandboxState::Deleted),
        ..SandboxFilter::default()
    };
    let deleted = store.list_sandboxes(&deleted).await.unwrap();
    assert_eq!(ids(deleted), ["sb-list00000004"]);
    let tombstone = store.get_sandbox("sb-list00000004").await.unwrap().unwrap();
    assert_eq!(tombstone.sandbox.state, SandboxState::Deleted);
}

#[tokio::test]
async fn expired_skips_tombstones_and_no_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).await.unwrap();
    let created = "2026-01-01T00:00:00Z";
    let rows = [
        (
            "sb-exp00000001",
            SandboxState::Running,
            Some("2026-01-01T00:05:00Z"),
        ),
        (
            "sb-exp00000002",
            SandboxState::Paused,
            Some("2026-01-01T00:04:59Z"),
        ),
        (
            "sb-exp00000003",
            SandboxState::Stopped,
            Some("2026-01-01T00:05:01Z"),
        ),
        (
            "sb-exp00000004",
            SandboxState::Deleted,
            Some("2026-01-01T00:01:00Z"),
        ),
        ("sb-exp00000005", SandboxState::Running, None),
        (
            "sb-exp00000006",
            SandboxState::Error,
            Some("2026-01-01T00:02:00Z"),
        ),
    ];
    for (id, state, expires_at) in rows {
        store
            .insert_sandbox(&record(id, state, created, expires_at))
            .await
            .unwrap();
    }

    let expired = store
        .expired_sandboxes(OffsetDateTime::parse("2026-01-01T00:05:00Z", &Rfc3339).unwrap())
        .await
        .unwrap();

    assert_eq!(
        expired,
        ["sb-exp00000006", "sb-exp00000002", "sb-exp00000001"]
    );
}

#[tokio::test]
async fn count_by_state_counts_tombstones_too() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).await.unwrap();
    let t = "2026-01-01T00:00:00Z";
    store
        .insert_sandbox(&record("sb-count0000001", SandboxState::Running, t, None))
        .await
        .unwrap();
    store
        .insert_sandbox(&record("sb-count0000002", SandboxState::Running, t, None))
        .await
        .unwrap();
    store
        .insert_sandbox(&record("sb-count0000003", SandboxState::Deleted, t, None))
        .await
        .unwrap();

    let counts = store.count_by_state().await.unwrap();

    assert_eq!(
        counts,
        BTreeMap::from([("deleted".to_owned(), 1), ("running".to_owned(), 2)])
    );
}

#[tokio::test]
async fn snapshots_insert_list_get_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).await.unwrap();
    let snapshot = |id: &str, kind| SnapshotRecord {
        snapshot: Snapshot {
            id: id.to_owned(),
            sandbox_id: "sb-source000001".to_owned(),
            runtime: "docker".to_owned(),
            kind,
            size_bytes: 123_456_789,
            created_at: "2026-01-01T00:00:00Z".to_owned(),
        },
        image: format!("sha256:{id}"),
    };
    let first = snapshot("snap-aaaaaaaaaaaa", SnapshotKind::Filesystem);
    let second = snapshot("snap-bbbbbbbbbbbb", SnapshotKind::Full);
    store.insert_snapshot(&first).await.unwrap();
    store.insert_snapshot(&second).await.unwrap();

    assert_eq!(
        store.list_snapshots().await.unwrap(),
        [first.clone(), second.clone()]
    );
    assert_eq!(
        store.get_snapshot("snap-aaaaaaaaaaaa").await.unwrap(),
        Some(first)
    );

    assert!(store.delete_snapshot("snap-aaaaaaaaaaaa").await.unwrap());
    assert!(!store.delete_snapshot("snap-aaaaaaaaaaaa").await.unwrap());
    assert_eq!(store.list_snapshots().await.unwrap(), [second]);
}
