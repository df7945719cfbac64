//! File routes and connection handling of a real agent server, over a real Unix socket.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::TestAgent;
use futures_util::stream;
use gitvm_agent::client::{AgentClient, AgentError, BoxError, RequestBody};
use gitvm_proto::FileType;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::AsyncWriteExt;

fn bytes_body(data: impl Into<Bytes>) -> RequestBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn read_all(body: Incoming) -> Vec<u8> {
    body.collect().await.unwrap().to_bytes().to_vec()
}

fn remote(error: AgentError) -> (u16, String, String) {
    match error {
        AgentError::Remote { status, body } => (status, body.code, body.message),
        other => panic!("expected a remote error, got {other:?}"),
    }
}

/// Byte at `offset` of the deterministic test pattern used for large files.
fn pattern_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

#[tokio::test]
async fn file_with_space_and_unicode_round_trips() {
    let agent = TestAgent::start().await;
    let dir = agent.path("dir with space");
    let path = format!("{dir}/naïve ✓.bin");
    let mut data: Vec<u8> = (0..256).map(|_| rand::random::<u8>()).collect();
    data[0] = 0;
    data[100] = 0;

    agent
        .client
        .write_file(&path, bytes_body(data.clone()))
        .await
        .unwrap();

    let list = agent.client.list_files(&dir).await.unwrap();
    assert_eq!(list.entries.len(), 1);
    let entry = &list.entries[0];
    assert_eq!(entry.name, "naïve ✓.bin");
    assert_eq!(entry.path, path);
    assert_eq!(entry.file_type, FileType::File);
    assert_eq!(entry.size, 256);
    let on_disk = std::fs::metadata(&path).unwrap();
    assert_eq!(entry.mode, on_disk.permissions().mode() & 0o7777);
    assert!(entry.modified_at.ends_with('Z'), "{}", entry.modified_at);

    let read = read_all(agent.client.read_file(&path).await.unwrap()).await;
    assert_eq!(read, data);
    assert_eq!(std::fs::read(&path).unwrap(), data);
}

#[tokio::test]
async fn reserved_query_characters_round_trip() {
    let agent = TestAgent::start().await;
    let path = agent.path("a&b#c%d+e f?g=h");
    agent
        .client
        .write_file(&path, bytes_body("content"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"content");
    let read = read_all(agent.client.read_file(&path).await.unwrap()).await;
    assert_eq!(read, b"content");
}

#[tokio::test]
async fn write_replaces_file_and_keeps_mode() {
    let agent = TestAgent::start().await;
    let path = agent.path("script.sh");
    std::fs::write(&path, "old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o750)).unwrap();

    agent
        .client
        .write_file(&path, bytes_body("new"))
        .await
        .unwrap();

    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o750);
}

#[tokio::test]
async fn failed_upload_keeps_old_file() {
    let agent = TestAgent::start().await;
    let path = agent.path("keep.txt");
    std::fs::write(&path, "original").unwrap();

    let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
        Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024]))),
        Err("upload aborted by the test".into()),
    ];
    let body = StreamBody::new(stream::iter(frames)).boxed();
    let result = agent.client.write_file(&path, body).await;
    assert!(result.is_err());

    // The agent removes its temporary file once the stream is reset.
    let deadline = Instant::now() + Duration::from_secs(2);
    let names = loop {
        let names: Vec<String> = std::fs::read_dir(agent.dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "agent.sock")
            .collect();
        if names.len() == 1 || Instant::now() > deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(names, vec!["keep.txt".to_owned()]);
    assert_eq!(std::fs::read(&path).unwrap(), b"original");
}

#[tokio::test]
async fn file_64_mib_streams_both_ways() {
    const CHUNK: u64 = 1024 * 1024;
    const TOTAL: u64 = 64 * CHUNK;
    let agent = TestAgent::start().await;
    let path = agent.path("big.bin");

    let chunks = (0..TOTAL / CHUNK).map(|index| {
        let data: Vec<u8> = (index * CHUNK..(index + 1) * CHUNK)
            .map(pattern_byte)
            .collect();
        Ok::<_, BoxError>(Frame::data(Bytes::from(data)))
    });
    let body = StreamBody::new(stream::iter(chunks)).boxed();
    agent.client.write_file(&path, body).await.unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), TOTAL);

    let mut body = agent.client.read_file(&path).await.unwrap();
    let mut offset = 0u64;
    let mut largest_frame = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        largest_frame = largest_frame.max(data.len());
        for &byte in data.iter() {
            assert_eq!(byte, pattern_byte(offset), "byte at offset {offset}");
            offset += 1;
        }
    }
    assert_eq!(offset, TOTAL);
    assert!(
        largest_frame <= 1024 * 1024,
        "frame of {largest_frame} bytes"
    );
}

