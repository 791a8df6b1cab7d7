//! [`PostgresEventStore`]: the production store. JSONB payloads, embedded migrations run by
//! [`migrate`](PostgresEventStore::migrate), one round trip per append.
//!
//! # Global order without gaps
//!
//! A position taken from a sequence is not commit order: a transaction can take position 10,
//! another take 11 and commit first, and a reader that saw 11 and checkpointed it would never see
//! 10. Here an event's position is its writing transaction's id times 65,536 plus its index in
//! the append, so positions sort exactly as transaction ids do. A global read only returns
//! positions below `pg_snapshot_xmin(pg_current_snapshot()) * 65536`: events of transactions
//! older than the oldest one still running, all of which have finished. Whatever commits later
//! has a higher transaction id, hence a higher position than anything already read. No lock is
//! shared between writers; the price is that a long-running transaction anywhere in the cluster
//! holds global readers back (late, never lost), and that positions are sparse, not 1, 2, 3.
//!
//! # Optimistic concurrency
//!
//! One statement reads the stream's version, checks the expectation and inserts the batch; the
//! `UNIQUE (aggregate_type, aggregate_id, version)` constraint makes a concurrent writer that
//! passed the same check fail with SQLSTATE 23505, which becomes [`Error::Concurrency`] (or a
//! retry, for [`ExpectedVersion::Any`]). Errors are classified by SQLSTATE and constraint name,
//! never by message text.

use super::{
    AppendResult, EventRow, EventStore, ExpectedVersion, ReadAll, StreamId, StreamQuery,
    extra_json, paged, row_view, snapshot_row, validate_append,
};
use crate::error::{Error, Result};
use crate::event::{EventView, NewEvent, RecordedEvent};
use crate::snapshot::{Snapshot, SnapshotStore};
use futures::stream::BoxStream;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// The longest a global read waits for running transactions to let it reach the head it started
/// with, per page.
const MAX_FENCE_WAIT: Duration = Duration::from_secs(5);

/// An event store in a PostgreSQL database. Cloning gives another handle to the same pool.
#[derive(Clone, Debug)]
pub struct PostgresEventStore {
    pool: PgPool,
}

/// How many times an append with [`ExpectedVersion::Any`] or [`ExpectedVersion::StreamExists`]
/// is retried when a concurrent writer takes the versions it computed.
const ANY_VERSION_ATTEMPTS: u32 = 16;

/// The columns of a stream read; a global read adds the stream's (at indexes 8 and 9).
macro_rules! stream_columns {
    () => {
        "position, event_id, version, event_type, schema_version, occurred_at, \
         CASE WHEN tenant_id IS NULL AND actor_id IS NULL AND correlation_id IS NULL \
         AND causation_id IS NULL AND metadata IS NULL THEN NULL \
         ELSE json_build_array(tenant_id, actor_id, correlation_id, causation_id, metadata)::TEXT END, \
         payload::TEXT"
    };
}

const APPEND: &str = r#"
WITH current AS (
    SELECT COALESCE(MAX(version), 0)::BIGINT AS v
    FROM events WHERE aggregate_type = $1 AND aggregate_id = $2
), accepted AS (
    SELECT v FROM current
    WHERE CASE $3::INT WHEN 0 THEN TRUE WHEN 1 THEN v = 0 WHEN 2 THEN v > 0 ELSE v = $4::BIGINT END
), tx AS MATERIALIZED (
    SELECT pg_current_xact_id()::TEXT::BIGINT * 65536 AS base FROM accepted
), inserted AS (
    INSERT INTO events (position, event_id, aggregate_type, aggregate_id, version, event_type,
        schema_version, occurred_at, tenant_id, actor_id, correlation_id, causation_id, metadata, payload)
    SELECT tx.base + e.ord - 1, e.event_id, $1, $2, accepted.v + e.ord, e.event_type,
        e.schema_version, e.occurred_at, e.tenant_id, e.actor_id, e.correlation_id, e.causation_id,
        e.metadata::JSONB, e.payload::JSONB
    FROM accepted, tx, UNNEST($5::UUID[], $6::TEXT[], $7::INT[], $8::TIMESTAMPTZ[], $9::TEXT[],
        $10::TEXT[], $11::UUID[], $12::UUID[], $13::TEXT[], $14::TEXT[])
        WITH ORDINALITY AS e(event_id, event_type, schema_version, occurred_at, tenant_id, actor_id,
            correlation_id, causation_id, metadata, payload, ord)
    RETURNING version, position
)
SELECT (SELECT v FROM current), (SELECT MAX(version) FROM inserted), (SELECT MAX(position) FROM inserted)
"#;

