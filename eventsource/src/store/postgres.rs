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

use super::warm::Warm;
use super::{
    AppendResult, Columns, EventRow, EventStore, ExpectedVersion, FoldEnd, FoldItem, LeanRow,
    LogHead, PageRow, Position, ReadAll, RowDetails, RowReader, StreamCache, StreamId, StreamQuery,
    check_sequence, extra_json, feed_row, feed_stream_row, paged, retried_append, snapshot_row,
    validate_append,
};
use crate::checkpoint::{CheckpointStore, DeadLetter, TransactionalStore, conflict};
use crate::error::{Error, Result};
use crate::event::{EventView, NewEvent, RecordedEvent};
use crate::projection::ContextFields;
use crate::snapshot::{Snapshot, SnapshotStore};
use futures::TryStreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// An event store in a PostgreSQL database. Cloning gives another handle to the same pool.
#[derive(Clone, Debug)]
pub struct PostgresEventStore {
    pool: PgPool,
    /// The wake-up signal fed by a `LISTEN` connection, started at the first `watch_appends`.
    appended: Arc<std::sync::OnceLock<tokio::sync::watch::Sender<u64>>>,
    /// Tells other processes about this one's appends, off the appends' commit path.
    notifier: Arc<std::sync::OnceLock<tokio::sync::watch::Sender<u64>>>,
    /// The tenant a scoped store's transactions set in `eventsource.tenant`, for row-level
    /// security (see [`Tenancy`](crate::tenant::Tenancy)).
    tenant: Option<Arc<str>>,
    /// The committer of [`with_group_commit`](Self::with_group_commit), if on.
    group: Option<super::group::GroupCommit>,
    /// Connections kept between operations (see `store::warm`).
    warm: Warm<Postgres>,
}

/// How many times an append with [`ExpectedVersion::Any`] or [`ExpectedVersion::StreamExists`]
/// tries on its own when a concurrent writer takes the versions it computed, before it queues
/// behind the stream's lock (see [`PostgresEventStore::append_locked`]).
const OPTIMISTIC_ATTEMPTS: u32 = 3;

/// The fence: positions below it belong to finished transactions. A scalar subquery, so that
/// PostgreSQL computes it once per statement (an init plan): inline, `pg_current_snapshot()` is
/// called again for every row it filters, which was half the time of a 1,000-row page.
const FENCE: &str = "(SELECT pg_snapshot_xmin(pg_current_snapshot())::TEXT::BIGINT * 65536)";

/// The packed metadata column (see `EventRow`). A NULL `metadata` is packed as `{}`, so that
/// JSON `null` stays apart from it (and is reported).
macro_rules! packed_metadata {
    () => {
        "CASE WHEN tenant_id IS NULL AND actor_id IS NULL AND correlation_id IS NULL \
         AND causation_id IS NULL AND metadata IS NULL THEN NULL \
         ELSE json_build_array(tenant_id, actor_id, correlation_id, causation_id, \
         coalesce(metadata, '{}'::JSONB))::TEXT END"
    };
}

/// Whether `occurred_at` is a time a `DateTime<Utc>` can hold: PostgreSQL also stores
/// `infinity`, `-infinity` and years up to 294,276, which sqlx cannot decode (it panics).
macro_rules! sound_time {
    () => {
        "(isfinite(occurred_at) AND occurred_at <= '262142-12-31 23:59:59.999999+00')"
    };
}

/// The time, NULL (reported as damaged) where it is not [`sound_time!`].
macro_rules! occurred_at {
    () => {
        concat!("CASE WHEN ", sound_time!(), " THEN occurred_at END")
    };
}

/// The checks every read path makes of the columns that a load or a fold of locations does not
/// decode, made by the database: the name of the first damaged column (`store::damaged_column`
/// says why), or NULL. The other columns' types (UUID, TEXT) cannot hold a damaged value.
macro_rules! damage {
    () => {
        concat!(
            "CASE WHEN NOT ",
            sound_time!(),
            " THEN 'occurred_at' WHEN jsonb_typeof(metadata) <> 'object' THEN 'metadata' END"
        )
    };
}

/// The columns of a stream read; a global read adds the stream's (at indexes 8 and 9).
macro_rules! stream_columns {
    () => {
        concat!(
            "position, event_id, version, event_type, schema_version, ",
            occurred_at!(),
            ", ",
            packed_metadata!(),
            ", payload::TEXT"
        )
    };
}

/// The head of [`APPEND`] and [`APPEND_ONE`]: the stream's version (`current`), and it again
/// (`accepted`) only if it satisfies the expected version (`$3` its kind, `$4` an exact one).
macro_rules! append_check {
    () => {
        r#"
WITH current AS (
    SELECT COALESCE(MAX(version), 0)::BIGINT AS v
    FROM events WHERE aggregate_type = $1 AND aggregate_id = $2
), accepted AS (
    SELECT v FROM current
    WHERE CASE $3::INT WHEN 0 THEN TRUE WHEN 1 THEN v = 0 WHEN 2 THEN v > 0 ELSE v = $4::BIGINT END
)"#
    };
}

/// The transaction's base position, and the end of a batch's append: each inserted row's
/// version and position, summed up with the stream's version before it.
macro_rules! append_parts {
    (tx) => {
        r#", tx AS MATERIALIZED (
    SELECT pg_current_xact_id()::TEXT::BIGINT * 65536 AS base FROM accepted
)"#
    };
    (end) => {
        r#"
    RETURNING version, position
)
SELECT (SELECT v FROM current), (SELECT MAX(version) FROM inserted), (SELECT MAX(position) FROM inserted)
"#
    };
}

const APPEND: &str = concat!(
    append_check!(),
    append_parts!(tx),
    r#", inserted AS (
    INSERT INTO events (position, event_id, aggregate_type, aggregate_id, version, event_type,
        schema_version, occurred_at, tenant_id, actor_id, correlation_id, causation_id, metadata, payload)
    SELECT tx.base + e.ord - 1, e.event_id, $1, $2, accepted.v + e.ord, e.event_type,
        e.schema_version, e.occurred_at, e.tenant_id, e.actor_id, e.correlation_id, e.causation_id,
        e.metadata::JSONB, e.payload::JSONB
    FROM accepted, tx, UNNEST($5::UUID[], $6::TEXT[], $7::INT[], $8::TIMESTAMPTZ[], $9::TEXT[],
        $10::TEXT[], $11::UUID[], $12::UUID[], $13::TEXT[], $14::TEXT[])
        WITH ORDINALITY AS e(event_id, event_type, schema_version, occurred_at, tenant_id, actor_id,
            correlation_id, causation_id, metadata, payload, ord)"#,
    append_parts!(end)
);

/// [`APPEND`] for a batch without metadata (the common case): five arrays instead of ten.
const APPEND_BARE: &str = concat!(
    append_check!(),
    append_parts!(tx),
    r#", inserted AS (
    INSERT INTO events (position, event_id, aggregate_type, aggregate_id, version, event_type,
        schema_version, occurred_at, payload)
    SELECT tx.base + e.ord - 1, e.event_id, $1, $2, accepted.v + e.ord, e.event_type,
        e.schema_version, e.occurred_at, e.payload::JSONB
    FROM accepted, tx, UNNEST($5::UUID[], $6::TEXT[], $7::INT[], $8::TIMESTAMPTZ[], $9::TEXT[])
        WITH ORDINALITY AS e(event_id, event_type, schema_version, occurred_at, payload, ord)"#,
    append_parts!(end)
);

/// [`APPEND`] for one event (the command path's usual save), with plain parameters instead of
/// arrays: encoding ten one-element arrays was a sixth of the client's instructions for such an
/// append (`callgrind`).
const APPEND_ONE: &str = concat!(
    append_check!(),
    r#", inserted AS (
    INSERT INTO events (position, event_id, aggregate_type, aggregate_id, version, event_type,
        schema_version, occurred_at, tenant_id, actor_id, correlation_id, causation_id, metadata, payload)
    SELECT pg_current_xact_id()::TEXT::BIGINT * 65536, $5::UUID, $1, $2, accepted.v + 1,
        $6::TEXT, $7::INT, $8::TIMESTAMPTZ, $9::TEXT, $10::TEXT, $11::UUID, $12::UUID,
        $13::TEXT::JSONB, $14::TEXT::JSONB
    FROM accepted
    RETURNING version, position
)
SELECT (SELECT v FROM current), (SELECT version FROM inserted), (SELECT position FROM inserted)
"#
);

