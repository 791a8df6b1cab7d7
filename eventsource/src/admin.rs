//! Inspection for operators: the [`Inspect`] trait lists streams, counts events, measures the
//! store and lists the projections that keep checkpoints or dead letters in it, and tells
//! whether the schema is there at all. What the `eventsource` command line reads; every query it
//! needs lives here, behind these methods, so that no other crate holds a copy of the schema.
//!
//! Implemented by every built-in store and by [`AnyStore`].
//!
//! ```
//! use eventsource::admin::{Inspect, StreamListing};
//! use eventsource::prelude::*;
//! use eventsource::{ExpectedVersion, StreamId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eventsource::Result<()> {
//! let store = InMemoryEventStore::new();
//! let stream = StreamId::new("Order", "o-1")?;
//! let event = eventsource::NewEvent::from_json("OrderPlaced", 1, r#"{"total":5}"#);
//! store.append(&stream, ExpectedVersion::NoStream, vec![event]).await?;
//!
//! let streams = store.list_streams(&StreamListing::new().aggregate_type("Order")).await?;
//! assert_eq!(streams[0].stream, stream);
//! assert_eq!(streams[0].version, 1);
//! assert_eq!(store.stats().await?.events, 1);
//! # Ok(())
//! # }
//! ```

use crate::checkpoint::CheckpointStore;
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::store::memory::InMemoryEventStore;
use crate::store::{AnyStore, EventStore, ReadAll};
use crate::stream::{Position, StreamId};
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::BTreeMap;
use std::future::Future;

/// Which streams [`Inspect::list_streams`] returns: a page of them, ordered by aggregate type
/// then id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamListing {
    /// Only streams of this aggregate type.
    pub aggregate_type: Option<String>,
    /// Only streams with at least one event of this tenant.
    pub tenant_id: Option<String>,
    /// Only streams after this one in the order (the last stream of the previous page).
    pub after: Option<StreamId>,
    /// At most this many streams (`None`: all).
    pub limit: Option<usize>,
}

impl StreamListing {
    /// Every stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only streams of aggregate type `aggregate_type`.
    pub fn aggregate_type(mut self, aggregate_type: impl Into<String>) -> Self {
        self.aggregate_type = Some(aggregate_type.into());
        self
    }

    /// Only streams with at least one event of tenant `tenant_id`.
    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    /// The page after `stream`.
    pub fn after(mut self, stream: StreamId) -> Self {
        self.after = Some(stream);
        self
    }

    /// At most `n` streams.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    fn sql_limit(&self) -> i64 {
        self.limit
            .map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX))
    }
}

/// One stream, as [`Inspect::list_streams`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamSummary {
    /// The stream.
    pub stream: StreamId,
    /// Its version: the version of its last event.
    pub version: u64,
    /// When its last event occurred.
    pub last_event_at: DateTime<Utc>,
    /// The global position of its last event.
    pub last_position: Position,
}

/// A number of events under a name (an event type or an aggregate type).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamedCount {
    /// The event type or aggregate type.
    pub name: String,
    /// How many events.
    pub events: u64,
}

/// The number of events that occurred on one day (UTC).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DayCount {
    /// The day, in UTC.
    pub day: NaiveDate,
    /// How many events occurred on it.
    pub events: u64,
}

/// What a store holds: [`Inspect::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Events stored.
    pub events: u64,
    /// Streams with at least one event.
    pub streams: u64,
    /// Events per event type, most first.
    pub by_event_type: Vec<NamedCount>,
    /// Events per aggregate type, most first.
    pub by_aggregate_type: Vec<NamedCount>,
    /// Events per day they occurred on, oldest day first.
    pub by_day: Vec<DayCount>,
    /// The space the store's tables take on disk, in bytes (`None`: in memory). SQLite: the
    /// database file; PostgreSQL: the store's tables with their indexes and TOAST.
    pub size_bytes: Option<u64>,
}

