//! Filesystem snapshots on Docker: commit, list, restore into a new sandbox, delete.

mod common;

use common::{api_error, Server};
use gitvm_sdk::{RestoreRequest, Sandbox, SandboxState, SnapshotKind};

/// Restores `snapshot_id` into a new sandbox that lives for 10 minutes.
async fn restore(server: &Server, snapshot_id: &str) -> Sandbox {
    server
        .client
        .restore_snapshot(
            snapshot_id,
            &RestoreRequest {
                timeout: Some(600),
                metadata: None,
            },
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn restored_sandbox_has_snapshot_files() {
    let server = Server::start();
    let source = server.create().await;
    server
        .client
        .write_file(&source.id, "/work/note.txt", "written before the snapshot")
        .await
        .unwrap();
    let snapshot = server.client.create_snapshot(&source.id).await.unwrap();
    assert_eq!(snapshot.sandbox_id, source.id);
    assert_eq!(snapshot.kind, SnapshotKind::Filesystem);
    assert_eq!(snapshot.runtime, "docker");
    assert!(snapshot.size_bytes > 0);
    assert!(snapshot.id.starts_with("snap-"), "{}", snapshot.id);

    // Changes after the snapshot do not reach the restore.
    server.exec(&source.id, "echo later > /work/note.txt").await;

    let listed = server.client.list_snapshots().await.unwrap();
    assert_eq!(listed, vec![snapshot.clone()]);

    let restored = restore(&server, &snapshot.id).await;
    assert_ne!(restored.id, source.id);
    assert_eq!(restored.state, SandboxState::Running);
    assert_eq!(restored.snapshot_id.as_deref(), Some(snapshot.id.as_str()));
    assert_eq!(restored.memory_mb, source.memory_mb);
    let note = server.exec(&restored.id, "cat /work/note.txt").await;
    assert_eq!(note.stdout, "written before the snapshot");

    // The source keeps working after being snapshotted.
    assert_eq!(
        server.exec(&source.id, "cat /work/note.txt").await.stdout,
        "later\n"
    );

    server.client.delete_snapshot(&snapshot.id).await.unwrap();
    assert!(server.client.list_snapshots().await.unwrap().is_empty());
    assert_eq!(
        api_error(
            server
                .client
                .restore_snapshot(&snapshot.id, &RestoreRequest::default())
                .await
        ),
        (404, "snapshot_not_found".to_string())
    );
}

#[tokio::test]
async fn snapshot_of_paused_and_stopped_sandboxes() {
    let server = Server::start();
    let sandbox = server.create().await;
    server.client.lifecycle(&sandbox.id, "pause").await.unwrap();
    let paused_snapshot = server.client.create_snapshot(&sandbox.id).await.unwrap();
    let current = server.client.get_sandbox(&sandbox.id).await.unwrap();
    assert_eq!(current.state, SandboxState::Paused);
    server.client.lifecycle(&sandbox.id, "stop").await.unwrap();
    let stopped_snapshot = server.client.create_snapshot(&sandbox.id).await.unwrap();
    assert_ne!(paused_snapshot.id, stopped_snapshot.id);
    server.client.delete_sandbox(&sandbox.id).await.unwrap();
    assert_eq!(
        api_error(server.client.create_snapshot(&sandbox.id).await),
        (409, "invalid_state".to_string())
    );
}

/// Returns whether Docker still has an image for `reference`.
fn image_exists(reference: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", reference])
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test]
async fn snapshot_delete_while_restored_sandbox_runs() {
    let server = Server::start();
    let source = server.create().await;
    let written = server
        .exec(&source.id, "mkdir -p /work && echo v1 > /work/v")
        .await;
    assert_eq!(written.exit_code, 0, "{}", written.stderr);
    let snapshot = server.client.create_snapshot(&source.id).await.unwrap();
    let restored = restore(&server, &snapshot.id).await;
    let image_id = String::from_utf8(
        std::process::Command::new("docker")
            .args([
                "inspect",
                "--format",
                "{{.Image}}",
                &format!("gitvm-{}", restored.id),
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();

    server.client.delete_snapshot(&snapshot.id).await.unwrap();
    assert!(server.client.list_snapshots().await.unwrap().is_empty());
    assert_eq!(
        server.exec(&restored.id, "cat /work/v").await.stdout,
        "v1\n"
    );
    assert!(
        image_exists(&image_id),
        "image removed while a sandbox uses it"
    );

    server.client.delete_sandbox(&restored.id).await.unwrap();
    assert!(
        !image_exists(&image_id),
        "unused snapshot image {image_id} was left behind"
    );
}