impl PostgresEventStore {
    /// Connects to `url` (`postgres://user@host/db`) and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url).map_err(Error::database("connect"))?;
        Self::connect_with(options).await
    }

    /// Connects with explicit options and runs the migrations.
    pub async fn connect_with(options: PgConnectOptions) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            // A health-check round trip on every checkout costs more than it saves; a broken
            // connection fails its query and is dropped by the pool.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(Error::database("connect"))?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Uses an existing pool, as is: call [`migrate`](Self::migrate) before the first append.
    pub fn from_pool(pool: PgPool) -> Self {
        PostgresEventStore { pool }
    }

    /// Creates or upgrades the schema (the `events` table and its indexes) in the connection's
    /// current schema. Safe to run concurrently and repeatedly.
    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(Error::Migration)
    }

    /// The pool, for queries of your own (read models in the same database).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn append_once(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> std::result::Result<AppendResult, AppendFailure> {
        let (kind, exact) = match expected {
            ExpectedVersion::Any => (0, 0),
            ExpectedVersion::NoStream => (1, 0),
            ExpectedVersion::StreamExists => (2, 0),
            ExpectedVersion::Exact(n) => (3, i64::try_from(n).unwrap_or(i64::MAX)),
        };
        let n = events.len();
        let mut ids = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut schema_versions = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut tenants = Vec::with_capacity(n);
        let mut actors = Vec::with_capacity(n);
        let mut correlations = Vec::with_capacity(n);
        let mut causations = Vec::with_capacity(n);
        let mut extras = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        for event in events {
            ids.push(event.event_id);
            types.push(&*event.event_type);
            schema_versions.push(i32::try_from(event.schema_version).unwrap_or(i32::MAX));
            times.push(event.occurred_at);
            tenants.push(event.metadata.tenant_id.as_deref());
            actors.push(event.metadata.actor_id.as_deref());
            correlations.push(event.metadata.correlation_id);
            causations.push(event.metadata.causation_id);
            extras.push(extra_json(&event.metadata));
            payloads.push(event.payload.as_str());
        }
        let row = sqlx::query(APPEND)
            .bind(&*stream.aggregate_type)
            .bind(&*stream.aggregate_id)
            .bind(kind)
            .bind(exact)
            .bind(&ids)
            .bind(&types)
            .bind(&schema_versions)
            .bind(&times)
            .bind(&tenants)
            .bind(&actors)
            .bind(&correlations)
            .bind(&causations)
            .bind(&extras)
            .bind(&payloads)
            .fetch_one(&self.pool)
            .await
            .map_err(AppendFailure::Database)?;
        let current: i64 = row.try_get(0).map_err(AppendFailure::Database)?;
        let version: Option<i64> = row.try_get(1).map_err(AppendFailure::Database)?;
        let position: Option<i64> = row.try_get(2).map_err(AppendFailure::Database)?;
        match (version, position) {
            (Some(version), Some(position)) => Ok(AppendResult {
                stream_version: version as u64,
                last_position: position as u64,
            }),
            _ => Err(AppendFailure::Rejected {
                current: current.max(0) as u64,
            }),
        }
    }

    async fn taken_event_id(&self, events: &[NewEvent]) -> Result<Option<Uuid>> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        sqlx::query_scalar("SELECT event_id FROM events WHERE event_id = ANY($1) LIMIT 1")
            .bind(&ids)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::database("append"))
    }

    /// The last position matching `query`'s filters among committed events, fenced or not: where
    /// a `read_all` started now must get to.
    async fn head(&self, query: &ReadAll) -> Result<u64> {
        let mut select = QueryBuilder::<Postgres>::new(
            "SELECT COALESCE(MAX(position), 0)::BIGINT FROM events WHERE TRUE",
        );
        push_filters(&mut select, query);
        let head: i64 = select
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(Error::database("read_all"))?;
        Ok(head.max(0) as u64)
    }

    /// One page of a global read. Events of finished transactions only (the fence); if the fence
    /// holds back events below `head` (transactions still running elsewhere), waits for them,
    /// at most [`MAX_FENCE_WAIT`], so that a read ends only at the head it started with.
    async fn read_page(&self, query: ReadAll, head: u64) -> Result<Vec<RecordedEvent>> {
        let deadline = Instant::now() + MAX_FENCE_WAIT;
        let mut delay = Duration::from_millis(1);
        loop {
            let page = self.read_fenced(&query).await?;
            let last = page.last().map_or(query.after, |event| event.position);
            if page.len() >= query.batch_size || last >= head {
                return Ok(page);
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    after = last,
                    head,
                    "read_all stops short of the head: transactions still running hold back the \
                     global order; the rest will be read by the next read from this position"
                );
                return Ok(page);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    async fn read_fenced(&self, query: &ReadAll) -> Result<Vec<RecordedEvent>> {
        // The page is the next `batch_size` events after the position, cut at the fence. Written
        // as one range (`position > $1 AND position < fence`), a generic plan (what PostgreSQL
        // uses for a prepared statement after five runs), knowing neither bound, estimates a
        // small range and sorts every later event per page: 15x slower on 100,000 events. The
        // one-sided inner query always walks the primary key in order, and the result is the
        // same: the events below the fence among the next ones are a prefix of them.
        let mut select = QueryBuilder::<Postgres>::new(concat!(
            "SELECT * FROM (SELECT ",
            stream_columns!(),
            ", aggregate_type, aggregate_id FROM events WHERE position > "
        ));
        select.push_bind(i64::try_from(query.after).unwrap_or(i64::MAX));
        push_filters(&mut select, query);
        select.push(format_args!(
            " ORDER BY position LIMIT {}) page \
             WHERE position < pg_snapshot_xmin(pg_current_snapshot())::TEXT::BIGINT * 65536 \
             ORDER BY position",
            query.batch_size.min(i64::MAX as usize)
        ));
        let rows = select
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(Error::database("read_all"))?;
        rows.iter().map(|row| decode_row(row, None)).collect()
    }
}

/// Appends the `ReadAll` filters to a `WHERE` clause.
fn push_filters<'q>(select: &mut QueryBuilder<'q, Postgres>, query: &'q ReadAll) {
    if !query.event_types.is_empty() {
        select.push(" AND event_type = ANY(");
        select.push_bind(&query.event_types);
        select.push(")");
    }
    if !query.aggregate_types.is_empty() {
        select.push(" AND aggregate_type = ANY(");
        select.push_bind(&query.aggregate_types);
        select.push(")");
    }
    if let Some(tenant) = &query.tenant_id {
        select.push(" AND tenant_id = ");
        select.push_bind(tenant);
    }
}

