//! The process table: one entry per background process, with its replay buffer, its live
//! output broadcast and its exit status.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use gitvm_proto::{ExecEvent, ProcessInfo, ProcessList, ProcessState};
use http::StatusCode;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::net::unix::pipe;
use tokio::sync::{broadcast, watch};

use super::super::exec::{Output, Running};
use super::super::ApiError;

/// Maximum bytes of output chunks kept per process for followers that connect later; the
/// oldest chunks are dropped first.
pub(in crate::server) const REPLAY_LIMIT: usize = 1024 * 1024;

/// Chunks a live follower may fall behind before it loses the oldest of them. With chunks of
/// at most 32 KiB this keeps at most 2 MiB per process.
pub(in crate::server) const BROADCAST_CAPACITY: usize = 64;

/// Exited processes kept in the table; older ones are forgotten.
pub(in crate::server) const EXITED_KEPT: usize = 100;

/// The table of every background process. Process-wide because the routes are free functions
/// shared by every connection.
static TABLE: Mutex<Table> = Mutex::new(Table {
    entries: BTreeMap::new(),
    exited: VecDeque::new(),
});

/// Start order of entries, so that lists and tag lookups do not depend on pid order.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

struct Table {
    entries: BTreeMap<u32, Arc<Entry>>,
    /// Pids of exited entries, oldest exit first.
    exited: VecDeque<u32>,
}

fn table() -> MutexGuard<'static, Table> {
    TABLE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An event broadcast to live followers.
#[derive(Debug, Clone)]
pub(super) enum Event {
    /// Bytes the process wrote to stdout or stderr.
    Chunk { stderr: bool, bytes: Bytes },
    /// The shell exited; nothing follows.
    Exit(ExitInfo),
}

/// Exit status of a background process.
#[derive(Debug, Clone)]
pub(super) struct ExitInfo {
    /// Exit status; `None` when the reaper lost it.
    exit_code: Option<i32>,
    signal: Option<String>,
    timed_out: bool,
    duration_ms: u64,
    exited_at: OffsetDateTime,
}

impl ExitInfo {
    /// Builds the `exit` event of an output stream.
    pub(super) fn event(&self) -> ExecEvent {
        ExecEvent::Exit {
            // NOTE: a lost exit status, which only a reaper failure causes, is sent as -1
            // because the event's exit code is not optional.
            exit_code: self.exit_code.unwrap_or(-1),
            signal: self.signal.clone(),
            timed_out: self.timed_out,
            duration_ms: self.duration_ms,
        }
    }
}

/// Output kept for followers, and the exit status once known.
struct Recorded {
    replay: VecDeque<(bool, Bytes)>,
    replay_bytes: usize,
    exit: Option<ExitInfo>,
}

/// One background process.
pub(super) struct Entry {
    /// Process id of the shell, which is also its process group id.
    pub(super) pid: u32,
    /// Tag given at start.
    pub(super) tag: Option<String>,
    command: String,
    started_at: OffsetDateTime,
    sequence: u64,
    recorded: Mutex<Recorded>,
    events: broadcast::Sender<Event>,
    /// Write end of the process's stdin; `None` once closed.
    pub(super) stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
    /// Becomes true when the shell exits.
    pub(super) exited: watch::Sender<bool>,
}

impl Entry {
    fn recorded(&self) -> MutexGuard<'_, Recorded> {
        self.recorded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Describes the process as the API returns it.
    pub(super) fn info(&self) -> ProcessInfo {
        let recorded = self.recorded();
        let exit = recorded.exit.as_ref();
        ProcessInfo {
            pid: self.pid,
            tag: self.tag.clone(),
            command: self.command.clone(),
            state: if exit.is_some() {
                ProcessState::Exited
            } else {
                ProcessState::Running
            },
            exit_code: exit.and_then(|exit| exit.exit_code),
            signal: exit.and_then(|exit| exit.signal.clone()),
            timed_out: exit.is_some_and(|exit| exit.timed_out),
            started_at: format_time(self.started_at),
            exited_at: exit.map(|exit| format_time(exit.exited_at)),
        }
    }

    /// Returns a copy of the replay buffer, the exit status if the process has exited, and a
    /// receiver of every event after that copy. Taken under one lock, so that no chunk is
    /// missed or repeated between the replay and the live events.
    pub(super) fn follow(
        &self,
    ) -> (
        Vec<(bool, Bytes)>,
        Option<ExitInfo>,
        broadcast::Receiver<Event>,
    ) {
        let recorded = self.recorded();
        let live = self.events.subscribe();
        (
            recorded.replay.iter().cloned().collect(),
            recorded.exit.clone(),
            live,
        )
    }

    fn push_chunk(&self, stderr: bool, bytes: Bytes) {
        let mut recorded = self.recorded();
        recorded.replay_bytes += bytes.len();
        recorded.replay.push_back((stderr, bytes.clone()));
        while recorded.replay_bytes > REPLAY_LIMIT {
            let Some((_, dropped)) = recorded.replay.pop_front() else {
                break;
            };
            recorded.replay_bytes -= dropped.len();
        }
        // An error only means that no follower is connected.
        let _ = self.events.send(Event::Chunk { stderr, bytes });
    }

