//! Event stores: the [`EventStore`] trait and what it speaks in (queries, append results), its
//! object-safe form [`DynEventStore`], and [`AnyStore`], a store chosen at run time. Backends
//! live one per file: [`memory`], `sqlite` and `postgres` (behind features of those names).
//!
//! A store keeps one ordered log. Each event belongs to one stream (an aggregate type and id)
//! where it has a version (1, 2, 3, ...), and has a position in the global order of the whole
//! store. Appends to a stream are atomic and guarded by an [`ExpectedVersion`].

mod any;
mod dynamic;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod group;
pub mod memory;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod warm;

pub use any::AnyStore;
pub use dynamic::DynEventStore;

use crate::error::{Error, Result};
use crate::event::{EventView, NewEvent, RecordedEvent};
use crate::projection::{ContextFields, EventContext};
use futures::stream::BoxStream;
use std::future::Future;
use std::time::Duration;

pub use crate::stream::{ExpectedVersion, MAX_ID_LEN, Position, StreamId};

/// The most events one append takes (PostgreSQL positions leave room for this many per
/// transaction; every store enforces the same limit).
pub const MAX_BATCH: usize = 65_536;

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppendResult {
    /// The stream's version after the append (the version of its last event).
    pub stream_version: u64,
    /// The global position of the last appended event (for an empty batch, of the stream's last
    /// event; [`Position::START`] if the stream has none).
    pub last_position: Position,
}

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

    /// The limit as an SQL `LIMIT` value (-1: none; SQLite and PostgreSQL both read a negative
    /// or NULL limit as "all", we use `i64::MAX` to be explicit).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn sql_limit(&self) -> i64 {
        self.limit
            .map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX))
    }

    /// The version range as SQL bounds.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn sql_versions(&self) -> (i64, i64) {
        let from = i64::try_from(self.from_version).unwrap_or(i64::MAX);
        let to = self
            .to_version
            .map_or(i64::MAX, |v| i64::try_from(v).unwrap_or(i64::MAX));
        (from, to)
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

/// Checks a batch before any store writes it, so that every backend refuses the same input with
/// the same error: a bad stream id, an empty or NUL-holding event type, a schema version of 0,
/// a payload that is not JSON or holds a NUL character, metadata holding a NUL character,
/// duplicate ids within the batch.
pub(crate) fn validate_append(stream: &StreamId, events: &[NewEvent]) -> Result<()> {
    stream.validate()?;
    if events.len() > MAX_BATCH {
        return Err(Error::InvalidInput {
            stream: stream.clone(),
            reason: format!(
                "{} events in one append, the limit is {MAX_BATCH}",
                events.len()
            ),
        });
    }
    let mut ids = std::collections::HashSet::with_capacity(events.len());
    for event in events {
        if !ids.insert(event.event_id) {
            return Err(Error::DuplicateEvent {
                stream: stream.clone(),
                event_id: event.event_id,
            });
        }
        let reason = if event.event_type.is_empty() {
            "an event type is empty".to_owned()
        } else if event.event_type.len() > MAX_ID_LEN || event.event_type.contains('\0') {
            format!(
                "event type `{}` is too long or holds a NUL byte",
                event.event_type.escape_debug()
            )
        } else if event.schema_version == 0 || event.schema_version > i32::MAX as u32 {
            format!(
                "event `{}` has schema version {}; versions go from 1 to {}",
                event.event_type,
                event.schema_version,
                i32::MAX
            )
        } else if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(&event.payload) {
            format!(
                "the payload of event `{}` is not JSON: {err}",
                event.event_type
            )
        } else if has_nul_escape(&event.payload) {
            // PostgreSQL's JSONB cannot hold U+0000; refuse it everywhere so that data written to
            // one store can be copied to any other.
            format!(
                "the payload of event `{}` holds a NUL character (\\u0000)",
                event.event_type
            )
        } else if let Some(field) = nul_in_metadata(&event.metadata) {
            format!(
                "the {field} of event `{}` holds a NUL character",
                event.event_type
            )
        } else {
            continue;
        };
        return Err(Error::InvalidInput {
            stream: stream.clone(),
            reason,
        });
    }
    Ok(())
}

