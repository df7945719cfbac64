//! A server killed with SIGKILL comes back with every sandbox accounted for.

mod common;

use std::process::Command;

use common::Server;
use gitvm_sdk::{ListFilter, SandboxState};

/// Sandbox ids of every container labelled by gitvm for sandboxes in `ids`.
fn labelled_ids(ids: &[String]) -> Vec<String> {
    let output = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Label \"gitvm.sandbox\"}}"])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|id| ids.iter().any(|known| known == id))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn kill9_restart_keeps_sandboxes_usable() {
    let mut server = Server::start();
    let running = server.create().await.id;
    let paused = server.create().await.id;
    let stopped = server.create().await.id;
    server
        .client
        .write_file(&running, "/work/kept.txt", "still here")
        .await
        .unwrap();
    server.client.lifecycle(&paused, "pause").await.unwrap();
    server.client.lifecycle(&stopped, "stop").await.unwrap();

    server.kill9();
    server.restart();

    let listed = server
        .client
        .list_sandboxes(&ListFilter::default())
        .await
        .unwrap();
    let state_of = |id: &str| listed.iter().find(|s| s.id == id).map(|s| s.state);
    assert_eq!(state_of(&running), Some(SandboxState::Running));
    assert_eq!(state_of(&paused), Some(SandboxState::Paused));
    assert_eq!(state_of(&stopped), Some(SandboxState::Stopped));

    let result = server.exec(&running, "cat /work/kept.txt").await;
    assert_eq!(result.stdout, "still here");
    server.client.lifecycle(&paused, "resume").await.unwrap();
    assert_eq!(
        server.exec(&paused, "echo resumed").await.stdout,
        "resumed\n"
    );
    server.client.lifecycle(&stopped, "start").await.unwrap();
    assert_eq!(
        server.exec(&stopped, "echo started").await.stdout,
        "started\n"
    );

    let mut ids = vec![running.clone(), paused.clone(), stopped.clone()];
    ids.sort();
    let mut labelled = labelled_ids(&ids);
    labelled.sort();
    assert_eq!(
        labelled, ids,
        "every labelled container belongs to a listed sandbox"
    );
}

#[tokio::test]
async fn restart_removes_containers_unknown_to_store() {
    let mut server = Server::start();
    let kept = server.create().await.id;
    let dropped = server.create().await.id;

    // Forget `dropped` in the store behind the server's back, as if the node had died before
    // it recorded the sandbox: the container must not outlive the restart.
    server.kill9();
    let db = server.data_dir.join("gitvm.db");
    let status = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; c = sqlite3.connect('{}'); c.execute(\"DELETE FROM sandboxes WHERE id = '{dropped}'\"); c.commit()",
            db.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    server.restart();

    assert_eq!(
        labelled_ids(std::slice::from_ref(&dropped)),
        Vec::<String>::new()
    );
    assert_eq!(
        labelled_ids(std::slice::from_ref(&kept)),
        vec![kept.clone()]
    );
    assert_eq!(server.exec(&kept, "echo alive").await.stdout, "alive\n");
}