    fn finish(&self, exit: ExitInfo) {
        let mut recorded = self.recorded();
        recorded.exit = Some(exit.clone());
        let _ = self.events.send(Event::Exit(exit));
        drop(recorded);
        self.exited.send_replace(true);
    }
}

/// Formats a time as RFC 3339 UTC with whole seconds, as the node API does.
fn format_time(at: OffsetDateTime) -> String {
    let whole = at.replace_nanosecond(0).unwrap_or(at);
    whole
        .format(&Rfc3339)
        .unwrap_or_else(|_| whole.unix_timestamp().to_string())
}

/// Spawns a process with `spawn` and records it under `tag`, unless a running process already
/// has that tag (409 `tag_in_use`). `spawn` returns the running command, its stdin pipe and
/// its command line.
pub(super) fn insert_with(
    tag: Option<&str>,
    spawn: impl FnOnce() -> Result<(Running, Option<pipe::Sender>, String), ApiError>,
) -> Result<Arc<Entry>, ApiError> {
    let mut table = table();
    if let Some(tag) = tag {
        let holder = table
            .entries
            .values()
            .find(|entry| entry.tag.as_deref() == Some(tag) && entry.recorded().exit.is_none());
        if let Some(holder) = holder {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "tag_in_use",
                format!(
                    "tag `{tag}` is in use by running process {}; stop it first or choose another tag",
                    holder.pid
                ),
            ));
        }
    }

    let (running, stdin, command) = spawn()?;
    let Running { pid, mut output } = running;
    let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
    let entry = Arc::new(Entry {
        pid,
        tag: tag.map(str::to_owned),
        command,
        started_at: OffsetDateTime::now_utc(),
        sequence: SEQUENCE.fetch_add(1, Ordering::Relaxed),
        recorded: Mutex::new(Recorded {
            replay: VecDeque::new(),
            replay_bytes: 0,
            exit: None,
        }),
        events,
        stdin: tokio::sync::Mutex::new(stdin),
        exited: watch::Sender::new(false),
    });

    // The kernel may reuse the pid of an exited entry, which the new process then replaces.
    if table.entries.insert(pid, Arc::clone(&entry)).is_some() {
        table.exited.retain(|&exited| exited != pid);
    }
    drop(table);

    let driven = Arc::clone(&entry);
    tokio::spawn(async move {
        while let Some(message) = output.recv().await {
            match message {
                Output::Chunk { stderr, bytes } => driven.push_chunk(stderr, Bytes::from(bytes)),
                Output::Exit(finished) => {
                    record_exit(&driven, finished);
                    return;
                }
            }
        }
    });
    Ok(entry)
}

fn record_exit(entry: &Arc<Entry>, finished: Result<super::super::exec::Finished, ApiError>) {
    let exit = match finished {
        Ok(finished) => {
            tracing::info!(pid = entry.pid, tag = ?entry.tag, exit_code = finished.exit_code, signal = ?finished.signal, "background process exited");
            ExitInfo {
                exit_code: Some(finished.exit_code),
                signal: finished.signal,
                timed_out: finished.timed_out,
                duration_ms: finished.duration_ms,
                exited_at: OffsetDateTime::now_utc(),
            }
        }
        Err(error) => {
            tracing::warn!(pid = entry.pid, code = %error.body.code, message = %error.body.message, "background process exit status lost");
            ExitInfo {
                exit_code: None,
                signal: None,
                timed_out: false,
                duration_ms: 0,
                exited_at: OffsetDateTime::now_utc(),
            }
        }
    };
    entry.finish(exit);

    let mut table = table();
    // Only the current entry of this pid moves to the exited list; a newer one may hold it.
    if table
        .entries
        .get(&entry.pid)
        .is_some_and(|current| Arc::ptr_eq(current, entry))
    {
        table.exited.push_back(entry.pid);
    }
    while table.exited.len() > EXITED_KEPT {
        if let Some(oldest) = table.exited.pop_front() {
            table.entries.remove(&oldest);
        }
    }
}

/// Finds the entry whose pid is `selector`, or else the running entry tagged `selector`, or
/// else the most recently started exited entry with that tag.
pub(super) fn find(selector: &str) -> Option<Arc<Entry>> {
    let table = table();
    if let Ok(pid) = selector.parse::<u32>() {
        return table.entries.get(&pid).cloned();
    }
    let tagged = table
        .entries
        .values()
        .filter(|entry| entry.tag.as_deref() == Some(selector));
    tagged
        .max_by_key(|entry| (entry.recorded().exit.is_none(), entry.sequence))
        .cloned()
}

/// Lists running processes and the last [`EXITED_KEPT`] exited ones, oldest start first.
pub(super) fn list() -> ProcessList {
    let mut entries: Vec<Arc<Entry>> = table().entries.values().cloned().collect();
    entries.sort_by_key(|entry| entry.sequence);
    ProcessList {
        processes: entries.iter().map(|entry| entry.info()).collect(),
    }
}