/// Which part of `metadata` holds a NUL character, which PostgreSQL cannot store in text or JSON.
fn nul_in_metadata(metadata: &crate::event::Metadata) -> Option<&'static str> {
    if metadata
        .tenant_id
        .as_deref()
        .is_some_and(|t| t.contains('\0'))
    {
        Some("tenant id")
    } else if metadata
        .actor_id
        .as_deref()
        .is_some_and(|a| a.contains('\0'))
    {
        Some("actor id")
    } else if !metadata.extra.is_empty()
        && serde_json::to_string(&metadata.extra).is_ok_and(|json| has_nul_escape(&json))
    {
        Some("metadata")
    } else {
        None
    }
}

/// Whether JSON text holds the escape `\u0000` (and not an escaped backslash followed by `u0000`).
fn has_nul_escape(json: &str) -> bool {
    let bytes = json.as_bytes();
    // Most payloads hold no escape at all: one `memchr` instead of a substring search.
    if !bytes.contains(&b'\\') {
        return false;
    }
    let mut from = 0;
    while let Some(found) = json[from..].find("u0000") {
        let at = from + found;
        let backslashes = bytes[..at]
            .iter()
            .rev()
            .take_while(|b| **b == b'\\')
            .count();
        if backslashes % 2 == 1 {
            return true;
        }
        from = at + 1;
    }
    false
}

/// For an append whose event ids are all stored already: if they are stored in `stream`, at
/// consecutive versions in the batch's order, after a version that satisfies `expected`, this is
/// the same append retried after its outcome was lost (a connection dropped during the commit),
/// and it reports the result the first attempt had. `stored` gives, in the batch's order, each
/// event's stream, version and position.
pub(crate) fn retried_append<'a>(
    stream: &StreamId,
    expected: ExpectedVersion,
    stored: impl IntoIterator<Item = (&'a StreamId, u64, Position)>,
) -> Option<AppendResult> {
    let mut first = None;
    let mut last = None;
    for (at, version, position) in stored {
        if at != stream {
            return None;
        }
        match last {
            None => first = Some(version),
            Some((previous, _)) if version == previous + 1 => {}
            Some(_) => return None,
        }
        last = Some((version, position));
    }
    let (first, (version, position)) = (first?, last?);
    expected.is_satisfied_by(first - 1).then_some(AppendResult {
        stream_version: version,
        last_position: position,
    })
}

/// How often a store tries an operation that failed with a transient error
/// ([`Error::is_transient`]), and the first wait between attempts (it doubles, up to a second).
pub(crate) const TRANSIENT_ATTEMPTS: u32 = 10;
const TRANSIENT_FIRST_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// Runs `attempt` again while it fails with a transient error, with backoff, up to
/// [`TRANSIENT_ATTEMPTS`] times; `recover` runs after each wait, before the next attempt (a
/// PostgreSQL store closes the idle connections the server dropped). Only for operations that
/// are safe to repeat: reads, and appends (idempotent by their event ids: see
/// [`retried_append`]).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) async fn retrying<T, F, Fut, R, RFut>(
    operation: &'static str,
    mut recover: R,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T>>,
    R: FnMut() -> RFut,
    RFut: Future<Output = ()>,
{
    let mut retries = Retries::new(operation);
    loop {
        match attempt(retries.attempt).await {
            Err(error) if retries.again(&error).await => recover().await,
            result => return result,
        }
    }
}

/// The attempts of one operation retried on transient errors (see [`retrying`]), for loops that
/// decide themselves whether an attempt may be repeated.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) struct Retries {
    operation: &'static str,
    /// The attempt being made, from 1.
    attempt: u32,
    delay: Duration,
}

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
impl Retries {
    pub(crate) fn new(operation: &'static str) -> Self {
        Retries {
            operation,
            attempt: 1,
            delay: TRANSIENT_FIRST_DELAY,
        }
    }

