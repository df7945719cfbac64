//! The files API: streamed reads and writes, listing, mkdir, delete, and their errors.

mod common;

use common::{api_error, Server};
use futures_util::StreamExt;
use gitvm_sdk::FileType;

#[tokio::test]
async fn large_file_round_trip_is_exact() {
    let server = Server::start();
    let id = server.create().await.id;
    // 48 MiB of a pattern that differs in every block, streamed both ways.
    let data: Vec<u8> = (0..48 * 1024 * 1024u32)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect();
    server
        .client
        .write_file(&id, "/work/big.bin", data.clone())
        .await
        .unwrap();
    let sum = server.exec(&id, "wc -c < /work/big.bin").await;
    assert_eq!(sum.stdout.trim(), data.len().to_string());
    let mut stream = server.client.read_file(&id, "/work/big.bin").await.unwrap();
    let mut back = Vec::with_capacity(data.len());
    while let Some(chunk) = stream.next().await {
        back.extend_from_slice(&chunk.unwrap());
    }
    assert!(back == data, "downloaded bytes differ from the upload");
}

#[tokio::test]
async fn directory_operations_and_errors() {
    let server = Server::start();
    let id = server.create().await.id;
    let client = &server.client;

    client.make_dir(&id, "/work/a/b/c").await.unwrap();
    client.make_dir(&id, "/work/a/b/c").await.unwrap();
    client
        .write_file(&id, "/work/a/file.txt", "abc")
        .await
        .unwrap();
    let entries = client.list_files(&id, "/work/a").await.unwrap();
    let names: Vec<(&str, FileType)> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.file_type))
        .collect();
    assert_eq!(
        names,
        vec![("b", FileType::Dir), ("file.txt", FileType::File)]
    );
    assert_eq!(entries[1].size, 3);
    assert_eq!(entries[1].mode & 0o777, 0o644);

    assert_eq!(
        api_error(client.list_files(&id, "/work/missing").await),
        (404, "not_found".to_string())
    );
    assert_eq!(
        api_error(client.list_files(&id, "/work/a/file.txt").await),
        (400, "not_a_directory".to_string())
    );
    assert_eq!(
        api_error(client.make_dir(&id, "/work/a/file.txt").await),
        (409, "already_exists".to_string())
    );
    assert_eq!(
        api_error(client.list_files(&id, "relative/path").await),
        (400, "invalid_path".to_string())
    );
    assert!(matches!(
        client.read_file(&id, "/work/nope.txt").await,
        Err(gitvm_sdk::Error::Api { status: 404, .. })
    ));
    assert!(matches!(
        client.read_file(&id, "/work/a").await,
        Err(gitvm_sdk::Error::Api { status: 400, .. })
    ));

    client
        .write_file(&id, "/work/a/file.txt", "replaced")
        .await
        .unwrap();
    assert_eq!(
        server.exec(&id, "cat /work/a/file.txt").await.stdout,
        "replaced"
    );

    client.remove_file(&id, "/work/a").await.unwrap();
    assert_eq!(
        api_error(client.list_files(&id, "/work/a").await),
        (404, "not_found".to_string())
    );
    assert_eq!(
        api_error(client.remove_file(&id, "/work/a").await),
        (404, "not_found".to_string())
    );
}

#[tokio::test]
async fn files_written_as_root_are_readable_by_exec_user() {
    let server = Server::start();
    let id = server.create().await.id;
    server
        .client
        .write_file(&id, "/tmp/shared.txt", "for everyone")
        .await
        .unwrap();
    let result = server
        .client
        .exec(
            &id,
            &gitvm_sdk::ExecRequest {
                command: "id -un; cat /tmp/shared.txt".into(),
                user: Some("nobody".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(result.stdout, "nobody\nfor everyone");
}