/// A projection that keeps a checkpoint or dead letters in the store: [`Inspect::projections`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionRecord {
    /// The projection's name.
    pub name: String,
    /// Its checkpoint (`None`: it has dead letters but no checkpoint).
    pub checkpoint: Option<Position>,
    /// When the checkpoint last moved.
    pub updated_at: Option<DateTime<Utc>>,
    /// How many dead letters it has.
    pub dead_letters: u64,
}

impl ProjectionRecord {
    /// A projection with no checkpoint and no dead letters (one that has not run yet).
    pub fn new(name: impl Into<String>) -> Self {
        ProjectionRecord {
            name: name.into(),
            checkpoint: None,
            updated_at: None,
            dead_letters: 0,
        }
    }
}

/// Whether a database holds the store's schema: [`Inspect::schema_state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaState {
    /// No schema: the database has never been migrated.
    Missing,
    /// Some of this code's migrations are not applied yet.
    Outdated {
        /// How many are missing.
        pending: usize,
    },
    /// Every migration this code knows is applied.
    Current,
}

/// Inspection of a store, for operators and tools. See the [module docs](self).
pub trait Inspect: EventStore + CheckpointStore {
    /// Whether the schema is there and up to date. Never creates or changes anything.
    fn schema_state(&self) -> impl Future<Output = Result<SchemaState>> + Send;

    /// A page of streams with their version and the time of their last event, ordered by
    /// aggregate type then id. Page on with [`StreamListing::after`] the last one returned.
    fn list_streams(
        &self,
        listing: &StreamListing,
    ) -> impl Future<Output = Result<Vec<StreamSummary>>> + Send;

    /// Events per type, per aggregate type and per day, and the store's size.
    fn stats(&self) -> impl Future<Output = Result<StoreStats>> + Send;

    /// Every projection with a checkpoint or dead letters in the store, by name.
    fn projections(&self) -> impl Future<Output = Result<Vec<ProjectionRecord>>> + Send;
}

// ---------------------------------------------------------------------------------------------
// In memory: computed from a read of the whole log (a memory store is small by nature).

/// Folds `events` into stream summaries and statistics.
#[derive(Default)]
struct Tally {
    streams: BTreeMap<StreamId, (StreamSummary, bool)>,
    stats: StoreStats,
    by_event_type: BTreeMap<String, u64>,
    by_aggregate_type: BTreeMap<String, u64>,
    by_day: BTreeMap<NaiveDate, u64>,
}

impl Tally {
    fn add(&mut self, event: &RecordedEvent, tenant: Option<&str>) {
        let summary = StreamSummary {
            stream: event.stream.clone(),
            version: event.version,
            last_event_at: event.occurred_at,
            last_position: event.position,
        };
        let of_tenant = tenant.is_some_and(|t| event.metadata.tenant_id.as_deref() == Some(t));
        let entry = self
            .streams
            .entry(event.stream.clone())
            .or_insert((summary.clone(), false));
        if event.version >= entry.0.version {
            entry.0 = summary;
        }
        entry.1 |= of_tenant;
        self.stats.events += 1;
        *self
            .by_event_type
            .entry(event.event_type.clone())
            .or_default() += 1;
        *self
            .by_aggregate_type
            .entry(event.stream.aggregate_type().to_owned())
            .or_default() += 1;
        *self
            .by_day
            .entry(event.occurred_at.date_naive())
            .or_default() += 1;
    }
}

fn most_first(counts: BTreeMap<String, u64>) -> Vec<NamedCount> {
    let mut counts: Vec<NamedCount> = counts
        .into_iter()
        .map(|(name, events)| NamedCount { name, events })
        .collect();
    counts.sort_by(|a, b| b.events.cmp(&a.events).then_with(|| a.name.cmp(&b.name)));
    counts
}

impl InMemoryEventStore {
    async fn tally(&self, tenant: Option<&str>) -> Result<Tally> {
        use futures::StreamExt;
        let mut tally = Tally::default();
        let mut events = self.read_all(ReadAll::from_start());
        while let Some(event) = events.next().await {
            tally.add(&event?, tenant);
        }
        Ok(tally)
    }
}

impl Inspect for InMemoryEventStore {
    async fn schema_state(&self) -> Result<SchemaState> {
        Ok(SchemaState::Current)
    }

