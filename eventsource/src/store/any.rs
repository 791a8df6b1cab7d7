//! [`AnyStore`]: one of the built-in stores, chosen at run time from a URL.

use super::memory::InMemoryEventStore;
#[cfg(feature = "postgres")]
use super::postgres::PostgresEventStore;
#[cfg(feature = "sqlite")]
use super::sqlite::SqliteEventStore;
use super::{
    AppendResult, EventStore, ExpectedVersion, LogHead, Position, ReadAll, StreamId, StreamQuery,
};
use crate::checkpoint::{CheckpointStore, DeadLetter};
use crate::error::{Error, Result};
use crate::event::{EventView, NewEvent, RecordedEvent};
use crate::snapshot::{Snapshot, SnapshotStore};
use futures::stream::BoxStream;
use std::time::Duration;

/// One of the built-in event stores, chosen at run time: what an application that reads
/// `DATABASE_URL` holds. Every call is a `match` over the backends, so it costs what the store
/// inside costs; it is an [`EventStore`] and a [`SnapshotStore`], and clones share the store.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> eventsource::Result<()> {
/// use eventsource::store::AnyStore;
/// let url = std::env::var("EVENTS_URL").unwrap_or_else(|_| "memory:".into());
/// let store = AnyStore::connect(&url).await?;
/// assert_eq!(store.backend(), "memory");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AnyStore {
    /// [`InMemoryEventStore`].
    Memory(InMemoryEventStore),
    /// [`SqliteEventStore`].
    #[cfg(feature = "sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
    Sqlite(SqliteEventStore),
    /// [`PostgresEventStore`].
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    Postgres(PostgresEventStore),
}

impl AnyStore {
    /// Connects to the store `url` names, by its scheme: `memory:` (a new, empty in-memory
    /// store), `sqlite:` (`sqlite://events.db`, `sqlite::memory:`; feature `sqlite`), or
    /// `postgres:` / `postgresql:` (feature `postgres`; runs the migrations). Any other scheme,
    /// or one whose feature is off, is [`Error::UnsupportedUrl`].
    pub async fn connect(url: &str) -> Result<Self> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "memory" => Ok(AnyStore::Memory(InMemoryEventStore::new())),
            #[cfg(feature = "sqlite")]
            "sqlite" => Ok(AnyStore::Sqlite(SqliteEventStore::connect(url).await?)),
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                Ok(AnyStore::Postgres(PostgresEventStore::connect(url).await?))
            }
            _ => Err(Error::UnsupportedUrl {
                scheme: scheme.to_owned(),
            }),
        }
    }

    /// The backend's name: `memory`, `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            AnyStore::Memory(_) => "memory",
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(_) => "postgres",
        }
    }
}

impl From<InMemoryEventStore> for AnyStore {
    fn from(store: InMemoryEventStore) -> Self {
        AnyStore::Memory(store)
    }
}

#[cfg(feature = "sqlite")]
impl From<SqliteEventStore> for AnyStore {
    fn from(store: SqliteEventStore) -> Self {
        AnyStore::Sqlite(store)
    }
}

#[cfg(feature = "postgres")]
impl From<PostgresEventStore> for AnyStore {
    fn from(store: PostgresEventStore) -> Self {
        AnyStore::Postgres(store)
    }
}

/// `$body` with `$store` bound to the store inside, whatever the backend.
macro_rules! each {
    ($self:expr, $store:ident => $body:expr) => {
        match $self {
            $crate::store::AnyStore::Memory($store) => $body,
            #[cfg(feature = "sqlite")]
            $crate::store::AnyStore::Sqlite($store) => $body,
            #[cfg(feature = "postgres")]
            $crate::store::AnyStore::Postgres($store) => $body,
        }
    };
}
pub(crate) use each;

impl EventStore for AnyStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        each!(self, store => store.append(stream, expected, events).await)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        query: StreamQuery,
    ) -> Result<Vec<RecordedEvent>> {
        each!(self, store => store.read_stream(stream, query).await)
    }

    fn read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent>> {
        each!(self, store => store.read_all(query))
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        each!(self, store => store.stream_version(stream).await)
    }

    async fn fold_stream<F>(&self, stream: &StreamId, query: StreamQuery, apply: F) -> Result<()>
    where
        F: FnMut(EventView<'_>) -> Result<()> + Send,
    {
        each!(self, store => store.fold_stream(stream, query, apply).await)
    }

    async fn stream_exists(&self, stream: &StreamId) -> Result<bool> {
        each!(self, store => store.stream_exists(stream).await)
    }

    async fn stream_hidden(&self, stream: &StreamId) -> Result<bool> {
        each!(self, store => store.stream_hidden(stream).await)
    }

    async fn log_head(&self) -> Result<LogHead> {
        each!(self, store => store.log_head().await)
    }

    async fn wait_for(&self, position: Position, timeout: Duration) -> Result<()> {
        each!(self, store => store.wait_for(position, timeout).await)
    }

    fn watch_appends(&self) -> tokio::sync::watch::Receiver<u64> {
        each!(self, store => store.watch_appends())
    }

    async fn count(&self, query: ReadAll) -> Result<u64> {
        each!(self, store => store.count(query).await)
    }

    async fn fold_all<F>(&self, query: &ReadAll, apply: F) -> Result<super::FoldEnd>
    where
        F: for<'e> FnMut(super::FoldItem<'e>) -> std::ops::ControlFlow<()> + Send,
    {
        each!(self, store => store.fold_all(query, apply).await)
    }
}

impl CheckpointStore for AnyStore {
    async fn checkpoint(&self, projection: &str) -> Result<Option<Position>> {
        each!(self, store => store.checkpoint(projection).await)
    }

    async fn save_checkpoint(
        &self,
        projection: &str,
        previous: Option<Position>,
        position: Position,
    ) -> Result<()> {
        each!(self, store => store.save_checkpoint(projection, previous, position).await)
    }

    async fn delete_checkpoint(&self, projection: &str) -> Result<()> {
        each!(self, store => store.delete_checkpoint(projection).await)
    }

    async fn add_dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        each!(self, store => store.add_dead_letter(letter).await)
    }

    async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>> {
        each!(self, store => store.dead_letters(projection).await)
    }

    async fn remove_dead_letter(&self, projection: &str, position: Position) -> Result<bool> {
        each!(self, store => store.remove_dead_letter(projection, position).await)
    }

    async fn lease(&self, projection: &str) -> Result<Option<crate::checkpoint::Lease>> {
        each!(self, store => store.lease(projection).await)
    }
}

impl SnapshotStore for AnyStore {
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        each!(self, store => store.save_snapshot(snapshot).await)
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        each!(self, store => store.load_snapshot(stream).await)
    }

    async fn delete_snapshot(&self, stream: &StreamId) -> Result<bool> {
        each!(self, store => store.delete_snapshot(stream).await)
    }
}
