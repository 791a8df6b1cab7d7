//! Event stores: the [`EventStore`] trait and what it speaks in (queries, append results), its
//! object-safe form [`DynEventStore`], and [`AnyStore`], a store chosen at run time. Backends:
//! [`memory`], and `sqlite` and `postgres` (behind features of those names), each a folder split
//! by concern over what every SQL backend shares (`store/sql`: row decoding, the dialect, the
//! retry policy, checkpoints).
//!
//! A store keeps one ordered log. Each event belongs to one stream (an aggregate type and id)
//! where it has a version (1, 2, 3, ...), and has a position in the global order of the whole
//! store. Appends to a stream are atomic and guarded by an [`ExpectedVersion`].

mod any;
mod checks;
mod dynamic;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod group;
pub mod memory;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod sql;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod warm;

pub use any::AnyStore;
pub(crate) use any::each;
pub use dynamic::DynEventStore;

pub(crate) use checks::*;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use sql::*;

use crate::context::{ContextFields, EventContext};
use crate::error::{Error, Result};
use crate::event::{EventView, NewEvent, RecordedEvent};
use futures::stream::BoxStream;
use std::future::Future;
use std::time::Duration;

pub use crate::stream::{AppendResult, ExpectedVersion, MAX_ID_LEN, Position, StreamId};

/// The most events one append takes (PostgreSQL positions leave room for this many per
/// transaction; every store enforces the same limit).
pub const MAX_BATCH: usize = 65_536;

/// What [`EventStore::fold_all`] feeds its callback: an event (borrowed view and context), or
/// the error of a damaged row (its position in [`Error::position`]).
pub type FoldItem<'e> = std::result::Result<(EventView<'e>, &'e EventContext<'e>), &'e Error>;

/// Where an [`EventStore::fold_all`] page ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FoldEnd {
    /// The position of the last row fed (or passed over by the filter): where the next page
    /// starts. `None`: the page was empty.
    pub last: Option<Position>,
    /// How many rows the page read (a full page, `batch_size`, means there may be more).
    pub rows: usize,
    /// Whether the callback stopped the page early (at `last`).
    pub stopped: bool,
}

/// How far a global read can get right now: the last committed position, and the last one a
/// read is guaranteed not to skip anything before. They differ only on PostgreSQL, while a
/// transaction that started earlier is still running ([`EventStore::wait_for`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogHead {
    /// The position of the newest committed event ([`Position::START`]: none).
    pub last: Position,
    /// Every committed event at or before this position is readable by `read_all` now.
    pub readable: Position,
    /// How many committed events lie after `readable`: held back until the transactions before
    /// them finish.
    pub held_back: u64,
}

/// Which events of one stream to read.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamQuery {
    /// The first version to read (inclusive; versions start at 1).
    pub from_version: u64,
    /// The last version to read (inclusive), or to the end.
    pub to_version: Option<u64>,
    /// Newest first instead of oldest first.
    pub backwards: bool,
    /// At most this many events.
    pub limit: Option<usize>,
    /// Only events that occurred at or before this time (time travel by date).
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

impl StreamQuery {
    /// The whole stream, oldest first.
    pub fn all() -> Self {
        StreamQuery {
            from_version: 1,
            to_version: None,
            backwards: false,
            limit: None,
            until: None,
        }
    }

    /// From `version` (inclusive) to the end.
    pub fn from_version(version: u64) -> Self {
        StreamQuery {
            from_version: version.max(1),
            ..Self::all()
        }
    }

    /// The last `n` events, newest first.
    pub fn last(n: usize) -> Self {
        Self::all().backwards().limit(n)
    }

    /// Stops at `version` (inclusive).
    pub fn to_version(mut self, version: u64) -> Self {
        self.to_version = Some(version);
        self
    }

    /// Reads newest first.
    pub fn backwards(mut self) -> Self {
        self.backwards = true;
        self
    }

    /// Reads at most `n` events.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Only events that occurred at or before `time`.
    pub fn until(mut self, time: chrono::DateTime<chrono::Utc>) -> Self {
        self.until = Some(time);
        self
    }

    /// Whether `event` is in the query's range (version and time; not the limit).
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        event.version >= self.from_version
            && self.to_version.is_none_or(|to| event.version <= to)
            && self.until.is_none_or(|until| event.occurred_at <= until)
    }
}

impl Default for StreamQuery {
    fn default() -> Self {
        Self::all()
    }
}

/// Which events of the global log to read, and how many per round trip.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadAll {
    /// Read events after this position (exclusive; [`Position::START`] reads from the start).
    pub after: Position,
    /// Only events of these types (empty: all).
    pub event_types: Vec<String>,
    /// Only events of these aggregate types (empty: all).
    pub aggregate_types: Vec<String>,
    /// Only events of this tenant.
    pub tenant_id: Option<String>,
    /// Events fetched per round trip; bounds the memory a read holds.
    pub batch_size: usize,
    /// Which parts of the [`EventContext`] [`EventStore::fold_all`] reads: with
    /// [`ContextFields::Location`] it fetches neither the event id, nor the time, nor the
    /// metadata. `read_all` always reads whole events.
    pub context: ContextFields,
}