    /// After `error`: whether to try again, having waited if so (a transient error, attempts
    /// left).
    pub(crate) async fn again(&mut self, error: &Error) -> bool {
        if !error.is_transient() || self.attempt >= TRANSIENT_ATTEMPTS {
            return false;
        }
        let (operation, attempt) = (self.operation, self.attempt);
        tracing::warn!(operation, attempt, %error, "transient database error; trying again");
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(1));
        self.attempt += 1;
        true
    }
}

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

/// Checks that a stream read returned consecutive versions (ascending, or descending for a
/// backwards read) starting where the query starts: a gap means rows were deleted or changed
/// behind the store's back, and every read path reports it the same way.
pub(crate) fn check_sequence(
    stream: &StreamId,
    query: &StreamQuery,
    events: &[RecordedEvent],
) -> Result<()> {
    let mut expected = if query.backwards {
        None
    } else {
        Some(query.from_version)
    };
    for event in events {
        if let Some(due) = expected
            && event.version != due
        {
            return Err(Error::corrupt(
                stream,
                format!(
                    "the store returned version {} where version {due} was due",
                    event.version
                ),
            )
            .at_row(
                Some(event.position),
                Some(event.version),
                Some(&event.event_type),
            ));
        }
        expected = Some(if query.backwards {
            event.version.saturating_sub(1)
        } else {
            event.version + 1
        });
    }
    Ok(())
}

/// The free-form part of the metadata as JSON, `None` when there is none.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn extra_json(metadata: &crate::event::Metadata) -> Option<String> {
    if metadata.extra.is_empty() {
        None
    } else {
        serde_json::to_string(&metadata.extra).ok()
    }
}

/// One row of an SQL `events` table, as read, before its invariants are checked.
///
/// Reads select the metadata as one packed column, NULL when an event has none (the common
/// case): the SQL drivers copy every column of every row, so five mostly-NULL columns cost more
/// than one JSON array `[tenant, actor, correlation, causation, extra]` decoded when present.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) struct EventRow {
    pub(crate) stream: StreamId,
    pub(crate) position: Position,
    pub(crate) event_id: uuid::Uuid,
    pub(crate) version: i64,
    pub(crate) event_type: String,
    pub(crate) schema_version: i64,
    pub(crate) occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) metadata: Option<String>,
    pub(crate) payload: String,
}

/// Reads the columns of one row, turning a column that cannot be read into an
/// [`Error::Corrupt`] that names the stream, the position and whatever else was read before it.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) struct RowReader<'r, R> {
    pub(crate) row: &'r R,
    pub(crate) stream: &'r StreamId,
    pub(crate) position: Option<Position>,
    pub(crate) version: Option<u64>,
    pub(crate) event_type: Option<&'r str>,
    /// Whether sqlx checks each value's type before decoding it.
    columns: Columns,
}

