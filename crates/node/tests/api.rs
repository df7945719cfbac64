//! The REST API's routing, auth and error mapping, through the router with `tower::oneshot`.
//! The node's runtime is down, so these tests cover every path that ends before the runtime,
//! and the mapping of an unavailable runtime.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use gitvm_node::api::{self, AppState};
use gitvm_node::sandbox::Node;
use gitvm_proto::{ErrorBody, Health, Sandbox, SandboxList, SandboxState};
use http_body_util::BodyExt;
use tempfile::TempDir;
use tower::ServiceExt;

use common::record;

const KEY: &str = "s3cret-key";

struct Fixture {
    _dir: TempDir,
    node: Arc<Node>,
    router: Router,
}

async fn fixture(api_key: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path()).await;
    let router = api::router(AppState {
        node: Arc::clone(&node),
        api_key: api_key.map(Arc::from),
    });
    Fixture {
        _dir: dir,
        node,
        router,
    }
}

async fn insert(node: &Node, id: &str, state: SandboxState) {
    node.store()
        .insert_sandbox(&record(id, state, "2026-01-01T00:00:00Z", None))
        .await
        .unwrap();
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, Vec<u8>) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post_json(uri: &str, json: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json.to_owned()))
        .unwrap()
}

fn error_body(body: &[u8]) -> ErrorBody {
    serde_json::from_slice(body).unwrap_or_else(|err| {
        panic!(
            "not an error body ({err}): {}",
            String::from_utf8_lossy(body)
        )
    })
}

#[tokio::test]
async fn health_is_open_when_key_set() {
    let fx = fixture(Some(KEY)).await;

    let (status, body) = send(&fx.router, get("/health")).await;

    assert_eq!(status, StatusCode::OK);
    let health: Health = serde_json::from_slice(&body).unwrap();
    assert_eq!(health.status, "ok");
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(health.runtimes, ["docker"]);
}

#[tokio::test]
async fn missing_api_key_is_401_json() {
    let fx = fixture(Some(KEY)).await;

    let (status, body) = send(&fx.router, get("/sandboxes")).await;

    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let error = error_body(&body);
    assert_eq!(error.code, "unauthorized");
    assert_eq!(
        error.message,
        "missing API key; send it as `X-API-Key: KEY` or `Authorization: Bearer KEY`"
    );
}

