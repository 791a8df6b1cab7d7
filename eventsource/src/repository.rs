//! [`Repository`]: loads aggregates from their events (and snapshots) and saves the events they
//! record, with optimistic concurrency.

use crate::aggregate::{Aggregate, Root};
use crate::error::{Error, Result};
use crate::snapshot::{
    NoSnapshots, Restored, Snapshot, SnapshotPolicy, SnapshotStore, SnapshotStrategy, Snapshots,
};
use crate::store::{AppendResult, EventStore, ExpectedVersion, StreamId, StreamQuery};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::marker::PhantomData;

/// How many times [`Repository::update`] runs a command by default before giving up.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Loads and saves aggregates of type `A` in store `S`; `P` is [`NoSnapshots`] until
/// [`with_snapshots`](Repository::with_snapshots) gives it a snapshot store.
pub struct Repository<A, S, P = NoSnapshots> {
    store: S,
    snapshots: P,
    max_attempts: u32,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// A repository over `store`, without snapshots.
    pub fn new(store: S) -> Self {
        Repository {
            store,
            snapshots: NoSnapshots,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            _aggregate: PhantomData,
        }
    }

    /// Keeps snapshots in `snapshots` (usually a clone of the event store: every store keeps them
    /// in a table of its own), taken as `#[aggregate(snapshot_every = N)]` says or, without it,
    /// only on demand; [`with_snapshot_strategy`](Repository::with_snapshot_strategy) changes that.
    pub fn with_snapshots<T>(self, snapshots: T) -> Repository<A, S, Snapshots<T>>
    where
        A: Serialize + DeserializeOwned,
        T: SnapshotStore + Clone + 'static,
    {
        Repository {
            store: self.store,
            snapshots: Snapshots::new(snapshots, SnapshotStrategy::of::<A>()),
            max_attempts: self.max_attempts,
            _aggregate: PhantomData,
        }
    }
}

impl<A, S, T> Repository<A, S, Snapshots<T>>
where
    A: Aggregate + Serialize + DeserializeOwned,
    S: EventStore,
    T: SnapshotStore + Clone + 'static,
{
    /// Sets when snapshots are taken.
    pub fn with_snapshot_strategy(mut self, strategy: SnapshotStrategy) -> Self {
        self.snapshots.set_strategy(strategy);
        self
    }

    /// The snapshots: their store and strategy.
    pub fn snapshots(&self) -> &Snapshots<T> {
        &self.snapshots
    }

    /// Loads the aggregate and snapshots its current state, whatever the strategy (on-demand
    /// snapshots). Returns the snapshot.
    pub async fn snapshot(&self, id: impl Into<A::Id>) -> Result<Snapshot> {
        let root = self.load(id).await?;
        self.snapshots.take(&root).await
    }

    /// Snapshots the state of `root`, which must have no unsaved events.
    pub async fn snapshot_root(&self, root: &Root<A>) -> Result<Snapshot> {
        if root.has_pending_events() {
            return Err(Error::InvalidInput {
                stream: root.stream_id().clone(),
                reason: "a root with unsaved events cannot be snapshotted: save it first".into(),
            });
        }
        self.snapshots.take(root).await
    }

    /// Waits for the snapshot writes started in the background so far.
    pub async fn flush_snapshots(&self) {
        self.snapshots.flush().await;
    }
}

impl<A: Aggregate, S: EventStore, P: SnapshotPolicy<A>> Repository<A, S, P> {
    /// How many times [`update`](Self::update) runs a command by default before giving up.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = DEFAULT_MAX_ATTEMPTS;

    /// Sets how many times [`update`](Self::update) runs a command that keeps meeting concurrent
    /// writers (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// A new aggregate with no events. Its first save fails with [`Error::Concurrency`] if the
    /// stream already exists.
    pub fn create(&self, id: impl Into<A::Id>) -> Root<A> {
        Root::new(id.into())
    }

    /// Loads the aggregate: its newest usable snapshot, if the repository has snapshots, and the
    /// events after it. [`Error::AggregateNotFound`] if it has no events.
    pub async fn load(&self, id: impl Into<A::Id>) -> Result<Root<A>> {
        self.load_query(id.into(), StreamQuery::all()).await
    }

    /// Loads the aggregate as it was at `version` (time travel): its first `version` events (from
    /// a snapshot only if it is at or before `version`). [`Error::VersionNotFound`] if the stream has not reached `version`.
    pub async fn load_at(&self, id: impl Into<A::Id>, version: u64) -> Result<Root<A>> {
        let root = self
            .load_query(id.into(), StreamQuery::all().to_version(version))
            .await?;
        if root.version() < version {
            let current = self.store.stream_version(root.stream_id()).await?;
            return Err(Error::VersionNotFound {
                stream: root.stream_id().clone(),
                requested: version,
                current,
            });
        }
        Ok(root)
    }

