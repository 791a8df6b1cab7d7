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
    StreamQuery, check_sequence, extra_json, feed_row, feed_stream_row, paged, retried_append,
    row_view, snapshot_row, validate_append,
};
use crate::checkpoint::{CheckpointStore, DeadLetter, TransactionalStore, conflict};
use crate::error::{Error, Result};
use crate::event::{EventView, NewEvent, RecordedEvent};
use crate::projection::ContextFields;
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
    group: Option<super::group::GroupCommit>,
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

/// Parameters per inserted row; SQLite allows 32,766 bound parameters per statement.
const INSERT_COLUMNS: usize = 13;
const ROWS_PER_INSERT: usize = 32_766 / INSERT_COLUMNS;
/// The most events appended by one statement (`append_statement`): its rows, plus the stream
/// and the expected version.
const ONE_STATEMENT_ROWS: usize = (32_766 - 8) / INSERT_COLUMNS;

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
            .busy_timeout(Duration::from_secs(10));
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
    /// Needs a Tokio runtime (the committer is a task of the runtime this is called on); outside
    /// one, the store is returned as it is. Clones made after this share the committer.
    pub fn with_group_commit(mut self) -> Self {
        let writer = SqliteEventStore {
            group: None,
            ..self.clone()
        };
        self.group = super::group::GroupCommit::start(writer);
        self
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

    /// An append that fits one statement (nearly every append): the version check and the
    /// insert are one `INSERT ... SELECT` in autocommit mode, which SQLite runs under the write
    /// lock from its start, so it is as atomic as `BEGIN IMMEDIATE`, check, insert and `COMMIT`,
    /// in one call to the database instead of four (each a hand-off to sqlx's worker thread).
    /// The five metadata columns are left out of the statement when no event of the batch has
    /// metadata, the common case: eight parameters per row instead of thirteen.
    async fn append_statement(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult> {
        let insert = checked_insert(stream, expected, events);
        let count = events.len() as u64;
        let done = match insert.execute(&self.writer).await {
            Ok(done) => Some(done),
            // The expected version did not hold: nothing was written.
            Err(err) if version_check_failed(&err) => None,
            Err(err) => {
                let mut conn = self
                    .writer
                    .acquire()
                    .await
                    .map_err(Error::database("append"))?;
                if !is_unique_violation(&err) {
                    return Err(Error::database("append")(err));
                }
                // The version was checked under the write lock, so the taken key is an event
                // id. Find which one (without reading the error text).
                if let Some(done) = stored_already(&mut conn, stream, expected, events).await? {
                    return Ok(done);
                }
                return Err(match taken_event_id(&mut conn, events).await? {
                    Some(event_id) => Error::DuplicateEvent {
                        stream: stream.clone(),
                        event_id,
                    },
                    None => Error::database("append")(err),
                });
            }
        };
        let Some(done) = done.filter(|done| done.rows_affected() == count) else {
            // The expected version did not hold: nothing was written.
            let mut conn = self
                .writer
                .acquire()
                .await
                .map_err(Error::database("append"))?;
            // An append retried after its outcome was lost finds its own events stored.
            if let Some(done) = stored_already(&mut conn, stream, expected, events).await? {
                return Ok(done);
            }
            let current = current_version(&mut conn, stream, "append").await?;
            return Err(expected.conflict(stream, current));
        };
        self.appended.notify();
        if let Some(stream_version) = known_version(expected, count) {
            return Ok(AppendResult {
                stream_version,
                last_position: Position::new(done.last_insert_rowid().max(0) as u64),
            });
        }
        let mut conn = self
            .writer
            .acquire()
            .await
            .map_err(Error::database("append"))?;
        appended(&mut conn, expected, count, &done).await
    }
}

/// The one-statement append (see `append_statement`): inserts `events` if the stream is at the
/// expected version, nothing otherwise.
///
/// `INSERT ... SELECT ... FROM (VALUES ...) WHERE <check>`, with the stream's version as a scalar
/// subquery: SQLite evaluates it once (a constant), reads it from the end of the stream's index,
/// and streams the `VALUES` rows into the insert in their order, so positions follow versions.
/// Because the statement reads the table it writes, SQLite still stages the rows in one temporary
/// table before inserting them. (The first form joined the rows to a subquery and sorted them by
/// version: `EXPLAIN` showed the rows copied three times before the insert, and the statement
/// cost twice SQLite's own work per row of a plain `INSERT ... VALUES`.) A single event, the
/// command path's usual append, needs no staging at all: see [`checked_insert_one`].
///
/// A failed check writes nothing: no row (`rows_affected` is 0), or, for a single event, the
/// error [`version_check_failed`] recognises.
fn checked_insert<'a>(
    stream: &'a StreamId,
    expected: ExpectedVersion,
    events: &'a [NewEvent],
) -> Statement<'a> {
    if let [event] = events {
        return checked_insert_one(stream, expected, event);
    }
    let with_metadata = events.iter().any(|event| !event.metadata.is_empty());
    let columns = if with_metadata { 11 } else { 6 };
    let mut insert = Statement::with_capacity(320 + events.len() * (2 * columns + 3));
    insert.sql(if with_metadata {
        "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, \
         schema_version, occurred_at, payload, tenant_id, actor_id, correlation_id, \
         causation_id, metadata) SELECT column1, "
    } else {
        "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, \
         schema_version, occurred_at, payload) SELECT column1, "
    });
    insert.bind(stream.aggregate_type());
    insert.sql(", ");
    insert.bind(stream.aggregate_id());
    insert.sql(", ");
    // The version before the batch: known from the expected version, or read.
    let current = |insert: &mut Statement<'a>| {
        insert.sql("(SELECT COALESCE(MAX(version), 0) FROM events WHERE aggregate_type = ");
        insert.bind(stream.aggregate_type());
        insert.sql(" AND aggregate_id = ");
        insert.bind(stream.aggregate_id());
        insert.sql(")");
    };
    match expected {
        ExpectedVersion::Exact(version) => insert.bind(to_i64(version)),
        ExpectedVersion::NoStream => insert.sql("0"),
        ExpectedVersion::Any | ExpectedVersion::StreamExists => current(&mut insert),
    }
    insert.sql(if with_metadata {
        " + column2, column3, column4, column5, column6, column7, column8, column9, column10, \
         column11 FROM (VALUES "
    } else {
        " + column2, column3, column4, column5, column6 FROM (VALUES "
    });
    for (i, event) in events.iter().enumerate() {
        insert.sql(if i == 0 { "(" } else { ", (" });
        insert.bind(event.event_id);
        insert.sql(", ");
        insert.bind(i as i64 + 1);
        insert.sql(", ");
        insert.event_columns(event, with_metadata);
        insert.sql(")");
    }
    insert.sql(")");
    match expected {
        ExpectedVersion::Any => {}
        ExpectedVersion::NoStream => {
            insert.sql(" WHERE ");
            current(&mut insert);
            insert.sql(" = 0");
        }
        ExpectedVersion::StreamExists => {
            insert.sql(" WHERE ");
            current(&mut insert);
            insert.sql(" > 0");
        }
        ExpectedVersion::Exact(version) => {
            insert.sql(" WHERE ");
            current(&mut insert);
            insert.sql(" = ");
            insert.bind(to_i64(version));
        }
    }
    insert
}