#[tokio::test]
async fn wrong_api_key_is_401() {
    let fx = fixture(Some(KEY)).await;
    let wrong_header = Request::get("/sandboxes")
        .header("x-api-key", "s3cret-kez")
        .body(Body::empty())
        .unwrap();
    let wrong_bearer = Request::get("/sandboxes")
        .header(header::AUTHORIZATION, "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    let basic = Request::get("/sandboxes")
        .header(header::AUTHORIZATION, format!("Basic {KEY}"))
        .body(Body::empty())
        .unwrap();

    for request in [wrong_header, wrong_bearer, basic] {
        let (status, body) = send(&fx.router, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(error_body(&body).code, "unauthorized");
    }
}

#[tokio::test]
async fn api_key_accepted_in_either_header() {
    let fx = fixture(Some(KEY)).await;
    let x_api_key = Request::get("/sandboxes")
        .header("x-api-key", KEY)
        .body(Body::empty())
        .unwrap();
    let bearer = Request::get("/sandboxes")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .body(Body::empty())
        .unwrap();

    for request in [x_api_key, bearer] {
        let (status, body) = send(&fx.router, request).await;
        assert_eq!(status, StatusCode::OK);
        let list: SandboxList = serde_json::from_slice(&body).unwrap();
        assert!(list.sandboxes.is_empty());
    }
}

#[tokio::test]
async fn malformed_json_is_400_invalid_json() {
    let fx = fixture(None).await;

    let (status, body) = send(&fx.router, post_json("/sandboxes", "{\"template\": ")).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = error_body(&body);
    assert_eq!(error.code, "invalid_json");
    assert_eq!(
        error.message,
        "invalid JSON body: EOF while parsing a value at line 1 column 13"
    );
}

#[tokio::test]
async fn unknown_field_is_400_naming_it() {
    let fx = fixture(None).await;

    let (status, body) = send(&fx.router, post_json("/sandboxes", r#"{"cpus": 2}"#)).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = error_body(&body);
    assert_eq!(error.code, "invalid_json");
    assert!(
        error
            .message
            .starts_with("invalid JSON body: unknown field `cpus`, expected one of"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn create_out_of_range_is_400() {
    let fx = fixture(None).await;
    let cases = [
        (
            r#"{"vcpus": 0}"#,
            "invalid vcpus 0: must be a whole number from 1 to 4 (the CPUs of this host)",
        ),
        (
            r#"{"vcpus": 5}"#,
            "invalid vcpus 5: must be a whole number from 1 to 4 (the CPUs of this host)",
        ),
        (
            r#"{"memoryMB": 63}"#,
            "invalid memoryMB 63: must be from 64 to 8192 MiB (the memory of this host)",
        ),
        (
            r#"{"timeout": -1}"#,
            "invalid timeout -1: must be from 0 (never expires) to 2592000 seconds (30 days)",
        ),
        (
            r#"{"timeout": 2592001}"#,
            "invalid timeout 2592001: must be from 0 (never expires) to 2592000 seconds (30 days)",
        ),
        (
            r#"{"envVars": {"A=B": "1"}}"#,
            "invalid envVars key \"A=B\": keys must be non-empty and contain neither `=` nor NUL",
        ),
        (
            r#"{"envVars": {"": "1"}}"#,
            "invalid envVars key \"\": keys must be non-empty and contain neither `=` nor NUL",
        ),
        (
            r#"{"template": ""}"#,
            "invalid template ``: give a template name such as `base` or an image reference",
        ),
        (
            r#"{"runtime": "vmware"}"#,
            "invalid runtime `vmware`: choose one of docker, qemu, firecracker",
        ),
    ];

    for (json, message) in cases {
        let (status, body) = send(&fx.router, post_json("/sandboxes", json)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
        let error = error_body(&body);
        assert_eq!(error.code, "invalid_request", "{json}");
        assert_eq!(error.message, message, "{json}");
    }
}

#[tokio::test]
async fn create_on_missing_runtime_is_503() {
    let fx = fixture(None).await;
    let (status, body) = send(
        &fx.router,
        post_json("/sandboxes", r#"{"runtime": "qemu"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let error = error_body(&body);
    assert_eq!(error.code, "runtime_unavailable");
    assert_eq!(
        error.message,
        "runtime `qemu` is unavailable: this node was not started with it \
         (runtimes available on this node: docker)"
    );
}

#[tokio::test]
async fn create_runtime_down_leaves_no_row() {
    let fx = fixture(None).await;

    let (status, body) = send(
        &fx.router,
        post_json("/sandboxes", r#"{"template": "base"}"#),
    )
    .await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let error = error_body(&body);
    assert_eq!(error.code, "runtime_unavailable");
    assert_eq!(
        error.message,
        "runtime `docker` is unavailable: the Docker daemon is not running; start it with `systemctl start docker`"
    );
    let counts = fx.node.store().count_by_state().await.unwrap();
    assert!(counts.is_empty(), "rows left behind: {counts:?}");
}

#[tokio::test]
async fn body_over_1_mib_is_413_json() {
    let fx = fixture(None).await;
    let padding = "x".repeat(1024 * 1024);
    let json = format!(r#"{{"template": "{padding}"}}"#);

    let (status, body) = send(&fx.router, post_json("/sandboxes", &json)).await;

    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let error = error_body(&body);
    assert_eq!(error.code, "payload_too_large");
    assert_eq!(
        error.message,
        "request body is larger than the 1 MiB limit for JSON bodies"
    );
}

#[tokio::test]
async fn unknown_sandbox_is_404() {
    let fx = fixture(None).await;
    let requests = [
        get("/sandboxes/sb-doesnotexist"),
        Request::delete("/sandboxes/sb-doesnotexist")
            .body(Body::empty())
            .unwrap(),
        post_json("/sandboxes/sb-doesnotexist/pause", ""),
        post_json("/sandboxes/sb-doesnotexist/exec", r#"{"command": "true"}"#),
    ];

    for request in requests {
        let (status, body) = send(&fx.router, request).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let error = error_body(&body);
        assert_eq!(error.code, "sandbox_not_found");
        assert_eq!(
            error.message,
            "sandbox `sb-doesnotexist` not found; list sandboxes with GET /sandboxes"
        );
    }
}

#[tokio::test]
async fn unknown_route_is_404_json() {
    let fx = fixture(None).await;

    let (status, body) = send(&fx.router, get("/v1/sandboxes")).await;

    assert_eq!(status, StatusCode::NOT_FOUND);
    let error = error_body(&body);
    assert_eq!(error.code, "route_not_found");
    assert_eq!(
        error.message,
        "no route for GET /v1/sandboxes; the routes are listed at GET /openapi.json"
    );
}

#[tokio::test]
async fn wrong_method_is_405_json() {
    let fx = fixture(None).await;

    let (status, body) = send(&fx.router, post_json("/health", "")).await;

    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_body(&body).code, "method_not_allowed");
}

#[tokio::test]
async fn exec_on_paused_sandbox_is_409() {
    let fx = fixture(None).await;
    insert(&fx.node, "sb-paused000001", SandboxState::Paused).await;

    let (status, body) = send(
        &fx.router,
        post_json(
            "/sandboxes/sb-paused000001/exec",
            r#"{"command": "echo ok"}"#,
        ),
    )
    .await;

    assert_eq!(status, StatusCode::CONFLICT);
    let error = error_body(&body);
    assert_eq!(error.code, "invalid_state");
    assert_eq!(
        error.message,
        "sandbox sb-paused000001 is paused; resume it first"
    );
}

#[tokio::test]
async fn exec_stream_on_paused_sandbox_is_409() {
    let fx = fixture(None).await;
    insert(&fx.node, "sb-paused000002", SandboxState::Paused).await;

    let (status, body) = send(
        &fx.router,
        post_json(
            "/sandboxes/sb-paused000002/exec/stream",
            r#"{"command": "echo ok"}"#,
        ),
    )
    .await;

    assert_eq!(status, StatusCode::CONFLICT);
    let error = error_body(&body);
    assert_eq!(error.code, "invalid_state");
    assert_eq!(
        error.message,
        "sandbox sb-paused000002 is paused; resume it first"
    );
}

#[tokio::test]
async fn pause_of_stopped_sandbox_is_409() {
    let fx = fixture(None).await;
    insert(&fx.node, "sb-stopped00001", SandboxState::Stopped).await;

    let (status, body) = send(
        &fx.router,
        post_json("/sandboxes/sb-stopped00001/pause", ""),
    )
    .await;

    assert_eq!(status, StatusCode::CONFLICT);
    let error = error_body(&body);
    assert_eq!(error.code, "invalid_state");
    assert_eq!(
        error.message,
        "sandbox sb-stopped00001 is stopped; start it first"
    );
}

#[tokio::test]
async fn files_without_path_is_400() {
    let fx = fixture(None).await;
    insert(&fx.node, "sb-running00001", SandboxState::Running).await;
    let requests = [
        get("/sandboxes/sb-running00001/files"),
        get("/sandboxes/sb-running00001/files?path="),
        get("/sandboxes/sb-running00001/files/list"),
        post_json("/sandboxes/sb-running00001/files/mkdir", ""),
        Request::put("/sandboxes/sb-running00001/files")
            .body(Body::from("data"))
            .unwrap(),
        Request::delete("/sandboxes/sb-running00001/files")
            .body(Body::empty())
            .unwrap(),
    ];

    for request in requests {
        let (status, body) = send(&fx.router, request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let error = error_body(&body);
        assert_eq!(error.code, "invalid_request");
        assert_eq!(
            error.message,
            "missing query parameter `path`; pass the absolute path inside the sandbox, such as ?path=/tmp/a.txt"
        );
    }
}

#[tokio::test]
async fn exec_with_runtime_down_is_503() {
    let fx = fixture(None).await;
    insert(&fx.node, "sb-running00002", SandboxState::Running).await;

    let (status, body) = send(
        &fx.router,
        post_json(
            "/sandboxes/sb-running00002/exec",
            r#"{"command": "echo ok"}"#,
        ),
    )
    .await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_body(&body).code, "runtime_unavailable");
}

#[tokio::test]
async fn delete_twice_keeps_tombstone() {
    let fx = fixture(None).await;
    insert(&fx.node, "sb-tombstone001", SandboxState::Deleted).await;
    let delete = || {
        Request::delete("/sandboxes/sb-tombstone001")
            .body(Body::empty())
            .unwrap()
    };

    let (first, _) = send(&fx.router, delete()).await;
    let (second, body) = send(&fx.router, delete()).await;
    let (status, got) = send(&fx.router, get("/sandboxes/sb-tombstone001")).await;

    assert_eq!(first, StatusCode::NO_CONTENT);
    assert_eq!(second, StatusCode::NO_CONTENT);
    assert!(body.is_empty());
    assert_eq!(status, StatusCode::OK);
    let sandbox: Sandbox = serde_json::from_slice(&got).unwrap();
    assert_eq!(sandbox.state, SandboxState::Deleted);
}

#[tokio::test]
async fn delete_with_runtime_down_keeps_sandbox() {
    let fx = fixture(None).await;
    insert(&fx.node, "sb-running00003", SandboxState::Running).await;

    let (status, body) = send(
        &fx.router,
        Request::delete("/sandboxes/sb-running00003")
            .body(Body::empty())
            .unwrap(),
    )
    .await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_body(&body).code, "runtime_unavailable");
    let sandbox = fx.node.get("sb-running00003").await.unwrap();
    assert_eq!(sandbox.state, SandboxState::Running);
}

#[tokio::test]
async fn list_filters_by_state_and_metadata() {
    let fx = fixture(None).await;
    insert(&fx.node, "sb-filter000001", SandboxState::Running).await;
    insert(&fx.node, "sb-filter000002", SandboxState::Paused).await;
    insert(&fx.node, "sb-filter000003", SandboxState::Deleted).await;
    let ids = |body: &[u8]| {
        let list: SandboxList = serde_json::from_slice(body).unwrap();
        list.sandboxes.into_iter().map(|s| s.id).collect::<Vec<_>>()
    };

    let (_, all) = send(&fx.router, get("/sandboxes")).await;
    let (_, paused) = send(&fx.router, get("/sandboxes?state=paused")).await;
    let (_, infra) = send(
        &fx.router,
        get("/sandboxes?metadata.team=infra&state=running"),
    )
    .await;
    let (_, none) = send(&fx.router, get("/sandboxes?metadata.team=ml")).await;

    assert_eq!(ids(&all), ["sb-filter000001", "sb-filter000002"]);
    assert_eq!(ids(&paused), ["sb-filter000002"]);
    assert_eq!(ids(&infra), ["sb-filter000001"]);
    assert!(ids(&none).is_empty());
}

#[tokio::test]
async fn list_with_bad_filter_is_400() {
    let fx = fixture(None).await;

    let (status, body) = send(&fx.router, get("/sandboxes?state=sleeping")).await;
    let (unknown_status, unknown_body) = send(&fx.router, get("/sandboxes?owner=ana")).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_body(&body).message,
        "unknown sandbox state `sleeping`; expected one of creating, running, paused, stopped, deleted, error"
    );
    assert_eq!(unknown_status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_body(&unknown_body).message,
        "unknown query parameter `owner`; filter with `state=running` or `metadata.KEY=VALUE`"
    );
}

#[tokio::test]
async fn unknown_snapshot_is_404() {
    let fx = fixture(None).await;
    let requests = [
        post_json("/snapshots/snap-nothere00000/restore", ""),
        Request::delete("/snapshots/snap-nothere00000")
            .body(Body::empty())
            .unwrap(),
    ];

    for request in requests {
        let (status, body) = send(&fx.router, request).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let error = error_body(&body);
        assert_eq!(error.code, "snapshot_not_found");
        assert_eq!(
            error.message,
            "snapshot `snap-nothere00000` not found; list snapshots with GET /snapshots"
        );
    }
}

#[tokio::test]
async fn metrics_report_sandboxes_and_requests() {
    let fx = fixture(None).await;
    insert(&fx.node, "sb-metrics00001", SandboxState::Running).await;
    send(&fx.router, get("/sandboxes/sb-nothere")).await;

    let (status, body) = send(&fx.router, get("/metrics")).await;

    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("gitvm_sandboxes{state=\"running\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("gitvm_sandboxes{state=\"paused\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "gitvm_http_requests_total{method=\"GET\",route=\"/sandboxes/{id}\",status=\"404\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("gitvm_exec_duration_seconds_count 0\n"),
        "{text}"
    );
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let fx = fixture(None).await;

    let (status, body) = send(&fx.router, get("/openapi.json")).await;

    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut names: Vec<&str> = paths.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "/health",
            "/sandboxes",
            "/sandboxes/{id}",
            "/sandboxes/{id}/exec",
            "/sandboxes/{id}/exec/stream",
            "/sandboxes/{id}/files",
            "/sandboxes/{id}/files/list",
            "/sandboxes/{id}/files/mkdir",
            "/sandboxes/{id}/pause",
            "/sandboxes/{id}/processes",
            "/sandboxes/{id}/processes/{selector}",
            "/sandboxes/{id}/processes/{selector}/kill",
            "/sandboxes/{id}/processes/{selector}/output",
            "/sandboxes/{id}/processes/{selector}/signal",
            "/sandboxes/{id}/processes/{selector}/stdin",
            "/sandboxes/{id}/processes/{selector}/stdin/close",
            "/sandboxes/{id}/processes/{selector}/wait",
            "/sandboxes/{id}/pty",
            "/sandboxes/{id}/resume",
            "/sandboxes/{id}/snapshot",
            "/sandboxes/{id}/start",
            "/sandboxes/{id}/stop",
            "/sandboxes/{id}/timeout",
            "/snapshots",
            "/snapshots/{id}",
            "/snapshots/{id}/restore",
        ]
    );
    assert!(doc["components"]["schemas"]["Sandbox"].is_object());
}

#[tokio::test]
async fn non_utf8_path_is_400_json() {
    let fx = fixture(None).await;

    let (status, body) = send(&fx.router, get("/sandboxes/%FF%FE")).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = error_body(&body);
    assert_eq!(error.code, "invalid_request");
    assert_eq!(
        error.message,
        "invalid path: Invalid URL: Invalid UTF-8 in `id`"
    );
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive() {
    let fx = fixture(Some(KEY)).await;

    for scheme in ["bearer", "BEARER", "Bearer"] {
        let request = Request::get("/sandboxes")
            .header(header::AUTHORIZATION, format!("{scheme} {KEY}"))
            .body(Body::empty())
            .unwrap();
        let (status, _) = send(&fx.router, request).await;
        assert_eq!(status, StatusCode::OK, "scheme {scheme}");
    }
}

#[tokio::test]
async fn list_state_deleted_returns_tombstones() {
    let fx = fixture(None).await;
    insert(&fx.node, "sb-listdel00001", SandboxState::Running).await;
    insert(&fx.node, "sb-listdel00002", SandboxState::Deleted).await;

    let (status, body) = send(&fx.router, get("/sandboxes?state=deleted")).await;

    assert_eq!(status, StatusCode::OK);
    let list: SandboxList = serde_json::from_slice(&body).unwrap();
    let ids: Vec<_> = list.sandboxes.into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["sb-listdel00002"]);
}

#[tokio::test]
async fn list_ambiguous_filter_is_400() {
    let fx = fixture(None).await;

    let (repeated, repeated_body) =
        send(&fx.router, get("/sandboxes?state=running&state=paused")).await;
    let (empty_key, empty_key_body) = send(&fx.router, get("/sandboxes?metadata.=x")).await;

    assert_eq!(repeated, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_body(&repeated_body).message,
        "query parameter `state` is given more than once; pass one state such as `state=running`"
    );
    assert_eq!(empty_key, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_body(&empty_key_body).message,
        "query parameter `metadata.` has an empty key; filter with `metadata.KEY=VALUE`"
    );
}

#[tokio::test]
async fn create_oversized_env_is_400() {
    let fx = fixture(None).await;
    let body = serde_json::json!({"envVars": {"BIG": "x".repeat(200_000)}}).to_string();

    let (status, body) = send(&fx.router, post_json("/sandboxes", &body)).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = error_body(&body);
    assert_eq!(error.code, "invalid_request");
    assert_eq!(
        error.message,
        "invalid envVars entry \"BIG\": `KEY=VALUE` is 200004 bytes, but Linux limits one environment string to less than 131072 bytes; pass large data as a file"
    );
    assert!(fx.node.list(&Default::default()).await.unwrap().is_empty());
}

#[tokio::test]
async fn exec_with_oversized_command_or_env_is_400() {
    let fx = fixture(None).await;
    insert(&fx.node, "sb-bigexec00001", SandboxState::Running).await;
    let exec =
        |json: serde_json::Value| post_json("/sandboxes/sb-bigexec00001/exec", &json.to_string());

    let (command_status, command_body) = send(
        &fx.router,
        exec(serde_json::json!({"command": format!("echo {}", "z".repeat(140_000))})),
    )
    .await;
    let (env_status, env_body) = send(
        &fx.router,
        exec(serde_json::json!({"command": "true", "env": {"BIG": "x".repeat(131_068)}})),
    )
    .await;

    assert_eq!(command_status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_body(&command_body).message,
        "invalid command: it is 140005 bytes, but Linux limits one argument to less than 131072 bytes; write a script with PUT /sandboxes/{id}/files and run that"
    );
    assert_eq!(env_status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_body(&env_body).message,
        "invalid env entry \"BIG\": `KEY=VALUE` is 131072 bytes, but Linux limits one environment string to less than 131072 bytes; pass large data as a file"
    );
}

#[tokio::test]
async fn exec_merged_env_over_total_is_400() {
    let fx = fixture(None).await;
    let mut big = record(
        "sb-bigmerge0001",
        SandboxState::Running,
        "2026-01-01T00:00:00Z",
        None,
    );
    big.sandbox.env_vars = (0..5)
        .map(|i| (format!("S{i}"), "s".repeat(120_000)))
        .collect();
    fx.node.store().insert_sandbox(&big).await.unwrap();
    // Each entry passes alone, and the request body stays under the 1 MiB JSON limit, but
    // the sandbox's envVars and the request's env exceed 1 MiB together.
    let env: serde_json::Map<String, serde_json::Value> = (0..4)
        .map(|i| {
            (
                format!("R{i}"),
                serde_json::Value::from("r".repeat(120_000)),
            )
        })
        .collect();

    let (status, body) = send(
        &fx.router,
        post_json(
            "/sandboxes/sb-bigmerge0001/exec",
            &serde_json::json!({"command": "true", "env": env}).to_string(),
        ),
    )
    .await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_body(&body).message,
        "invalid command and env: together with the sandbox's envVars they are 1080041 bytes, over the limit of 1048576 bytes for the environment and command of a process; pass large data as a file"
    );
}
