//! Every REST route against a real server and real dockerd: happy paths and their errors.

mod common;

use std::collections::BTreeMap;

use common::{api_error, containers_labelled, Server};
use gitvm_sdk::{CreateSandboxRequest, ExecRequest, ListFilter, SandboxState};

async fn raw(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().request(method, format!("{}{}", server.url, path));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("response to {path} is not JSON: {text:?}"));
    (status, json)
}

#[tokio::test]
async fn health_reports_docker_and_qemu_runtimes() {
    // scripts/setup.sh installs QEMU, so both runtimes work on a test machine.
    let server = Server::start();
    let health = server.client.health().await.unwrap();
    assert_eq!(health.status, "ok");
    assert_eq!(health.runtimes, ["docker", "qemu"]);
}

#[tokio::test]
async fn sandbox_lifecycle_routes() {
    let server = Server::start();
    let client = &server.client;
    let mut env = BTreeMap::new();
    env.insert("GREETING".to_string(), "hello from env".to_string());
    let mut metadata = BTreeMap::new();
    metadata.insert("team".to_string(), "infra".to_string());
    let sandbox = client
        .create_sandbox(&CreateSandboxRequest {
            vcpus: Some(1),
            memory_mb: Some(256),
            timeout: Some(600),
            env_vars: env,
            metadata: metadata.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sandbox.state, SandboxState::Running);
    assert_eq!(sandbox.runtime, "docker");
    assert_eq!(sandbox.template, "base");
    assert_eq!(sandbox.memory_mb, 256);
    assert!(sandbox.id.starts_with("sb-"), "id {}", sandbox.id);

    let result = server.exec(&sandbox.id, "echo \"$GREETING\"").await;
    assert_eq!(result.stdout, "hello from env\n");

    // The memory limit reaches the cgroup.
    let limit = server
        .exec(
            &sandbox.id,
            "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
        )
        .await;
    assert_eq!(limit.stdout.trim(), (256u64 * 1024 * 1024).to_string());

    let filter = ListFilter {
        state: Some(SandboxState::Running),
        metadata,
    };
    let listed = client.list_sandboxes(&filter).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, sandbox.id);
    let other = ListFilter {
        state: None,
        metadata: [("team".to_string(), "web".to_string())].into(),
    };
    assert!(client.list_sandboxes(&other).await.unwrap().is_empty());

    let paused = client.lifecycle(&sandbox.id, "pause").await.unwrap();
    assert_eq!(paused.state, SandboxState::Paused);
    assert_eq!(
        api_error(
            client
                .exec(
                    &sandbox.id,
                    &ExecRequest {
                        command: "true".into(),
                        ..Default::default()
                    }
                )
                .await
        ),
        (409, "invalid_state".to_string())
    );
    assert_eq!(
        api_error(client.lifecycle(&sandbox.id, "pause").await),
        (409, "invalid_state".to_string())
    );
    let resumed = client.lifecycle(&sandbox.id, "resume").await.unwrap();
    assert_eq!(resumed.state, SandboxState::Running);

    let stopped = client.lifecycle(&sandbox.id, "stop").await.unwrap();
    assert_eq!(stopped.state, SandboxState::Stopped);
    assert_eq!(
        api_error(client.lifecycle(&sandbox.id, "resume").await),
        (409, "invalid_state".to_string())
    );
    let started = client.lifecycle(&sandbox.id, "start").await.unwrap();
    assert_eq!(started.state, SandboxState::Running);
    assert_eq!(
        api_error(client.lifecycle(&sandbox.id, "start").await),
        (409, "invalid_state".to_string())
    );

    client.delete_sandbox(&sandbox.id).await.unwrap();
    client.delete_sandbox(&sandbox.id).await.unwrap();
    let deleted = client.get_sandbox(&sandbox.id).await.unwrap();
    assert_eq!(deleted.state, SandboxState::Deleted);
    assert!(containers_labelled(&sandbox.id).is_empty());
    assert!(client
        .list_sandboxes(&ListFilter::default())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn unknown_sandbox_is_404_on_every_route() {
    let server = Server::start();
    let client = &server.client;
    let id = "sb-doesnotexist";
    let not_found = (404, "sandbox_not_found".to_string());
    assert_eq!(api_error(client.get_sandbox(id).await), not_found);
    assert_eq!(api_error(client.delete_sandbox(id).await), not_found);
    for action in ["start", "stop", "pause", "resume"] {
        assert_eq!(api_error(client.lifecycle(id, action).await), not_found);
    }
    let exec = ExecRequest {
        command: "true".into(),
        ..Default::default()
    };
    assert_eq!(api_error(client.exec(id, &exec).await), not_found);
    assert_eq!(api_error(client.list_files(id, "/").await), not_found);
    assert_eq!(api_error(client.make_dir(id, "/x").await), not_found);
    assert_eq!(api_error(client.remove_file(id, "/x").await), not_found);
    assert_eq!(
        api_error(client.write_file(id, "/x", "data").await),
        not_found
    );
    assert!(matches!(
        client.read_file(id, "/x").await,
        Err(gitvm_sdk::Error::Api { status: 404, .. })
    ));
    assert_eq!(api_error(client.create_snapshot(id).await), not_found);
    let (status, body) = raw(
        &server,
        reqwest::Method::POST,
        "/snapshots/snap-nope/restore",
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "snapshot_not_found");
    assert_eq!(
        api_error(client.delete_snapshot("snap-nope").await),
        (404, "snapshot_not_found".to_string())
    );
}

#[tokio::test]
async fn invalid_create_requests_are_400_and_store_nothing() {
    let server = Server::start();
    let cases = [
        (r#"{"memoryMB": 0}"#, "memoryMB"),
        (r#"{"vcpus": -1}"#, "vcpus"),
        (r#"{"vcpus": 0}"#, "vcpus"),
        (r#"{"vcpus": 100000}"#, "vcpus"),
        (r#"{"timeout": -5}"#, "timeout"),
        (r#"{"envVars": {"": "x"}}"#, "envVars"),
        (r#"{"envVars": {"A=B": "x"}}"#, "envVars"),
        (r#"{"template": ""}"#, "template"),
    ];
    for (body, field) in cases {
        let (status, json) = raw(&server, reqwest::Method::POST, "/sandboxes", Some(body)).await;
        assert_eq!(status, 400, "{body}: {json}");
        assert_eq!(json["code"], "invalid_request", "{body}: {json}");
        let message = json["message"].as_str().unwrap();
        assert!(
            message.contains(field),
            "{body}: message {message:?} should name {field}"
        );
    }
    for body in [
        r#"{"vcpus": "#,
        r#"{"vcpus": "two"}"#,
        r#"{"color": "red"}"#,
        "[]",
    ] {
        let (status, json) = raw(&server, reqwest::Method::POST, "/sandboxes", Some(body)).await;
        assert_eq!(status, 400, "{body}: {json}");
        assert_eq!(json["code"], "invalid_json", "{body}: {json}");
    }
    let listed = server
        .client
        .list_sandboxes(&ListFilter::default())
        .await
        .unwrap();
    assert!(listed.is_empty(), "rejected creates left rows: {listed:?}");
}

#[tokio::test]
async fn bad_exec_and_file_requests_are_400() {
    let server = Server::start();
    let sandbox = server.create().await;
    let path = format!("/sandboxes/{}/exec", sandbox.id);
    let (status, json) = raw(&server, reqwest::Method::POST, &path, Some("{nope")).await;
    assert_eq!(
        (status, json["code"].as_str().unwrap()),
        (400, "invalid_json")
    );
    let (status, json) = raw(
        &server,
        reqwest::Method::POST,
        &path,
        Some(r#"{"cwd": "/"}"#),
    )
    .await;
    assert_eq!(
        (status, json["code"].as_str().unwrap()),
        (400, "invalid_json")
    );

    let list = format!("/sandboxes/{}/files/list", sandbox.id);
    let (status, json) = raw(&server, reqwest::Method::GET, &list, None).await;
    assert_eq!(status, 400);
    assert_eq!(json["code"], "invalid_request");
    assert!(json["message"].as_str().unwrap().contains("path"), "{json}");

    let (status, json) = raw(&server, reqwest::Method::GET, "/no/such/route", None).await;
    assert_eq!(status, 404);
    assert_eq!(json["code"], "route_not_found");
}

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let server = Server::start_with(&["--api-key", "s3cret-key"]);
    let (status, _) = raw(&server, reqwest::Method::GET, "/health", None).await;
    assert_eq!(status, 200);
    let (status, json) = raw(&server, reqwest::Method::GET, "/sandboxes", None).await;
    assert_eq!(status, 401);
    assert_eq!(json["code"], "unauthorized");

    let wrong = gitvm_sdk::Client::new(&server.url, Some("wrong".into())).unwrap();
    assert_eq!(
        api_error(wrong.list_sandboxes(&ListFilter::default()).await),
        (401, "unauthorized".to_string())
    );
    let bearer = reqwest::Client::new()
        .get(format!("{}/sandboxes", server.url))
        .bearer_auth("s3cret-key")
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status().as_u16(), 200);
    assert!(server
        .client
        .list_sandboxes(&ListFilter::default())
        .await
        .is_ok());
}

#[tokio::test]
async fn json_body_over_limit_is_413() {
    let server = Server::start();
    let big = format!(
        r#"{{"metadata": {{"k": "{}"}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let (status, json) = raw(&server, reqwest::Method::POST, "/sandboxes", Some(&big)).await;
    assert_eq!(status, 413);
    assert_eq!(json["code"], "payload_too_large");
}

#[tokio::test]
async fn ttl_expiry_deletes_sandbox() {
    let server = Server::start();
    let sandbox = server
        .client
        .create_sandbox(&CreateSandboxRequest {
            timeout: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(sandbox.expires_at.is_some());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let current = server.client.get_sandbox(&sandbox.id).await.unwrap();
        if current.state == SandboxState::Deleted {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not reaped: {current:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(containers_labelled(&sandbox.id).is_empty());
}

#[tokio::test]
async fn metrics_and_openapi_are_served() {
    let server = Server::start();
    let text = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("gitvm_sandboxes"), "{text}");
    let (status, spec) = raw(&server, reqwest::Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(spec["paths"]["/sandboxes"].is_object(), "{spec}");
}

#[tokio::test]
async fn set_timeout_extends_shortens_and_clears() {
    let server = Server::start();
    let client = &server.client;
    let sandbox = server.create().await;
    let rfc3339 = &time::format_description::well_known::Rfc3339;

    let before = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    let extended = client.set_timeout(&sandbox.id, 7200).await.unwrap();
    let after = time::OffsetDateTime::now_utc();
    assert_eq!(extended.timeout, 7200);
    let expires =
        time::OffsetDateTime::parse(extended.expires_at.as_deref().unwrap(), rfc3339).unwrap();
    assert!(
        expires >= before + time::Duration::seconds(7200),
        "{expires}"
    );
    assert!(
        expires <= after + time::Duration::seconds(7200),
        "{expires}"
    );

    let forever = client.set_timeout(&sandbox.id, 0).await.unwrap();
    assert_eq!(forever.timeout, 0);
    assert_eq!(forever.expires_at, None);

    for bad in [-1, 2_592_001] {
        assert_eq!(
            api_error(client.set_timeout(&sandbox.id, bad).await),
            (400, "invalid_request".to_string())
        );
    }
    let unchanged = client.get_sandbox(&sandbox.id).await.unwrap();
    assert_eq!(
        unchanged.expires_at, None,
        "a rejected timeout changed the sandbox"
    );
    assert_eq!(
        api_error(client.set_timeout("sb-doesnotexist", 60).await),
        (404, "sandbox_not_found".to_string())
    );

    client.set_timeout(&sandbox.id, 1).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while client.get_sandbox(&sandbox.id).await.unwrap().state != SandboxState::Deleted {
        assert!(
            std::time::Instant::now() < deadline,
            "shortened sandbox was not reaped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(
        api_error(client.set_timeout(&sandbox.id, 60).await),
        (409, "invalid_state".to_string())
    );
}

#[tokio::test]
async fn docker_without_internet_has_only_loopback() {
    let server = Server::start();
    let sandbox = server
        .client
        .create_sandbox(&CreateSandboxRequest {
            internet: Some(false),
            timeout: Some(600),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!sandbox.internet);
    let devices = server.exec(&sandbox.id, "ls /sys/class/net").await;
    assert_eq!(devices.stdout.trim(), "lo");

    let online = server.create().await;
    assert!(online.internet);
    let devices = server.exec(&online.id, "ls /sys/class/net").await;
    assert!(devices.stdout.contains("eth0"), "{devices:?}");
}
