//! Shutdown of the agent daemon on SIGTERM. A separate test binary, because the signal goes to
//! the whole test process.

use std::time::{Duration, Instant};

use gitvm_agent::client::AgentClient;
use gitvm_agent::server::{run, AgentConfig, Transport};
use gitvm_proto::ExecRequest;

#[tokio::test]
async fn sigterm_is_forwarded_and_agent_exits() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let config = AgentConfig {
        transport: Transport::Unix(socket.clone()),
        guest_setup: false,
    };
    let agent = std::thread::spawn(move || run(config));

    // The socket file appears at bind(2), just before listen(2), so early connects may fail.
    let deadline = Instant::now() + Duration::from_secs(5);
    let client = loop {
        match AgentClient::connect_unix(&socket).await {
            Ok(client) => break client,
            Err(error) => assert!(Instant::now() < deadline, "agent never accepted: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let exec = tokio::spawn({
        let client = client.clone();
        async move {
            let request = ExecRequest {
                command: "echo running; sleep 30".into(),
                ..ExecRequest::default()
            };
            client.exec(&request).await
        }
    });
    // Give the command time to start before the signal arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    // SAFETY: kill(2) of this process; the agent's runtime has a SIGTERM handler installed.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);

    let result = exec.await.unwrap().unwrap();
    assert_eq!(result.exit_code, 143);
    assert_eq!(result.signal.as_deref(), Some("SIGTERM"));
    assert_eq!(result.stdout, "running\n");

    let outcome = tokio::task::spawn_blocking(move || agent.join().unwrap())
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    let elapsed = signalled.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "shutdown took {elapsed:?}"
    );
    assert!(!socket.exists(), "the socket file should be removed");
}
