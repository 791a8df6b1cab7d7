//! [`SqliteEventStore`]: the embedded default. One file (or `:memory:`), WAL mode, the schema
//! created on connect.
//!
//! Appends run on a single writer connection (SQLite has one writer at a time anyway), each as
//! one `INSERT ... SELECT` statement that checks the expected version and inserts the batch:
//! SQLite takes the write lock when such a statement starts, so the check and the insert are
//! atomic (the `UNIQUE (aggregate_type, aggregate_id, version)` constraint backs it up). A batch
//! too large for one statement runs in a `BEGIN IMMEDIATE` transaction instead. Reads go through a separate pool of reader connections, which WAL lets run while a
//! write is in progress.

use super::warm::Warm;
use super::{
    AppendResult, AppendSignal, Columns, EventRow, EventStore, ExpectedVersion, FoldEnd, FoldItem,
    LeanRow, LogHead, PageRow, Position, ReadAll, RowDetails, RowReader, StreamCache, StreamId,
    StreamQuery, extra_json, feed_row, feed_stream_row, paged, retried_append, row_view,
    snapshot_row,
};
use crate::checkpoint::{CheckpointStore, DeadLetter, TransactionalStore};
use crate::context::ContextFields;
use crate::error::{Error, Result};
use crate::event::{EventView, NewEvent, RecordedEvent};
use crate::snapshot::{Snapshot, SnapshotStore};
use futures::stream::BoxStream;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// An event store in an SQLite database. Cloning gives another handle to the same pools.
#[derive(Clone, Debug)]
pub struct SqliteEventStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Reader connections kept between loads (see `store::warm`).
    readers: Warm<Sqlite>,
    appended: Arc<AppendSignal>,
    /// The database file, beside which leases are locked (`None`: `:memory:`).
    file: Option<Arc<std::path::PathBuf>>,
    leases: crate::checkpoint::LocalLeases,
    /// The committer of [`with_group_commit`](Self::with_group_commit), if on.
    group: Option<crate::store::group::GroupCommit>,
}

/// The packed metadata column (see `EventRow`). The table's CHECK keeps `metadata` JSON, so
/// `json()` cannot fail here; JSON of the wrong shape is reported per row when unpacked. A NULL
/// `metadata` is packed as `{}`, so that JSON `null` stays apart from it (and is reported).
macro_rules! packed_metadata {
    () => {
        "CASE WHEN tenant_id IS NULL AND actor_id IS NULL AND correlation_id IS NULL \
         AND causation_id IS NULL AND metadata IS NULL THEN NULL \
         ELSE json_array(tenant_id, actor_id, lower(hex(correlation_id)), \
         lower(hex(causation_id)), json(coalesce(metadata, '{}'))) END"
    };
}

/// The checks every read path makes of the columns that a load or a fold of locations does not
/// decode, made by the database: the name of the first damaged column (`store::damaged_column`
/// says why), or NULL. In the order a whole read decodes them. The bounds are the microseconds
/// a `DateTime<Utc>` can hold (pinned by a test); a STRICT table keeps the types sound.
macro_rules! damage {
    () => {
        "CASE WHEN occurred_at NOT BETWEEN -8334601228800000000 AND 8210266876799999999 \
         THEN 'occurred_at' WHEN json_type(metadata) <> 'object' THEN 'metadata' \
         WHEN length(correlation_id) <> 16 THEN 'correlation_id' \
         WHEN length(causation_id) <> 16 THEN 'causation_id' END"
    };
}

/// The columns of a fold's page, row by row: the whole context, then `damage!()` (which a fold
/// of locations reads instead of the context).
macro_rules! fold_columns {
    () => {
        concat!(
            "position, aggregate_type, aggregate_id, version, event_type, schema_version, \
             payload, event_id, occurred_at, ",
            packed_metadata!(),
            ", ",
            damage!()
        )
    };
}

/// The columns of a stream read; a global read adds the stream's (at indexes 8 and 9).
macro_rules! stream_columns {
    () => {
        concat!(
            "position, event_id, version, event_type, schema_version, occurred_at, ",
            packed_metadata!(),
            ", payload"
        )
    };
}

mod append;
mod checkpoint;
mod framed;
mod read;
mod snapshot;

use append::*;
use framed::*;
#[cfg(feature = "fuzzing")]
pub(crate) use framed::{page_records, stream_records, stream_text};