/// Whether sqlx checks each value's column type before decoding it.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Columns {
    /// Checked: SQLite, where a column of a table written by hand can hold a value of any type.
    Checked,
    /// Not checked: PostgreSQL statements whose every column has the table's type or a cast's,
    /// so it cannot hold a value of another type. Values are still decoded (text still checked
    /// as UTF-8). The check was nearly half of the client's work per value read by a load
    /// (`callgrind`: 16.3M -> 9.2M instructions for the values of 1,000 ten-event loads).
    #[cfg(feature = "postgres")]
    Typed,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl Columns {
    /// Column `index` of `row` as a `T`, with sqlx's type check or without it.
    pub(crate) fn get<'r, R, T>(self, row: &'r R, index: usize) -> sqlx::Result<T>
    where
        R: sqlx::Row,
        T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        usize: sqlx::ColumnIndex<R>,
    {
        match self {
            Columns::Checked => row.try_get(index),
            #[cfg(feature = "postgres")]
            Columns::Typed => row.try_get_unchecked(index),
        }
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl<'r, R: sqlx::Row> RowReader<'r, R> {
    /// A reader of a row whose column types are checked ([`Columns::Checked`]).
    pub(crate) fn new(row: &'r R, stream: &'r StreamId, position: Option<Position>) -> Self {
        Self::of(row, stream, position, Columns::Checked)
    }

    pub(crate) fn of(
        row: &'r R,
        stream: &'r StreamId,
        position: Option<Position>,
        columns: Columns,
    ) -> Self {
        RowReader {
            row,
            stream,
            position,
            version: None,
            event_type: None,
            columns,
        }
    }

    /// Column `index` (named `name` in errors) as a `T`.
    pub(crate) fn get<T>(&self, index: usize, name: &str) -> Result<T>
    where
        T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        usize: sqlx::ColumnIndex<R>,
    {
        self.columns
            .get(self.row, index)
            .map_err(|err| self.damaged(format!("column `{name}` cannot be read: {err}")))
    }

    /// The error for this row.
    pub(crate) fn damaged(&self, reason: String) -> Error {
        Error::corrupt(self.stream, reason).at_row(self.position, self.version, self.event_type)
    }
}

/// The reason every read path gives for a row whose fault is one column's value, whether the
/// read decoded that column or had the database check it (the `damage!()` expression of each SQL
/// store, which names the first bad column of a row, or is NULL).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn damaged_column(column: &str) -> String {
    match column {
        "occurred_at" => "column `occurred_at` holds a time out of range".to_owned(),
        "metadata" => "column `metadata` does not hold a JSON object".to_owned(),
        other => format!("column `{other}` does not hold a UUID"),
    }
}

/// The values of a stream row, in the order `feed_stream_row` reads them.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
type StreamRowValues<'r> = (i64, i64, &'r str, i64, Option<&'r str>, &'r str);

/// Feeds one row of a stream read (position, version, event type, schema version as a 64-bit
/// integer, the store's `damage!()` expression, payload, in that order) to `apply`; returns its
/// version.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn feed_stream_row<'r, R, F>(
    row: &'r R,
    stream: &'r StreamId,
    columns: Columns,
    apply: &mut F,
) -> Result<i64>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<&'r str>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    F: FnMut(EventView<'_>) -> Result<()>,
{
    // All six values first, with no error context built: the context (which column of which
    // row) is put together only when one fails to decode.
    let values = (|| -> sqlx::Result<StreamRowValues<'r>> {
        Ok((
            columns.get::<_, i64>(row, 0)?,
            columns.get::<_, i64>(row, 1)?,
            columns.get::<_, &str>(row, 2)?,
            columns.get::<_, i64>(row, 3)?,
            columns.get::<_, Option<&str>>(row, 4)?,
            columns.get::<_, &str>(row, 5)?,
        ))
    })();
    let Ok((position, version, event_type, schema_version, damage, payload)) = values else {
        // Read again, column by column, naming the one that fails and as much of the row
        // (position, version, type) as could be read.
        let position: i64 = columns.get(row, 0).map_err(Error::database("load"))?;
        let position = Position::new(position.max(0) as u64);
        let mut reader = RowReader::of(row, stream, Some(position), columns);
        let version: i64 = reader.get(1, "version")?;
        reader.version = u64::try_from(version).ok();
        let event_type: &str = reader.get(2, "event_type")?;
        reader.event_type = Some(event_type);
        reader.get::<i64>(3, "schema_version")?;
        reader.get::<Option<&str>>(4, "damage")?;
        reader.get::<&str>(5, "payload")?;
        return Err(reader.damaged("a value cannot be read".to_owned()));
    };
    let position = Position::new(position.max(0) as u64);
    apply(row_view(
        stream,
        position,
        version,
        event_type,
        schema_version,
        damage,
        payload,
    )?)?;
    Ok(version)
}