/// The one-statement append of a single event: `INSERT ... VALUES` of one row whose version is a
/// scalar subquery, NULL when the stream is not at the expected version, which the column's
/// `NOT NULL` refuses. One row of `VALUES` is not a `SELECT`, so SQLite inserts it directly: no
/// temporary table (whose set-up was a third of the instructions of a one-event append).
fn checked_insert_one<'a>(
    stream: &'a StreamId,
    expected: ExpectedVersion,
    event: &'a NewEvent,
) -> Statement<'a> {
    let with_metadata = !event.metadata.is_empty();
    let mut insert = Statement::with_capacity(512);
    insert.sql(if with_metadata {
        "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, \
         schema_version, occurred_at, payload, tenant_id, actor_id, correlation_id, \
         causation_id, metadata) VALUES ("
    } else {
        "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, \
         schema_version, occurred_at, payload) VALUES ("
    });
    insert.bind(event.event_id);
    insert.sql(", ");
    insert.bind(stream.aggregate_type());
    insert.sql(", ");
    insert.bind(stream.aggregate_id());
    // The new version, or NULL if the check fails.
    let of_stream = |insert: &mut Statement<'a>| {
        insert.sql(" FROM events WHERE aggregate_type = ");
        insert.bind(stream.aggregate_type());
        insert.sql(" AND aggregate_id = ");
        insert.bind(stream.aggregate_id());
    };
    match expected {
        ExpectedVersion::Exact(version) => {
            insert.sql(", (SELECT ");
            insert.bind(to_i64(version));
            insert.sql(" + 1 WHERE (SELECT COALESCE(MAX(version), 0)");
            of_stream(&mut insert);
            insert.sql(") = ");
            insert.bind(to_i64(version));
            insert.sql("), ");
        }
        ExpectedVersion::NoStream => {
            insert.sql(", (SELECT 1 WHERE NOT EXISTS (SELECT 1");
            of_stream(&mut insert);
            insert.sql(")), ");
        }
        ExpectedVersion::Any => {
            insert.sql(", (SELECT COALESCE(MAX(version), 0) + 1");
            of_stream(&mut insert);
            insert.sql("), ");
        }
        // `MAX` of no rows is NULL, and so is NULL + 1.
        ExpectedVersion::StreamExists => {
            insert.sql(", (SELECT MAX(version) + 1");
            of_stream(&mut insert);
            insert.sql("), ");
        }
    }
    insert.event_columns(event, with_metadata);
    insert.sql(")");
    insert
}

/// Whether a [`checked_insert`] of a single event failed its version check: its version was
/// NULL (`SQLITE_CONSTRAINT_NOTNULL`; every other column of the row is bound from a value that is
/// never NULL).
fn version_check_failed(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "1299")
}

/// A statement's text and its arguments, written together: `?` in the text for each bound value,
/// in order. (sqlx's `QueryBuilder` formats every placeholder and separator through
/// `core::fmt`, which cost a twentieth of a batch append's instructions in `callgrind`.)
struct Statement<'a> {
    sql: String,
    arguments: sqlx::sqlite::SqliteArguments<'a>,
    /// The first value that failed to encode, reported when the statement runs.
    failed: Option<sqlx::error::BoxDynError>,
}

impl<'a> Statement<'a> {
    fn with_capacity(capacity: usize) -> Self {
        Statement {
            sql: String::with_capacity(capacity),
            arguments: Default::default(),
            failed: None,
        }
    }

    fn sql(&mut self, text: &str) {
        self.sql.push_str(text);
    }

    fn bind<T>(&mut self, value: T)
    where
        T: 'a + sqlx::Encode<'a, Sqlite> + sqlx::Type<Sqlite>,
    {
        use sqlx::Arguments;
        if let Err(error) = self.arguments.add(value) {
            self.failed.get_or_insert(error);
        }
        self.sql.push('?');
    }

    /// Binds an event's columns from its type on, separated by commas: type, schema version,
    /// time, payload, and with `with_metadata` the five metadata columns.
    fn event_columns(&mut self, event: &'a NewEvent, with_metadata: bool) {
        self.bind(&*event.event_type);
        self.sql(", ");
        self.bind(event.schema_version);
        self.sql(", ");
        self.bind(event.occurred_at.timestamp_micros());
        self.sql(", ");
        self.bind(&*event.payload);
        if with_metadata {
            self.sql(", ");
            self.bind(event.metadata.tenant_id.as_deref());
            self.sql(", ");
            self.bind(event.metadata.actor_id.as_deref());
            self.sql(", ");
            self.bind(event.metadata.correlation_id);
            self.sql(", ");
            self.bind(event.metadata.causation_id);
            self.sql(", ");
            self.bind(extra_json(&event.metadata));
        }
    }

    /// Runs the statement on `executor`.
    async fn execute<'e, E>(
        self,
        executor: E,
    ) -> std::result::Result<sqlx::sqlite::SqliteQueryResult, sqlx::Error>
    where
        E: sqlx::Executor<'e, Database = Sqlite>,
    {
        if let Some(error) = self.failed {
            return Err(sqlx::Error::Encode(error));
        }
        sqlx::query_with(&self.sql, self.arguments)
            .execute(executor)
            .await
    }
}

/// The stream's version after an append of `count` events, where the expected version says it.
fn known_version(expected: ExpectedVersion, count: u64) -> Option<u64> {
    match expected {
        ExpectedVersion::Exact(version) => Some(version + count),
        ExpectedVersion::NoStream => Some(count),
        ExpectedVersion::Any | ExpectedVersion::StreamExists => None,
    }
}

/// The result of a `checked_insert` that wrote all its `count` events.
async fn appended(
    conn: &mut sqlx::SqliteConnection,
    expected: ExpectedVersion,
    count: u64,
    done: &sqlx::sqlite::SqliteQueryResult,
) -> Result<AppendResult> {
    let last_position = Position::new(done.last_insert_rowid().max(0) as u64);
    let stream_version = match known_version(expected, count) {
        Some(version) => version,
        // Where the stream was is known only to the statement: the last row says.
        None => {
            let version: i64 = sqlx::query_scalar("SELECT version FROM events WHERE position = ?")
                .bind(to_i64(last_position.get()))
                .fetch_one(conn)
                .await
                .map_err(Error::database("append"))?;
            version.max(0) as u64
        }
    };
    Ok(AppendResult {
        stream_version,
        last_position,
    })
}

impl super::group::GroupWriter for SqliteEventStore {
    const SAME_STREAM_TWICE: bool = true;
    const IN_FLIGHT: usize = 1;