/// A group of appends (see `store::group`) in one statement: every stream's version is read,
/// each append's check decides whether its rows go in, and each append's outcome comes back by
/// its index (`a`). Two appends of one stream never share a group: both would read the same
/// version.
const GROUP_APPEND: &str = r#"
WITH e AS (
    SELECT * FROM UNNEST($1::INT[], $2::TEXT[], $3::TEXT[], $4::INT[], $5::BIGINT[], $6::BIGINT[],
        $7::UUID[], $8::TEXT[], $9::INT[], $10::TIMESTAMPTZ[], $11::TEXT[], $12::TEXT[],
        $13::UUID[], $14::UUID[], $15::TEXT[], $16::TEXT[])
        WITH ORDINALITY AS e(a, aggregate_type, aggregate_id, kind, exact, i, event_id, event_type,
            schema_version, occurred_at, tenant_id, actor_id, correlation_id, causation_id,
            metadata, payload, ord)
), heads AS (
    SELECT s.a, s.aggregate_type, s.aggregate_id, s.kind, s.exact,
        (SELECT COALESCE(MAX(version), 0) FROM events v
         WHERE v.aggregate_type = s.aggregate_type AND v.aggregate_id = s.aggregate_id)::BIGINT AS v
    FROM e AS s WHERE s.i = 1
), accepted AS (
    SELECT a, v FROM heads
    WHERE CASE kind WHEN 0 THEN TRUE WHEN 1 THEN v = 0 WHEN 2 THEN v > 0 ELSE v = exact END
), tx AS MATERIALIZED (
    SELECT pg_current_xact_id()::TEXT::BIGINT * 65536 AS base
    FROM (SELECT 1 FROM accepted LIMIT 1) AS any_accepted
), inserted AS (
    INSERT INTO events (position, event_id, aggregate_type, aggregate_id, version, event_type,
        schema_version, occurred_at, tenant_id, actor_id, correlation_id, causation_id, metadata, payload)
    SELECT tx.base + e.ord - 1, e.event_id, e.aggregate_type, e.aggregate_id, accepted.v + e.i,
        e.event_type, e.schema_version, e.occurred_at, e.tenant_id, e.actor_id, e.correlation_id,
        e.causation_id, e.metadata::JSONB, e.payload::JSONB
    FROM e JOIN accepted ON accepted.a = e.a, tx
    RETURNING aggregate_type, aggregate_id, version, position
)
SELECT h.a, MAX(i.version), MAX(i.position)
FROM heads h LEFT JOIN inserted i
    ON i.aggregate_type = h.aggregate_type AND i.aggregate_id = h.aggregate_id
GROUP BY h.a
"#;

/// One append's outcome in a group: its index, and its stream version and last position if it
/// was written.
type GroupRow = (i32, Option<i64>, Option<i64>);

impl super::group::GroupWriter for PostgresEventStore {
    const SAME_STREAM_TWICE: bool = false;
    /// Two: one group commits while the next forms. With eight, groups were smaller and more
    /// statements ran for the same appends; with commits of 0.08 ms, 64 writers ran at 1.86-1.88x
    /// raw with eight in flight against 3.01-3.07x with two (2.62-2.94x with four).
    const IN_FLIGHT: usize = 2;

    async fn write_group(&self, group: &[super::group::Pending]) -> Vec<super::group::Grouped> {
        use super::group::Grouped;
        let rows: usize = group.iter().map(|pending| pending.events.len()).sum();
        let mut appends = Vec::with_capacity(rows);
        let mut aggregate_types = Vec::with_capacity(rows);
        let mut aggregate_ids = Vec::with_capacity(rows);
        let mut kinds = Vec::with_capacity(rows);
        let mut exacts = Vec::with_capacity(rows);
        let mut indexes = Vec::with_capacity(rows);
        let mut ids = Vec::with_capacity(rows);
        let mut types = Vec::with_capacity(rows);
        let mut schema_versions = Vec::with_capacity(rows);
        let mut times = Vec::with_capacity(rows);
        let mut tenants = Vec::with_capacity(rows);
        let mut actors = Vec::with_capacity(rows);
        let mut correlations = Vec::with_capacity(rows);
        let mut causations = Vec::with_capacity(rows);
        let mut extras = Vec::with_capacity(rows);
        let mut payloads = Vec::with_capacity(rows);
        for (a, pending) in group.iter().enumerate() {
            let (kind, exact) = expected_code(pending.expected);
            for (i, event) in pending.events.iter().enumerate() {
                appends.push(a as i32);
                aggregate_types.push(pending.stream.aggregate_type());
                aggregate_ids.push(pending.stream.aggregate_id());
                kinds.push(kind);
                exacts.push(exact);
                indexes.push(i as i64 + 1);
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
        }
        // On a kept connection (see `store::warm`), like every append.
        let outcome: sqlx::Result<Vec<GroupRow>> = match self.warm.acquire().await {
            Err(error) => Err(error),
            Ok(mut conn) => {
                let rows = sqlx::query_as(GROUP_APPEND)
                    .bind(&appends)
                    .bind(&aggregate_types)
                    .bind(&aggregate_ids)
                    .bind(&kinds)
                    .bind(&exacts)
                    .bind(&indexes)
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
                    .fetch_all(&mut *conn)
                    .await;
                if rows.is_ok() {
                    self.warm.put(conn);
                }
                rows
            }
        };
        let mut outcomes: Vec<Grouped> = group.iter().map(|_| Grouped::Alone).collect();
        // A failed statement wrote nothing (a concurrent writer outside the group took a
        // version, an event id is taken, the connection broke): each append goes on its own.
        if let Ok(rows) = outcome {
            for (a, version, position) in rows {
                if let (Some(slot), Some(version), Some(position)) =
                    (outcomes.get_mut(a.max(0) as usize), version, position)
                {
                    *slot = Grouped::Done(Ok(AppendResult {
                        stream_version: version.max(0) as u64,
                        last_position: Position::new(position.max(0) as u64),
                    }));
                }
            }
        }
        outcomes
    }

    async fn write_one(&self, append: &super::group::Pending) -> Result<AppendResult> {
        self.retrying("append", |_| {
            self.append_attempt(&append.stream, append.expected, &append.events)
        })
        .await
    }

    fn committed(&self) {
        self.signal_append();
    }
}

/// An expected version as the append statements take it: a kind and, for `Exact`, the version.
fn expected_code(expected: ExpectedVersion) -> (i32, i64) {
    match expected {
        ExpectedVersion::Any => (0, 0),
        ExpectedVersion::NoStream => (1, 0),
        ExpectedVersion::StreamExists => (2, 0),
        ExpectedVersion::Exact(n) => (3, i64::try_from(n).unwrap_or(i64::MAX)),
    }
}

impl PostgresEventStore {
    /// Connects to `url` (`postgres://user@host/db`) and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url).map_err(Error::database("connect"))?;
        Self::connect_with(options).await
    }

    /// Connects with explicit options and runs the migrations, with the default pool
    /// ([`pool_options`](Self::pool_options)).
    pub async fn connect_with(options: PgConnectOptions) -> Result<Self> {
        Self::connect_with_pool(options, Self::pool_options()).await
    }