/// Why one append attempt failed, before it becomes an [`Error`].
enum AppendFailure {
    /// The expected version did not match: nothing was inserted.
    Rejected {
        current: u64,
    },
    Database(sqlx::Error),
}

impl SnapshotStore for PostgresEventStore {
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        sqlx::query(
            "INSERT INTO snapshots (aggregate_type, aggregate_id, version, state_version, state, \
             taken_at) VALUES ($1, $2, $3, $4, $5::TEXT::JSONB, $6) \
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version, \
             state_version = excluded.state_version, state = excluded.state, \
             taken_at = excluded.taken_at \
             WHERE excluded.version >= snapshots.version \
             OR excluded.state_version <> snapshots.state_version",
        )
        .bind(&*snapshot.stream.aggregate_type)
        .bind(&*snapshot.stream.aggregate_id)
        .bind(i64::try_from(snapshot.version).unwrap_or(i64::MAX))
        .bind(i32::try_from(snapshot.state_version).unwrap_or(i32::MAX))
        .bind(&snapshot.state)
        .bind(snapshot.taken_at)
        .execute(&self.pool)
        .await
        .map_err(
            |err| match err.as_database_error().and_then(|db| db.code()) {
                // invalid_text_representation: the state is not JSON.
                Some(code) if code == "22P02" => Error::InvalidInput {
                    stream: snapshot.stream.clone(),
                    reason: "the snapshot's state is not valid JSON".into(),
                },
                _ => Error::database("save snapshot")(err),
            },
        )?;
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        let row: Option<(i64, i32, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT version, state_version, state::TEXT, taken_at FROM snapshots \
             WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(&*stream.aggregate_type)
        .bind(&*stream.aggregate_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::database("load snapshot"))?;
        row.map(|(version, state_version, state, taken_at)| {
            snapshot_row(stream, version, state_version.into(), state, Some(taken_at))
        })
        .transpose()
    }

    async fn delete_snapshot(&self, stream: &StreamId) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2")
                .bind(&*stream.aggregate_type)
                .bind(&*stream.aggregate_id)
                .execute(&self.pool)
                .await
                .map_err(Error::database("delete snapshot"))?;
        Ok(done.rows_affected() > 0)
    }
}