    async fn write_group(&self, group: &[super::group::Pending]) -> Vec<super::group::Grouped> {
        use super::group::Grouped;
        let alone = || group.iter().map(|_| Grouped::Alone).collect();
        let Ok(mut tx) = self.writer.begin_with("BEGIN IMMEDIATE").await else {
            return alone();
        };
        let mut outcomes = Vec::with_capacity(group.len());
        for pending in group {
            let count = pending.events.len() as u64;
            let insert = checked_insert(&pending.stream, pending.expected, &pending.events);
            match insert.execute(&mut *tx).await {
                Ok(done) if done.rows_affected() == count => {
                    match appended(&mut tx, pending.expected, count, &done).await {
                        Ok(result) => outcomes.push(Grouped::Done(Ok(result))),
                        Err(_) => return alone(),
                    }
                }
                // The check failed (nothing written), or an event id is taken (SQLite undid the
                // statement, the transaction goes on): the caller finds out which on its own.
                Ok(_) => outcomes.push(Grouped::Alone),
                Err(err) if is_unique_violation(&err) || version_check_failed(&err) => {
                    outcomes.push(Grouped::Alone)
                }
                // Dropping the transaction rolls it back: nothing of the group is written.
                Err(_) => return alone(),
            }
        }
        match tx.commit().await {
            Ok(()) => outcomes,
            Err(_) => alone(),
        }
    }

    async fn write_one(&self, append: &super::group::Pending) -> Result<AppendResult> {
        self.append_inner(&append.stream, append.expected, &append.events)
            .await
    }

    fn committed(&self) {
        self.appended.notify();
    }
}

impl SqliteEventStore {
    async fn append_inner(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult> {
        if events.len() <= ONE_STATEMENT_ROWS {
            return self.append_statement(stream, expected, events).await;
        }
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::database("append"))?;
        let current = current_version(&mut tx, stream, "append").await?;
        if !expected.is_satisfied_by(current) {
            // An append retried after its outcome was lost finds its own events stored.
            if let Some(done) = stored_already(&mut tx, stream, expected, events).await? {
                return Ok(done);
            }
            return Err(expected.conflict(stream, current));
        }

        let mut last_position = Position::START;
        for (chunk_index, chunk) in events.chunks(ROWS_PER_INSERT).enumerate() {
            let first_version = current + (chunk_index * ROWS_PER_INSERT) as u64 + 1;
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, \
                 schema_version, occurred_at, tenant_id, actor_id, correlation_id, causation_id, \
                 metadata, payload) ",
            );
            insert.push_values(chunk.iter().enumerate(), |mut row, (i, event)| {
                row.push_bind(event.event_id)
                    .push_bind(stream.aggregate_type())
                    .push_bind(stream.aggregate_id())
                    .push_bind(to_i64(first_version + i as u64))
                    .push_bind(&*event.event_type)
                    .push_bind(event.schema_version)
                    .push_bind(event.occurred_at.timestamp_micros())
                    .push_bind(event.metadata.tenant_id.as_deref())
                    .push_bind(event.metadata.actor_id.as_deref())
                    .push_bind(event.metadata.correlation_id)
                    .push_bind(event.metadata.causation_id)
                    .push_bind(extra_json(&event.metadata))
                    .push_bind(&event.payload);
            });
            match insert.build().execute(&mut *tx).await {
                Ok(done) => last_position = Position::new(done.last_insert_rowid() as u64),
                Err(err) if is_unique_violation(&err) => {
                    // The version was checked under the write lock, so the taken key is an
                    // event id. Find which one (without reading the error text).
                    if let Some(done) = stored_already(&mut tx, stream, expected, events).await? {
                        return Ok(done);
                    }
                    let taken = taken_event_id(&mut tx, chunk).await?;
                    return Err(match taken {
                        Some(event_id) => Error::DuplicateEvent {
                            stream: stream.clone(),
                            event_id,
                        },
                        None => Error::database("append")(err),
                    });
                }
                Err(err) => return Err(Error::database("append")(err)),
            }
        }
        tx.commit().await.map_err(Error::database("append"))?;
        self.appended.notify();
        Ok(AppendResult {
            stream_version: current + events.len() as u64,
            last_position,
        })
    }

    /// One page of `read_all`: as one framed text with the whole context
    /// ([`FOLD_FRAMED_WHOLE`], as a fold's page), each record made into an owned event; from a
    /// record that does not parse (a damaged row) or for rows too large to frame together, the
    /// rest of the page row by row, where a damaged row is reported on its own.
    async fn read_page(&self, query: ReadAll) -> Result<Vec<PageRow>> {
        let mut rows = Vec::new();
        let mut after = query.after;
        if let Some(page) = self.framed_page(&query, true).await? {
            if page.count == 0 {
                return Ok(rows);
            }
            rows.reserve(page.count);
            let mut streams = StreamCache::default();
            for record in page.records(after, true) {
                let lean = record.lean;
                let Some(details) = lean.details else {
                    break;
                };
                let event = EventRow {
                    stream: streams
                        .get(record.aggregate_type, record.aggregate_id)
                        .clone(),
                    position: record.position,
                    event_id: details.event_id,
                    version: lean.version,
                    event_type: lean.event_type.to_owned(),
                    schema_version: lean.schema_version,
                    occurred_at: details.occurred_at,
                    metadata: details.metadata.map(str::to_owned),
                    payload: lean.payload.to_owned(),
                }
                .into_event();
                rows.push((record.position, Some(event)));
                after = record.position;
            }
            if rows.len() >= page.count {
                return Ok(rows);
            }
        }
        let rest = ReadAll {
            after,
            batch_size: query.batch_size.saturating_sub(rows.len()),
            ..query
        };
        for row in &self.fetch_page(&rest).await? {
            rows.push(decode_row(row, None)?);
        }
        Ok(rows)
    }

    /// The rows of one page of a global read: the stream columns, then the stream's.
    async fn fetch_page(&self, query: &ReadAll) -> Result<Vec<SqliteRow>> {
        let mut select = QueryBuilder::<Sqlite>::new(concat!(
            "SELECT ",
            stream_columns!(),
            ", aggregate_type, aggregate_id FROM events WHERE position > "
        ));
        select.push_bind(query.after.to_sql());
        push_filters(&mut select, query);
        select.push(" ORDER BY position LIMIT ");
        select.push_bind(to_i64(query.batch_size as u64));
        select
            .build()
            .fetch_all(&self.reader)
            .await
            .map_err(Error::database("read_all"))
    }
}

/// Appends the `ReadAll` filters to a `WHERE` clause.
fn push_filters(select: &mut QueryBuilder<'_, Sqlite>, query: &ReadAll) {
    // `IN (?, ?, ...)`: SQLite builds one lookup table per statement; a `json_each` subquery
    // cost a third of a projection's catch-up.
    for (column, values) in [
        ("event_type", &query.event_types),
        ("aggregate_type", &query.aggregate_types),
    ] {
        if values.is_empty() {
            continue;
        }
        select.push(format_args!(" AND {column} IN ("));
        let mut list = select.separated(", ");
        for value in values {
            list.push_bind(value.clone());
        }
        select.push(")");
    }
    if let Some(tenant) = &query.tenant_id {
        select.push(" AND tenant_id = ");
        select.push_bind(tenant.clone());
    }
}

/// A page of [`EventStore::fold_all`] as one framed text: SQLite concatenates the page's rows,
/// each a header of decimal integers (position, version, schema version, and the byte lengths
/// of the event type, aggregate type, aggregate id, payload and `damage!()`, -1 for NULL) ended
/// by `:`, then those texts. sqlx copies every column of every SQLite row into an allocation of its own and hands
/// each row over from its worker thread, which cost a projection's catch-up more than the
/// database's own work; a page as one value pays that once. The lengths make the framing exact
/// whatever the texts hold. This one reads locations only; [`FOLD_FRAMED_WHOLE`] the whole
/// context.
const FOLD_FRAMED: &str = concat!(
    "SELECT count(*), group_concat(concat(position, ',', version, ',', \
     schema_version, ',', octet_length(event_type), ',', octet_length(aggregate_type), ',', \
     octet_length(aggregate_id), ',', octet_length(payload), ',', \
     coalesce(octet_length(damage), -1), ':', event_type, aggregate_type, aggregate_id, \
     payload, damage), '' ORDER BY position) FROM (SELECT position, version, \
     schema_version, event_type, aggregate_type, aggregate_id, payload, ",
    damage!(),
    " AS damage FROM events WHERE position > "
);

