//! The Rust SDK against a real server: streaming execute with callbacks, files, lifecycle.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use futures_util::StreamExt;
use gitvm_sdk::{ExecEvent, ExecRequest, ExecuteOptions, SandboxState};

#[tokio::test]
async fn execute_feeds_callbacks_as_output_arrives() {
    let server = Server::start();
    let id = server.create().await.id;
    let started = Instant::now();
    let lines: Arc<Mutex<Vec<(String, Duration)>>> = Arc::default();
    let sink = lines.clone();
    let options = ExecuteOptions {
        on_stdout: Some(Box::new(move |chunk: &[u8]| {
            let text = String::from_utf8_lossy(chunk).into_owned();
            sink.lock().unwrap().push((text, started.elapsed()));
        })),
        ..Default::default()
    };
    let output = server
        .client
        .execute(&id, "for i in 1 2 3; do echo $i; sleep 1; done", options)
        .await
        .unwrap();
    let total = started.elapsed();

    assert_eq!(output.exit_code, 0);
    assert!(output.stdout.is_empty(), "stdout went to the callback");
    let lines = lines.lock().unwrap();
    let text: String = lines.iter().map(|(text, _)| text.as_str()).collect();
    assert_eq!(text, "1\n2\n3\n");
    let (first, first_at) = &lines[0];
    assert!(first.starts_with('1'), "{first:?}");
    assert!(
        *first_at + Duration::from_millis(1500) < total,
        "first chunk at {first_at:?}, command ended at {total:?}"
    );
}

#[tokio::test]
async fn execute_collects_exact_bytes_and_stderr() {
    let server = Server::start();
    let id = server.create().await.id;
    let output = server
        .client
        .execute(
            &id,
            "printf '\\377\\000\\001'; printf oops >&2; exit 5",
            ExecuteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(output.stdout, vec![0xff, 0x00, 0x01]);
    assert_eq!(output.stderr, b"oops");
    assert_eq!(output.exit_code, 5);
    assert!(output.pid > 0);
}

#[tokio::test]
async fn exec_stream_ends_with_exit_event() {
    let server = Server::start();
    let id = server.create().await.id;
    let request = ExecRequest {
        command: "echo a; kill -9 $$".into(),
        ..Default::default()
    };
    let events: Vec<ExecEvent> = server
        .client
        .exec_stream(&id, &request)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert!(
        matches!(events.first(), Some(ExecEvent::Start { .. })),
        "{events:?}"
    );
    let Some(ExecEvent::Exit {
        exit_code,
        signal,
        timed_out,
        ..
    }) = events.last()
    else {
        panic!("last event is not exit: {events:?}");
    };
    assert_eq!(*exit_code, 137);
    assert_eq!(signal.as_deref(), Some("SIGKILL"));
    assert!(!timed_out);
    let stdout: Vec<u8> = events
        .iter()
        .filter(|event| matches!(event, ExecEvent::Stdout { .. }))
        .flat_map(|event| event.bytes().unwrap().unwrap())
        .collect();
    assert_eq!(stdout, b"a\n");
}

#[tokio::test]
async fn sdk_files_and_lifecycle_round_trip() {
    let server = Server::start();
    let client = &server.client;
    let id = server.create().await.id;

    client.make_dir(&id, "/work/sdk").await.unwrap();
    client
        .write_file(&id, "/work/sdk/data.bin", vec![1u8, 2, 3, 0, 255])
        .await
        .unwrap();
    let entries = client.list_files(&id, "/work/sdk").await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, "data.bin");
    let mut stream = client.read_file(&id, "/work/sdk/data.bin").await.unwrap();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(data, vec![1u8, 2, 3, 0, 255]);

    assert_eq!(
        client.lifecycle(&id, "pause").await.unwrap().state,
        SandboxState::Paused
    );
    assert_eq!(
        client.lifecycle(&id, "resume").await.unwrap().state,
        SandboxState::Running
    );
    client.remove_file(&id, "/work/sdk").await.unwrap();
    assert!(client.list_files(&id, "/work/sdk").await.is_err());
    client.delete_sandbox(&id).await.unwrap();
    assert_eq!(
        client.get_sandbox(&id).await.unwrap().state,
        SandboxState::Deleted
    );
}