impl ReadAll {
    /// The default number of events per round trip.
    pub const DEFAULT_BATCH_SIZE: usize = 1000;

    /// Everything, from the first event.
    pub fn from_start() -> Self {
        Self::after(Position::START)
    }

    /// Everything after position `position` (exclusive): resume from a checkpoint.
    pub fn after(position: Position) -> Self {
        ReadAll {
            after: position,
            event_types: Vec::new(),
            aggregate_types: Vec::new(),
            tenant_id: None,
            batch_size: Self::DEFAULT_BATCH_SIZE,
            context: ContextFields::All,
        }
    }

    /// Only events of these types.
    pub fn event_types<I: IntoIterator<Item = T>, T: Into<String>>(mut self, types: I) -> Self {
        self.event_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Only events of these aggregate types.
    pub fn aggregate_types<I: IntoIterator<Item = T>, T: Into<String>>(mut self, types: I) -> Self {
        self.aggregate_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Only events of this tenant.
    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    /// Events fetched per round trip (at least 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Which parts of the context [`EventStore::fold_all`] reads (see [`ReadAll::context`]).
    pub fn context(mut self, fields: ContextFields) -> Self {
        self.context = fields;
        self
    }

    /// Whether `event` passes the filters (not the position).
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && (self.aggregate_types.is_empty()
                || self
                    .aggregate_types
                    .iter()
                    .any(|t| t == event.stream.aggregate_type()))
            && self
                .tenant_id
                .as_ref()
                .is_none_or(|tenant| event.metadata.tenant_id.as_ref() == Some(tenant))
    }
}

impl Default for ReadAll {
    fn default() -> Self {
        Self::from_start()
    }
}

/// A durable, ordered log of events, split in streams.
///
/// Every implementation passes the same conformance suite: atomic batch appends checked against
/// an [`ExpectedVersion`], rejection of already stored event ids, stream reads, and reads of the
/// global order that never skip or repeat an event.
pub trait EventStore: Send + Sync {
    /// Appends `events` to `stream`, all or none, if the stream is at `expected`.
    ///
    /// Fails with [`Error::Concurrency`] if it is not, [`Error::DuplicateEvent`] if an event id
    /// is already stored, [`Error::InvalidInput`] for a stream id no store accepts; in each case
    /// nothing is written.
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendResult>> + Send;

