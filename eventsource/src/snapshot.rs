//! Snapshots: an aggregate's state saved at a stream version, so that loading reads only the
//! snapshot and the events after it.
//!
//! Every event store is also a [`SnapshotStore`] (its own `snapshots` table in the same
//! database). A [`Repository`](crate::Repository) uses one after
//! [`with_snapshots`](crate::Repository::with_snapshots), and takes snapshots as its
//! [`SnapshotStrategy`] says: every N events (inline or in the background) or only on demand.
//!
//! A snapshot is an optimization, never a source of truth. Loading ignores it, and replays the
//! events instead, when it was taken with another state schema version
//! ([`Aggregate::STATE_VERSION`]), when it does not decode (logged as a warning), or when it lies
//! past the point a time-travel load asks for.

use crate::aggregate::{Aggregate, Root};
use crate::error::{Error, Result};
use crate::stream::StreamId;
use crate::telemetry::Traced;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::task::JoinHandle;

/// An aggregate's state at a version of its stream, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    stream: StreamId,
    version: u64,
    state_version: u32,
    state: String,
    taken_at: DateTime<Utc>,
}

impl Snapshot {
    /// A snapshot of `stream` after events `1..=version`, taken now: `state` is the state as JSON,
    /// of state schema version `state_version`.
    pub fn new(stream: StreamId, version: u64, state_version: u32, state: String) -> Self {
        Snapshot {
            stream,
            version,
            state_version,
            state,
            taken_at: crate::event::now(),
        }
    }

    /// Sets when it was taken (truncated to the microsecond, what every store keeps).
    pub fn taken_at(mut self, time: DateTime<Utc>) -> Self {
        use chrono::SubsecRound;
        self.taken_at = time.trunc_subsecs(6);
        self
    }

    /// The aggregate's stream.
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// The stream version the state reflects: the state after events `1..=version`.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The schema version of the state ([`Aggregate::STATE_VERSION`] when it was taken).
    pub fn state_version(&self) -> u32 {
        self.state_version
    }

    /// The state, as JSON text.
    pub fn state(&self) -> &str {
        &self.state
    }

    /// When it was taken. Time travel to an earlier time does not use it.
    pub fn time(&self) -> DateTime<Utc> {
        self.taken_at
    }
}

/// Where snapshots are kept: one per stream, the newest.
///
/// Implemented by [`InMemoryEventStore`](crate::InMemoryEventStore),
/// [`SqliteEventStore`](crate::SqliteEventStore),
/// `PostgresEventStore` (feature `postgres`) and [`AnyStore`](crate::store::AnyStore),
/// each in the same database as its events.
pub trait SnapshotStore: Send + Sync {
    /// Stores `snapshot` as its stream's snapshot, replacing the stored one unless that one has
    /// a later version and the same state schema version (so that a slow writer of an old
    /// snapshot never replaces a newer one).
    fn save_snapshot(&self, snapshot: &Snapshot) -> impl Future<Output = Result<()>> + Send;

    /// The stream's snapshot, if it has one.
    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>>> + Send;

    /// Deletes the stream's snapshot. Returns whether there was one.
    fn delete_snapshot(&self, stream: &StreamId) -> impl Future<Output = Result<bool>> + Send;
}

macro_rules! forward_snapshot_store {
    ($($ty:ty),*) => {$(
        /// Forwards to the store behind the pointer.
        impl<T: SnapshotStore + ?Sized> SnapshotStore for $ty {
            fn save_snapshot(&self, snapshot: &Snapshot) -> impl Future<Output = Result<()>> + Send {
                (**self).save_snapshot(snapshot)
            }
            fn load_snapshot(
                &self,
                stream: &StreamId,
            ) -> impl Future<Output = Result<Option<Snapshot>>> + Send {
                (**self).load_snapshot(stream)
            }
            fn delete_snapshot(&self, stream: &StreamId) -> impl Future<Output = Result<bool>> + Send {
                (**self).delete_snapshot(stream)
            }
        }
    )*};
}

forward_snapshot_store!(&T, Arc<T>, Box<T>);

/// [`SnapshotStore`] as a trait object, so that a repository's snapshots are a run-time option
/// that does not show in its type.
trait DynSnapshotStore: Send + Sync {
    fn save<'a>(&'a self, snapshot: &'a Snapshot) -> BoxFuture<'a, Result<()>>;
    fn load<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, Result<Option<Snapshot>>>;
}

