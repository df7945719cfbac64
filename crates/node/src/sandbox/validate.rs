//! Checks of create and exec requests, so that bad values fail with a 400 that names the field,
//! the value and the allowed range before any runtime work starts.

use std::collections::BTreeMap;

use gitvm_proto::CreateSandboxRequest;

use super::{NodeError, Settings};

/// Default number of vCPUs of a new sandbox.
pub const DEFAULT_VCPUS: i64 = 1;

/// Default memory limit of a new sandbox, in MiB.
pub const DEFAULT_MEMORY_MB: i64 = 512;

/// Smallest memory limit a sandbox may have, in MiB.
pub const MIN_MEMORY_MB: i64 = 64;

/// Maximum time to live of a sandbox: 30 days, in seconds.
pub const MAX_TIMEOUT_SECS: i64 = 30 * 24 * 60 * 60;

/// Size limit of one argument or `KEY=VALUE` environment string passed to `execve`, in bytes
/// including the terminating NUL: Linux's MAX_ARG_STRLEN (32 pages of 4 KiB).
pub const MAX_ARG_BYTES: usize = 131_072;

/// Limit of the command plus all environment strings of one exec, in bytes. Linux allows a
/// quarter of the stack limit (2 MiB under the usual 8 MiB `ulimit -s`), so 1 MiB leaves room
/// for the variables the agent adds and for smaller stack limits.
pub const MAX_EXEC_ARGS_TOTAL: usize = 1024 * 1024;

/// Capacity of the host, the upper bound of what one sandbox may request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// CPUs this process may use.
    pub max_vcpus: i64,
    /// Total memory of the host, in MiB.
    pub max_memory_mb: i64,
}

impl HostLimits {
    /// Reads the CPU count available to this process and the host's total memory from
    /// `/proc/meminfo`. Falls back to 1 CPU and 1 GiB when either cannot be read.
    pub fn detect() -> Self {
        let max_vcpus = std::thread::available_parallelism()
            .map(|n| n.get() as i64)
            .unwrap_or(1);
        let max_memory_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| parse_mem_total_kib(&text))
            .map(|kib| kib / 1024)
            .unwrap_or(1024);
        Self {
            max_vcpus,
            max_memory_mb,
        }
    }
}