    async fn list_streams(&self, listing: &StreamListing) -> Result<Vec<StreamSummary>> {
        let tally = self.tally(listing.tenant_id.as_deref()).await?;
        Ok(tally
            .streams
            .into_iter()
            .filter(|(stream, (_, of_tenant))| {
                listing
                    .aggregate_type
                    .as_deref()
                    .is_none_or(|t| stream.aggregate_type() == t)
                    && (listing.tenant_id.is_none() || *of_tenant)
                    && listing.after.as_ref().is_none_or(|after| {
                        (stream.aggregate_type(), stream.aggregate_id())
                            > (after.aggregate_type(), after.aggregate_id())
                    })
            })
            .map(|(_, (summary, _))| summary)
            .take(listing.limit.unwrap_or(usize::MAX))
            .collect())
    }

    async fn stats(&self) -> Result<StoreStats> {
        let tally = self.tally(None).await?;
        Ok(StoreStats {
            streams: tally.streams.len() as u64,
            by_event_type: most_first(tally.by_event_type),
            by_aggregate_type: most_first(tally.by_aggregate_type),
            by_day: tally
                .by_day
                .into_iter()
                .map(|(day, events)| DayCount { day, events })
                .collect(),
            size_bytes: None,
            ..tally.stats
        })
    }

    async fn projections(&self) -> Result<Vec<ProjectionRecord>> {
        let mut records: BTreeMap<String, ProjectionRecord> = BTreeMap::new();
        let (checkpoints, letters) = self.projection_names();
        for (name, position) in checkpoints {
            records.insert(
                name.clone(),
                ProjectionRecord {
                    name,
                    checkpoint: Some(position),
                    updated_at: None,
                    dead_letters: 0,
                },
            );
        }
        for name in letters {
            records
                .entry(name.clone())
                .or_insert(ProjectionRecord {
                    name,
                    checkpoint: None,
                    updated_at: None,
                    dead_letters: 0,
                })
                .dead_letters += 1;
        }
        Ok(records.into_values().collect())
    }
}

// ---------------------------------------------------------------------------------------------
// SQL stores.

/// The applied migrations against the ones this code embeds.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn schema_state_of(migrator: &sqlx::migrate::Migrator, applied: Option<Vec<i64>>) -> SchemaState {
    let Some(applied) = applied else {
        return SchemaState::Missing;
    };
    let pending = migrator
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .count();
    match pending {
        0 => SchemaState::Current,
        pending => SchemaState::Outdated { pending },
    }
}

/// Events per event type, most first (the same SQL on both databases).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const BY_EVENT_TYPE: &str =
    "SELECT event_type, COUNT(*) AS n FROM events GROUP BY event_type ORDER BY n DESC, event_type";

/// Events per aggregate type, most first.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const BY_AGGREGATE_TYPE: &str = "SELECT aggregate_type, COUNT(*) AS n FROM events \
     GROUP BY aggregate_type ORDER BY n DESC, aggregate_type";

/// Every projection with a checkpoint or dead letters: name, checkpoint, its time, and how many
/// dead letters.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const PROJECTIONS: &str = "SELECT c.name, c.position, c.updated_at, \
     (SELECT COUNT(*) FROM dead_letters d WHERE d.projection = c.name) \
     FROM checkpoints c \
     UNION ALL \
     SELECT projection, NULL, NULL, COUNT(*) FROM dead_letters \
     WHERE projection NOT IN (SELECT name FROM checkpoints) GROUP BY projection \
     ORDER BY 1";