    /// Loads the aggregate as it was at `time`: its events that occurred at or before it (from a
    /// snapshot only if it was taken at or before `time`). [`Error::AggregateNotFound`] if it had
    /// none yet.
    pub async fn load_as_of(
        &self,
        id: impl Into<A::Id>,
        time: chrono::DateTime<chrono::Utc>,
    ) -> Result<Root<A>> {
        self.load_query(id.into(), StreamQuery::all().until(time))
            .await
    }

    /// Whether the aggregate has events.
    pub async fn exists(&self, id: impl Into<A::Id>) -> Result<bool> {
        let stream = StreamId::new(A::TYPE, id.into().to_string());
        self.store.stream_exists(&stream).await
    }

    /// Appends the aggregate's pending events, if the stream is still at the version the
    /// aggregate was loaded at. On [`Error::Concurrency`] nothing is stored and the root keeps its
    /// pending events. A save that crosses the snapshot interval also takes a snapshot; failing to
    /// does not fail the save (the events are stored; it is logged).
    pub async fn save(&self, root: &mut Root<A>) -> Result<AppendResult> {
        let committed = root.committed_version();
        let expected = if committed == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(committed)
        };
        let events = root.encode_pending()?;
        if events.is_empty() {
            let stream_version = self.store.stream_version(root.stream_id()).await?;
            return Ok(AppendResult {
                stream_version,
                last_position: 0,
            });
        }
        let result = self
            .store
            .append(root.stream_id(), expected, events)
            .await?;
        root.mark_committed(result.stream_version);
        self.snapshots.saved(root, committed).await;
        Ok(result)
    }

    /// Loads the aggregate, runs `command` on it and saves what it recorded; on a concurrency
    /// conflict, does it all again on the fresh state, up to the repository's attempt limit
    /// ([`Error::RetriesExhausted`] after that). An error of the command ends the update at once
    /// with nothing saved.
    ///
    /// The command's error type `E` is the application's own (any type that an [`Error`] converts
    /// into), or [`Error`] itself with [`Error::command`] for domain errors.
    pub async fn update<T, E, F>(&self, id: impl Into<A::Id>, mut command: F) -> Result<T, E>
    where
        F: FnMut(&mut Root<A>) -> Result<T, E>,
        E: From<Error>,
    {
        let id = id.into();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut root = self.load(id.clone()).await?;
            let output = command(&mut root)?;
            match self.save(&mut root).await {
                Ok(_) => return Ok(output),
                Err(conflict @ Error::Concurrency { .. }) if attempt < self.max_attempts => {
                    tracing::debug!(stream = %root.stream_id(), attempt, error = %conflict, "retrying command after a concurrent write");
                }
                Err(conflict @ Error::Concurrency { .. }) => {
                    return Err(Error::RetriesExhausted {
                        stream: root.stream_id().clone(),
                        attempts: attempt,
                        last: Box::new(conflict),
                    }
                    .into());
                }
                Err(other) => return Err(other.into()),
            }
        }
    }

    async fn load_query(&self, id: A::Id, query: StreamQuery) -> Result<Root<A>> {
        let mut root = Root::new(id);
        let stream = root.stream_id().clone();
        let whole_stream = query.to_version.is_none() && query.until.is_none();
        let mut replace_snapshot = false;
        match self.snapshots.restore(&stream, &query).await {
            Restored::Hit { state, version } => root.restore_snapshot(state, version),
            Restored::Miss => {}
            Restored::Unusable => replace_snapshot = whole_stream,
        }
        let query = StreamQuery {
            from_version: root.version() + 1,
            ..query
        };
        self.store
            .fold_stream(&stream, query, |event| root.apply_stored(event))
            .await?;
        if root.version() == 0 {
            return Err(Error::AggregateNotFound { stream });
        }
        if replace_snapshot {
            // Re-snapshot as the strategy would have, had the stream been saved from nothing.
            self.snapshots.saved(&root, 0).await;
        }
        Ok(root)
    }
}

impl<A, S: Clone, P: Clone> Clone for Repository<A, S, P> {
    fn clone(&self) -> Self {
        Repository {
            store: self.store.clone(),
            snapshots: self.snapshots.clone(),
            max_attempts: self.max_attempts,
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate, S: fmt::Debug, P: fmt::Debug> fmt::Debug for Repository<A, S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE)
            .field("store", &self.store)
            .field("snapshots", &self.snapshots)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}