impl SqliteEventStore {
    /// Opens (creating it if missing) the database at `url`: `sqlite://events.db`,
    /// `sqlite::memory:`, or a plain path. Creates the schema if it is missing.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url).map_err(Error::database("connect"))?;
        Self::connect_with(options).await
    }

    /// Opens (creating it if missing) the database file at `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with(SqliteConnectOptions::new().filename(path)).await
    }

    /// A private in-memory database: gone when the store (and its clones) are dropped.
    pub async fn in_memory() -> Result<Self> {
        Self::connect("sqlite::memory:").await
    }

    /// Opens a database with explicit options. WAL mode, `synchronous = FULL` (an append is
    /// durable when it returns) and a busy timeout are set on top of them; the schema is created
    /// if it is missing.
    pub async fn connect_with(options: SqliteConnectOptions) -> Result<Self> {
        // Two processes (or two stores) opening a new file at the same moment race to switch it
        // to WAL mode and to create the schema; the loser sees "database is locked" or the
        // winner's migration row. Both are over once the winner is done: try again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut delay = Duration::from_millis(5);
        loop {
            match Self::open_once(options.clone(), true).await {
                Err(error) if is_open_race(&error) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%error, "another connection is creating the database; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(200));
                }
                result => return result,
            }
        }
    }

    /// Opens an existing database as it is: neither the file nor the schema is created (see
    /// [`Inspect::schema_state`](crate::admin::Inspect::schema_state) to check for it).
    pub async fn open_existing(options: SqliteConnectOptions) -> Result<Self> {
        Self::open_once(options.create_if_missing(false), false).await
    }

    async fn open_once(options: SqliteConnectOptions, create: bool) -> Result<Self> {
        let in_memory = options.get_filename() == Path::new(":memory:");
        // Leases lock a file beside a database file; an in-memory database (`:memory:`, or the
        // shared-cache name sqlx gives `sqlite::memory:`) has none and locks in the process.
        let name = options.get_filename().to_string_lossy();
        let memory_name = name == ":memory:"
            || name.starts_with("file:sqlx-in-memory-")
            || name.contains("mode=memory");
        let file =
            (!in_memory && !memory_name).then(|| Arc::new(options.get_filename().to_path_buf()));
        let options = options
            .create_if_missing(create)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        // A database opened as it is keeps its journal mode: switching it would write to a file
        // that may not be an event store at all (ours are in WAL mode since their creation).
        let options = if create {
            options.journal_mode(SqliteJournalMode::Wal)
        } else {
            options
        };
        // One writer connection: appends queue in the pool instead of failing with SQLITE_BUSY.
        // An in-memory database lives in its connection, so it gets only that one connection.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(if in_memory { 1 } else { 0 })
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(Error::database("connect"))?;
        if create {
            sqlx::migrate!("./migrations/sqlite")
                .run(&writer)
                .await
                .map_err(|error| {
                    Error::Migration(crate::error::DatabaseError::from_migrate(error))
                })?;
        }
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .test_before_acquire(false)
                .connect_with(options.read_only(true))
                .await
                .map_err(Error::database("connect"))?
        };
        Ok(SqliteEventStore {
            file,
            writer,
            readers: Warm::new(reader.clone()),
            reader,
            appended: Arc::default(),
            leases: crate::checkpoint::LocalLeases::default(),
            group: None,
        })
    }

    /// Turns group commit on: appends made at the same time by several tasks are written
    /// together, one `BEGIN IMMEDIATE` ... `COMMIT` (one durable commit, one `fsync`) for all
    /// of them, each with its own expected-version check (a conflict fails that append alone).
    /// A lone writer commits alone, without waiting for company. Worth it when many tasks save
    /// at once; see BENCHMARKS.md (W5b) for what it gives.
    ///
    #[doc = crate::store::group::runtime_note!()]
    pub fn with_group_commit(self) -> Self {
        crate::store::group::turn_on(self, |store| &mut store.group)
    }

    /// The pool of reader connections, for queries of your own (read models in the same file).
    pub fn pool(&self) -> &SqlitePool {
        &self.reader
    }

    /// The pool of the one writer connection: for writes of your own to the same file (they
    /// queue with the store's appends instead of failing with "database is locked").
    pub fn writer_pool(&self) -> &SqlitePool {
        &self.writer
    }

    /// Closes every connection, waiting for those in use. When it returns, the database file is
    /// released: another process can open it at once.
    pub async fn close(&self) {
        // Move the write-ahead log into the database file first, so that what is left for the
        // last connection to do on close is quick, and the file is complete on its own even if
        // a reader of another process keeps the log alive.
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.writer)
            .await
        {
            tracing::debug!(%error, "checkpoint before close failed; closing anyway");
        }
        self.readers.clear();
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// How long one attempt waits for another connection's write lock before it fails with
/// `SQLITE_BUSY`, which the retry policy every SQL store follows tries again
/// ([`crate::store::retrying`]: its attempts, with backoff, make about 13 s in all).
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

impl SqliteEventStore {
    /// Runs `attempt` again while it fails with a retryable error, "database is busy"
    /// included ([`crate::store::retrying`]).
    pub(super) async fn retrying<T, F, Fut>(&self, operation: &'static str, attempt: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        crate::store::retrying(operation, || async {}, attempt).await
    }
}

/// Whether opening failed only because another connection is creating the same database.
fn is_open_race(error: &Error) -> bool {
    let code = match error {
        Error::Database { source, .. } | Error::Migration(source) => source.code(),
        _ => None,
    };
    // SQLITE_BUSY (5) and its extended codes; a unique violation on sqlx's migration table.
    matches!(code, Some("5" | "261" | "517" | "773" | "2067" | "1555"))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    /// `damage!()` accepts exactly the times a `DateTime<Utc>` can hold.
    #[test]
    fn damage_bounds_are_the_times_chrono_holds() {
        use chrono::{DateTime, Utc};
        let (min, max) = (
            DateTime::<Utc>::MIN_UTC.timestamp_micros(),
            DateTime::<Utc>::MAX_UTC.timestamp_micros(),
        );
        assert!(
            damage!().contains(&format!("BETWEEN {min} AND {max} ")),
            "{min} {max}"
        );
        assert!(DateTime::from_timestamp_micros(min).is_some());
        assert!(DateTime::from_timestamp_micros(max).is_some());
        assert!(DateTime::from_timestamp_micros(min - 1).is_none());
        assert!(DateTime::from_timestamp_micros(max + 1).is_none());
    }
}
