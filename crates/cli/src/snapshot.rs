//! `gitvm snapshot …`.

use std::process::ExitCode;

use anyhow::Result;
use gitvm_sdk::RestoreRequest;

use crate::args::{Connection, SnapshotCommand};
use crate::output::{print_json, print_snapshots};

pub async fn run(connection: &Connection, command: SnapshotCommand) -> Result<ExitCode> {
    let client = crate::vm::client(connection)?;
    match command {
        SnapshotCommand::Create { id, json } => {
            let snapshot = client.create_snapshot(&id).await?;
            if json {
                print_json(&snapshot)?;
            } else {
                println!("{}", snapshot.id);
            }
        }
        SnapshotCommand::List { json } => {
            let snapshots = client.list_snapshots().await?;
            if json {
                print_json(&snapshots)?;
            } else {
                print_snapshots(&snapshots);
            }
        }
        SnapshotCommand::Restore { id, timeout, json } => {
            let request = RestoreRequest {
                timeout,
                metadata: None,
            };
            let sandbox = client.restore_snapshot(&id, &request).await?;
            if json {
                print_json(&sandbox)?;
            } else {
                println!("{}", sandbox.id);
            }
        }
        SnapshotCommand::Rm { id } => {
            client.delete_snapshot(&id).await?;
            println!("{id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