/// A view of a row read by a store's `fold_stream`, after the checks every read path makes:
/// versions in range, and no column the view leaves out damaged (`damage`, the store's
/// `damage!()` expression: the name of the first damaged column, if any).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn row_view<'a>(
    stream: &'a StreamId,
    position: Position,
    version: i64,
    event_type: &'a str,
    schema_version: i64,
    damage: Option<&str>,
    payload: &'a str,
) -> Result<EventView<'a>> {
    let (version, schema_version) = match crate::stream::checked_versions(version, schema_version) {
        Some(versions) => versions,
        None => {
            return Err(Error::corrupt(
                stream,
                format!("version {version} or schema version {schema_version} out of range"),
            )
            .at_row(
                Some(position),
                u64::try_from(version).ok(),
                Some(event_type),
            ));
        }
    };
    if let Some(column) = damage {
        return Err(Error::corrupt(stream, damaged_column(column)).at_row(
            Some(position),
            Some(version),
            Some(event_type),
        ));
    }
    Ok(EventView::new(
        stream,
        position,
        version,
        event_type,
        schema_version,
        payload,
    ))
}

/// A snapshot read from a `snapshots` row, or [`Error::Corrupt`] if its numbers are out of
/// range. (A state that does not decode is the repository's concern: it ignores the snapshot.)
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn snapshot_row(
    stream: &StreamId,
    version: i64,
    state_version: i64,
    state: String,
    taken_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<crate::snapshot::Snapshot> {
    match (
        u64::try_from(version),
        u32::try_from(state_version),
        taken_at,
    ) {
        (Ok(version), Ok(state_version), Some(taken_at)) => {
            Ok(
                crate::snapshot::Snapshot::new(stream.clone(), version, state_version, state)
                    .taken_at(taken_at),
            )
        }
        _ => Err(Error::corrupt(
            stream,
            format!(
                "snapshot version {version}, state version {state_version} or time out of range"
            ),
        )),
    }
}

/// The packed metadata column: `[tenant, actor, correlation, causation, extra]`. The stores pack
/// a NULL `metadata` column as `{}`, so that `extra` is a JSON object unless the column holds
/// something else (JSON `null` included): then the row is damaged, as on every read path.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
type PackedMetadata = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    serde_json::Map<String, serde_json::Value>,
);

/// Decodes the packed metadata column, or says why it cannot be (naming the column at fault).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn unpack_metadata(packed: &str) -> std::result::Result<crate::event::Metadata, String> {
    // The other columns are typed (text, and a UUID or its hex): only `metadata` can fail here.
    let (tenant_id, actor_id, correlation, causation, extra): PackedMetadata =
        serde_json::from_str(packed).map_err(|_| damaged_column("metadata"))?;
    let uuid = |column: &str, text: Option<String>| match text.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => uuid::Uuid::try_parse(&t)
            .map(Some)
            .map_err(|_| damaged_column(column)),
    };
    let mut metadata = crate::event::Metadata::new();
    metadata.tenant_id = tenant_id;
    metadata.actor_id = actor_id;
    metadata.correlation_id = uuid("correlation_id", correlation)?;
    metadata.causation_id = uuid("causation_id", causation)?;
    metadata.extra = extra;
    Ok(metadata)
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl EventRow {
    /// The recorded event, or [`Error::Corrupt`] if the row breaks the store's invariants.
    pub(crate) fn into_event(self) -> Result<RecordedEvent> {
        let EventRow {
            stream,
            position,
            event_id,
            version,
            event_type,
            schema_version,
            occurred_at,
            metadata,
            payload,
        } = self;
        let damaged = |reason: String, version: Option<u64>| {
            Error::corrupt(&stream, reason).at_row(Some(position), version, Some(&event_type))
        };
        let Some((version, schema_version)) =
            crate::stream::checked_versions(version, schema_version)
        else {
            return Err(damaged(
                format!("version {version} or schema version {schema_version} out of range"),
                None,
            ));
        };
        let Some(occurred_at) = occurred_at else {
            return Err(damaged(damaged_column("occurred_at"), Some(version)));
        };
        let metadata = match metadata {
            None => crate::event::Metadata::new(),
            Some(packed) => {
                unpack_metadata(&packed).map_err(|reason| damaged(reason, Some(version)))?
            }
        };
        Ok(RecordedEvent {
            event_id,
            stream,
            version,
            position,
            event_type,
            schema_version,
            occurred_at,
            metadata,
            payload,
        })
    }
}