impl EventStore for PostgresEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        validate_append(stream, &events)?;
        if events.is_empty() {
            let current = self.stream_version(stream).await?;
            if !expected.is_satisfied_by(current) {
                return Err(expected.conflict(stream, current));
            }
            return Ok(AppendResult {
                stream_version: current,
                last_position: 0,
            });
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match self.append_once(stream, expected, &events).await {
                Ok(result) => return Ok(result),
                Err(AppendFailure::Rejected { current }) => {
                    return Err(expected.conflict(stream, current));
                }
                Err(AppendFailure::Database(err)) => err,
            };
            let constraint = err
                .as_database_error()
                .filter(|db| db.code().as_deref() == Some("23505"))
                .and_then(|db| db.constraint().map(str::to_owned));
            match constraint.as_deref() {
                Some("events_stream_version") => {
                    // Another writer took the versions between our check and our insert.
                    let retry = matches!(
                        expected,
                        ExpectedVersion::Any | ExpectedVersion::StreamExists
                    );
                    if !retry || attempt >= ANY_VERSION_ATTEMPTS {
                        let current = self.stream_version(stream).await?;
                        return Err(expected.conflict(stream, current));
                    }
                }
                Some("events_event_id") => {
                    let event_id = self.taken_event_id(&events).await?;
                    return Err(match event_id {
                        Some(event_id) => Error::DuplicateEvent {
                            stream: stream.clone(),
                            event_id,
                        },
                        None => Error::database("append")(err),
                    });
                }
                _ => return Err(Error::database("append")(err)),
            }
        }
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        query: StreamQuery,
    ) -> Result<Vec<RecordedEvent>> {
        const FORWARDS: &str = concat!(
            "SELECT ",
            stream_columns!(),
            " FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND version BETWEEN $3 AND $4 \
             AND ($5::TIMESTAMPTZ IS NULL OR occurred_at <= $5) ORDER BY version ASC LIMIT $6"
        );
        const BACKWARDS: &str = concat!(
            "SELECT ",
            stream_columns!(),
            " FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND version BETWEEN $3 AND $4 \
             AND ($5::TIMESTAMPTZ IS NULL OR occurred_at <= $5) ORDER BY version DESC LIMIT $6"
        );
        let (from, to) = query.sql_versions();
        let rows = sqlx::query(if query.backwards { BACKWARDS } else { FORWARDS })
            .bind(&*stream.aggregate_type)
            .bind(&*stream.aggregate_id)
            .bind(from)
            .bind(to)
            .bind(query.until)
            .bind(query.sql_limit())
            .fetch_all(&self.pool)
            .await
            .map_err(Error::database("read_stream"))?;
        rows.iter()
            .map(|row| decode_row(row, Some(stream)))
            .collect()
    }

    fn read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent>> {
        let head = Arc::new(tokio::sync::OnceCell::new());
        paged(query, move |query| {
            let head = Arc::clone(&head);
            async move {
                let head = *head.get_or_try_init(|| self.head(&query)).await?;
                self.read_page(query, head).await
            }
        })
    }

    async fn fold_stream<F>(
        &self,
        stream: &StreamId,
        query: StreamQuery,
        mut apply: F,
    ) -> Result<()>
    where
        F: FnMut(EventView<'_>) -> Result<()> + Send,
    {
        const SQL: &str = "SELECT version, event_type, schema_version, payload::TEXT FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND version BETWEEN $3 AND $4 \
             AND ($5::TIMESTAMPTZ IS NULL OR occurred_at <= $5) ORDER BY version ASC LIMIT $6";
        let (from, to) = query.sql_versions();
        let rows = sqlx::query(SQL)
            .bind(&*stream.aggregate_type)
            .bind(&*stream.aggregate_id)
            .bind(from)
            .bind(to)
            .bind(query.until)
            .bind(query.sql_limit())
            .fetch_all(&self.pool)
            .await
            .map_err(Error::database("load"))?;
        let get = |err: sqlx::Error| Error::database("decode row")(err);
        for row in &rows {
            apply(row_view(
                stream,
                row.try_get(0).map_err(get)?,
                row.try_get(1).map_err(get)?,
                i64::from(row.try_get::<i32, _>(2).map_err(get)?),
                row.try_get(3).map_err(get)?,
            )?)?;
        }
        Ok(())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        let version: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(&*stream.aggregate_type)
        .bind(&*stream.aggregate_id)
        .fetch_one(&self.pool)
        .await
        .map_err(Error::database("stream_version"))?;
        Ok(version.max(0) as u64)
    }
}

fn decode_row(row: &PgRow, stream: Option<&StreamId>) -> Result<RecordedEvent> {
    let get = |err: sqlx::Error| Error::database("decode row")(err);
    let stream = match stream {
        Some(stream) => stream.clone(),
        None => StreamId::new(
            row.try_get::<&str, _>(8).map_err(get)?,
            row.try_get::<&str, _>(9).map_err(get)?,
        ),
    };
    EventRow {
        stream,
        position: row.try_get(0).map_err(get)?,
        event_id: row.try_get(1).map_err(get)?,
        version: row.try_get(2).map_err(get)?,
        event_type: row.try_get(3).map_err(get)?,
        schema_version: i64::from(row.try_get::<i32, _>(4).map_err(get)?),
        occurred_at: Some(row.try_get(5).map_err(get)?),
        metadata: row.try_get(6).map_err(get)?,
        payload: row.try_get(7).map_err(get)?,
    }
    .into_event()
}