/// [`FOLD_FRAMED`] with the whole context: the header has the time (microseconds) after the
/// schema version, and the lengths of the event id (in hex) and the packed metadata (-1 for
/// none) after the payload's; those two texts follow the payload.
const FOLD_FRAMED_WHOLE: &str = concat!(
    "SELECT count(*), group_concat(concat(position, ',', version, ',', schema_version, ',', \
     occurred_at, ',', octet_length(event_type), ',', octet_length(aggregate_type), ',', \
     octet_length(aggregate_id), ',', octet_length(payload), ',', octet_length(event_id) * 2, \
     ',', coalesce(octet_length(metadata), -1), ':', event_type, aggregate_type, aggregate_id, \
     payload, hex(event_id), metadata), '' ORDER BY position) FROM (SELECT position, version, \
     schema_version, occurred_at, event_type, aggregate_type, aggregate_id, payload, event_id, ",
    packed_metadata!(),
    " AS metadata FROM events WHERE position > "
);

/// The rest of a long stream as one framed text (see [`FOLD_FRAMED`]), each record a header
/// (position, version, schema version, then the byte lengths of the type, `damage!()` or -1 for
/// NULL, and the payload) and those texts.
const STREAM_FRAMED: &str = concat!(
    "SELECT count(*), group_concat(concat(position, ',', version, ',', \
     schema_version, ',', octet_length(event_type), ',', \
     coalesce(octet_length(damage), -1), ',', octet_length(payload), ':', event_type, \
     damage, payload), '' ORDER BY version) FROM (SELECT position, version, \
     event_type, schema_version, ",
    damage!(),
    " AS damage, payload FROM events \
     WHERE aggregate_type = ? AND aggregate_id = ? AND version BETWEEN ? AND ? \
     AND (? IS NULL OR occurred_at <= ?) ORDER BY version ASC LIMIT ?)"
);

/// A statement of a stream read with its parameters bound: the stream, the version range, the
/// time-travel bound (twice: `? IS NULL OR occurred_at <= ?`) and the row limit.
fn stream_query<'q>(
    sql: &'q str,
    stream: &'q StreamId,
    (from, to): (i64, i64),
    until: Option<i64>,
    limit: i64,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    sqlx::query(sql)
        .bind(stream.aggregate_type())
        .bind(stream.aggregate_id())
        .bind(from)
        .bind(to)
        .bind(until)
        .bind(until)
        .bind(limit)
}

/// The first framed text of a stream read of `stream` from version `from` (`STREAM_FRAMED`), as
/// `load` reads it after its first rows: what the fuzz targets' seeds are made of.
#[cfg(feature = "fuzzing")]
pub(crate) async fn stream_text(
    store: &SqliteEventStore,
    stream: &StreamId,
    from: i64,
) -> Result<Option<String>> {
    let row = stream_query(STREAM_FRAMED, stream, (from, i64::MAX), None, STREAM_CHUNK)
        .fetch_one(store.pool())
        .await
        .map_err(Error::database("load"))?;
    row.try_get(1).map_err(Error::database("load"))
}

/// How many rows a stream read reads row by row before it reads the rest as framed texts.
const STREAM_HEAD: i64 = 64;

/// How many rows of a stream one framed text holds at most.
const STREAM_CHUNK: i64 = 10_000;

/// Whether SQLite refused a value longer than its limit (`SQLITE_TOOBIG`): the rows of a
/// framed text were too large together, and are read row by row instead.
fn too_big(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .is_some_and(|code| code == "18")
}

/// One page of [`FOLD_FRAMED`]: how many rows it holds, and their records.
pub(crate) struct FramedPage {
    count: usize,
    row: SqliteRow,
}

impl FramedPage {
    /// The records; `None` if the text is not readable (not UTF-8: a damaged row, which the
    /// row-by-row read reports).
    pub(crate) fn text(&self) -> Option<&str> {
        self.row.try_get::<Option<&str>, _>(1).ok().flatten()
    }

    /// The page's records after position `after`, in order (with `details`, of a
    /// [`FOLD_FRAMED_WHOLE`] page). They end early at a record that does not parse or does not
    /// move past the one before it (which only a text the lengths do not describe could
    /// cause), and there are none if the text is not readable: the caller reads the rest of
    /// the page row by row.
    fn records(&self, after: Position, details: bool) -> impl Iterator<Item = Record<'_>> {
        page_records(self.text().unwrap_or_default(), after, details)
    }
}

/// The records of a page's text after position `after` (see [`FramedPage::records`]).
pub(crate) fn page_records(
    text: &str,
    after: Position,
    details: bool,
) -> impl Iterator<Item = Record<'_>> {
    let (mut at, mut last) = (0, after);
    std::iter::from_fn(move || {
        if at >= text.len() {
            return None;
        }
        let record = Record::next(text, &mut at, details).filter(|r| r.position > last)?;
        last = record.position;
        Some(record)
    })
}

/// One row of a [`FOLD_FRAMED`] page, borrowed from its text.
pub(crate) struct Record<'t> {
    pub(crate) position: Position,
    pub(crate) aggregate_type: &'t str,
    pub(crate) aggregate_id: &'t str,
    pub(crate) lean: LeanRow<'t>,
}

impl<'t> Record<'t> {
    /// The record at `at` of a page of [`FOLD_FRAMED`] (or of [`FOLD_FRAMED_WHOLE`], with
    /// `details`), which moves `at` past it; `None` if the text there is not a record.
    fn next(text: &'t str, at: &mut usize, details: bool) -> Option<Self> {
        let (position, version, schema_version, texts, more, damage) = if details {
            let ([position, version, schema_version, micros], texts) = framed::<4, 6>(text, at)?;
            let [texts @ .., Some(event_id), metadata] = texts else {
                return None;
            };
            let details = RowDetails {
                event_id: uuid::Uuid::try_parse(event_id).ok()?,
                occurred_at: chrono::DateTime::from_timestamp_micros(micros),
                metadata,
            };
            (
                position,
                version,
                schema_version,
                texts,
                Some(details),
                None,
            )
        } else {
            let ([position, version, schema_version], texts) = framed::<3, 5>(text, at)?;
            let [texts @ .., damage] = texts;
            (position, version, schema_version, texts, None, damage)
        };
        let [
            Some(event_type),
            Some(aggregate_type),
            Some(aggregate_id),
            Some(payload),
        ] = texts
        else {
            return None;
        };
        Some(Record {
            position: Position::new(u64::try_from(position).ok()?),
            aggregate_type,
            aggregate_id,
            lean: LeanRow {
                version,
                event_type,
                schema_version,
                payload,
                details: more,
                damage,
            },
        })
    }
}

