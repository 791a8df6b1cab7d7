//! Appends: one `INSERT ... SELECT` that checks the expected version, a transaction for batches
//! too large for one statement, group commit, and what a failed append finds out.

use super::*;
use crate::store::group::{GroupWriter, Grouped, Pending};

/// Parameters per inserted row; SQLite allows 32,766 bound parameters per statement.
pub(super) const INSERT_COLUMNS: usize = 13;
pub(super) const ROWS_PER_INSERT: usize = 32_766 / INSERT_COLUMNS;
/// The most events appended by one statement (`append_statement`): its rows, plus the stream
/// and the expected version.
pub(super) const ONE_STATEMENT_ROWS: usize = (32_766 - 8) / INSERT_COLUMNS;

impl SqliteEventStore {
    /// An append that fits one statement (nearly every append): the version check and the
    /// insert are one `INSERT ... SELECT` in autocommit mode, which SQLite runs under the write
    /// lock from its start, so it is as atomic as `BEGIN IMMEDIATE`, check, insert and `COMMIT`,
    /// in one call to the database instead of four (each a hand-off to sqlx's worker thread).
    /// The five metadata columns are left out of the statement when no event of the batch has
    /// metadata, the common case: eight parameters per row instead of thirteen.
    pub(super) async fn append_statement(
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
pub(super) fn checked_insert<'a>(
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
pub(super) fn checked_insert_one<'a>(
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
pub(super) fn version_check_failed(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "1299")
}

/// A statement's text and its arguments, written together: `?` in the text for each bound value,
/// in order. (sqlx's `QueryBuilder` formats every placeholder and separator through
/// `core::fmt`, which cost a twentieth of a batch append's instructions in `callgrind`.)
pub(super) struct Statement<'a> {
    sql: String,
    arguments: sqlx::sqlite::SqliteArguments<'a>,
    /// The first value that failed to encode, reported when the statement runs.
    failed: Option<sqlx::error::BoxDynError>,
}

impl<'a> Statement<'a> {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Statement {
            sql: String::with_capacity(capacity),
            arguments: Default::default(),
            failed: None,
        }
    }

    pub(super) fn sql(&mut self, text: &str) {
        self.sql.push_str(text);
    }

    pub(super) fn bind<T>(&mut self, value: T)
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
    pub(super) fn event_columns(&mut self, event: &'a NewEvent, with_metadata: bool) {
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
    pub(super) async fn execute<'e, E>(
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
pub(super) fn known_version(expected: ExpectedVersion, count: u64) -> Option<u64> {
    match expected {
        ExpectedVersion::Exact(version) => Some(version + count),
        ExpectedVersion::NoStream => Some(count),
        ExpectedVersion::Any | ExpectedVersion::StreamExists => None,
    }
}

/// The result of a `checked_insert` that wrote all its `count` events.
pub(super) async fn appended(
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

impl GroupWriter for SqliteEventStore {
    const SAME_STREAM_TWICE: bool = true;
    const IN_FLIGHT: usize = 1;

    async fn write_group(&self, group: &[Pending]) -> Vec<Grouped> {
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

    async fn append_alone(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult> {
        if events.is_empty() {
            return self
                .retrying("append", |_| self.stream_head(stream, expected))
                .await;
        }
        self.retrying("append", |_| self.append_inner(stream, expected, events))
            .await
    }

    fn committed(&self) {
        self.appended.notify();
    }
}

impl SqliteEventStore {
    pub(super) async fn append_inner(
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
}

impl SqliteEventStore {
    /// [`EventStore::append`], without its span and metrics.
    pub(super) async fn append_unobserved(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        crate::store::group::append(self, self.group.as_ref(), stream, expected, events).await
    }

    /// Where `stream` is, for an append of nothing: read without taking the write lock.
    async fn stream_head(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<AppendResult> {
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
        Ok(AppendResult {
            stream_version: current,
            last_position: Position::new(last.unwrap_or(0).max(0) as u64),
        })
    }
}

pub(super) async fn current_version(
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
pub(super) async fn stored_events(
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
pub(super) async fn stored_already(
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
pub(super) async fn taken_event_id(
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
pub(super) fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "2067" || code == "1555")
}