    /// The pool settings [`connect`](Self::connect) and [`connect_with`](Self::connect_with)
    /// use: at most 10 connections, none kept open when idle, no health-check query on checkout,
    /// and sqlx's defaults otherwise (30 s to acquire a connection, idle ones closed after
    /// 10 minutes, every one replaced after 30 minutes). Change them and pass them to
    /// [`connect_with_pool`](Self::connect_with_pool).
    ///
    /// The store keeps the connection of a finished read or append for its next one instead of
    /// giving it back to the pool at once (which tests it with a round trip): up to half of
    /// `max_connections`, each for at most 100 ms unused. A pool of one connection is never
    /// kept from.
    pub fn pool_options() -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(10)
            // A health-check round trip on every checkout costs more than it saves; a broken
            // connection fails its query and is dropped by the pool.
            .test_before_acquire(false)
    }

    /// Connects with explicit connection and pool settings, and runs the migrations.
    ///
    /// ```no_run
    /// # use eventsource::PostgresEventStore;
    /// # use std::time::Duration;
    /// # async fn connect(options: eventsource::sqlx::postgres::PgConnectOptions) -> eventsource::Result<()> {
    /// let pool = PostgresEventStore::pool_options()
    ///     .max_connections(32)
    ///     .acquire_timeout(Duration::from_secs(5));
    /// let store = PostgresEventStore::connect_with_pool(options, pool).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with_pool(options: PgConnectOptions, pool: PgPoolOptions) -> Result<Self> {
        let pool = pool
            .connect_with(options)
            .await
            .map_err(Error::database("connect"))?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Uses an existing pool, as is: call [`migrate`](Self::migrate) before the first append.
    pub fn from_pool(pool: PgPool) -> Self {
        PostgresEventStore {
            warm: Warm::new(pool.clone()),
            pool,
            appended: Arc::default(),
            notifier: Arc::default(),
            tenant: None,
            group: None,
        }
    }

    /// Turns group commit on: appends made at the same time by several tasks are written
    /// together, in one statement and one transaction (one round trip, one commit), each with
    /// its own expected-version check (a conflict fails that append alone). A lone writer
    /// commits alone, without waiting for company. Worth it when many tasks save at once; see
    /// BENCHMARKS.md (W5b) for what it gives. A tenant-scoped store
    /// ([`for_tenant`](crate::tenant::Tenancy)) appends on its own.
    ///
    /// Needs a Tokio runtime (the committer is a task of the runtime this is called on); outside
    /// one, the store is returned as it is. Clones made after this share the committer.
    pub fn with_group_commit(mut self) -> Self {
        let writer = PostgresEventStore {
            group: None,
            ..self.clone()
        };
        self.group = super::group::GroupCommit::start(writer);
        self
    }

    /// This store, with each of its event and snapshot statements run in a transaction that
    /// first sets `eventsource.tenant` to `tenant` (transaction-local): the key of the
    /// row-level security policies.
    pub(crate) fn with_tenant_setting(&self, tenant: Arc<str>) -> Self {
        PostgresEventStore {
            tenant: Some(tenant),
            // The committer's transactions set no tenant.
            group: None,
            ..self.clone()
        }
    }

    /// Runs `attempt` again while it fails with a transient error ([`super::retrying`]),
    /// closing the idle connections the server dropped before each new attempt.
    async fn retrying<T, F, Fut>(&self, operation: &'static str, attempt: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        super::retrying(operation, || self.recover(), attempt).await
    }

    /// Before a new attempt after a transient error: gives back the connections kept for the
    /// next operation, and closes the pool's idle connections that the server dropped.
    async fn recover(&self) {
        self.warm.clear();
        close_dropped(&self.pool).await;
    }

    /// A connection for one operation on events or snapshots: for a tenant-scoped store, a
    /// transaction that has set the tenant; otherwise a connection of the pool, kept for the
    /// next operation when this one ends (see `store::warm`).
    async fn session(&self) -> sqlx::Result<Session<'_>> {
        match &self.tenant {
            None => {
                let conn = self.warm.acquire().await?;
                Ok(Session::Pool(conn, &self.warm))
            }
            Some(tenant) => {
                let mut tx = self.pool.begin().await?;
                set_tenant(&mut tx, tenant).await?;
                Ok(Session::Tenant(tx))
            }
        }
    }

    /// Runs one statement in a session (the tenant's transaction, or a pooled connection),
    /// again while it fails with a transient error: the shape of every read.
    ///
    /// `statement` gets the connection, and a witness that what it borrows (`'a`) outlives the
    /// connection's borrow, so that its future may borrow both.
    async fn statement<'a, T, F>(&self, operation: &'static str, statement: F) -> Result<T>
    where
        F: for<'c> Fn(&'c mut sqlx::PgConnection, &'c &'a ()) -> BoxFuture<'c, sqlx::Result<T>>
            + Send
            + Sync,
        T: Send,
    {
        let statement = &statement;
        self.retrying(operation, move |_| async move {
            let database = Error::database;
            let outlives: &'a () = &();
            let mut session = self.session().await.map_err(database(operation))?;
            let value = statement(session.conn(), &outlives)
                .await
                .map_err(database(operation))?;
            session.end().await.map_err(database(operation))?;
            Ok(value)
        })
        .await
    }

    /// Creates or upgrades the schema (the `events` table and its indexes) in the connection's
    /// current schema. Safe to run concurrently and repeatedly.
    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|error| Error::Migration(crate::error::DatabaseError::from_migrate(error)))
    }

    /// The pool, for queries of your own (read models in the same database).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn append_once<'c, X>(
        executor: X,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> std::result::Result<AppendResult, AppendFailure>
    where
        X: sqlx::PgExecutor<'c>,
    {
        let (kind, exact) = expected_code(expected);
        let row = if let [event] = events {
            sqlx::query(APPEND_ONE)
                .bind(stream.aggregate_type())
                .bind(stream.aggregate_id())
                .bind(kind)
                .bind(exact)
                .bind(event.event_id)
                .bind(&*event.event_type)
                .bind(i32::try_from(event.schema_version).unwrap_or(i32::MAX))
                .bind(event.occurred_at)
                .bind(event.metadata.tenant_id.as_deref())
                .bind(event.metadata.actor_id.as_deref())
                .bind(event.metadata.correlation_id)
                .bind(event.metadata.causation_id)
                .bind(extra_json(&event.metadata))
                .bind(event.payload.as_str())
                .fetch_one(executor)
                .await
                .map_err(AppendFailure::Database)?
        } else {
            Self::append_rows(executor, stream, (kind, exact), events).await?
        };
        let current: i64 = row.try_get(0).map_err(AppendFailure::Database)?;
        let version: Option<i64> = row.try_get(1).map_err(AppendFailure::Database)?;
        let position: Option<i64> = row.try_get(2).map_err(AppendFailure::Database)?;
        match (version, position) {
            (Some(version), Some(position)) => Ok(AppendResult {
                stream_version: version as u64,
                last_position: Position::new(position as u64),
            }),
            _ => Err(AppendFailure::Rejected {
                current: current.max(0) as u64,
            }),
        }
    }

    /// [`APPEND`] or [`APPEND_BARE`]: the rows of a batch as arrays, one per column.
    async fn append_rows<'c, X>(
        executor: X,
        stream: &StreamId,
        (kind, exact): (i32, i64),
        events: &[NewEvent],
    ) -> std::result::Result<PgRow, AppendFailure>
    where
        X: sqlx::PgExecutor<'c>,
    {
        let n = events.len();
        let mut ids = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut schema_versions = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        for event in events {
            ids.push(event.event_id);
            types.push(&*event.event_type);
            schema_versions.push(i32::try_from(event.schema_version).unwrap_or(i32::MAX));
            times.push(event.occurred_at);
            payloads.push(event.payload.as_str());
        }
        let bare = events.iter().all(|event| event.metadata.is_empty());
        let (mut tenants, mut actors, mut correlations, mut causations, mut extras) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        if !bare {
            for event in events {
                tenants.push(event.metadata.tenant_id.as_deref());
                actors.push(event.metadata.actor_id.as_deref());
                correlations.push(event.metadata.correlation_id);
                causations.push(event.metadata.causation_id);
                extras.push(extra_json(&event.metadata));
            }
        }
        let mut query = sqlx::query(if bare { APPEND_BARE } else { APPEND })
            .bind(stream.aggregate_type())
            .bind(stream.aggregate_id())
            .bind(kind)
            .bind(exact)
            .bind(&ids)
            .bind(&types)
            .bind(&schema_versions)
            .bind(&times);
        if !bare {
            query = query
                .bind(&tenants)
                .bind(&actors)
                .bind(&correlations)
                .bind(&causations)
                .bind(&extras);
        }
        query
            .bind(&payloads)
            .fetch_one(executor)
            .await
            .map_err(AppendFailure::Database)
    }

    /// The first of the batch's event ids that is stored, the rows hidden from this session by
    /// row-level security included (another tenant's); see the migration `hidden_rows`.
    async fn taken_event_id(&self, events: &[NewEvent]) -> Result<Option<Uuid>> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let mut session = self.session().await.map_err(Error::database("append"))?;
        let taken = sqlx::query_scalar("SELECT eventsource_event_id_taken($1)")
            .bind(&ids)
            .fetch_one(session.conn())
            .await
            .map_err(Error::database("append"))?;
        session.end().await.map_err(Error::database("append"))?;
        Ok(taken)
    }

    /// If every event of the batch is stored already (an append retried after its outcome was
    /// lost), the result the first attempt had; see `retried_append`.
    async fn stored_already(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Option<AppendResult>> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let mut session = self.session().await.map_err(Error::database("append"))?;
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT e.aggregate_type, e.aggregate_id, e.version, e.position \
             FROM UNNEST($1::UUID[]) WITH ORDINALITY AS ids(event_id, ord) \
             JOIN events e ON e.event_id = ids.event_id ORDER BY ids.ord",
        )
        .bind(&ids)
        .fetch_all(session.conn())
        .await
        .map_err(Error::database("append"))?;
        session.end().await.map_err(Error::database("append"))?;
        if rows.len() != events.len() {
            return Ok(None);
        }
        let stored: Vec<(StreamId, u64, Position)> = rows
            .into_iter()
            .map(|(aggregate_type, aggregate_id, version, position)| {
                (
                    StreamId::unchecked(aggregate_type, aggregate_id),
                    version.max(0) as u64,
                    Position::new(position.max(0) as u64),
                )
            })
            .collect();
        Ok(retried_append(
            stream,
            expected,
            stored.iter().map(|(s, v, p)| (s, *v, *p)),
        ))
    }

    /// One attempt of an append, in a session of its own (see [`session`](Self::session)).
    async fn append_in_session(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> std::result::Result<AppendResult, AppendFailure> {
        let mut session = self.session().await.map_err(AppendFailure::Database)?;
        let result = Self::append_once(session.conn(), stream, expected, events).await?;
        session.end().await.map_err(AppendFailure::Database)?;
        Ok(result)
    }

    /// An append of [`ExpectedVersion::Any`] or [`ExpectedVersion::StreamExists`] that lost the
    /// race for its versions several times: queues behind a per-stream advisory lock, taken in
    /// its own transaction, so that such appends to one stream go one at a time and each
    /// eventually gets its turn (a writer with an exact expected version still only checks).
    async fn append_locked(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> std::result::Result<AppendResult, AppendFailure> {
        let mut tx = self.pool.begin().await.map_err(AppendFailure::Database)?;
        if let Some(tenant) = &self.tenant {
            set_tenant(&mut tx, tenant)
                .await
                .map_err(AppendFailure::Database)?;
        }
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
            .bind(stream.aggregate_type())
            .bind(stream.aggregate_id())
            .execute(&mut *tx)
            .await
            .map_err(AppendFailure::Database)?;
        let result = Self::append_once(&mut *tx, stream, expected, events).await?;
        tx.commit().await.map_err(AppendFailure::Database)?;
        Ok(result)
    }

    /// After an append: wakes this process's live subscribers at once, and has the notifier
    /// task tell the others (`NOTIFY`), coalescing the appends made while it sends.
    ///
    /// The `NOTIFY` is not part of the append's transaction: PostgreSQL serializes the commits
    /// of notifying transactions on one lock, which cost concurrent writers half their
    /// throughput when every append notified. A wake-up that is late or lost only delays a
    /// subscriber to its next poll.
    fn signal_append(&self) {
        if let Some(local) = self.appended.get() {
            local.send_modify(|count| *count = count.wrapping_add(1));
        }
        let notifier = self.notifier.get_or_init(|| {
            let (sender, receiver) = tokio::sync::watch::channel(0);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(notify_others(self.pool.clone(), receiver));
            }
            sender
        });
        notifier.send_modify(|count| *count = count.wrapping_add(1));
    }

    /// One attempt at an append (retried by `append` after a transient failure: an attempt
    /// whose commit went through but whose answer was lost finds its own events stored and
    /// reports the same result).
    async fn append_attempt(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult> {
        if events.is_empty() {
            let mut session = self.session().await.map_err(Error::database("append"))?;
            let (current, last): (i64, Option<i64>) = sqlx::query_as(
                "SELECT COALESCE(MAX(version), 0)::BIGINT, MAX(position) FROM events \
                 WHERE aggregate_type = $1 AND aggregate_id = $2",
            )
            .bind(stream.aggregate_type())
            .bind(stream.aggregate_id())
            .fetch_one(session.conn())
            .await
            .map_err(Error::database("append"))?;
            session.end().await.map_err(Error::database("append"))?;
            let current = current.max(0) as u64;
            if !expected.is_satisfied_by(current) {
                return Err(expected.conflict(stream, current));
            }
            return Ok(AppendResult {
                stream_version: current,
                last_position: Position::new(last.unwrap_or(0).max(0) as u64),
            });
        }
        let retry = matches!(
            expected,
            ExpectedVersion::Any | ExpectedVersion::StreamExists
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = if attempt > OPTIMISTIC_ATTEMPTS {
                self.append_locked(stream, expected, events).await
            } else {
                self.append_in_session(stream, expected, events).await
            };
            let err = match outcome {
                Ok(result) => {
                    self.signal_append();
                    return Ok(result);
                }
                Err(AppendFailure::Rejected { current }) => {
                    // An append retried after its outcome was lost finds its own events stored.
                    if let Some(done) = self.stored_already(stream, expected, events).await? {
                        return Ok(done);
                    }
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
                    if !retry {
                        if let Some(done) = self.stored_already(stream, expected, events).await? {
                            return Ok(done);
                        }
                        let current = self.stream_version(stream).await?;
                        return Err(expected.conflict(stream, current));
                    }
                }
                Some("events_event_id") => {
                    if let Some(done) = self.stored_already(stream, expected, events).await? {
                        return Ok(done);
                    }
                    let event_id = self.taken_event_id(events).await?;
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

    /// One page of a global read: the next events of finished transactions only (the fence).
    async fn read_page(&self, query: ReadAll) -> Result<Vec<PageRow>> {
        let query = &query;
        let rows = self
            .retrying("read_all", move |_| self.fetch_page(query))
            .await?;
        let mut of = RowsOf::Log(StreamCache::default());
        rows.iter().map(|row| decode_row(row, &mut of)).collect()
    }

    /// The rows of one page of a global read: the columns of a stream read, then the stream's
    /// (at indexes 8 and 9) and whether the row passes the filters (10).
    async fn fetch_page(&self, query: &ReadAll) -> Result<Vec<PgRow>> {
        let mut select = page_query(query, true);
        let mut session = self.session().await.map_err(Error::database("read_all"))?;
        let rows = select
            .build()
            .fetch_all(session.conn())
            .await
            .map_err(Error::database("read_all"))?;
        session.end().await.map_err(Error::database("read_all"))?;
        Ok(rows)
    }
}

impl PostgresEventStore {
    /// One page of [`EventStore::fold_all`], fed row by row as the rows arrive: PostgreSQL
    /// produces the next rows while this process applies the last ones. An error part way
    /// leaves the rows before it fed (`end` says how many).
    async fn stream_page<F>(
        &self,
        query: &ReadAll,
        details: bool,
        end: &mut FoldEnd,
        apply: &mut F,
    ) -> Result<()>
    where
        F: for<'e> FnMut(FoldItem<'e>) -> std::ops::ControlFlow<()> + Send,
    {
        let mut select = page_query(query, details);
        let mut session = self.session().await.map_err(Error::database("read_all"))?;
        let mut streams = StreamCache::default();
        {
            let mut rows = select.build().fetch(session.conn());
            while let Some(row) = rows.try_next().await.map_err(Error::database("read_all"))? {
                let position = Position::new(
                    row.try_get::<i64, _>(0)
                        .map_err(Error::database("read_all"))?
                        .max(0) as u64,
                );
                end.rows += 1;
                end.last = Some(position);
                let at = if details {
                    &PageColumns::FULL
                } else {
                    &PageColumns::LEAN
                };
                if !row
                    .try_get::<bool, _>(at.wanted)
                    .map_err(Error::database("read_all"))?
                {
                    continue;
                }
                let flow = match (
                    row.try_get::<&str, _>(at.aggregate_type),
                    row.try_get::<&str, _>(at.aggregate_id),
                ) {
                    (Ok(aggregate_type), Ok(aggregate_id)) => {
                        let stream = streams.get(aggregate_type, aggregate_id);
                        let reader = RowReader::new(&row, stream, Some(position));
                        let lean = (|| {
                            Ok(LeanRow {
                                version: reader.get(at.version, "version")?,
                                event_type: reader.get(at.event_type, "event_type")?,
                                schema_version: i64::from(
                                    reader.get::<i32>(at.schema_version, "schema_version")?,
                                ),
                                payload: reader.get(at.payload, "payload")?,
                                details: if details {
                                    Some(RowDetails {
                                        event_id: reader.get(1, "event_id")?,
                                        occurred_at: reader.get(5, "occurred_at")?,
                                        metadata: reader.get(6, "metadata")?,
                                    })
                                } else {
                                    None
                                },
                                damage: match at.damage {
                                    Some(damage) => reader.get(damage, "damage")?,
                                    None => None,
                                },
                            })
                        })();
                        feed_row(stream, position, lean, apply)
                    }
                    _ => {
                        let unreadable = StreamId::unchecked("?", "?");
                        let error = RowReader::new(&row, &unreadable, Some(position))
                            .damaged("the stream columns cannot be read".into());
                        apply(Err(&error))
                    }
                };
                if flow.is_break() {
                    end.stopped = true;
                    break;
                }
            }
        }
        session.end().await.map_err(Error::database("read_all"))
    }
}

/// Where the columns of a page ([`page_query`]) are, with the whole context or without.
struct PageColumns {
    version: usize,
    event_type: usize,
    schema_version: usize,
    payload: usize,
    aggregate_type: usize,
    aggregate_id: usize,
    wanted: usize,
    /// `damage!()`, in a fold of locations.
    damage: Option<usize>,
}

impl PageColumns {
    /// A stream read's columns (the event id at 1, the time at 5, the metadata at 6), then the
    /// stream's and `wanted`.
    const FULL: PageColumns = PageColumns {
        version: 2,
        event_type: 3,
        schema_version: 4,
        payload: 7,
        aggregate_type: 8,
        aggregate_id: 9,
        wanted: 10,
        damage: None,
    };
    /// A fold of locations: position, version, type, schema version, payload, stream, `wanted`,
    /// `damage!()`.
    const LEAN: PageColumns = PageColumns {
        version: 1,
        event_type: 2,
        schema_version: 3,
        payload: 4,
        aggregate_type: 5,
        aggregate_id: 6,
        wanted: 7,
        damage: Some(8),
    };
}

/// The statement of one page of a global read (see [`PostgresEventStore::fetch_page`]).
fn page_query(query: &ReadAll, details: bool) -> QueryBuilder<'_, Postgres> {
    {
        // The page is the next `batch_size` events after the position, cut at the fence. Written
        // as one range (`position > $1 AND position < fence`), a generic plan (what PostgreSQL
        // uses for a prepared statement after five runs), knowing neither bound, estimates a
        // small range and sorts every later event per page: 15x slower on 100,000 events. The
        // one-sided inner query always walks the primary key in order, and the result is the
        // same: the events below the fence among the next ones are a prefix of them.
        //
        // Filters by event or aggregate type are not pushed into that walk: with a filter of
        // unknown selectivity (a table not yet analyzed, a generic plan) PostgreSQL scans and
        // sorts the whole rest of the table for every page. The walk reads the next positions
        // whatever their type, and a `wanted` column tells which rows pass: the others come back
        // with their payload and metadata left out, so that they only move the cursor.
        let filtered = !query.event_types.is_empty() || !query.aggregate_types.is_empty();
        let mut select = match (details, filtered) {
            // `wanted` is computed once per row in the walk; the outer query hands over the
            // payload and metadata of wanted rows only.
            (true, true) => QueryBuilder::<Postgres>::new(concat!(
                "SELECT position, event_id, version, event_type, schema_version, ",
                occurred_at!(),
                ", CASE WHEN wanted THEN ",
                packed_metadata!(),
                " END, CASE WHEN wanted THEN payload::TEXT END, aggregate_type, aggregate_id, \
                 wanted FROM (SELECT *, "
            )),
            (true, false) => QueryBuilder::<Postgres>::new(concat!(
                "SELECT * FROM (SELECT ",
                stream_columns!(),
                ", aggregate_type, aggregate_id, TRUE AS wanted"
            )),
            // A lean page (see `PageColumns::LEAN`): the walk carries the seven columns it hands over, not
            // the whole row (a third faster on 1,000-row pages than `SELECT *`).
            (false, true) => QueryBuilder::<Postgres>::new(concat!(
                "SELECT position, version, event_type, schema_version, \
                 CASE WHEN wanted THEN payload::TEXT END, aggregate_type, aggregate_id, wanted, \
                 damage FROM (SELECT position, version, event_type, schema_version, payload, \
                 aggregate_type, aggregate_id, ",
                damage!(),
                " AS damage, ",
            )),
            (false, false) => QueryBuilder::<Postgres>::new(concat!(
                "SELECT * FROM (SELECT position, version, event_type, schema_version, \
                 payload::TEXT, aggregate_type, aggregate_id, TRUE AS wanted, ",
                damage!(),
                " AS damage",
            )),
        };
        if filtered {
            push_wanted(&mut select, query);
            select.push(" AS wanted");
        }
        select.push(" FROM events WHERE position > ");
        select.push_bind(query.after.to_sql());
        if let Some(tenant) = &query.tenant_id {
            push_tenant(&mut select, tenant);
        }
        select.push(format_args!(
            " ORDER BY position LIMIT {}) page WHERE position < {FENCE} ORDER BY position",
            query.batch_size.min(i64::MAX as usize)
        ));
        select
    }
}

/// The values of a filter that a stored event can have. Every store refuses a NUL character in
/// the types and tenants it stores, and PostgreSQL refuses one in a parameter: such a value
/// matches nothing, as on every other store, and is not sent.
fn storable(values: &[String]) -> Vec<&str> {
    values
        .iter()
        .map(String::as_str)
        .filter(|value| !value.contains('\0'))
        .collect()
}

/// The tenant filter (see [`storable`]).
fn push_tenant<'q>(select: &mut QueryBuilder<'q, Postgres>, tenant: &'q str) {
    if tenant.contains('\0') {
        select.push(" AND FALSE");
    } else {
        select.push(" AND tenant_id = ");
        select.push_bind(tenant);
    }
}

/// The `ReadAll` type filters as one boolean expression (`TRUE` without any).
fn push_wanted<'q>(select: &mut QueryBuilder<'q, Postgres>, query: &'q ReadAll) {
    select.push("(TRUE");
    if !query.event_types.is_empty() {
        select.push(" AND event_type = ANY(");
        select.push_bind(storable(&query.event_types));
        select.push(")");
    }
    if !query.aggregate_types.is_empty() {
        select.push(" AND aggregate_type = ANY(");
        select.push_bind(storable(&query.aggregate_types));
        select.push(")");
    }
    select.push(")");
}

/// Appends the `ReadAll` filters to a `WHERE` clause.
fn push_filters<'q>(select: &mut QueryBuilder<'q, Postgres>, query: &'q ReadAll) {
    if !query.event_types.is_empty() {
        select.push(" AND event_type = ANY(");
        select.push_bind(storable(&query.event_types));
        select.push(")");
    }
    if !query.aggregate_types.is_empty() {
        select.push(" AND aggregate_type = ANY(");
        select.push_bind(storable(&query.aggregate_types));
        select.push(")");
    }
    if let Some(tenant) = &query.tenant_id {
        push_tenant(select, tenant);
    }
}