/// One record of a stream read's framed text (see `fold_stream_on`), borrowed from it.
pub(crate) struct StreamRecord<'t> {
    pub(crate) position: Position,
    pub(crate) version: i64,
    pub(crate) schema_version: i64,
    pub(crate) event_type: &'t str,
    /// The first column of the row found out of range (`damage!()`), if any.
    pub(crate) damage: Option<&'t str>,
    pub(crate) payload: &'t str,
}

/// The records of a stream read's framed text, from version `next` on, in order. A record that
/// does not parse, or does not move past the one before it, ends them: the caller reads the
/// rest row by row.
pub(crate) fn stream_records(text: &str, mut next: i64) -> impl Iterator<Item = StreamRecord<'_>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= text.len() {
            return None;
        }
        let ([position, version, schema_version], [Some(event_type), damage, Some(payload)]) =
            framed::<3, 3>(text, &mut at)?
        else {
            return None;
        };
        if version < next {
            return None;
        }
        next = version.saturating_add(1);
        Some(StreamRecord {
            position: Position::new(position.max(0) as u64),
            version,
            schema_version,
            event_type,
            damage,
            payload,
        })
    })
}

/// Reads the record at `at` of a framed text, and moves `at` past it: `I` decimal integers and
/// the byte lengths of `T` texts (-1 for NULL), separated by `,` and ended by `:`, then the
/// texts. `None` if the text there is not such a record.
fn framed<'t, const I: usize, const T: usize>(
    text: &'t str,
    at: &mut usize,
) -> Option<([i64; I], [Option<&'t str>; T])> {
    let rest = text.get(*at..)?;
    let colon = rest.find(':')?;
    let mut header = rest[..colon].split(',');
    let mut ints = [0; I];
    for int in &mut ints {
        *int = header.next()?.parse().ok()?;
    }
    let mut start = colon + 1;
    let mut texts = [None; T];
    for text in &mut texts {
        let length: i64 = header.next()?.parse().ok()?;
        if length == -1 {
            continue;
        }
        let end = start.checked_add(usize::try_from(length).ok()?)?;
        *text = Some(rest.get(start..end)?);
        start = end;
    }
    if header.next().is_some() {
        return None;
    }
    *at += start;
    Some((ints, texts))
}

/// Feeds a row of `fold_columns!()` to a fold; the event id, time and metadata only if
/// `details` (otherwise the fold reads locations).
fn feed_whole<F>(
    row: &SqliteRow,
    position: Position,
    details: bool,
    streams: &mut StreamCache,
    apply: &mut F,
) -> std::ops::ControlFlow<()>
where
    F: for<'e> FnMut(FoldItem<'e>) -> std::ops::ControlFlow<()>,
{
    let (Ok(aggregate_type), Ok(aggregate_id)) =
        (row.try_get::<&str, _>(1), row.try_get::<&str, _>(2))
    else {
        let unreadable = StreamId::unchecked("?", "?");
        let error = RowReader::new(row, &unreadable, Some(position))
            .damaged("the stream columns cannot be read".into());
        return apply(Err(&error));
    };
    let stream = streams.get(aggregate_type, aggregate_id);
    let reader = RowReader::new(row, stream, Some(position));
    let lean = (|| {
        Ok(LeanRow {
            version: reader.get(3, "version")?,
            event_type: reader.get(4, "event_type")?,
            schema_version: reader.get(5, "schema_version")?,
            payload: reader.get(6, "payload")?,
            details: if details {
                Some(RowDetails {
                    event_id: reader.get(7, "event_id")?,
                    occurred_at: chrono::DateTime::from_timestamp_micros(
                        reader.get(8, "occurred_at")?,
                    ),
                    metadata: reader.get(9, "metadata")?,
                })
            } else {
                None
            },
            damage: if details {
                None
            } else {
                reader.get(10, "damage")?
            },
        })
    })();
    feed_row(stream, position, lean, apply)
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

impl SqliteEventStore {
    /// [`EventStore::append`], without its span and metrics.
    async fn append_unobserved(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        validate_append(stream, &events)?;
        if let Some(group) = &self.group
            && !events.is_empty()
            && events.len() <= super::group::MAX_GROUP_EVENTS
        {
            let events: Arc<[NewEvent]> = events.into();
            if let Some(result) = group.append(stream, expected, events.clone()).await {
                return result;
            }
            return self.append_inner(stream, expected, &events).await;
        }
        if events.is_empty() {
            // Nothing to write: where the stream is, read without taking the write lock.
            let (current, last): (i64, Option<i64>) = sqlx::query_as(
                "SELECT COALESCE(MAX(version), 0), MAX(position) FROM events \
                 WHERE aggregate_type = ? AND aggregate_id = ?",
            )
            .bind(stream.aggregate_type())
            .bind(stream.aggregate_id())
            .fetch_one(&self.reader)
            .await
            .map_err(Error::database("append"))?;
            let current = current.max(0) as u64;
            if !expected.is_satisfied_by(current) {
                return Err(expected.conflict(stream, current));
            }
            return Ok(AppendResult {
                stream_version: current,
                last_position: Position::new(last.unwrap_or(0).max(0) as u64),
            });
        }
        self.append_inner(stream, expected, &events).await
    }
}

impl SqliteEventStore {
    /// Feeds the stream's rows from version `versions.0` to `versions.1`, at most `limit` of
    /// them, row by row; returns how many it fed and the version after the last.
    async fn stream_rows<F>(
        conn: &mut sqlx::SqliteConnection,
        stream: &StreamId,
        (from, to): (i64, i64),
        until: Option<i64>,
        limit: i64,
        apply: &mut F,
    ) -> Result<(i64, i64)>
    where
        F: FnMut(EventView<'_>) -> Result<()> + Send,
    {
        // The metadata and the time are not read, only checked (`damage!()`, usually NULL):
        // packing the metadata costs a load a third more.
        const SQL: &str = concat!(
            "SELECT position, version, event_type, schema_version, ",
            damage!(),
            ", payload FROM events \
             WHERE aggregate_type = ? AND aggregate_id = ? AND version BETWEEN ? AND ? \
             AND (? IS NULL OR occurred_at <= ?) ORDER BY version ASC LIMIT ?"
        );
        let rows = stream_query(SQL, stream, (from, to), until, limit)
            .fetch_all(conn)
            .await
            .map_err(Error::database("load"))?;
        let mut next = from;
        for row in &rows {
            let version = feed_stream_row(row, stream, Columns::Checked, apply)?;
            next = version.saturating_add(1);
        }
        Ok((rows.len() as i64, next))
    }

    /// `fold_stream` on one connection.
    async fn fold_stream_on<F>(
        conn: &mut sqlx::SqliteConnection,
        stream: &StreamId,
        query: StreamQuery,
        mut apply: F,
    ) -> Result<()>
    where
        F: FnMut(EventView<'_>) -> Result<()> + Send,
    {
        // The first rows row by row: most loads are short (a few events, or the tail after a
        // snapshot), and for them one plain statement costs less than building a framed text.
        let (from, to) = query.sql_versions();
        let until = query.until.map(|t| t.timestamp_micros());
        let limit = query.sql_limit();
        let head = limit.min(STREAM_HEAD);
        let (applied, next) =
            Self::stream_rows(conn, stream, (from, to), until, head, &mut apply).await?;
        if applied < head || applied >= limit {
            return Ok(());
        }
        // The rest of a long stream as framed texts (see `STREAM_FRAMED`).
        let (mut limit, mut next) = (limit - applied, next);
        while limit > 0 {
            // In chunks, so that a text stays far below SQLite's limit on a value's length.
            let chunk = limit.min(STREAM_CHUNK);
            let page = stream_query(STREAM_FRAMED, stream, (next, to), until, chunk)
                .fetch_one(&mut *conn)
                .await;
            let page = match page {
                // Events too large to frame together: the rest row by row.
                Err(error) if too_big(&error) => break,
                page => page.map_err(Error::database("load"))?,
            };
            let count: i64 = page.try_get(0).map_err(Error::database("load"))?;
            let mut applied = 0;
            if let Ok(Some(text)) = page.try_get::<Option<&str>, _>(1) {
                for record in stream_records(text, next) {
                    apply(row_view(
                        stream,
                        record.position,
                        record.version,
                        record.event_type,
                        record.schema_version,
                        record.damage,
                        record.payload,
                    )?)?;
                    applied += 1;
                    next = record.version.saturating_add(1);
                }
            }
            limit -= applied;
            if applied < count {
                break;
            }
            if count < chunk {
                return Ok(());
            }
        }
        if limit > 0 {
            Self::stream_rows(conn, stream, (next, to), until, limit, &mut apply).await?;
        }
        Ok(())
    }

    /// Reads a page of a fold as one framed text ([`FOLD_FRAMED`], [`FOLD_FRAMED_WHOLE`]);
    /// `None` if its rows are too large to frame together.
    pub(crate) async fn framed_page(
        &self,
        query: &ReadAll,
        details: bool,
    ) -> Result<Option<FramedPage>> {
        let mut select = QueryBuilder::<Sqlite>::new(if details {
            FOLD_FRAMED_WHOLE
        } else {
            FOLD_FRAMED
        });
        select.push_bind(query.after.to_sql());
        push_filters(&mut select, query);
        select.push(" ORDER BY position LIMIT ");
        select.push_bind(to_i64(query.batch_size as u64));
        select.push(")");
        let row = match select.build().fetch_one(&self.reader).await {
            // Events too large to frame together: the page is read row by row.
            Err(error) if too_big(&error) => return Ok(None),
            row => row.map_err(Error::database("read_all"))?,
        };
        let count: i64 = row.try_get(0).map_err(Error::database("read_all"))?;
        Ok(Some(FramedPage {
            count: count.max(0) as usize,
            row,
        }))
    }
}

impl EventStore for SqliteEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let observed = crate::telemetry::Append::start(stream, expected, &events);
        observed
            .run(self.append_unobserved(stream, expected, events))
            .await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        query: StreamQuery,
    ) -> Result<Vec<RecordedEvent>> {
        stream.validate()?;
        const FORWARDS: &str = concat!(
            "SELECT ",
            stream_columns!(),
            " FROM events WHERE aggregate_type = ? AND aggregate_id = ? AND version BETWEEN ? AND ? \
             AND (? IS NULL OR occurred_at <= ?) ORDER BY version ASC LIMIT ?"
        );
        const BACKWARDS: &str = concat!(
            "SELECT ",
            stream_columns!(),
            " FROM events WHERE aggregate_type = ? AND aggregate_id = ? AND version BETWEEN ? AND ? \
             AND (? IS NULL OR occurred_at <= ?) ORDER BY version DESC LIMIT ?"
        );
        let sql = if query.backwards { BACKWARDS } else { FORWARDS };
        let until = query.until.map(|t| t.timestamp_micros());
        let (from, to) = query.sql_versions();
        let mut conn = self
            .readers
            .acquire()
            .await
            .map_err(Error::database("read_stream"))?;
        let rows = stream_query(sql, stream, (from, to), until, query.sql_limit())
            .fetch_all(&mut *conn)
            .await
            .map_err(Error::database("read_stream"))?;
        self.readers.put(conn);
        let events = rows
            .iter()
            .filter_map(|row| match decode_row(row, Some(stream)) {
                Ok((_, event)) => event,
                Err(error) => Some(Err(error)),
            })
            .collect::<Result<Vec<_>>>()?;
        check_sequence(stream, &query, &events)?;
        Ok(events)
    }

    fn read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent>> {
        paged(query, move |query| self.read_page(query))
    }

    async fn fold_stream<F>(&self, stream: &StreamId, query: StreamQuery, apply: F) -> Result<()>
    where
        F: FnMut(EventView<'_>) -> Result<()> + Send,
    {
        stream.validate()?;
        // One reader connection for the whole load, kept for the next operation if the load
        // ran to its end (see `store::warm`).
        let mut conn = self
            .readers
            .acquire()
            .await
            .map_err(Error::database("load"))?;
        Self::fold_stream_on(&mut conn, stream, query, apply).await?;
        self.readers.put(conn);
        Ok(())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        stream.validate()?;
        let mut conn = self
            .readers
            .acquire()
            .await
            .map_err(Error::database("stream_version"))?;
        let version = current_version(&mut conn, stream, "stream_version").await?;
        self.readers.put(conn);
        Ok(version)
    }

    fn watch_appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    async fn fold_all<F>(&self, query: &ReadAll, mut apply: F) -> Result<FoldEnd>
    where
        F: for<'e> FnMut(FoldItem<'e>) -> std::ops::ControlFlow<()> + Send,
    {
        use futures::TryStreamExt;
        let details = query.context == ContextFields::All;
        let mut end = FoldEnd::default();
        let mut streams = StreamCache::default();
        if let Some(page) = self.framed_page(query, details).await? {
            if page.count == 0 {
                return Ok(end);
            }
            for record in page.records(query.after, details) {
                let stream = streams.get(record.aggregate_type, record.aggregate_id);
                let flow = feed_row(stream, record.position, Ok(record.lean), &mut apply);
                end.rows += 1;
                end.last = Some(record.position);
                if flow.is_break() {
                    end.stopped = true;
                    return Ok(end);
                }
            }
            if end.rows == page.count {
                return Ok(end);
            }
        }
        let mut select = QueryBuilder::<Sqlite>::new(concat!(
            "SELECT ",
            fold_columns!(),
            " FROM events WHERE position > "
        ));
        select.push_bind(end.last.unwrap_or(query.after).to_sql());
        push_filters(&mut select, query);
        select.push(" ORDER BY position LIMIT ");
        select.push_bind(to_i64(query.batch_size.saturating_sub(end.rows) as u64));
        // Row by row as sqlx's worker thread steps the statement: the rows are applied while
        // the next ones are read, on the other core. An error part way leaves the rows before
        // it applied (the caller knows how far it got).
        let mut rows = select.build().fetch(&self.reader);
        while let Some(row) = rows.try_next().await.map_err(Error::database("read_all"))? {
            let position = Position::new(
                row.try_get::<i64, _>(0)
                    .map_err(Error::database("read_all"))?
                    .max(0) as u64,
            );
            let flow = feed_whole(&row, position, details, &mut streams, &mut apply);
            end.rows += 1;
            end.last = Some(position);
            if flow.is_break() {
                end.stopped = true;
                break;
            }
        }
        Ok(end)
    }

    async fn count(&self, query: ReadAll) -> Result<u64> {
        let mut select =
            QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM events WHERE position > ");
        select.push_bind(query.after.to_sql());
        push_filters(&mut select, &query);
        let count: i64 = select
            .build_query_scalar()
            .fetch_one(&self.reader)
            .await
            .map_err(Error::database("count"))?;
        Ok(count.max(0) as u64)
    }

    async fn log_head(&self) -> Result<LogHead> {
        // One writer at a time, positions in commit order: everything committed is readable.
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(position) FROM events")
            .fetch_one(&self.reader)
            .await
            .map_err(Error::database("log_head"))?;
        let last = Position::new(last.unwrap_or(0).max(0) as u64);
        Ok(LogHead {
            last,
            readable: last,
            held_back: 0,
        })
    }
}

impl SnapshotStore for SqliteEventStore {
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        snapshot.stream().validate()?;
        sqlx::query(
            "INSERT INTO snapshots (aggregate_type, aggregate_id, version, state_version, state, \
             taken_at) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version, \
             state_version = excluded.state_version, state = excluded.state, \
             taken_at = excluded.taken_at \
             WHERE excluded.version >= snapshots.version \
             OR excluded.state_version <> snapshots.state_version",
        )
        .bind(snapshot.stream().aggregate_type())
        .bind(snapshot.stream().aggregate_id())
        .bind(to_i64(snapshot.version()))
        .bind(i64::from(snapshot.state_version()))
        .bind(snapshot.state())
        .bind(snapshot.time().timestamp_micros())
        .execute(&self.writer)
        .await
        .map_err(Error::database("save snapshot"))?;
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        stream.validate()?;
        let mut conn = self
            .readers
            .acquire()
            .await
            .map_err(Error::database("load snapshot"))?;
        let row: Option<(i64, i64, String, i64)> = sqlx::query_as(
            "SELECT version, state_version, state, taken_at FROM snapshots \
             WHERE aggregate_type = ? AND aggregate_id = ?",
        )
        .bind(stream.aggregate_type())
        .bind(stream.aggregate_id())
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::database("load snapshot"))?;
        self.readers.put(conn);
        row.map(|(version, state_version, state, taken_at)| {
            snapshot_row(
                stream,
                version,
                state_version,
                state,
                chrono::DateTime::from_timestamp_micros(taken_at),
            )
        })
        .transpose()
    }

    async fn delete_snapshot(&self, stream: &StreamId) -> Result<bool> {
        stream.validate()?;
        let done =
            sqlx::query("DELETE FROM snapshots WHERE aggregate_type = ? AND aggregate_id = ?")
                .bind(stream.aggregate_type())
                .bind(stream.aggregate_id())
                .execute(&self.writer)
                .await
                .map_err(Error::database("delete snapshot"))?;
        Ok(done.rows_affected() > 0)
    }
}

