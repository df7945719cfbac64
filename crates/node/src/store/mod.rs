//! SQLite store of sandboxes, snapshots and the node's identity, in `<data_dir>/gitvm.db`.
//!
//! Deleted sandboxes stay as tombstones in state `deleted`, so a repeated `DELETE` and a `GET`
//! after deletion still find them. Queries are built at run time, and the schema comes from the
//! migrations in `crates/node/migrations`, applied at open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use gitvm_proto::{Sandbox, SandboxState, Snapshot, SnapshotKind};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::Row;
use time::OffsetDateTime;

use crate::{ids, timestamp};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "gitvm.db";

/// Failure of a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}; pick a writable one with --data-dir")]
    CreateDir {
        /// Directory that was being created.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// The database file could not be opened.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// Database file.
        path: PathBuf,
        /// The underlying error.
        source: sqlx::Error,
    },

    /// The schema could not be brought up to date.
    #[error("cannot apply database migrations to {path}: {source}")]
    Migrate {
        /// Database file.
        path: PathBuf,
        /// The underlying error.
        source: sqlx::migrate::MigrateError,
    },

    /// A query failed.
    #[error("database query `{operation}` failed: {source}")]
    Query {
        /// Purpose of the query, such as `insert sandbox`.
        operation: &'static str,
        /// The underlying error.
        source: sqlx::Error,
    },

    /// A row contains a value this version cannot read.
    #[error("row `{id}` in the database is invalid: {reason}")]
    Corrupt {
        /// Sandbox or snapshot id of the row.
        id: String,
        /// Description of the invalid value.
        reason: String,
    },
}

/// A sandbox row: the API view plus what only the node needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRecord {
    /// The sandbox as the API returns it.
    pub sandbox: Sandbox,
    /// Runtime image the sandbox boots from: the resolved template or a snapshot image.
    pub image: String,
}

/// A snapshot row: the API view plus the runtime's reference to its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The snapshot as the API returns it.
    pub snapshot: Snapshot,
    /// Runtime reference to restore from, such as a Docker image id.
    pub image: String,
}

/// Filter of [`Store::list_sandboxes`]; deleted sandboxes are listed only when `state` is
/// `deleted`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxFilter {
    /// Only sandboxes in this state.
    pub state: Option<SandboxState>,
    /// Only sandboxes whose metadata has every one of these entries.
    pub metadata: BTreeMap<String, String>,
}

/// Handle to the node's SQLite database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

fn query_error(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { operation, source }
}

