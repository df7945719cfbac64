//! Printing API objects as tables or JSON, and parsing KEY=VALUE arguments.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use gitvm_sdk::{FileEntry, Sandbox, Snapshot};
use serde::Serialize;

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Parses repeated `KEY=VALUE` arguments of option `--{option}`.
pub fn parse_pairs(option: &str, pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("invalid --{option} `{pair}`: expected KEY=VALUE");
        };
        if key.is_empty() {
            bail!("invalid --{option} `{pair}`: the key before `=` is empty");
        }
        map.insert(key.to_string(), value.to_string());
    }
    Ok(map)
}

/// Prints sandboxes as an aligned table.
pub fn print_sandboxes(sandboxes: &[Sandbox]) {
    let rows: Vec<Vec<String>> = sandboxes
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.state.to_string(),
                s.template.clone(),
                s.vcpus.to_string(),
                format!("{} MiB", s.memory_mb),
                s.created_at.clone(),
                s.expires_at.clone().unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "STATE", "TEMPLATE", "VCPUS", "MEMORY", "CREATED", "EXPIRES",
        ],
        &rows,
    );
}

/// Prints one sandbox as `field: value` lines.
pub fn print_sandbox(s: &Sandbox) {
    println!("id:        {}", s.id);
    println!("state:     {}", s.state);
    if let Some(error) = &s.error {
        println!("error:     {error}");
    }
    println!("template:  {}", s.template);
    println!("runtime:   {}", s.runtime);
    println!("vcpus:     {}", s.vcpus);
    println!("memory:    {} MiB", s.memory_mb);
    println!(
        "network:   {}",
        if s.internet {
            "outbound"
        } else {
            "none (loopback only)"
        }
    );
    println!("created:   {}", s.created_at);
    println!(
        "expires:   {}",
        s.expires_at.as_deref().unwrap_or("never (timeout 0)")
    );
    if let Some(snapshot) = &s.snapshot_id {
        println!("snapshot:  {snapshot}");
    }
    for (key, value) in &s.env_vars {
        println!("env:       {key}={value}");
    }
    for (key, value) in &s.metadata {
        println!("metadata:  {key}={value}");
    }
}

/// Prints snapshots as an aligned table.
pub fn print_snapshots(snapshots: &[Snapshot]) {
    let rows: Vec<Vec<String>> = snapshots
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.sandbox_id.clone(),
                s.kind.as_str().to_string(),
                s.size_bytes.to_string(),
                s.created_at.clone(),
            ]
        })
        .collect();
    print_table(&["ID", "SANDBOX", "KIND", "BYTES", "CREATED"], &rows);
}

/// Prints directory entries as an aligned table.
pub fn print_entries(entries: &[FileEntry]) {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                format!("{:?}", e.file_type).to_lowercase(),
                format!("{:o}", e.mode),
                e.size.to_string(),
                e.modified_at.clone(),
                e.name.clone(),
            ]
        })
        .collect();
    print_table(&["TYPE", "MODE", "SIZE", "MODIFIED", "NAME"], &rows);
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