async fn current_version(
    conn: &mut sqlx::SqliteConnection,
    stream: &StreamId,
    operation: &'static str,
) -> Result<u64> {
    let version: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(version), 0) FROM events WHERE aggregate_type = ? AND aggregate_id = ?",
    )
    .bind(stream.aggregate_type())
    .bind(stream.aggregate_id())
    .fetch_one(conn)
    .await
    .map_err(Error::database(operation))?;
    Ok(version.max(0) as u64)
}

/// The stored stream, version and position of each of `events` that is stored, by id: one
/// query per 30,000 ids (SQLite's limit on bound parameters).
async fn stored_events(
    conn: &mut sqlx::SqliteConnection,
    events: &[NewEvent],
) -> Result<std::collections::HashMap<Uuid, (StreamId, u64, Position)>> {
    let mut found = std::collections::HashMap::new();
    for chunk in events.chunks(30_000) {
        let mut select = QueryBuilder::<Sqlite>::new(
            "SELECT event_id, aggregate_type, aggregate_id, version, position FROM events \
             WHERE event_id IN (",
        );
        let mut ids = select.separated(", ");
        for event in chunk {
            ids.push_bind(event.event_id);
        }
        select.push(")");
        let rows: Vec<(Uuid, String, String, i64, i64)> = select
            .build_query_as()
            .fetch_all(&mut *conn)
            .await
            .map_err(Error::database("append"))?;
        for (id, aggregate_type, aggregate_id, version, position) in rows {
            found.insert(
                id,
                (
                    StreamId::unchecked(aggregate_type, aggregate_id),
                    version.max(0) as u64,
                    Position::new(position.max(0) as u64),
                ),
            );
        }
    }
    Ok(found)
}