impl Store {
    /// Opens `<data_dir>/gitvm.db`, creating the directory and the file when missing, and
    /// applies pending migrations.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);

        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Concurrent writers wait for each other instead of failing with SQLITE_BUSY.
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;

        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate { path, source })?;
        Ok(Self { pool })
    }

    /// Returns this node's id, generating and storing a random one at first call.
    pub async fn node_id(&self) -> Result<String, StoreError> {
        sqlx::query("INSERT OR IGNORE INTO node (singleton, node_id, created_at) VALUES (1, ?, ?)")
            .bind(ids::node_id())
            .bind(timestamp::format(timestamp::now()))
            .execute(&self.pool)
            .await
            .map_err(query_error("insert node id"))?;
        let row = sqlx::query("SELECT node_id FROM node WHERE singleton = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(query_error("select node id"))?;
        row.try_get("node_id").map_err(query_error("read node id"))
    }

    /// Inserts a new sandbox row.
    pub async fn insert_sandbox(&self, record: &SandboxRecord) -> Result<(), StoreError> {
        let sandbox = &record.sandbox;
        sqlx::query(
            "INSERT INTO sandboxes (id, template, runtime, state, vcpus, memory_mb, timeout, \
             env_vars, metadata, image, snapshot_id, error, created_at, expires_at, updated_at, \
             internet) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&sandbox.id)
        .bind(&sandbox.template)
        .bind(&sandbox.runtime)
        .bind(sandbox.state.as_str())
        .bind(sandbox.vcpus)
        .bind(sandbox.memory_mb)
        .bind(sandbox.timeout)
        .bind(to_json(&sandbox.env_vars))
        .bind(to_json(&sandbox.metadata))
        .bind(&record.image)
        .bind(&sandbox.snapshot_id)
        .bind(&sandbox.error)
        .bind(&sandbox.created_at)
        .bind(&sandbox.expires_at)
        .bind(timestamp::format(timestamp::now()))
        .bind(sandbox.internet)
        .execute(&self.pool)
        .await
        .map_err(query_error("insert sandbox"))?;
        Ok(())
    }

    /// Fetches one sandbox, tombstones included.
    pub async fn get_sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM sandboxes WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("select sandbox"))?;
        row.map(|row| sandbox_from_row(&row)).transpose()
    }

    /// Lists sandboxes that match `filter`, oldest first. Tombstones are left out unless the
    /// filter selects state `deleted`.
    pub async fn list_sandboxes(
        &self,
        filter: &SandboxFilter,
    ) -> Result<Vec<SandboxRecord>, StoreError> {
        let rows = match filter.state {
            Some(state) => {
                sqlx::query("SELECT * FROM sandboxes WHERE state = ? ORDER BY rowid")
                    .bind(state.as_str())
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                sqlx::query("SELECT * FROM sandboxes WHERE state != 'deleted' ORDER BY rowid")
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(query_error("list sandboxes"))?;

        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            let record = sandbox_from_row(row)?;
            let metadata = &record.sandbox.metadata;
            let matches = filter
                .metadata
                .iter()
                .all(|(key, value)| metadata.get(key) == Some(value));
            if matches {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Sets a sandbox's state and its error reason; `error` of `None` clears the reason.
    /// Returns false when no sandbox has this id.
    pub async fn set_state(
        &self,
        id: &str,
        state: SandboxState,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let result =
            sqlx::query("UPDATE sandboxes SET state = ?, error = ?, updated_at = ? WHERE id = ?")
                .bind(state.as_str())
                .bind(error)
                .bind(timestamp::format(timestamp::now()))
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(query_error("update sandbox state"))?;
        Ok(result.rows_affected() == 1)
    }

    /// Sets a sandbox's time to live and expiry time; `expires_at` of `None` means never.
    /// Returns false when no sandbox has this id.
    pub async fn set_expiry(
        &self,
        id: &str,
        timeout: i64,
        expires_at: Option<&str>,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE sandboxes SET timeout = ?, expires_at = ?, updated_at = ? WHERE id = ?",
        )
        .bind(timeout)
        .bind(expires_at)
        .bind(timestamp::format(timestamp::now()))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query_error("update sandbox expiry"))?;
        Ok(result.rows_affected() == 1)
    }

    /// Sets the creation and expiry times of a sandbox that has just started running, so that
    /// its time to live counts from then. Returns false when no sandbox has this id.
    pub async fn set_started(
        &self,
        id: &str,
        created_at: &str,
        expires_at: Option<&str>,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE sandboxes SET created_at = ?, expires_at = ?, updated_at = ? WHERE id = ?",
        )
        .bind(created_at)
        .bind(expires_at)
        .bind(timestamp::format(timestamp::now()))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query_error("update sandbox start time"))?;
        Ok(result.rows_affected() == 1)
    }

    /// Lists the ids of sandboxes, not yet deleted, whose expiry time is at or before `now`.
    pub async fn expired_sandboxes(&self, now: OffsetDateTime) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM sandboxes WHERE state != 'deleted' AND expires_at IS NOT NULL \
             AND expires_at <= ? ORDER BY expires_at",
        )
        .bind(timestamp::format(now))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("select expired sandboxes"))?;
        rows.iter()
            .map(|row| {
                row.try_get("id")
                    .map_err(query_error("read expired sandbox id"))
            })
            .collect()
    }

    /// Counts sandboxes per state, tombstones included.
    pub async fn count_by_state(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM sandboxes GROUP BY state")
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("count sandboxes by state"))?;
        let mut counts = BTreeMap::new();
        for row in &rows {
            let state: String = row.try_get("state").map_err(query_error("read state"))?;
            let count: i64 = row.try_get("n").map_err(query_error("read state count"))?;
            counts.insert(state, count);
        }
        Ok(counts)
    }

    /// Inserts a snapshot row.
    pub async fn insert_snapshot(&self, record: &SnapshotRecord) -> Result<(), StoreError> {
        let snapshot = &record.snapshot;
        // SQLite integers are signed; sizes past i64::MAX do not occur.
        let size = i64::try_from(snapshot.size_bytes).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO snapshots (id, sandbox_id, runtime, kind, image, size_bytes, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&snapshot.id)
        .bind(&snapshot.sandbox_id)
        .bind(&snapshot.runtime)
        .bind(snapshot.kind.as_str())
        .bind(&record.image)
        .bind(size)
        .bind(&snapshot.created_at)
        .execute(&self.pool)
        .await
        .map_err(query_error("insert snapshot"))?;
        Ok(())
    }

    /// Fetches one snapshot.
    pub async fn get_snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM snapshots WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("select snapshot"))?;
        row.map(|row| snapshot_from_row(&row)).transpose()
    }

    /// Lists every snapshot, oldest first.
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM snapshots ORDER BY rowid")
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("list snapshots"))?;
        rows.iter().map(snapshot_from_row).collect()
    }

    /// Removes a snapshot row. Returns false when no snapshot has this id.
    pub async fn delete_snapshot(&self, id: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM snapshots WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query_error("delete snapshot"))?;
        Ok(result.rows_affected() == 1)
    }
}