fn parse_mem_total_kib(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A create request with defaults filled in and every field checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateParams {
    /// Template name or image reference.
    pub template: String,
    /// Number of vCPUs.
    pub vcpus: i64,
    /// Memory limit in MiB.
    pub memory_mb: i64,
    /// Time to live in seconds; 0 means never.
    pub timeout: i64,
    /// Environment variables for every command.
    pub env_vars: BTreeMap<String, String>,
    /// Caller's labels.
    pub metadata: BTreeMap<String, String>,
    /// Whether the sandbox gets outbound network access.
    pub internet: bool,
}

/// Fills in defaults and checks every field of a create request.
pub fn create_request(
    request: CreateSandboxRequest,
    settings: &Settings,
) -> Result<CreateParams, NodeError> {
    let limits = settings.limits;

    let template = request
        .template
        .unwrap_or_else(|| settings.default_template.clone());
    if template.trim().is_empty() {
        return Err(NodeError::InvalidRequest(
            "invalid template ``: give a template name such as `base` or an image reference"
                .to_owned(),
        ));
    }

    let vcpus = request.vcpus.unwrap_or(DEFAULT_VCPUS);
    if !(1..=limits.max_vcpus).contains(&vcpus) {
        return Err(NodeError::InvalidRequest(format!(
            "invalid vcpus {vcpus}: must be a whole number from 1 to {} (the CPUs of this host)",
            limits.max_vcpus
        )));
    }

    let memory_mb = request.memory_mb.unwrap_or(DEFAULT_MEMORY_MB);
    if !(MIN_MEMORY_MB..=limits.max_memory_mb).contains(&memory_mb) {
        return Err(NodeError::InvalidRequest(format!(
            "invalid memoryMB {memory_mb}: must be from {MIN_MEMORY_MB} to {} MiB (the memory of this host)",
            limits.max_memory_mb
        )));
    }

    let timeout = timeout(request.timeout.unwrap_or(settings.default_timeout_secs))?;
    env_vars("envVars", &request.env_vars)?;

    Ok(CreateParams {
        template,
        vcpus,
        memory_mb,
        timeout,
        env_vars: request.env_vars,
        metadata: request.metadata,
        internet: request.internet.unwrap_or(true),
    })
}

/// Checks a time to live in seconds.
pub fn timeout(timeout: i64) -> Result<i64, NodeError> {
    if !(0..=MAX_TIMEOUT_SECS).contains(&timeout) {
        return Err(NodeError::InvalidRequest(format!(
            "invalid timeout {timeout}: must be from 0 (never expires) to {MAX_TIMEOUT_SECS} seconds (30 days)"
        )));
    }
    Ok(timeout)
}

/// Checks environment variables: keys non-empty without `=` or NUL, values without NUL, since
/// the kernel passes the environment as NUL-terminated `KEY=VALUE` strings, each entry under
/// [`MAX_ARG_BYTES`] and all of them together under [`MAX_EXEC_ARGS_TOTAL`].
pub fn env_vars(field: &str, env: &BTreeMap<String, String>) -> Result<(), NodeError> {
    for (key, value) in env {
        // The kernel counts the terminating NUL, so the text itself must stay below the limit.
        let entry_len = key.len() + 1 + value.len();
        if entry_len >= MAX_ARG_BYTES {
            return Err(NodeError::InvalidRequest(format!(
                "invalid {field} entry {}: `KEY=VALUE` is {entry_len} bytes, but Linux limits one \
                 environment string to less than {MAX_ARG_BYTES} bytes; pass large data as a file",
                shorten(key)
            )));
        }
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(NodeError::InvalidRequest(format!(
                "invalid {field} key {key:?}: keys must be non-empty and contain neither `=` nor NUL"
            )));
        }
        if value.contains('\0') {
            return Err(NodeError::InvalidRequest(format!(
                "invalid {field} value of {key:?}: values must not contain NUL"
            )));
        }
    }

    let total = env_total_bytes(env);
    if total >= MAX_EXEC_ARGS_TOTAL {
        return Err(NodeError::InvalidRequest(format!(
            "invalid {field}: its entries are {total} bytes together, over the limit of \
             {MAX_EXEC_ARGS_TOTAL} bytes for the environment and command of a process; pass large data as a file"
        )));
    }
    Ok(())
}

/// Checks an exec's command line: no NUL, under [`MAX_ARG_BYTES`] since it is one argument of
/// `sh -c`, and with the environment `env` it runs with under [`MAX_EXEC_ARGS_TOTAL`].
pub fn command(command: &str, env: &BTreeMap<String, String>) -> Result<(), NodeError> {
    if command.contains('\0') {
        return Err(NodeError::InvalidRequest(
            "invalid command: it contains a NUL byte, which no command line can carry".to_owned(),
        ));
    }
    if command.len() >= MAX_ARG_BYTES {
        return Err(NodeError::InvalidRequest(format!(
            "invalid command: it is {} bytes, but Linux limits one argument to less than \
             {MAX_ARG_BYTES} bytes; write a script with PUT /sandboxes/{{id}}/files and run that",
            command.len()
        )));
    }

    let total = command.len() + 1 + env_total_bytes(env);
    if total >= MAX_EXEC_ARGS_TOTAL {
        return Err(NodeError::InvalidRequest(format!(
            "invalid command and env: together with the sandbox's envVars they are {total} bytes, \
             over the limit of {MAX_EXEC_ARGS_TOTAL} bytes for the environment and command of a process; \
             pass large data as a file"
        )));
    }
    Ok(())
}

/// Size of the environment as `execve` copies it: `KEY=VALUE` strings with their NULs.
fn env_total_bytes(env: &BTreeMap<String, String>) -> usize {
    env.iter()
        .map(|(key, value)| key.len() + 1 + value.len() + 1)
        .sum()
}

/// Quotes `text` for a message, cut to its first 100 characters so that a huge value does not
/// flood the response.
fn shorten(text: &str) -> String {
    const SHOWN: usize = 100;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{:?}… ({} bytes)", &text[..end], text.len()),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_mem_total_kib;

    #[test]
    fn mem_total_parsed_from_meminfo() {
        let text = "MemTotal:       24683784 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_mem_total_kib(text), Some(24_683_784));
    }
}