/// If every event of the batch is stored already (an append retried after its outcome was lost),
/// the result the first attempt had; see `retried_append`.
async fn stored_already(
    conn: &mut sqlx::SqliteConnection,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<Option<AppendResult>> {
    let found = stored_events(conn, events).await?;
    let stored: Option<Vec<_>> = events.iter().map(|e| found.get(&e.event_id)).collect();
    Ok(stored.and_then(|stored| {
        retried_append(
            stream,
            expected,
            stored.into_iter().map(|(s, v, p)| (s, *v, *p)),
        )
    }))
}

/// The first of `events` whose id is already stored.
async fn taken_event_id(
    conn: &mut sqlx::SqliteConnection,
    events: &[NewEvent],
) -> Result<Option<Uuid>> {
    let found = stored_events(conn, events).await?;
    Ok(events
        .iter()
        .map(|e| e.event_id)
        .find(|id| found.contains_key(id)))
}

/// SQLite's extended result codes for a UNIQUE (2067) or PRIMARY KEY (1555) violation.
fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "2067" || code == "1555")
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Reads one row of the `events` table: its position (an error here is the database's), then
/// the event, or why the row is damaged.
fn decode_row(row: &SqliteRow, stream: Option<&StreamId>) -> Result<PageRow> {
    let position = Position::new(
        row.try_get::<i64, _>(0)
            .map_err(Error::database("read"))?
            .max(0) as u64,
    );
    let owned;
    let stream = match stream {
        Some(stream) => stream,
        None => {
            let unreadable = StreamId::unchecked("?", "?");
            let reader = RowReader::new(row, &unreadable, Some(position));
            owned = match (
                reader.get::<&str>(8, "aggregate_type"),
                reader.get::<&str>(9, "aggregate_id"),
            ) {
                (Ok(aggregate_type), Ok(aggregate_id)) => {
                    StreamId::unchecked(aggregate_type, aggregate_id)
                }
                (Err(error), _) | (_, Err(error)) => return Ok((position, Some(Err(error)))),
            };
            &owned
        }
    };
    Ok((position, Some(read_event(row, stream, position))))
}

fn read_event(row: &SqliteRow, stream: &StreamId, position: Position) -> Result<RecordedEvent> {
    let mut reader = RowReader::new(row, stream, Some(position));
    let version: i64 = reader.get(2, "version")?;
    reader.version = u64::try_from(version).ok().filter(|v| *v > 0);
    let event_type: &str = reader.get(3, "event_type")?;
    reader.event_type = Some(event_type);
    EventRow {
        stream: stream.clone(),
        position,
        event_id: reader.get(1, "event_id")?,
        version,
        event_type: event_type.to_owned(),
        schema_version: reader.get(4, "schema_version")?,
        occurred_at: chrono::DateTime::from_timestamp_micros(reader.get(5, "occurred_at")?),
        metadata: reader.get(6, "metadata")?,
        payload: reader.get(7, "payload")?,
    }
    .into_event()
}

/// A checkpoint row's position.
fn checkpoint_position(position: Option<i64>) -> Option<Position> {
    position.map(|p| Position::new(p.max(0) as u64))
}

async fn save_checkpoint_on(
    conn: &mut sqlx::SqliteConnection,
    projection: &str,
    previous: Option<Position>,
    position: Position,
) -> Result<()> {
    crate::checkpoint::check_projection_name(projection)?;
    let now = crate::event::now().timestamp_micros();
    let done = match previous {
        None => {
            sqlx::query(
                "INSERT INTO checkpoints (name, position, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO NOTHING",
            )
            .bind(projection)
            .bind(position.to_sql())
            .bind(now)
            .execute(&mut *conn)
            .await
        }
        Some(previous) => sqlx::query(
            "UPDATE checkpoints SET position = ?, updated_at = ? WHERE name = ? AND position = ?",
        )
        .bind(position.to_sql())
        .bind(now)
        .bind(projection)
        .bind(previous.to_sql())
        .execute(&mut *conn)
        .await,
    }
    .map_err(Error::database("save checkpoint"))?;
    if done.rows_affected() == 1 {
        return Ok(());
    }
    let found: Option<i64> = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = ?")
        .bind(projection)
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::database("save checkpoint"))?;
    Err(conflict(projection, previous, checkpoint_position(found)))
}