/// The stream of consecutive rows, allocated once per run of rows of the same stream.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Default)]
pub(crate) struct StreamCache(Option<StreamId>);

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl StreamCache {
    pub(crate) fn get(&mut self, aggregate_type: &str, aggregate_id: &str) -> &StreamId {
        let reuse = self.0.as_ref().is_some_and(|stream| {
            stream.aggregate_id() == aggregate_id && stream.aggregate_type() == aggregate_type
        });
        if !reuse {
            self.0 = Some(StreamId::unchecked(aggregate_type, aggregate_id));
        }
        self.0.as_ref().expect("just set")
    }
}

/// The columns of one lean row, read; checked and fed to a fold's callback by [`feed_row`].
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) struct LeanRow<'r> {
    pub(crate) version: i64,
    pub(crate) event_type: &'r str,
    pub(crate) schema_version: i64,
    pub(crate) payload: &'r str,
    /// The rest of the context; `None` when the fold reads the location only.
    pub(crate) details: Option<RowDetails<'r>>,
    /// Without details: the store's `damage!()` expression, which checks in the database the
    /// columns the fold does not read (the first damaged one's name, or `None`).
    pub(crate) damage: Option<&'r str>,
}

/// The columns of a lean row that only the whole [`EventContext`] needs.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) struct RowDetails<'r> {
    pub(crate) event_id: uuid::Uuid,
    pub(crate) occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) metadata: Option<&'r str>,
}

/// Checks a lean row by the rule every read path shares and feeds it to `apply` (or feeds its
/// error). Without details, the context's id, time and metadata are the nil id, the epoch and
/// empty metadata ([`ContextFields::Location`]), and the row's `damage` says whether those
/// columns are sound.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn feed_row<F>(
    stream: &StreamId,
    position: Position,
    row: Result<LeanRow<'_>>,
    apply: &mut F,
) -> std::ops::ControlFlow<()>
where
    F: for<'e> FnMut(FoldItem<'e>) -> std::ops::ControlFlow<()>,
{
    static EMPTY: std::sync::OnceLock<crate::event::Metadata> = std::sync::OnceLock::new();
    let checked = row.and_then(|row| {
        let damaged = |reason: String, version: Option<u64>| {
            Error::corrupt(stream, reason).at_row(Some(position), version, Some(row.event_type))
        };
        let (version, schema_version) =
            crate::stream::checked_versions(row.version, row.schema_version).ok_or_else(|| {
                damaged(
                    format!(
                        "version {} or schema version {} out of range",
                        row.version, row.schema_version
                    ),
                    None,
                )
            })?;
        if let Some(column) = row.damage {
            return Err(damaged(damaged_column(column), Some(version)));
        }
        let (event_id, occurred_at, metadata) = match &row.details {
            None => (uuid::Uuid::nil(), chrono::DateTime::UNIX_EPOCH, None),
            Some(details) => {
                let occurred_at = details
                    .occurred_at
                    .ok_or_else(|| damaged(damaged_column("occurred_at"), Some(version)))?;
                let metadata = match details.metadata {
                    None => None,
                    Some(packed) => Some(
                        unpack_metadata(packed).map_err(|reason| damaged(reason, Some(version)))?,
                    ),
                };
                (details.event_id, occurred_at, metadata)
            }
        };
        Ok((
            row,
            version,
            schema_version,
            event_id,
            occurred_at,
            metadata,
        ))
    });
    match checked {
        Ok((row, version, schema_version, event_id, occurred_at, metadata)) => {
            let context = EventContext {
                event_id,
                stream,
                version,
                position,
                event_type: row.event_type,
                occurred_at,
                metadata: metadata
                    .as_ref()
                    .unwrap_or_else(|| EMPTY.get_or_init(crate::event::Metadata::new)),
            };
            let view = EventView::new(
                stream,
                position,
                version,
                row.event_type,
                schema_version,
                row.payload,
            );
            apply(Ok((view, &context)))
        }
        Err(error) => apply(Err(&error)),
    }
}