/// The (key, count) rows of `sql` (an event type, an aggregate type, a day), for either database.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn name_counts<DB>(pool: &sqlx::Pool<DB>, sql: &'static str) -> Result<Vec<(String, i64)>>
where
    DB: sqlx::Database,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    (String, i64): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    sqlx::query_as(sql)
        .fetch_all(pool)
        .await
        .map_err(Error::database("stats"))
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn count(n: i64) -> u64 {
    n.max(0) as u64
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn named_counts(rows: Vec<(String, i64)>) -> Vec<NamedCount> {
    rows.into_iter()
        .map(|(name, events)| NamedCount {
            name,
            events: count(events),
        })
        .collect()
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn day_counts(rows: Vec<(String, i64)>) -> Result<Vec<DayCount>> {
    rows.into_iter()
        .map(|(day, events)| {
            let day =
                NaiveDate::parse_from_str(&day, "%Y-%m-%d").map_err(|error| Error::Database {
                    operation: "stats",
                    source: crate::error::DatabaseError::new(format!(
                        "unexpected day `{day}`: {error}"
                    )),
                })?;
            Ok(DayCount {
                day,
                events: count(events),
            })
        })
        .collect()
}

/// A stream summary from its row; rows come from the store's own tables, so parts are trusted.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn summary(
    aggregate_type: String,
    aggregate_id: String,
    version: i64,
    last_event_at: Option<DateTime<Utc>>,
    last_position: i64,
) -> StreamSummary {
    StreamSummary {
        stream: StreamId::unchecked(aggregate_type, aggregate_id),
        version: count(version),
        last_event_at: last_event_at.unwrap_or_default(),
        last_position: Position::new(count(last_position)),
    }
}

/// The `WHERE`, `GROUP BY` and `HAVING` of a stream listing, for either database.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn push_listing<DB>(select: &mut sqlx::QueryBuilder<'_, DB>, listing: &StreamListing)
where
    DB: sqlx::Database,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    select.push(" FROM events WHERE TRUE");
    if let Some(aggregate_type) = &listing.aggregate_type {
        select.push(" AND aggregate_type = ");
        select.push_bind(aggregate_type.clone());
    }
    if let Some(after) = &listing.after {
        select.push(" AND (aggregate_type > ");
        select.push_bind(after.aggregate_type().to_owned());
        select.push(" OR (aggregate_type = ");
        select.push_bind(after.aggregate_type().to_owned());
        select.push(" AND aggregate_id > ");
        select.push_bind(after.aggregate_id().to_owned());
        select.push("))");
    }
    select.push(" GROUP BY aggregate_type, aggregate_id");
    if let Some(tenant) = &listing.tenant_id {
        select.push(" HAVING SUM(CASE WHEN tenant_id = ");
        select.push_bind(tenant.clone());
        select.push(" THEN 1 ELSE 0 END) > 0");
    }
    select.push(" ORDER BY aggregate_type, aggregate_id LIMIT ");
    select.push_bind(listing.sql_limit());
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use crate::store::sqlite::SqliteEventStore;
    use sqlx::Sqlite;

    fn micros(value: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(value)
    }

    impl Inspect for SqliteEventStore {
        async fn schema_state(&self) -> Result<SchemaState> {
            let pool = self.pool();
            let has_table: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            )
            .fetch_one(pool)
            .await
            .map_err(Error::database("schema_state"))?;
            let applied = if has_table == 0 {
                None
            } else {
                Some(
                    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                        .fetch_all(pool)
                        .await
                        .map_err(Error::database("schema_state"))?,
                )
            };
            Ok(schema_state_of(
                &sqlx::migrate!("./migrations/sqlite"),
                applied,
            ))
        }

        async fn list_streams(&self, listing: &StreamListing) -> Result<Vec<StreamSummary>> {
            let mut select = sqlx::QueryBuilder::<Sqlite>::new(
                "SELECT aggregate_type, aggregate_id, MAX(version), MAX(occurred_at), MAX(position)",
            );
            push_listing(&mut select, listing);
            let rows: Vec<(String, String, i64, i64, i64)> = select
                .build_query_as()
                .fetch_all(self.pool())
                .await
                .map_err(Error::database("list_streams"))?;
            Ok(rows
                .into_iter()
                .map(|(t, id, version, at, position)| summary(t, id, version, micros(at), position))
                .collect())
        }

        async fn stats(&self) -> Result<StoreStats> {
            let pool = self.pool();
            let (events, streams): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM events), \
                 (SELECT COUNT(*) FROM (SELECT 1 FROM events GROUP BY aggregate_type, aggregate_id))",
            )
            .fetch_one(pool)
            .await
            .map_err(Error::database("stats"))?;
            let by_event_type = name_counts(pool, BY_EVENT_TYPE).await?;
            let by_aggregate_type = name_counts(pool, BY_AGGREGATE_TYPE).await?;
            let by_day = name_counts(
                pool,
                "SELECT strftime('%Y-%m-%d', occurred_at / 1000000, 'unixepoch') AS day, COUNT(*) \
                 FROM events GROUP BY day ORDER BY day",
            )
            .await?;
            let size: i64 = sqlx::query_scalar(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            )
            .fetch_one(pool)
            .await
            .map_err(Error::database("stats"))?;
            Ok(StoreStats {
                events: count(events),
                streams: count(streams),
                by_event_type: named_counts(by_event_type),
                by_aggregate_type: named_counts(by_aggregate_type),
                by_day: day_counts(by_day)?,
                size_bytes: Some(count(size)),
            })
        }

        async fn projections(&self) -> Result<Vec<ProjectionRecord>> {
            let rows: Vec<(String, Option<i64>, Option<i64>, i64)> = sqlx::query_as(PROJECTIONS)
                .fetch_all(self.pool())
                .await
                .map_err(Error::database("projections"))?;
            Ok(rows
                .into_iter()
                .map(|(name, position, updated_at, letters)| ProjectionRecord {
                    name,
                    checkpoint: position.map(|p| Position::new(count(p))),
                    updated_at: updated_at.and_then(micros),
                    dead_letters: count(letters),
                })
                .collect())
        }
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use crate::store::postgres::PostgresEventStore;
    use sqlx::Postgres;

    /// A stream listing's row: type, id, version, last time, last position.
    type StreamRow = (String, String, i64, Option<DateTime<Utc>>, i64);
    /// A projection listing's row: name, checkpoint, updated, dead letters.
    type ProjectionRow = (String, Option<i64>, Option<DateTime<Utc>>, i64);

    impl Inspect for PostgresEventStore {
        async fn schema_state(&self) -> Result<SchemaState> {
            let pool = self.pool();
            let has_table: bool =
                sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(pool)
                    .await
                    .map_err(Error::database("schema_state"))?;
            let applied = if has_table {
                Some(
                    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                        .fetch_all(pool)
                        .await
                        .map_err(Error::database("schema_state"))?,
                )
            } else {
                None
            };
            Ok(schema_state_of(
                &sqlx::migrate!("./migrations/postgres"),
                applied,
            ))
        }

        async fn list_streams(&self, listing: &StreamListing) -> Result<Vec<StreamSummary>> {
            let mut select = sqlx::QueryBuilder::<Postgres>::new(
                "SELECT aggregate_type, aggregate_id, MAX(version), MAX(occurred_at), MAX(position)",
            );
            push_listing(&mut select, listing);
            let rows: Vec<StreamRow> = select
                .build_query_as()
                .fetch_all(self.pool())
                .await
                .map_err(Error::database("list_streams"))?;
            Ok(rows
                .into_iter()
                .map(|(t, id, version, at, position)| summary(t, id, version, at, position))
                .collect())
        }

        async fn stats(&self) -> Result<StoreStats> {
            let pool = self.pool();
            let (events, streams): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM events), \
                 (SELECT COUNT(*) FROM (SELECT 1 FROM events GROUP BY aggregate_type, aggregate_id) AS s)",
            )
            .fetch_one(pool)
            .await
            .map_err(Error::database("stats"))?;
            let by_event_type = name_counts(pool, BY_EVENT_TYPE).await?;
            let by_aggregate_type = name_counts(pool, BY_AGGREGATE_TYPE).await?;
            let by_day = name_counts(
                pool,
                "SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, COUNT(*) \
                 FROM events GROUP BY day ORDER BY day",
            )
            .await?;
            let size: i64 = sqlx::query_scalar(
                "SELECT COALESCE(SUM(pg_total_relation_size(t)), 0)::BIGINT FROM \
                 (SELECT to_regclass(name) AS t FROM UNNEST(ARRAY['events', 'snapshots', \
                 'checkpoints', 'dead_letters']) AS name) AS tables WHERE t IS NOT NULL",
            )
            .fetch_one(pool)
            .await
            .map_err(Error::database("stats"))?;
            Ok(StoreStats {
                events: count(events),
                streams: count(streams),
                by_event_type: named_counts(by_event_type),
                by_aggregate_type: named_counts(by_aggregate_type),
                by_day: day_counts(by_day)?,
                size_bytes: Some(count(size)),
            })
        }

        async fn projections(&self) -> Result<Vec<ProjectionRecord>> {
            let rows: Vec<ProjectionRow> = sqlx::query_as(PROJECTIONS)
                .fetch_all(self.pool())
                .await
                .map_err(Error::database("projections"))?;
            Ok(rows
                .into_iter()
                .map(|(name, position, updated_at, letters)| ProjectionRecord {
                    name,
                    checkpoint: position.map(|p| Position::new(count(p))),
                    updated_at,
                    dead_letters: count(letters),
                })
                .collect())
        }
    }
}