impl<T: SnapshotStore> DynSnapshotStore for T {
    fn save<'a>(&'a self, snapshot: &'a Snapshot) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.save_snapshot(snapshot))
    }
    fn load<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, Result<Option<Snapshot>>> {
        Box::pin(self.load_snapshot(stream))
    }
}

/// When a repository takes snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotStrategy {
    every: Option<NonZeroU64>,
    background: bool,
}

impl SnapshotStrategy {
    /// Only when asked ([`Repository::snapshot`](crate::Repository::snapshot)).
    pub const fn manual() -> Self {
        SnapshotStrategy {
            every: None,
            background: false,
        }
    }

    /// After each save that crosses a multiple of `n` events (a save from version 99 to 102
    /// crosses 100), before the save returns. `every(0)` is [`manual`](Self::manual).
    pub const fn every(n: u64) -> Self {
        SnapshotStrategy {
            every: NonZeroU64::new(n),
            background: false,
        }
    }

    /// Takes the snapshots of [`every`](Self::every) in a background task, so that the save
    /// returns without waiting for the snapshot write.
    pub const fn in_background(mut self) -> Self {
        self.background = true;
        self
    }

    /// The default of aggregate `A`: every `#[aggregate(snapshot_every = N)]` events, or manual.
    pub fn of<A: Aggregate>() -> Self {
        match A::SNAPSHOT_EVERY {
            Some(n) => Self::every(n),
            None => Self::manual(),
        }
    }

    /// The interval, if snapshots are taken automatically.
    pub fn interval(&self) -> Option<u64> {
        self.every.map(NonZeroU64::get)
    }

    /// Whether automatic snapshots are written by a background task.
    pub fn is_background(&self) -> bool {
        self.background
    }

    /// Whether a save from version `before` to `after` crosses a multiple of the interval.
    fn crosses(&self, before: u64, after: u64) -> bool {
        self.every
            .is_some_and(|n| before / n.get() < after / n.get())
    }
}

/// What [`Snapshots::restore`] found.
pub(crate) enum Restored<A> {
    /// A usable snapshot: the state after events `1..=version`.
    Hit {
        /// The decoded state.
        state: A,
        /// The version it reflects.
        version: u64,
    },
    /// No snapshot, or one past the requested point.
    Miss,
    /// A snapshot of another state schema version, or one that does not decode: rebuild, and
    /// replace it.
    Unusable,
}

/// A repository's snapshots: the store they live in, the strategy, how to encode the state, and
/// the background writes not yet finished.
pub(crate) struct Snapshots<A> {
    store: Arc<dyn DynSnapshotStore>,
    strategy: SnapshotStrategy,
    background: Arc<Mutex<Vec<JoinHandle<()>>>>,
    encode: fn(&A) -> serde_json::Result<String>,
    decode: fn(&str) -> serde_json::Result<A>,
}

impl<A: Aggregate> Snapshots<A> {
    /// Snapshots of `A` in `store`, taken as `A`'s default strategy says.
    pub(crate) fn new<T>(store: T) -> Self
    where
        A: Serialize + DeserializeOwned,
        T: SnapshotStore + 'static,
    {
        Snapshots {
            store: Arc::new(store),
            strategy: SnapshotStrategy::of::<A>(),
            background: Arc::default(),
            encode: |state| serde_json::to_string(state),
            decode: |text| serde_json::from_str(text),
        }
    }

    pub(crate) fn strategy(&self) -> SnapshotStrategy {
        self.strategy
    }

    pub(crate) fn set_strategy(&mut self, strategy: SnapshotStrategy) {
        self.strategy = strategy;
    }

