//! `gitvm vm files …`: streaming file transfer.

use std::path::Path;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use gitvm_sdk::Client;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use crate::args::FilesCommand;
use crate::output::{print_entries, print_json};

pub async fn run(client: &Client, command: FilesCommand) -> Result<()> {
    match command {
        FilesCommand::Get { id, path, local } => get(client, &id, &path, local.as_deref()).await,
        FilesCommand::Put { id, local, path } => put(client, &id, &local, &path).await,
        FilesCommand::Ls { id, path, json } => {
            let entries = client.list_files(&id, &path).await?;
            if json {
                print_json(&entries)
            } else {
                print_entries(&entries);
                Ok(())
            }
        }
        FilesCommand::Mkdir { id, path } => Ok(client.make_dir(&id, &path).await?),
        FilesCommand::Rm { id, path } => Ok(client.remove_file(&id, &path).await?),
    }
}

async fn get(client: &Client, id: &str, path: &str, local: Option<&Path>) -> Result<()> {
    let mut stream = client.read_file(id, path).await?;
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin> = match local {
        Some(local) if local != Path::new("-") => {
            let target = if local.is_dir() {
                local.join(file_name(path)?)
            } else {
                local.to_path_buf()
            };
            Box::new(
                tokio::fs::File::create(&target)
                    .await
                    .with_context(|| format!("cannot create local file {}", target.display()))?,
            )
        }
        _ => Box::new(tokio::io::stdout()),
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("download of {path} was interrupted"))?;
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    Ok(())
}

async fn put(client: &Client, id: &str, local: &Path, path: &str) -> Result<()> {
    let path = if path.ends_with('/') {
        let name = local
            .file_name()
            .filter(|_| local != Path::new("-"))
            .with_context(|| {
                format!(
                    "destination `{path}` is a directory; name the file to write standard input to"
                )
            })?;
        format!("{path}{}", name.to_string_lossy())
    } else {
        path.to_string()
    };
    let path = path.as_str();
    let body = if local == Path::new("-") {
        reqwest::Body::wrap_stream(ReaderStream::new(tokio::io::stdin()))
    } else {
        let file = tokio::fs::File::open(local)
            .await
            .with_context(|| format!("cannot open local file {}", local.display()))?;
        reqwest::Body::wrap_stream(ReaderStream::new(file))
    };
    client.write_file(id, path, body).await?;
    Ok(())
}

/// Last component of a sandbox path, for naming a download in a local directory.
fn file_name(path: &str) -> Result<&str> {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|name| !name.is_empty())
        .with_context(|| format!("`{path}` names no file to download"))
}