    /// Reads events of one stream.
    fn read_stream(
        &self,
        stream: &StreamId,
        query: StreamQuery,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>>> + Send;

    /// Reads the global log in position order, up to what is readable now
    /// ([`LogHead::readable`]): it never waits for transactions still running elsewhere (call
    /// [`wait_for`](Self::wait_for) first to read your own writes). The stream fetches
    /// [`ReadAll::batch_size`] events at a time, so memory stays bounded.
    ///
    /// A damaged row is yielded as an [`Error::Corrupt`] carrying its position, and the stream
    /// goes on after it: one bad row never hides the events around it. Any other error (the
    /// database failing) ends the stream.
    fn read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent>>;

    /// The stream's current version (0: no events).
    fn stream_version(&self, stream: &StreamId) -> impl Future<Output = Result<u64>> + Send;

    /// Feeds the events of one stream to `apply`, in version order, as borrowed views: how a
    /// repository loads an aggregate. Stores override it to read only what dispatch needs and
    /// allocate nothing per event; the default goes through [`read_stream`](Self::read_stream).
    /// Stops at the first error `apply` returns. `query.backwards` is ignored.
    ///
    /// The SQL stores apply rows as they are read, so a failure part way (the connection lost)
    /// leaves the events before it applied: start over from a fresh state, as the repository
    /// does when the error is transient ([`Error::is_transient`]).
    fn fold_stream<F>(
        &self,
        stream: &StreamId,
        query: StreamQuery,
        mut apply: F,
    ) -> impl Future<Output = Result<()>> + Send
    where
        F: FnMut(EventView<'_>) -> Result<()> + Send,
    {
        async move {
            let query = StreamQuery {
                backwards: false,
                ..query
            };
            for event in self.read_stream(stream, query).await? {
                apply(event.view())?;
            }
            Ok(())
        }
    }

    /// Whether the stream has events.
    fn stream_exists(&self, stream: &StreamId) -> impl Future<Output = Result<bool>> + Send {
        async move { Ok(self.stream_version(stream).await? > 0) }
    }

    /// Whether the stream has events that this store cannot see: on PostgreSQL, another
    /// tenant's, hidden by row-level security from a tenant-scoped session. What a
    /// [`TenantStore`](crate::tenant::TenantStore) asks of a stream it sees no events of before it
    /// refuses an append that needs one. `false` for every other store.
    #[doc(hidden)]
    fn stream_hidden(&self, stream: &StreamId) -> impl Future<Output = Result<bool>> + Send {
        let _ = stream;
        async { Ok(false) }
    }

    /// The newest committed position and the newest one `read_all` can read now.
    fn log_head(&self) -> impl Future<Output = Result<LogHead>> + Send;

    /// One page of the global log, lean: what [`read_all`](Self::read_all) would return first
    /// (up to [`ReadAll::batch_size`] rows after `query.after`, filtered), fed to `apply` as
    /// borrowed views with their [`EventContext`], without building a [`RecordedEvent`] per row:
    /// how the subscription manager feeds projections. A damaged row is fed as its error.
    /// `apply` returns [`ControlFlow::Break`](std::ops::ControlFlow::Break) to stop at that row.
    /// [`ReadAll::context`] says which context fields are read (the others are placeholders).
    /// The SQLite and PostgreSQL stores feed rows as they arrive, so an error part way through
    /// a page comes after `apply` saw the rows before it: a caller keeps what it applied.
    fn fold_all<F>(
        &self,
        query: &ReadAll,
        mut apply: F,
    ) -> impl Future<Output = Result<FoldEnd>> + Send
    where
        F: for<'e> FnMut(FoldItem<'e>) -> std::ops::ControlFlow<()> + Send,
    {
        use futures::StreamExt;
        async move {
            let mut events = self.read_all(query.clone()).take(query.batch_size);
            let mut end = FoldEnd::default();
            while let Some(item) = events.next().await {
                let (position, flow) = match &item {
                    Ok(event) => (
                        event.position,
                        apply(Ok((event.view(), &EventContext::of(event)))),
                    ),
                    Err(error) => match error.position() {
                        Some(position) => (position, apply(Err(error))),
                        // Not a damaged row: the database failed.
                        None => return item.map(|_| end),
                    },
                };
                end.rows += 1;
                end.last = Some(position);
                if flow.is_break() {
                    end.stopped = true;
                    break;
                }
            }
            Ok(end)
        }
    }

    /// How many events `read_all(query)` would return now (what a projection at `query.after`
    /// has still to read: its lag). The SQL stores count in the database; the default reads.
    fn count(&self, query: ReadAll) -> impl Future<Output = Result<u64>> + Send {
        use futures::StreamExt;
        async move {
            let mut events = self.read_all(query);
            let mut count = 0;
            while let Some(event) = events.next().await {
                if let Err(error) = event
                    && error.position().is_none()
                {
                    return Err(error);
                }
                count += 1;
            }
            Ok(count)
        }
    }

    /// A receiver that changes after appends: how a live subscription is woken instead of
    /// polling. Only a wake-up: the reader then reads the store from its checkpoint. Memory and
    /// SQLite signal in process; PostgreSQL through `LISTEN`/`NOTIFY` (other processes' appends
    /// too). A store that cannot signal returns a receiver whose sender is gone; readers then
    /// poll.
    fn watch_appends(&self) -> tokio::sync::watch::Receiver<u64> {
        tokio::sync::watch::channel(0).1
    }

    /// The tenant this store is scoped to ([`TenantStore`](crate::tenant::TenantStore)), if any:
    /// how a wrapper around a scoped store (a `ProtectedStore`) keeps each tenant's keys apart.
    #[doc(hidden)]
    fn tenant_scope(&self) -> Option<&str> {
        None
    }

    /// Waits until every event up to `position` is readable by [`read_all`](Self::read_all):
    /// how a caller reads its own writes (pass the append's
    /// [`last_position`](AppendResult::last_position)). Returns at once on stores where
    /// everything committed is readable (memory, SQLite); on PostgreSQL it waits for the
    /// transactions that started before the append to finish, at most `timeout`, then fails
    /// with [`Error::Timeout`].
    fn wait_for(
        &self,
        position: Position,
        timeout: Duration,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (position, timeout);
        async { Ok(()) }
    }
}

macro_rules! forward_event_store {
    ($($ty:ty),*) => {$(
        /// Forwards to the store behind the pointer, so a repository can borrow or share a store.
        impl<S: EventStore + ?Sized> EventStore for $ty {
            fn append(
                &self,
                stream: &StreamId,
                expected: ExpectedVersion,
                events: Vec<NewEvent>,
            ) -> impl Future<Output = Result<AppendResult>> + Send {
                (**self).append(stream, expected, events)
            }

            fn read_stream(
                &self,
                stream: &StreamId,
                query: StreamQuery,
            ) -> impl Future<Output = Result<Vec<RecordedEvent>>> + Send {
                (**self).read_stream(stream, query)
            }

            fn read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent>> {
                (**self).read_all(query)
            }

            fn stream_version(&self, stream: &StreamId) -> impl Future<Output = Result<u64>> + Send {
                (**self).stream_version(stream)
            }

            fn fold_stream<F>(
                &self,
                stream: &StreamId,
                query: StreamQuery,
                apply: F,
            ) -> impl Future<Output = Result<()>> + Send
            where
                F: FnMut(EventView<'_>) -> Result<()> + Send,
            {
                (**self).fold_stream(stream, query, apply)
            }

            fn stream_exists(&self, stream: &StreamId) -> impl Future<Output = Result<bool>> + Send {
                (**self).stream_exists(stream)
            }

            fn stream_hidden(&self, stream: &StreamId) -> impl Future<Output = Result<bool>> + Send {
                (**self).stream_hidden(stream)
            }

            fn log_head(&self) -> impl Future<Output = Result<LogHead>> + Send {
                (**self).log_head()
            }

            fn watch_appends(&self) -> tokio::sync::watch::Receiver<u64> {
                (**self).watch_appends()
            }

            fn tenant_scope(&self) -> Option<&str> {
                (**self).tenant_scope()
            }

            fn count(&self, query: ReadAll) -> impl Future<Output = Result<u64>> + Send {
                (**self).count(query)
            }

            fn fold_all<F>(
                &self,
                query: &ReadAll,
                apply: F,
            ) -> impl Future<Output = Result<FoldEnd>> + Send
            where
                F: for<'e> FnMut(FoldItem<'e>) -> std::ops::ControlFlow<()> + Send,
            {
                (**self).fold_all(query, apply)
            }

            fn wait_for(
                &self,
                position: Position,
                timeout: Duration,
            ) -> impl Future<Output = Result<()>> + Send {
                (**self).wait_for(position, timeout)
            }
        }
    )*};
}

forward_event_store!(&S, std::sync::Arc<S>, Box<S>);

/// [`EventStore::append`] of a built-in store, observed (a span, metrics: see
/// [`telemetry`](crate::telemetry)): the store's `append_unobserved` does the work.
macro_rules! observed_append {
    () => {
        async fn append(
            &self,
            stream: &crate::stream::StreamId,
            expected: crate::stream::ExpectedVersion,
            events: Vec<crate::event::NewEvent>,
        ) -> crate::error::Result<crate::stream::AppendResult> {
            let observed = crate::telemetry::Append::start(stream, expected, &events);
            observed
                .run(self.append_unobserved(stream, expected, events))
                .await
        }
    };
}
pub(crate) use observed_append;

/// The in-process signal of new appends behind [`EventStore::watch_appends`]: a counter bumped
/// after each committed append.
#[derive(Debug)]
pub(crate) struct AppendSignal(tokio::sync::watch::Sender<u64>);

impl Default for AppendSignal {
    fn default() -> Self {
        AppendSignal(tokio::sync::watch::channel(0).0)
    }
}

impl AppendSignal {
    /// Wakes every watcher.
    pub(crate) fn notify(&self) {
        self.0.send_modify(|count| *count = count.wrapping_add(1));
    }