#[tokio::test]
async fn builder_and_machine_interface() {
    use gitvm_sdk::Machine;

    let server = Server::start();
    let sandbox = server
        .client
        .new_sandbox()
        .memory_mb(256)
        .timeout(600)
        .env("GREETING", "hello")
        .metadata("suite", "sdk")
        .create()
        .await
        .unwrap();
    let info = sandbox.info().await.unwrap();
    assert_eq!(info.memory_mb, 256);
    assert_eq!(info.metadata.get("suite").map(String::as_str), Some("sdk"));

    // Through the trait object, as an agent framework would hold it.
    let machine: &dyn Machine = &sandbox;
    assert_eq!(machine.state().await.unwrap(), SandboxState::Running);
    machine
        .write_file("/work/m/hello.py", b"print('hi')\n".to_vec())
        .await
        .unwrap();
    assert_eq!(
        machine.read_file("/work/m/hello.py").await.unwrap(),
        b"print('hi')\n"
    );
    let names: Vec<String> = machine
        .list_files("/work/m")
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.name)
        .collect();
    assert_eq!(names, ["hello.py"]);
    let output = machine
        .execute(
            "python3 /work/m/hello.py; echo $GREETING",
            ExecuteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(output.stdout, b"hi\nhello\n");

    machine.pause().await.unwrap();
    assert_eq!(machine.state().await.unwrap(), SandboxState::Paused);
    machine.resume().await.unwrap();
    machine.stop().await.unwrap();
    assert_eq!(machine.state().await.unwrap(), SandboxState::Stopped);
    machine.start().await.unwrap();
    let output = machine
        .execute("cat /work/m/hello.py", ExecuteOptions::default())
        .await
        .unwrap();
    assert_eq!(output.stdout, b"print('hi')\n");

    let extended = sandbox.set_timeout(0).await.unwrap();
    assert_eq!(extended.expires_at, None);
    let snapshot = sandbox.snapshot().await.unwrap();
    assert_eq!(snapshot.sandbox_id, machine.id());
    let id = machine.id().to_string();
    sandbox.delete().await.unwrap();
    assert_eq!(
        server.client.get_sandbox(&id).await.unwrap().state,
        SandboxState::Deleted
    );
}

#[tokio::test]
async fn process_handle_stdin_output_and_wait() {
    let server = Server::start();
    let sandbox = server
        .client
        .new_sandbox()
        .timeout(600)
        .create()
        .await
        .unwrap();
    let process = sandbox
        .start_process(&gitvm_sdk::StartProcessRequest {
            command: "tr a-z A-Z".into(),
            tag: Some("upper".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let by_tag = sandbox.process("upper");
    assert_eq!(
        by_tag.info().await.unwrap().state,
        gitvm_sdk::ProcessState::Running
    );
    process.write_stdin("hello sdk\n").await.unwrap();
    process.close_stdin().await.unwrap();
    let info = process.wait(Some(10.0)).await.unwrap();
    assert_eq!(info.state, gitvm_sdk::ProcessState::Exited);
    assert_eq!(info.exit_code, Some(0));

    // The replay buffer still contains the output after exit.
    let events: Vec<ExecEvent> = by_tag
        .output()
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    let stdout: Vec<u8> = events
        .iter()
        .filter(|event| matches!(event, ExecEvent::Stdout { .. }))
        .flat_map(|event| event.bytes().unwrap().unwrap())
        .collect();
    assert_eq!(stdout, b"HELLO SDK\n");
    assert!(matches!(
        events.last(),
        Some(ExecEvent::Exit { exit_code: 0, .. })
    ));
    let listed = sandbox.processes().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].tag.as_deref(), Some("upper"));
}