/// The connection of one operation (see `PostgresEventStore::session`).
enum Session<'s> {
    /// A connection of the pool, for the unscoped store.
    Pool(sqlx::pool::PoolConnection<Postgres>, &'s Warm<Postgres>),
    /// A transaction that has set `eventsource.tenant`, for a tenant-scoped store.
    Tenant(sqlx::Transaction<'static, Postgres>),
}

impl Session<'_> {
    fn conn(&mut self) -> &mut sqlx::PgConnection {
        match self {
            Session::Pool(conn, _) => conn,
            Session::Tenant(tx) => tx,
        }
    }

    /// Ends the operation: shelves a pool connection for the next one, commits a tenant's
    /// transaction (dropped without this, it rolls back).
    async fn end(self) -> sqlx::Result<()> {
        match self {
            Session::Pool(conn, warm) => {
                warm.put(conn);
                Ok(())
            }
            Session::Tenant(tx) => tx.commit().await,
        }
    }
}

/// Sets the tenant of the row-level security policies for the rest of the transaction.
async fn set_tenant(conn: &mut sqlx::PgConnection, tenant: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT set_config('eventsource.tenant', $1, true)")
        .bind(tenant)
        .execute(conn)
        .await?;
    Ok(())
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
        snapshot.stream().validate()?;
        let mut session = self
            .session()
            .await
            .map_err(Error::database("save snapshot"))?;
        sqlx::query(
            "INSERT INTO snapshots (aggregate_type, aggregate_id, version, state_version, state, \
             taken_at) VALUES ($1, $2, $3, $4, $5::TEXT::JSONB, $6) \
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version, \
             state_version = excluded.state_version, state = excluded.state, \
             taken_at = excluded.taken_at \
             WHERE excluded.version >= snapshots.version \
             OR excluded.state_version <> snapshots.state_version",
        )
        .bind(snapshot.stream().aggregate_type())
        .bind(snapshot.stream().aggregate_id())
        .bind(i64::try_from(snapshot.version()).unwrap_or(i64::MAX))
        .bind(i32::try_from(snapshot.state_version()).unwrap_or(i32::MAX))
        .bind(snapshot.state())
        .bind(snapshot.time())
        .execute(session.conn())
        .await
        .map_err(
            |err| match err.as_database_error().and_then(|db| db.code()) {
                // invalid_text_representation: the state is not JSON.
                Some(code) if code == "22P02" => Error::InvalidInput {
                    stream: snapshot.stream().clone(),
                    reason: "the snapshot's state is not valid JSON".into(),
                },
                _ => Error::database("save snapshot")(err),
            },
        )?;
        session
            .end()
            .await
            .map_err(Error::database("save snapshot"))
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        stream.validate()?;
        let row: Option<(i64, i32, String, chrono::DateTime<chrono::Utc>)> = self
            .statement("load snapshot", move |conn, _| {
                Box::pin(
                    sqlx::query_as(
                        "SELECT version, state_version, state::TEXT, taken_at FROM snapshots \
                         WHERE aggregate_type = $1 AND aggregate_id = $2",
                    )
                    .bind(stream.aggregate_type())
                    .bind(stream.aggregate_id())
                    .fetch_optional(conn),
                )
            })
            .await?;
        row.map(|(version, state_version, state, taken_at)| {
            snapshot_row(stream, version, state_version.into(), state, Some(taken_at))
        })
        .transpose()
    }

    async fn delete_snapshot(&self, stream: &StreamId) -> Result<bool> {
        stream.validate()?;
        let mut session = self
            .session()
            .await
            .map_err(Error::database("delete snapshot"))?;
        let done =
            sqlx::query("DELETE FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2")
                .bind(stream.aggregate_type())
                .bind(stream.aggregate_id())
                .execute(session.conn())
                .await
                .map_err(Error::database("delete snapshot"))?;
        session
            .end()
            .await
            .map_err(Error::database("delete snapshot"))?;
        Ok(done.rows_affected() > 0)
    }
}