    /// A new watcher.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// One row of a global read: its position, and the event or why the row cannot be read; `None`
/// for a row read only to move past it (it does not pass the read's filters).
pub(crate) type PageRow = (Position, Option<Result<RecordedEvent>>);

/// A [`EventStore::read_all`] stream built from a function that fetches one page: the rows after
/// a position, at most a limit. Pages are fetched lazily, one at a time. A damaged row is
/// yielded as its error and the read goes on after it; an error fetching a page is yielded
/// (never swallowed as the end of the stream) and ends the stream.
pub(crate) fn paged<'a, F, Fut>(query: ReadAll, fetch: F) -> BoxStream<'a, Result<RecordedEvent>>
where
    F: Fn(ReadAll) -> Fut + Send + Sync + 'a,
    Fut: Future<Output = Result<Vec<PageRow>>> + Send + 'a,
{
    use futures::StreamExt;
    let pages = futures::stream::unfold(Some(query), move |state| {
        let page = state.map(|query| (fetch(query.clone()), query));
        async move {
            let (page, query) = page?;
            match page.await {
                Ok(rows) => {
                    let next = match rows.last() {
                        Some((last, _)) if rows.len() >= query.batch_size => Some(ReadAll {
                            after: *last,
                            ..query
                        }),
                        _ => None,
                    };
                    if rows.is_empty() {
                        return None;
                    }
                    Some((
                        futures::stream::iter(rows.into_iter().filter_map(|(_, row)| row))
                            .left_stream(),
                        next,
                    ))
                }
                Err(err) => Some((futures::stream::iter([Err(err)]).right_stream(), None)),
            }
        }
    });
    pages.flatten().boxed()
}