    /// Waits until every snapshot write started in the background so far has finished.
    pub(crate) async fn flush(&self) {
        let handles = std::mem::take(
            &mut *self
                .background
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for handle in handles {
            // A write that panicked has nothing left to wait for.
            let _ = handle.await;
        }
    }

    fn encode(&self, root: &Root<A>) -> Result<Snapshot> {
        let state = (self.encode)(root.state()).map_err(|source| Error::SnapshotEncode {
            stream: root.stream_id().clone(),
            source,
        })?;
        Ok(Snapshot::new(
            root.stream_id().clone(),
            root.committed_version(),
            A::STATE_VERSION,
            state,
        ))
    }

    /// Encodes `root`'s state and stores it, now.
    pub(crate) async fn take(&self, root: &Root<A>) -> Result<Snapshot> {
        let snapshot = self.encode(root)?;
        self.store
            .save(&snapshot)
            .traced(snapshot_span::<A>(&snapshot))
            .await?;
        Ok(snapshot)
    }

    /// Encodes `root`'s state now and stores it in a task of its own. Outside a tokio runtime the
    /// write happens before this returns.
    async fn take_in_background(&self, root: &Root<A>) {
        let snapshot = match self.encode(root) {
            Ok(snapshot) => snapshot,
            Err(error) => return warn_not_taken(root.stream_id(), &error),
        };
        let span = snapshot_span::<A>(&snapshot);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            if let Err(error) = self.store.save(&snapshot).traced(span).await {
                warn_not_taken(&snapshot.stream, &error);
            }
            return;
        };
        let store = Arc::clone(&self.store);
        let handle = runtime.spawn(async move {
            if let Err(error) = store.save(&snapshot).traced(span).await {
                warn_not_taken(&snapshot.stream, &error);
            }
        });
        let mut background = self
            .background
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        background.retain(|handle| !handle.is_finished());
        background.push(handle);
    }

    /// The state and version to start a load from, if a usable snapshot exists for a load up to
    /// `to_version` / `until`.
    pub(crate) async fn restore(
        &self,
        stream: &StreamId,
        to_version: Option<u64>,
        until: Option<DateTime<Utc>>,
    ) -> Restored<A> {
        let snapshot = match self.store.load(stream).await {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return Restored::Miss,
            Err(error) => {
                tracing::warn!(%stream, %error, "cannot read the snapshot; replaying the stream");
                return Restored::Miss;
            }
        };
        if to_version.is_some_and(|v| snapshot.version > v)
            || until.is_some_and(|t| snapshot.taken_at > t)
        {
            return Restored::Miss;
        }
        if snapshot.state_version != A::STATE_VERSION {
            tracing::info!(
                %stream,
                snapshot_state_version = snapshot.state_version,
                state_version = A::STATE_VERSION,
                "snapshot of another state schema version ignored; replaying the stream"
            );
            return Restored::Unusable;
        }
        match (self.decode)(&snapshot.state) {
            Ok(state) => Restored::Hit {
                state,
                version: snapshot.version,
            },
            Err(error) => {
                tracing::warn!(
                    %stream,
                    version = snapshot.version,
                    %error,
                    "corrupt snapshot ignored; replaying the stream"
                );
                Restored::Unusable
            }
        }
    }

    /// Called after `root` was saved from version `before`, and after a full load that found an
    /// unusable snapshot (`before` = 0): takes a snapshot if the strategy says so.
    pub(crate) async fn saved(&self, root: &Root<A>, before: u64) {
        if !self.strategy.crosses(before, root.committed_version()) {
            return;
        }
        if self.strategy.background {
            self.take_in_background(root).await;
        } else if let Err(error) = self.take(root).await {
            warn_not_taken(root.stream_id(), &error);
        }
    }
}

fn warn_not_taken(stream: &StreamId, error: &Error) {
    tracing::warn!(%stream, %error, "snapshot not taken; loads replay more events until the next one");
}

impl<A> Clone for Snapshots<A> {
    fn clone(&self) -> Self {
        Snapshots {
            store: Arc::clone(&self.store),
            strategy: self.strategy,
            background: Arc::clone(&self.background),
            encode: self.encode,
            decode: self.decode,
        }
    }
}

impl<A> fmt::Debug for Snapshots<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshots")
            .field("strategy", &self.strategy)
            .finish_non_exhaustive()
    }
}

/// The span of storing `snapshot`.
fn snapshot_span<A: Aggregate>(snapshot: &Snapshot) -> tracing::Span {
    tracing::debug_span!(
        "eventsource.snapshot.save",
        aggregate_type = A::TYPE,
        stream = %snapshot.stream,
        version = snapshot.version,
    )
}

#[cfg(test)]
mod tests {
    use super::SnapshotStrategy;

    #[test]
    fn a_save_snapshots_when_it_crosses_a_multiple() {
        let every = SnapshotStrategy::every(100);
        assert!(every.crosses(99, 102), "99 -> 102 crosses 100");
        assert!(every.crosses(0, 100));
        assert!(every.crosses(150, 300));
        assert!(!every.crosses(100, 199));
        assert!(!every.crosses(0, 99));
        assert!(!SnapshotStrategy::manual().crosses(0, 1_000));
        assert_eq!(SnapshotStrategy::every(0), SnapshotStrategy::manual());
    }
}