async fn add_dead_letter_on(conn: &mut sqlx::SqliteConnection, letter: &DeadLetter) -> Result<()> {
    crate::checkpoint::check_projection_name(&letter.projection)?;
    sqlx::query(
        "INSERT INTO dead_letters (projection, position, event_id, aggregate_type, aggregate_id, \
         version, event_type, error, attempts, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (projection, position) DO UPDATE SET error = excluded.error, \
         attempts = excluded.attempts, failed_at = excluded.failed_at",
    )
    .bind(&letter.projection)
    .bind(letter.position.to_sql())
    .bind(letter.event_id)
    .bind(letter.stream.aggregate_type())
    .bind(letter.stream.aggregate_id())
    .bind(letter.version.map(to_i64))
    .bind(letter.event_type.as_deref())
    .bind(crate::checkpoint::storable_error(&letter.error))
    .bind(i64::from(letter.attempts))
    .bind(letter.failed_at.timestamp_micros())
    .execute(conn)
    .await
    .map_err(Error::database("add dead letter"))?;
    Ok(())
}

async fn remove_dead_letter_on(
    conn: &mut sqlx::SqliteConnection,
    projection: &str,
    position: Position,
) -> Result<bool> {
    crate::checkpoint::check_projection_name(projection)?;
    let done = sqlx::query("DELETE FROM dead_letters WHERE projection = ? AND position = ?")
        .bind(projection)
        .bind(position.to_sql())
        .execute(conn)
        .await
        .map_err(Error::database("remove dead letter"))?;
    Ok(done.rows_affected() > 0)
}

impl CheckpointStore for SqliteEventStore {
    async fn checkpoint(&self, projection: &str) -> Result<Option<Position>> {
        crate::checkpoint::check_projection_name(projection)?;
        let found: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = ?")
                .bind(projection)
                .fetch_optional(&self.reader)
                .await
                .map_err(Error::database("load checkpoint"))?;
        Ok(checkpoint_position(found))
    }

    async fn save_checkpoint(
        &self,
        projection: &str,
        previous: Option<Position>,
        position: Position,
    ) -> Result<()> {
        let mut conn = self
            .writer
            .acquire()
            .await
            .map_err(Error::database("save checkpoint"))?;
        save_checkpoint_on(&mut conn, projection, previous, position).await
    }

    async fn delete_checkpoint(&self, projection: &str) -> Result<()> {
        crate::checkpoint::check_projection_name(projection)?;
        sqlx::query("DELETE FROM checkpoints WHERE name = ?")
            .bind(projection)
            .execute(&self.writer)
            .await
            .map_err(Error::database("delete checkpoint"))?;
        Ok(())
    }

    async fn add_dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        let mut conn = self
            .writer
            .acquire()
            .await
            .map_err(Error::database("add dead letter"))?;
        add_dead_letter_on(&mut conn, letter).await
    }

    async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>> {
        crate::checkpoint::check_projection_name(projection)?;
        let rows = sqlx::query(
            "SELECT position, event_id, aggregate_type, aggregate_id, version, event_type, error, \
             attempts, failed_at FROM dead_letters WHERE projection = ? ORDER BY position",
        )
        .bind(projection)
        .fetch_all(&self.reader)
        .await
        .map_err(Error::database("dead letters"))?;
        rows.iter()
            .map(|row| -> std::result::Result<DeadLetter, sqlx::Error> {
                let mut letter = DeadLetter::new(
                    projection,
                    Position::new(row.try_get::<i64, _>(0)?.max(0) as u64),
                    StreamId::unchecked(row.try_get::<String, _>(2)?, row.try_get::<String, _>(3)?),
                    row.try_get::<String, _>(6)?,
                    row.try_get::<i64, _>(7)?.clamp(0, i64::from(u32::MAX)) as u32,
                )
                .with_event(
                    row.try_get(1)?,
                    row.try_get::<Option<i64>, _>(4)?.map(|v| v.max(0) as u64),
                    row.try_get(5)?,
                );
                if let Some(time) = chrono::DateTime::from_timestamp_micros(row.try_get(8)?) {
                    letter.failed_at = time;
                }
                Ok(letter)
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::database("dead letters"))
    }

    async fn remove_dead_letter(&self, projection: &str, position: Position) -> Result<bool> {
        let mut conn = self
            .writer
            .acquire()
            .await
            .map_err(Error::database("remove dead letter"))?;
        remove_dead_letter_on(&mut conn, projection, position).await
    }

    async fn lease(&self, projection: &str) -> Result<Option<crate::checkpoint::Lease>> {
        crate::checkpoint::check_projection_name(projection)?;
        match &self.file {
            Some(file) => crate::checkpoint::file_lease(file, projection),
            None => Ok(self.leases.try_take(projection)),
        }
    }
}

impl TransactionalStore for SqliteEventStore {
    type Database = Sqlite;

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        // BEGIN IMMEDIATE: take the write lock up front, as appends do.
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::database("begin"))
    }

    fn save_checkpoint_in<'a>(
        tx: &'a mut sqlx::Transaction<'static, Sqlite>,
        projection: &'a str,
        previous: Option<Position>,
        position: Position,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'a {
        save_checkpoint_on(tx, projection, previous, position)
    }

    fn add_dead_letter_in<'a>(
        tx: &'a mut sqlx::Transaction<'static, Sqlite>,
        letter: &'a DeadLetter,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'a {
        add_dead_letter_on(tx, letter)
    }

    fn remove_dead_letter_in<'a>(
        tx: &'a mut sqlx::Transaction<'static, Sqlite>,
        projection: &'a str,
        position: Position,
    ) -> impl std::future::Future<Output = Result<bool>> + Send + 'a {
        remove_dead_letter_on(tx, projection, position)
    }
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