#[tokio::test]
async fn list_sorts_and_types_entries() {
    let agent = TestAgent::start().await;
    let dir = agent.path("tree");
    agent
        .client
        .make_dir(&format!("{dir}/b/sub"))
        .await
        .unwrap();
    std::fs::write(format!("{dir}/c.txt"), "12345").unwrap();
    std::os::unix::fs::symlink("/does/not/exist", format!("{dir}/a-link")).unwrap();

    let list = agent.client.list_files(&dir).await.unwrap();
    let summary: Vec<(String, FileType)> = list
        .entries
        .iter()
        .map(|entry| (entry.name.clone(), entry.file_type))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("a-link".to_owned(), FileType::Symlink),
            ("b".to_owned(), FileType::Dir),
            ("c.txt".to_owned(), FileType::File),
        ]
    );
    assert_eq!(list.entries[2].size, 5);
    assert_eq!(list.entries[2].path, format!("{dir}/c.txt"));
}

#[tokio::test]
async fn remove_deletes_tree_file_and_link() {
    let agent = TestAgent::start().await;
    let dir = agent.path("gone");
    std::fs::create_dir_all(format!("{dir}/x/y")).unwrap();
    std::fs::write(format!("{dir}/x/y/f"), "f").unwrap();
    let file = agent.path("file");
    std::fs::write(&file, "f").unwrap();
    let link = agent.path("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();

    agent.client.remove(&dir).await.unwrap();
    agent.client.remove(&link).await.unwrap();
    assert!(!std::path::Path::new(&dir).exists());
    assert!(std::fs::symlink_metadata(&link).is_err());
    assert!(
        std::path::Path::new(&file).exists(),
        "removing a link keeps its target"
    );

    agent.client.remove(&file).await.unwrap();
    assert!(!std::path::Path::new(&file).exists());
}

#[tokio::test]
async fn file_errors_have_status_and_code() {
    let agent = TestAgent::start().await;
    let file = agent.path("plain");
    std::fs::write(&file, "x").unwrap();
    let missing = agent.path("missing");
    let dir = agent.path("");
    let dir = dir.trim_end_matches('/');

    let (status, code, message) = remote(agent.client.read_file(&missing).await.unwrap_err());
    assert_eq!((status, code.as_str()), (404, "not_found"));
    assert_eq!(message, format!("file `{missing}` does not exist"));

    let (status, code, _) = remote(agent.client.read_file(dir).await.unwrap_err());
    assert_eq!((status, code.as_str()), (400, "is_a_directory"));

    let (status, code, message) = remote(agent.client.read_file("relative/x").await.unwrap_err());
    assert_eq!((status, code.as_str()), (400, "invalid_path"));
    assert_eq!(
        message,
        "path `relative/x` is not absolute; use an absolute path such as `/tmp/file`"
    );

    let (status, code, _) = remote(agent.client.list_files(&file).await.unwrap_err());
    assert_eq!((status, code.as_str()), (400, "not_a_directory"));

    let (status, code, _) = remote(agent.client.make_dir(&file).await.unwrap_err());
    assert_eq!((status, code.as_str()), (409, "already_exists"));

    let (status, code, _) = remote(
        agent
            .client
            .write_file(&format!("{file}/child"), bytes_body("x"))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (400, "not_a_directory"));

    let (status, code, _) = remote(
        agent
            .client
            .write_file(dir, bytes_body("x"))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (400, "is_a_directory"));

    let (status, code, _) = remote(agent.client.remove(&missing).await.unwrap_err());
    assert_eq!((status, code.as_str()), (404, "not_found"));
}

#[tokio::test]
async fn handshake_skips_stale_bytes_on_same_stream() {
    let agent = TestAgent::start().await;
    let mut stream = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .unwrap();

    // What an earlier host may have left on a serial port: a hello it gave up on, then binary
    // HTTP/2 bytes without a newline.
    let mut stale = format!("GITVM-HELLO {}\n", "0f".repeat(16)).into_bytes();
    stale.extend((0..5000u32).map(|i| (i % 200) as u8 + 20));
    stream.write_all(&stale).await.unwrap();

    let client = AgentClient::connect(stream).await.unwrap();
    let health = client.health().await.unwrap();
    assert_eq!(health.pid, std::process::id());
}