/// `$body` with `$store` bound to the store inside, whatever the backend.
macro_rules! each {
    ($self:expr, $store:ident => $body:expr) => {
        match $self {
            AnyStore::Memory($store) => $body,
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite($store) => $body,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres($store) => $body,
        }
    };
}

impl Inspect for AnyStore {
    async fn schema_state(&self) -> Result<SchemaState> {
        each!(self, store => store.schema_state().await)
    }

    async fn list_streams(&self, listing: &StreamListing) -> Result<Vec<StreamSummary>> {
        each!(self, store => store.list_streams(listing).await)
    }

    async fn stats(&self) -> Result<StoreStats> {
        each!(self, store => store.stats().await)
    }

    async fn projections(&self) -> Result<Vec<ProjectionRecord>> {
        each!(self, store => store.projections().await)
    }
}

impl AnyStore {
    /// Opens the store `url` names (as [`connect`](Self::connect) does) without creating
    /// anything: no SQLite file, no schema, no migration. Fails with [`Error::SchemaMissing`] if
    /// the database (or the SQLite file) has no schema, or an older one: what a tool that only
    /// reads uses, so that pointing it at the wrong database changes nothing.
    pub async fn open_existing(url: &str) -> Result<Self> {
        let scheme = url.split(':').next().unwrap_or_default();
        let store = match scheme {
            "memory" => AnyStore::Memory(InMemoryEventStore::new()),
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                use sqlx::sqlite::SqliteConnectOptions;
                use std::str::FromStr;
                let options =
                    SqliteConnectOptions::from_str(url).map_err(Error::database("connect"))?;
                let file = options.get_filename();
                if file != std::path::Path::new(":memory:") && !file.exists() {
                    return Err(Error::SchemaMissing {
                        reason: format!("there is no database file at {}", file.display()),
                    });
                }
                AnyStore::Sqlite(
                    crate::store::sqlite::SqliteEventStore::open_existing(options).await?,
                )
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
                use sqlx::{ConnectOptions, Connection};
                use std::str::FromStr;
                let options =
                    PgConnectOptions::from_str(url).map_err(Error::database("connect"))?;
                // One connection first: a pool retries until its timeout and then reports only
                // that, where this reports why (refused, unknown host, bad password).
                options
                    .connect()
                    .await
                    .map_err(Error::database("connect"))?
                    .close()
                    .await
                    .map_err(Error::database("connect"))?;
                let pool = PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(std::time::Duration::from_secs(10))
                    .connect_with(options)
                    .await
                    .map_err(Error::database("connect"))?;
                AnyStore::Postgres(crate::store::postgres::PostgresEventStore::from_pool(pool))
            }
            _ => {
                return Err(Error::UnsupportedUrl {
                    scheme: scheme.to_owned(),
                });
            }
        };
        match store.schema_state().await? {
            SchemaState::Current => Ok(store),
            SchemaState::Missing => Err(Error::SchemaMissing {
                reason: "the database has no event store schema".into(),
            }),
            SchemaState::Outdated { pending } => Err(Error::SchemaMissing {
                reason: format!("the schema is out of date ({pending} migrations to apply)"),
            }),
        }
    }
}