fn to_json(map: &BTreeMap<String, String>) -> String {
    serde_json::to_string(map).expect("a map of strings serializes to JSON")
}

fn from_json(id: &str, column: &str, text: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(text).map_err(|err| StoreError::Corrupt {
        id: id.to_owned(),
        reason: format!("column {column} is not a JSON object of strings: {err}"),
    })
}

fn sandbox_from_row(row: &SqliteRow) -> Result<SandboxRecord, StoreError> {
    let read = query_error("read sandbox row");
    let id: String = row.try_get("id").map_err(read)?;
    let get_text = |column: &'static str| -> Result<String, StoreError> {
        row.try_get(column).map_err(query_error("read sandbox row"))
    };
    let get_int = |column: &'static str| -> Result<i64, StoreError> {
        row.try_get(column).map_err(query_error("read sandbox row"))
    };
    let get_opt = |column: &'static str| -> Result<Option<String>, StoreError> {
        row.try_get(column).map_err(query_error("read sandbox row"))
    };

    let state_text = get_text("state")?;
    let state = SandboxState::from_str(&state_text).map_err(|reason| StoreError::Corrupt {
        id: id.clone(),
        reason,
    })?;
    let env_vars = from_json(&id, "env_vars", &get_text("env_vars")?)?;
    let metadata = from_json(&id, "metadata", &get_text("metadata")?)?;

    let sandbox = Sandbox {
        template: get_text("template")?,
        runtime: get_text("runtime")?,
        state,
        vcpus: get_int("vcpus")?,
        memory_mb: get_int("memory_mb")?,
        timeout: get_int("timeout")?,
        env_vars,
        metadata,
        created_at: get_text("created_at")?,
        expires_at: get_opt("expires_at")?,
        snapshot_id: get_opt("snapshot_id")?,
        internet: row
            .try_get("internet")
            .map_err(query_error("read sandbox row"))?,
        error: get_opt("error")?,
        id,
    };
    Ok(SandboxRecord {
        sandbox,
        image: get_text("image")?,
    })
}

fn snapshot_from_row(row: &SqliteRow) -> Result<SnapshotRecord, StoreError> {
    let read = || query_error("read snapshot row");
    let id: String = row.try_get("id").map_err(read())?;
    let kind_text: String = row.try_get("kind").map_err(read())?;
    let kind = match kind_text.as_str() {
        "filesystem" => SnapshotKind::Filesystem,
        "full" => SnapshotKind::Full,
        other => {
            return Err(StoreError::Corrupt {
                id,
                reason: format!("unknown snapshot kind `{other}`"),
            })
        }
    };
    let size: i64 = row.try_get("size_bytes").map_err(read())?;

    let snapshot = Snapshot {
        sandbox_id: row.try_get("sandbox_id").map_err(read())?,
        runtime: row.try_get("runtime").map_err(read())?,
        kind,
        size_bytes: u64::try_from(size).unwrap_or(0),
        created_at: row.try_get("created_at").map_err(read())?,
        id,
    };
    Ok(SnapshotRecord {
        snapshot,
        image: row.try_get("image").map_err(read())?,
    })
}