impl PostgresEventStore {
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
            return self
                .retrying("append", |_| self.append_attempt(stream, expected, &events))
                .await;
        }
        let events = events.as_slice();
        self.retrying("append", |_| self.append_attempt(stream, expected, events))
            .await
    }
}

impl EventStore for PostgresEventStore {
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
        let (sql, until, limit) = (
            if query.backwards { BACKWARDS } else { FORWARDS },
            query.until,
            query.sql_limit(),
        );
        let rows = self
            .statement("read_stream", move |conn, _| {
                Box::pin(stream_query(sql, stream, (from, to), until, limit).fetch_all(conn))
            })
            .await?;
        let mut of = RowsOf::Stream(stream);
        let events = rows
            .iter()
            .filter_map(|row| match decode_row(row, &mut of) {
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

    fn watch_appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended
            .get_or_init(|| {
                let (sender, _) = tokio::sync::watch::channel(0);
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(listen(self.pool.clone(), sender.clone()));
                }
                sender
            })
            .subscribe()
    }

    async fn fold_all<F>(&self, query: &ReadAll, mut apply: F) -> Result<FoldEnd>
    where
        F: for<'e> FnMut(FoldItem<'e>) -> std::ops::ControlFlow<()> + Send,
    {
        let details = query.context == ContextFields::All;
        let mut attempt = 1;
        let mut delay = Duration::from_millis(10);
        loop {
            let mut end = FoldEnd::default();
            match self.stream_page(query, details, &mut end, &mut apply).await {
                // Nothing was fed yet: the read is safe to repeat.
                Err(error)
                    if error.is_transient()
                        && end.rows == 0
                        && attempt < super::TRANSIENT_ATTEMPTS =>
                {
                    tracing::warn!(operation = "read_all", attempt, %error, "transient database error; trying again");
                    tokio::time::sleep(delay).await;
                    close_dropped(&self.pool).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                    attempt += 1;
                }
                result => return result.map(|()| end),
            }
        }
    }

    async fn count(&self, query: ReadAll) -> Result<u64> {
        let query = &query;
        let count: i64 = self
            .statement("count", move |conn, _| {
                let mut select =
                    QueryBuilder::<Postgres>::new("SELECT COUNT(*) FROM events WHERE position > ");
                select.push_bind(query.after.to_sql());
                push_filters(&mut select, query);
                select.push(format_args!(" AND position < {FENCE}"));
                Box::pin(async move { select.build_query_scalar().fetch_one(conn).await })
            })
            .await?;
        Ok(count.max(0) as u64)
    }

    async fn log_head(&self) -> Result<LogHead> {
        // Plain scalar subqueries with the fence inline: each walks the primary key's index.
        let sql = format!(
            "SELECT (SELECT MAX(position) FROM events), \
             COALESCE((SELECT MAX(position) FROM events WHERE position < {FENCE}), 0), \
             (SELECT COUNT(*) FROM events WHERE position >= {FENCE})"
        );
        let sql = sql.as_str();
        let (last, readable, held_back): (Option<i64>, i64, i64) = self
            .statement("log_head", move |conn, _| {
                Box::pin(sqlx::query_as(sql).fetch_one(conn))
            })
            .await?;
        Ok(LogHead {
            last: Position::new(last.unwrap_or(0).max(0) as u64),
            readable: Position::new(readable.max(0) as u64),
            held_back: held_back.max(0) as u64,
        })
    }

    async fn wait_for(&self, position: Position, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(1);
        loop {
            let sql = format!("SELECT {FENCE}");
            let sql = sql.as_str();
            let fence: i64 = self
                .retrying("wait_for", move |_| async move {
                    sqlx::query_scalar(sql)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(Error::database("wait_for"))
                })
                .await?;
            if position.to_sql() < fence {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(Error::Timeout {
                    operation: "waiting for a position to become readable",
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(delay.min(timeout.saturating_sub(started.elapsed()))).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
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
        stream.validate()?;
        // The metadata and the time are not read, only checked (`damage!()`, usually NULL).
        const SQL: &str = concat!(
            "SELECT position, version, event_type, schema_version::BIGINT, ",
            damage!(),
            ", payload::TEXT FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND version BETWEEN $3 AND $4 \
             AND ($5::TIMESTAMPTZ IS NULL OR occurred_at <= $5) ORDER BY version ASC LIMIT $6"
        );
        let (from, to) = query.sql_versions();
        let (until, limit) = (query.until, query.sql_limit());
        // Rows are applied as they arrive, while the server sends the next ones (a tenth faster
        // than applying them after all have arrived, and no more memory than one row). So an
        // attempt is repeated after a transient error only if it applied no row yet; a failure
        // part way fails the load, which the repository then repeats from the start.
        let mut retries = super::Retries::new("load");
        loop {
            let mut fed = false;
            let attempt = async {
                let mut session = self.session().await.map_err(Error::database("load"))?;
                let mut rows =
                    stream_query(SQL, stream, (from, to), until, limit).fetch(session.conn());
                while let Some(row) = rows.try_next().await.map_err(Error::database("load"))? {
                    fed = true;
                    // The statement fixes every column's type (the table's, or a cast).
                    feed_stream_row(&row, stream, Columns::Typed, &mut apply)?;
                }
                drop(rows);
                session.end().await.map_err(Error::database("load"))
            };
            match attempt.await {
                Err(error) if !fed && retries.again(&error).await => self.recover().await,
                result => return result,
            }
        }
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        stream.validate()?;
        let version: i64 = self
            .statement("stream_version", move |conn, _| {
                Box::pin(
                    sqlx::query_scalar(
                        "SELECT COALESCE(MAX(version), 0)::BIGINT FROM events \
                         WHERE aggregate_type = $1 AND aggregate_id = $2",
                    )
                    .bind(stream.aggregate_type())
                    .bind(stream.aggregate_id())
                    .fetch_one(conn),
                )
            })
            .await?;
        Ok(version.max(0) as u64)
    }

    async fn stream_hidden(&self, stream: &StreamId) -> Result<bool> {
        if self.tenant.is_none() {
            // The unscoped store: its role sees every row, or (not being the owner) none.
            return Ok(false);
        }
        self.statement("stream_hidden", move |conn, _| {
            Box::pin(
                sqlx::query_scalar(
                    "SELECT eventsource_stream_taken($1, $2) AND NOT EXISTS (SELECT 1 FROM events \
                     WHERE aggregate_type = $1 AND aggregate_id = $2)",
                )
                .bind(stream.aggregate_type())
                .bind(stream.aggregate_id())
                .fetch_one(conn),
            )
        })
        .await
    }
}

/// A statement of a stream read with its parameters bound: the stream, the version range, the
/// time-travel bound and the row limit.
fn stream_query<'q>(
    sql: &'q str,
    stream: &'q StreamId,
    (from, to): (i64, i64),
    until: Option<chrono::DateTime<chrono::Utc>>,
    limit: i64,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(stream.aggregate_type())
        .bind(stream.aggregate_id())
        .bind(from)
        .bind(to)
        .bind(until)
        .bind(limit)
}

/// Closes the pool's idle connections that no longer answer a ping. The pool does not check a
/// connection when it hands it out ([`PostgresEventStore::pool_options`]), so after the server
/// dropped its connections (a restart, `pg_terminate_backend`) every idle one would fail its
/// next statement, and a retried operation could meet one dead connection per attempt. Run
/// after a transient failure only: it costs a round trip per idle connection.
async fn close_dropped(pool: &PgPool) {
    let mut alive = Vec::new();
    while let Some(mut conn) = pool.try_acquire() {
        if sqlx::Connection::ping(&mut *conn).await.is_ok() {
            // Held until the sweep ends, so that the next `try_acquire` takes another.
            alive.push(conn);
        } else {
            conn.close_on_drop();
        }
    }
    drop(alive);
}

/// Reads one row of the `events` table: its position (an error here is the database's), then
/// the event, or why the row is damaged.
/// Whose rows `decode_row` reads: one stream's, or a global read's, whose consecutive rows of
/// one stream share its id instead of allocating it again.
enum RowsOf<'a> {
    Stream(&'a StreamId),
    Log(StreamCache),
}

fn decode_row(row: &PgRow, of: &mut RowsOf<'_>) -> Result<PageRow> {
    let position = Position::new(
        Columns::Typed
            .get::<_, i64>(row, 0)
            .map_err(Error::database("read"))?
            .max(0) as u64,
    );
    // A global read's rows end with whether they pass the read's filters.
    if matches!(of, RowsOf::Log(_))
        && !Columns::Typed
            .get::<_, bool>(row, 10)
            .map_err(Error::database("read"))?
    {
        return Ok((position, None));
    }
    let stream = match of {
        RowsOf::Stream(stream) => *stream,
        RowsOf::Log(streams) => match (
            Columns::Typed.get::<_, &str>(row, 8),
            Columns::Typed.get::<_, &str>(row, 9),
        ) {
            (Ok(aggregate_type), Ok(aggregate_id)) => streams.get(aggregate_type, aggregate_id),
            _ => {
                let unreadable = StreamId::unchecked("?", "?");
                let reader = RowReader::of(row, &unreadable, Some(position), Columns::Typed);
                let error = match reader.get::<&str>(8, "aggregate_type") {
                    Err(error) => error,
                    Ok(_) => match reader.get::<&str>(9, "aggregate_id") {
                        Err(error) => error,
                        Ok(_) => reader.damaged("the stream cannot be read".to_owned()),
                    },
                };
                return Ok((position, Some(Err(error))));
            }
        },
    };
    Ok((position, Some(read_event(row, stream, position))))
}

/// An event from a row of `stream_columns!`: every column's type is the table's or a cast's,
/// so values are decoded without sqlx's per-value type check ([`Columns::Typed`]).
fn read_event(row: &PgRow, stream: &StreamId, position: Position) -> Result<RecordedEvent> {
    let mut reader = RowReader::of(row, stream, Some(position), Columns::Typed);
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
        schema_version: i64::from(reader.get::<i32>(4, "schema_version")?),
        occurred_at: reader.get(5, "occurred_at")?,
        metadata: reader.get(6, "metadata")?,
        payload: reader.get(7, "payload")?,
    }
    .into_event()
}

/// The least time between two `NOTIFY`s of one store (see `notify_others`).
const NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

/// Sends `NOTIFY eventsource_<schema>` after appends, until the pool closes or the store is
/// dropped: at once after the first append of a quiet spell, then at most once per
/// [`NOTIFY_INTERVAL`] while appends go on, and once more after the last of them.
///
/// A `NOTIFY` is a transaction of its own, with a commit that waits for the log like an
/// append's. Sent after every append a writer was not already waiting on, it cost 8 concurrent
/// writers a quarter to a third of their appends per second; paced, it costs at most 200
/// statements a second, and a subscriber in another process hears of an append at most 5 ms
/// late (in-process subscribers are woken at once, without it).
async fn notify_others(pool: PgPool, mut appends: tokio::sync::watch::Receiver<u64>) {
    while appends.changed().await.is_ok() {
        appends.borrow_and_update();
        if pool.is_closed() {
            return;
        }
        let sent = tokio::time::Instant::now();
        if let Err(error) = sqlx::query("SELECT pg_notify('eventsource_' || current_schema(), '')")
            .execute(&pool)
            .await
        {
            tracing::debug!(%error, "cannot NOTIFY subscribers in other processes; they will poll");
        }
        // Appends meanwhile only mark the channel changed: one NOTIFY covers them.
        tokio::time::sleep_until(sent + NOTIFY_INTERVAL).await;
    }
}

/// Feeds `signal` from `LISTEN eventsource_<schema>` until the pool closes. After a lost
/// connection it reconnects and wakes everyone once (notifications sent meanwhile are lost; the
/// readers re-read the store, which is all a notification ever asks).
async fn listen(pool: PgPool, signal: tokio::sync::watch::Sender<u64>) {
    let bump = |signal: &tokio::sync::watch::Sender<u64>| {
        signal.send_modify(|count| *count = count.wrapping_add(1));
    };
    let mut delay = Duration::from_millis(100);
    while !pool.is_closed() {
        let listening = async {
            let schema: String = sqlx::query_scalar("SELECT current_schema()::TEXT")
                .fetch_one(&pool)
                .await?;
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(&format!("eventsource_{schema}")).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listening.await {
            Ok(mut listener) => {
                delay = Duration::from_millis(100);
                bump(&signal);
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => bump(&signal),
                        // The connection was lost and re-established by the listener.
                        Ok(None) => bump(&signal),
                        Err(error) => {
                            tracing::debug!(%error, "LISTEN connection failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                if pool.is_closed() {
                    return;
                }
                tracing::debug!(%error, "cannot LISTEN for appends; retrying");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// A checkpoint row's position.
fn checkpoint_position(position: Option<i64>) -> Option<Position> {
    position.map(|p| Position::new(p.max(0) as u64))
}

async fn save_checkpoint_on(
    conn: &mut sqlx::PgConnection,
    projection: &str,
    previous: Option<Position>,
    position: Position,
) -> Result<()> {
    crate::checkpoint::check_projection_name(projection)?;
    let done = match previous {
        None => {
            sqlx::query(
                "INSERT INTO checkpoints (name, position, updated_at) VALUES ($1, $2, now()) \
             ON CONFLICT (name) DO NOTHING",
            )
            .bind(projection)
            .bind(position.to_sql())
            .execute(&mut *conn)
            .await
        }
        Some(previous) => {
            sqlx::query(
                "UPDATE checkpoints SET position = $2, updated_at = now() \
             WHERE name = $1 AND position = $3",
            )
            .bind(projection)
            .bind(position.to_sql())
            .bind(previous.to_sql())
            .execute(&mut *conn)
            .await
        }
    }
    .map_err(Error::database("save checkpoint"))?;
    if done.rows_affected() == 1 {
        return Ok(());
    }
    let found: Option<i64> = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
        .bind(projection)
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::database("save checkpoint"))?;
    Err(conflict(projection, previous, checkpoint_position(found)))
}

async fn add_dead_letter_on(conn: &mut sqlx::PgConnection, letter: &DeadLetter) -> Result<()> {
    crate::checkpoint::check_projection_name(&letter.projection)?;
    sqlx::query(
        "INSERT INTO dead_letters (projection, position, event_id, aggregate_type, aggregate_id, \
         version, event_type, error, attempts, failed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (projection, position) DO UPDATE SET error = excluded.error, \
         attempts = excluded.attempts, failed_at = excluded.failed_at",
    )
    .bind(&letter.projection)
    .bind(letter.position.to_sql())
    .bind(letter.event_id)
    .bind(letter.stream.aggregate_type())
    .bind(letter.stream.aggregate_id())
    .bind(letter.version.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
    .bind(letter.event_type.as_deref())
    .bind(crate::checkpoint::storable_error(&letter.error))
    .bind(i32::try_from(letter.attempts).unwrap_or(i32::MAX))
    .bind(letter.failed_at)
    .execute(conn)
    .await
    .map_err(Error::database("add dead letter"))?;
    Ok(())
}

async fn remove_dead_letter_on(
    conn: &mut sqlx::PgConnection,
    projection: &str,
    position: Position,
) -> Result<bool> {
    crate::checkpoint::check_projection_name(projection)?;
    let done = sqlx::query("DELETE FROM dead_letters WHERE projection = $1 AND position = $2")
        .bind(projection)
        .bind(position.to_sql())
        .execute(conn)
        .await
        .map_err(Error::database("remove dead letter"))?;
    Ok(done.rows_affected() > 0)
}

/// Checkpoints and dead letters go through `session` as events do: a tenant-scoped store's rows
/// are stamped with its tenant and, for a role that does not own the tables, limited to it by
/// row-level security.
impl CheckpointStore for PostgresEventStore {
    async fn checkpoint(&self, projection: &str) -> Result<Option<Position>> {
        crate::checkpoint::check_projection_name(projection)?;
        let found: Option<i64> = self
            .statement("load checkpoint", move |conn, _| {
                Box::pin(
                    sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
                        .bind(projection)
                        .fetch_optional(conn),
                )
            })
            .await?;
        Ok(checkpoint_position(found))
    }

    async fn save_checkpoint(
        &self,
        projection: &str,
        previous: Option<Position>,
        position: Position,
    ) -> Result<()> {
        self.retrying("save checkpoint", move |attempt| async move {
            let database = || Error::database("save checkpoint");
            let mut session = self.session().await.map_err(database())?;
            let saved = save_checkpoint_on(session.conn(), projection, previous, position).await;
            if saved.is_ok() {
                session.end().await.map_err(database())?;
            }
            match saved {
                // A retry whose first attempt committed, its answer lost: it is where we put it.
                Err(Error::CheckpointConflict { found, .. })
                    if attempt > 1 && found == Some(position) =>
                {
                    Ok(())
                }
                result => result,
            }
        })
        .await
    }

    async fn delete_checkpoint(&self, projection: &str) -> Result<()> {
        crate::checkpoint::check_projection_name(projection)?;
        self.statement("delete checkpoint", move |conn, _| {
            Box::pin(
                sqlx::query("DELETE FROM checkpoints WHERE name = $1")
                    .bind(projection)
                    .execute(conn),
            )
        })
        .await?;
        Ok(())
    }

    async fn add_dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        let database = || Error::database("add dead letter");
        let mut session = self.session().await.map_err(database())?;
        add_dead_letter_on(session.conn(), letter).await?;
        session.end().await.map_err(database())
    }

    async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>> {
        crate::checkpoint::check_projection_name(projection)?;
        let rows = self
            .statement("dead letters", move |conn, _| {
                Box::pin(
                    sqlx::query(
                        "SELECT position, event_id, aggregate_type, aggregate_id, version, \
                         event_type, error, attempts, failed_at FROM dead_letters \
                         WHERE projection = $1 ORDER BY position",
                    )
                    .bind(projection)
                    .fetch_all(conn),
                )
            })
            .await?;
        rows.iter()
            .map(|row| -> std::result::Result<DeadLetter, sqlx::Error> {
                let mut letter = DeadLetter::new(
                    projection,
                    Position::new(row.try_get::<i64, _>(0)?.max(0) as u64),
                    StreamId::unchecked(row.try_get::<String, _>(2)?, row.try_get::<String, _>(3)?),
                    row.try_get::<String, _>(6)?,
                    row.try_get::<i32, _>(7)?.max(0) as u32,
                )
                .with_event(
                    row.try_get(1)?,
                    row.try_get::<Option<i64>, _>(4)?.map(|v| v.max(0) as u64),
                    row.try_get(5)?,
                );
                letter.failed_at = row.try_get(8)?;
                Ok(letter)
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::database("dead letters"))
    }

    async fn remove_dead_letter(&self, projection: &str, position: Position) -> Result<bool> {
        let database = || Error::database("remove dead letter");
        let mut session = self.session().await.map_err(database())?;
        let removed = remove_dead_letter_on(session.conn(), projection, position).await?;
        session.end().await.map_err(database())?;
        Ok(removed)
    }

    async fn lease(&self, projection: &str) -> Result<Option<crate::checkpoint::Lease>> {
        crate::checkpoint::check_projection_name(projection)?;
        // A session advisory lock on a connection taken out of the pool: it is released when
        // the lease (and so the connection) is dropped, or when this process dies. A lock is not
        // a row: row-level security does not reach it, and a tenant needs no setting for it.
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(Error::database("lease"))?
            .detach();
        let held: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtextextended('eventsource.projection/' || \
             current_schema() || '/' || $1, 0))",
        )
        .bind(projection)
        .fetch_one(&mut conn)
        .await
        .map_err(Error::database("lease"))?;
        Ok(held.then(|| crate::checkpoint::Lease::held_by(conn)))
    }
}

impl TransactionalStore for PostgresEventStore {
    type Database = Postgres;

    /// For a tenant-scoped store, the transaction sets `eventsource.tenant` first: the read
    /// model's writes and the checkpoint and dead letters moved in it are the tenant's.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        self.retrying("begin", |_| async {
            let database = || Error::database("begin");
            let mut tx = self.pool.begin().await.map_err(database())?;
            if let Some(tenant) = &self.tenant {
                set_tenant(&mut tx, tenant).await.map_err(database())?;
            }
            Ok(tx)
        })
        .await
    }

    fn save_checkpoint_in<'a>(
        tx: &'a mut sqlx::Transaction<'static, Postgres>,
        projection: &'a str,
        previous: Option<Position>,
        position: Position,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'a {
        save_checkpoint_on(tx, projection, previous, position)
    }

    fn add_dead_letter_in<'a>(
        tx: &'a mut sqlx::Transaction<'static, Postgres>,
        letter: &'a DeadLetter,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'a {
        add_dead_letter_on(tx, letter)
    }

    fn remove_dead_letter_in<'a>(
        tx: &'a mut sqlx::Transaction<'static, Postgres>,
        projection: &'a str,
        position: Position,
    ) -> impl std::future::Future<Output = Result<bool>> + Send + 'a {
        remove_dead_letter_on(tx, projection, position)
    }
}
