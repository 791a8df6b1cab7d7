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
    extra_json, feed_row, feed_stream_row, paged, retried_append, snapshot_row,
};
use crate::checkpoint::{CheckpointStore, DeadLetter, TransactionalStore};
use crate::context::ContextFields;
use crate::error::{Error, Result};
use crate::event::{EventView, NewEvent, RecordedEvent};
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
    group: Option<crate::store::group::GroupCommit>,
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
mod append;
mod checkpoint;
mod notify;
mod read;
mod snapshot;

use notify::*;

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
    #[doc = crate::store::group::runtime_note!()]
    pub fn with_group_commit(self) -> Self {
        crate::store::group::turn_on(self, |store| &mut store.group)
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

    /// Runs `attempt` again while it fails with a transient error ([`crate::store::retrying`]),
    /// closing the idle connections the server dropped before each new attempt.
    async fn retrying<T, F, Fut>(&self, operation: &'static str, attempt: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        crate::store::retrying(operation, || self.recover(), attempt).await
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
