//! [`Repository`]: loads aggregates from their events (and snapshots) and saves the events they
//! record, with optimistic concurrency.

use crate::aggregate::{Aggregate, AggregateId, Root};
use crate::cache::AggregateCache;
use crate::error::{Error, Result};
use crate::event::Metadata;
use crate::snapshot::{Restored, Snapshot, SnapshotStore, SnapshotStrategy, Snapshots};
use crate::store::{AppendResult, EventStore, ExpectedVersion, StreamId, StreamQuery};
use crate::stream::Position;
use crate::telemetry::Traced;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;

/// How many times [`Repository::update`] runs a command by default before giving up.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Loads and saves aggregates of type `A` in store `S`.
///
/// `S` is any [`EventStore`]: a store, a reference to one, an `Arc`, an
/// [`AnyStore`](crate::store::AnyStore) chosen at run time, or an `Arc<dyn DynEventStore>`.
/// Snapshots are a run-time option ([`with_snapshots`](Self::with_snapshots)): they do not change
/// the repository's type.
///
/// Build one with `A::repository(store)` (no type to spell out) or `Repository::new(store)`
/// where the aggregate type is known from the context.
pub struct Repository<A: Aggregate, S> {
    store: S,
    snapshots: Option<Snapshots<A>>,
    /// A strategy set before a snapshot store: applied when one is added, else warned about.
    requested: Option<SnapshotStrategy>,
    /// Whether the warning that no snapshot store takes the requested snapshots was logged
    /// (once per repository and its clones).
    warned: Arc<std::sync::atomic::AtomicBool>,
    max_attempts: u32,
    cache: Option<Arc<AggregateCache<A>>>,
}

/// `BankAccount::repository(store)`: a [`Repository`] of the aggregate, without naming the
/// store's type. Implemented for every aggregate; in the prelude.
pub trait AggregateRepository: Aggregate {
    /// A repository of this aggregate over `store`, without snapshots.
    fn repository<S: EventStore>(store: S) -> Repository<Self, S> {
        Repository::new(store)
    }
}

impl<A: Aggregate> AggregateRepository for A {}

/// `store.repository::<BankAccount>()`: a [`Repository`] over this store. Implemented for every
/// store; in the prelude.
pub trait StoreRepository: EventStore + Sized {
    /// A repository of aggregate `A` over this store, without snapshots.
    fn repository<A: Aggregate>(self) -> Repository<A, Self> {
        Repository::new(self)
    }
}

impl<S: EventStore> StoreRepository for S {}

/// Why [`Repository::update`] did not save: the command refused (the aggregate's own error), or
/// the store failed (including [`Error::RetriesExhausted`] after repeated conflicts).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError<E> {
    /// The command rejected the change: the domain's error, as the command returned it. Nothing
    /// was saved.
    #[error("command rejected: {0}")]
    Rejected(#[source] E),
    /// Loading or saving failed.
    #[error(transparent)]
    Store(#[from] Error),
}

impl<E> UpdateError<E> {
    /// The domain error, if the command rejected the change.
    pub fn rejected(&self) -> Option<&E> {
        match self {
            UpdateError::Rejected(error) => Some(error),
            UpdateError::Store(_) => None,
        }
    }

    /// The store's error, if loading or saving failed.
    pub fn store_error(&self) -> Option<&Error> {
        match self {
            UpdateError::Store(error) => Some(error),
            UpdateError::Rejected(_) => None,
        }
    }
}

/// What [`Repository::update`] did: the command's output and where its events were stored, so
/// that the caller can wait for its own write (a projection caught up to
/// [`last_position`](Self::last_position)) without asking the store for its head.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Updated<T> {
    /// What the command returned.
    pub output: T,
    /// The stream's version after the update (the version of its last event).
    pub stream_version: u64,
    /// The global position of the last event the command recorded; if it recorded none, of the
    /// stream's last event.
    pub last_position: Position,
}

impl<T> Updated<T> {
    /// The command's output, without where it was stored.
    pub fn into_output(self) -> T {
        self.output
    }
}

/// What [`Repository::update_once`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Once<T> {
    /// The command ran now; what it recorded (if anything) is saved. Its output.
    Applied(T),
    /// An earlier run under the same key was saved: nothing was saved this time.
    AlreadyApplied,
}

impl<T> Once<T> {
    /// Whether an earlier run under the same key had applied the command.
    pub fn already_applied(&self) -> bool {
        matches!(self, Once::AlreadyApplied)
    }

    /// The command's output, if it ran now.
    pub fn applied(self) -> Option<T> {
        match self {
            Once::Applied(output) => Some(output),
            Once::AlreadyApplied => None,
        }
    }
}

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// A repository over `store`, without snapshots.
    pub fn new(store: S) -> Self {
        Repository {
            store,
            snapshots: None,
            requested: None,
            warned: Arc::default(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            cache: None,
        }
    }

    /// Keeps the saved state of up to `capacity` recently used aggregates in memory (least
    /// recently used first out), so that [`load`](Self::load) and the commands
    /// ([`update`](Self::update) and its kin) skip reading the stream. `0` turns the cache off.
    /// Clones of the repository share the cache.
    ///
    /// The cache is trusted optimistically, and that is safe with other writers (other
    /// processes, other repositories): a cached aggregate that is behind its stream fails its
    /// save with [`Error::Concurrency`] like any stale load, the copy is dropped, and
    /// [`update`](Self::update) runs the command again on a fresh load. What it changes is what a
    /// plain [`load`](Self::load) may return: the state as this repository last saw it, which can
    /// be behind writes made elsewhere. Queries that must see those use
    /// [`load_uncached`](Self::load_uncached) or a projection. Time-travel loads never use the
    /// cache.
    pub fn with_cache(mut self, capacity: usize) -> Self
    where
        A: Clone,
    {
        self.cache =
            NonZeroUsize::new(capacity).map(|capacity| Arc::new(AggregateCache::new(capacity)));
        self
    }

    /// How many aggregates the cache holds now (`0` without a cache).
    pub fn cached(&self) -> usize {
        self.cache.as_ref().map_or(0, |cache| cache.len())
    }

    /// Keeps snapshots in the event store itself (every built-in store has a `snapshots` table
    /// next to its events), taken as `#[aggregate(snapshot_every = N)]` says or, without it, only
    /// on demand; [`with_snapshot_strategy`](Self::with_snapshot_strategy) changes that.
    pub fn with_snapshots(self) -> Self
    where
        A: Serialize + DeserializeOwned,
        S: SnapshotStore + Clone + 'static,
    {
        let store = self.store.clone();
        self.with_snapshot_store(store)
    }

    /// Keeps snapshots in `snapshots`, a store other than the event store.
    pub fn with_snapshot_store<T>(mut self, snapshots: T) -> Self
    where
        A: Serialize + DeserializeOwned,
        T: SnapshotStore + 'static,
    {
        let strategy = self
            .snapshots
            .as_ref()
            .map(Snapshots::strategy)
            .or(self.requested);
        let mut snapshots = Snapshots::new(snapshots);
        if let Some(strategy) = strategy {
            snapshots.set_strategy(strategy);
        }
        self.snapshots = Some(snapshots);
        self
    }

    /// Sets when snapshots are taken. Set before [`with_snapshots`](Self::with_snapshots), it
    /// applies once a snapshot store is added; a repository that saves with an automatic
    /// strategy (or `#[aggregate(snapshot_every = N)]`) and no snapshot store logs a warning
    /// once: nothing would take those snapshots.
    pub fn with_snapshot_strategy(mut self, strategy: SnapshotStrategy) -> Self {
        match &mut self.snapshots {
            Some(snapshots) => snapshots.set_strategy(strategy),
            None => self.requested = Some(strategy),
        }
        self
    }

    /// Warns, once, that snapshots are asked for and nothing takes them.
    fn warn_without_snapshot_store(&self) {
        use std::sync::atomic::Ordering;
        if self.snapshots.is_some() || self.warned.load(Ordering::Relaxed) {
            return;
        }
        let interval = self
            .requested
            .unwrap_or_else(SnapshotStrategy::of::<A>)
            .interval();
        if let Some(every) = interval
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                aggregate_type = A::TYPE,
                every,
                "snapshots every {every} events are asked for, but this repository has no \
                 snapshot store: call with_snapshots() (or with_snapshot_store) to take them"
            );
        }
    }

    /// When snapshots are taken, if the repository has a snapshot store.
    pub fn snapshot_strategy(&self) -> Option<SnapshotStrategy> {
        self.snapshots.as_ref().map(Snapshots::strategy)
    }

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

    /// The stream of aggregate `id`.
    pub fn stream_id(&self, id: &A::Id) -> StreamId {
        StreamId::unchecked(A::TYPE, id.stream_key())
    }

    /// A new aggregate with no events. Its first save fails with [`Error::Concurrency`] if the
    /// stream already exists.
    pub fn create(&self, id: impl Into<A::Id>) -> Root<A> {
        Root::new(id)
    }

    /// Loads the aggregate: its newest usable snapshot, if the repository has snapshots, and the
    /// events after it. [`Error::AggregateNotFound`] if it has no events.
    // Not an `async fn`: the id converts at the call and the future's type does not name the
    // id's, so that an id of another aggregate is one compile error, not three (the call, the
    // future, the `.await`). The box costs one allocation per load.
    pub fn load(&self, id: impl Into<A::Id>) -> futures::future::BoxFuture<'_, Result<Root<A>>> {
        Box::pin(self.load_id(id.into()))
    }

    async fn load_id(&self, id: A::Id) -> Result<Root<A>> {
        let Some(cache) = &self.cache else {
            return self.load_query(id, StreamQuery::all()).await;
        };
        let key = id.stream_key();
        if let Some(root) = cache.get(&key) {
            metrics::counter!(crate::telemetry::CACHE_LOADS, "aggregate_type" => A::TYPE, "outcome" => "hit")
                .increment(1);
            return Ok(root);
        }
        metrics::counter!(crate::telemetry::CACHE_LOADS, "aggregate_type" => A::TYPE, "outcome" => "miss")
            .increment(1);
        let root = self.load_query(id, StreamQuery::all()).await?;
        cache.put(&root);
        Ok(root)
    }

    /// Loads the aggregate from the store, whatever the cache holds (and refreshes the cache
    /// with it). The same as [`load`](Self::load) without a cache.
    pub async fn load_uncached(&self, id: impl Into<A::Id>) -> Result<Root<A>> {
        let root = self.load_query(id.into(), StreamQuery::all()).await?;
        if let Some(cache) = &self.cache {
            cache.put(&root);
        }
        Ok(root)
    }

    /// Loads the aggregate if it has events: `None` where [`load`](Self::load) fails with
    /// [`Error::AggregateNotFound`].
    pub async fn try_load(&self, id: impl Into<A::Id>) -> Result<Option<Root<A>>> {
        match self.load(id).await {
            Ok(root) => Ok(Some(root)),
            Err(Error::AggregateNotFound { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Loads the aggregate as it was at `version` (time travel): its first `version` events (from
    /// a snapshot only if it is at or before `version`). [`Error::VersionNotFound`] if the stream
    /// has not reached `version`.
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
        let stream = self.stream_id(&id.into());
        self.store.stream_exists(&stream).await
    }

    /// Appends the aggregate's pending events, if the stream is still at the version the
    /// aggregate was loaded at. On [`Error::Concurrency`] nothing is stored and the root keeps its
    /// pending events. A save that crosses the snapshot interval also takes a snapshot; failing to
    /// does not fail the save (the events are stored; it is logged).
    ///
    /// Saving again after an error whose outcome is unknown (a connection lost during the
    /// commit) is safe: if the events were stored, with the same ids at the same versions, the
    /// store reports success instead of [`Error::DuplicateEvent`].
    pub async fn save(&self, root: &mut Root<A>) -> Result<AppendResult> {
        let span = tracing::debug_span!(
            "eventsource.save",
            aggregate_type = A::TYPE,
            stream = %root.stream_id(),
            events = root.pending_events().len(),
            tenant = tracing::field::Empty,
            correlation_id = tracing::field::Empty,
            causation_id = tracing::field::Empty,
            version = tracing::field::Empty,
        );
        if !span.is_disabled() {
            let metadata = root.pending_events().first().map(|event| event.metadata());
            crate::telemetry::record_ids(&span, metadata);
        }
        self.warn_without_snapshot_store();
        let started = Instant::now();
        let result = self.save_inner(root).traced(span.clone()).await;
        if let Some(cache) = &self.cache {
            match &result {
                Ok(_) => cache.put(root),
                // Behind the stream (or an outcome unknown): the next load reads the store.
                Err(_) => cache.remove(root.stream_id().aggregate_id()),
            }
        }
        metrics::histogram!(crate::telemetry::SAVE_SECONDS, "aggregate_type" => A::TYPE)
            .record(started.elapsed().as_secs_f64());
        if let Ok(done) = &result {
            span.record("version", done.stream_version);
        }
        result
    }

    async fn save_inner(&self, root: &mut Root<A>) -> Result<AppendResult> {
        let committed = root.committed_version();
        let expected = if !root.has_pending_events() {
            // Nothing to check: report where the stream is.
            ExpectedVersion::Any
        } else if committed == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(committed)
        };
        let events = root.encode_pending()?;
        let result = self
            .store
            .append(root.stream_id(), expected, events)
            .await?;
        if !root.has_pending_events() {
            return Ok(result);
        }
        root.mark_committed(result.stream_version);
        if let Some(snapshots) = &self.snapshots {
            snapshots.saved(root, committed).await;
        }
        Ok(result)
    }

    /// Loads the aggregate, runs `command` on it and saves what it recorded; on a concurrency
    /// conflict, does it all again on the fresh state, up to the repository's attempt limit
    /// ([`Error::RetriesExhausted`] after that). A command that returns the aggregate's error
    /// ends the update at once with nothing saved: [`UpdateError::Rejected`]. On success,
    /// [`Updated`] holds the command's output and where its events were stored.
    ///
    /// ```
    /// # use eventsource::prelude::*;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(DomainEvent, Serialize, Deserialize)]
    /// # struct Deposited { cents: i64 }
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("deposits must be positive")]
    /// struct NotPositive;
    ///
    /// #[derive(Default)]
    /// struct Account { balance: i64 }
    ///
    /// #[aggregate(error = NotPositive)]
    /// impl Account {
    ///     #[handles]
    ///     fn deposited(&mut self, e: &Deposited) { self.balance += e.cents; }
    /// }
    ///
    /// impl Account {
    ///     fn deposit(&self, cents: i64) -> Result<Deposited, NotPositive> {
    ///         if cents <= 0 { return Err(NotPositive); }
    ///         Ok(Deposited { cents })
    ///     }
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let accounts = Account::repository(InMemoryEventStore::new());
    /// let id = Uuid::now_v7();
    /// let mut account = accounts.create(id);
    /// account.record(Deposited { cents: 1 });
    /// accounts.save(&mut account).await?;
    ///
    /// accounts.update(id, |account| {
    ///     let event = account.deposit(500)?;     // `?` converts to the aggregate's error
    ///     account.record(event);
    ///     Ok(())
    /// }).await?;
    ///
    /// let refused = accounts.update(id, |account| account.deposit(-1).map(drop)).await;
    /// assert!(matches!(refused, Err(UpdateError::Rejected(NotPositive))));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn update<T, F>(
        &self,
        id: impl Into<A::Id>,
        command: F,
    ) -> Result<Updated<T>, UpdateError<A::Error>>
    where
        F: FnMut(&mut Root<A>) -> Result<T, A::Error>,
    {
        self.run(id.into(), None, command).await
    }

    /// [`update`](Self::update), with `metadata` (tenant, actor, correlation, causation) on every
    /// event the command records, on whichever attempt succeeds.
    pub async fn update_with<T, F>(
        &self,
        id: impl Into<A::Id>,
        metadata: Metadata,
        command: F,
    ) -> Result<Updated<T>, UpdateError<A::Error>>
    where
        F: FnMut(&mut Root<A>) -> Result<T, A::Error>,
    {
        self.run(id.into(), Some(metadata), command).await
    }

    /// [`update_with`](Self::update_with), at most once per `key`: the events the command
    /// records get ids derived from `key` ([`Root::derive_event_ids`]), so running it again under
    /// the same key (a redelivered message, a retried request) saves nothing and returns
    /// [`Once::AlreadyApplied`], whether the command records the same events again (the store
    /// refuses their ids) or, on the state its first run changed, refuses or records nothing (the
    /// stream is searched for the first id). Unlike `update`, an aggregate with no events is
    /// created (its state is the default, at version 0).
    ///
    /// Derive `key` from what identifies the attempt, never from the clock: a process manager
    /// uses the triggering event's id and the step's name
    /// ([`Reaction::send`](crate::process::Reaction::send)); an API, the client's idempotency key.
    pub async fn update_once<T, F>(
        &self,
        id: impl Into<A::Id>,
        key: uuid::Uuid,
        metadata: Metadata,
        command: F,
    ) -> Result<Once<T>, UpdateError<A::Error>>
    where
        F: FnMut(&mut Root<A>) -> Result<T, A::Error>,
    {
        self.run_once(id.into(), key, metadata, command).await
    }

    async fn run_once<T, F>(
        &self,
        id: A::Id,
        key: uuid::Uuid,
        metadata: Metadata,
        mut command: F,
    ) -> Result<Once<T>, UpdateError<A::Error>>
    where
        F: FnMut(&mut Root<A>) -> Result<T, A::Error>,
    {
        let first_id = crate::event::derived_event_id(key, 0);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let span = self.attempt_span(&id, attempt);
            let mut root = match self.try_load(id.clone()).traced(span.clone()).await? {
                Some(root) => root,
                None => self.create(id.clone()),
            };
            root.set_metadata(metadata.clone());
            root.derive_event_ids(key);
            let output = match command(&mut root) {
                Ok(output) => output,
                Err(rejected) => {
                    if self.stream_has_event(root.stream_id(), first_id).await? {
                        return Ok(Once::AlreadyApplied);
                    }
                    return Err(UpdateError::Rejected(rejected));
                }
            };
            if !root.has_pending_events() {
                if self.stream_has_event(root.stream_id(), first_id).await? {
                    return Ok(Once::AlreadyApplied);
                }
                return Ok(Once::Applied(output));
            }
            let ours: Vec<uuid::Uuid> = root
                .pending_events()
                .iter()
                .map(|pending| pending.event_id())
                .collect();
            match self.save(&mut root).traced(span).await {
                Ok(_) => return Ok(Once::Applied(output)),
                Err(Error::DuplicateEvent { event_id, .. }) if ours.contains(&event_id) => {
                    return Ok(Once::AlreadyApplied);
                }
                Err(conflict @ Error::Concurrency { .. }) => {
                    self.after_conflict(root.stream_id(), attempt, conflict)?;
                }
                Err(other) => return Err(other.into()),
            }
        }
    }

    /// After a concurrency conflict on attempt `attempt` of a command: `Ok` to run it again on
    /// the fresh state, [`Error::RetriesExhausted`] once the attempts are spent.
    fn after_conflict(&self, stream: &StreamId, attempt: u32, conflict: Error) -> Result<()> {
        if attempt >= self.max_attempts {
            return Err(Error::RetriesExhausted {
                stream: stream.clone(),
                attempts: attempt,
                last: Box::new(conflict),
            });
        }
        tracing::debug!(%stream, attempt, error = %conflict, "retrying command after a concurrent write");
        metrics::counter!(crate::telemetry::COMMAND_RETRIES, "aggregate_type" => A::TYPE)
            .increment(1);
        Ok(())
    }

    /// The span of one attempt of a command (`update`, `update_with`, `update_once`).
    fn attempt_span(&self, id: &A::Id, attempt: u32) -> tracing::Span {
        tracing::debug_span!(
            "eventsource.update",
            aggregate_type = A::TYPE,
            stream = %self.stream_id(id),
            attempt,
        )
    }

    /// Whether `stream` holds the event `event_id`.
    async fn stream_has_event(&self, stream: &StreamId, event_id: uuid::Uuid) -> Result<bool> {
        let events = self.store.read_stream(stream, StreamQuery::all()).await?;
        Ok(events.iter().any(|event| event.event_id == event_id))
    }

    async fn run<T, F>(
        &self,
        id: A::Id,
        metadata: Option<Metadata>,
        mut command: F,
    ) -> Result<Updated<T>, UpdateError<A::Error>>
    where
        F: FnMut(&mut Root<A>) -> Result<T, A::Error>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let span = self.attempt_span(&id, attempt);
            let mut root = self.load(id.clone()).traced(span.clone()).await?;
            if let Some(metadata) = &metadata {
                root.set_metadata(metadata.clone());
            }
            let output = span.in_scope(|| command(&mut root).map_err(UpdateError::Rejected))?;
            match self.save(&mut root).traced(span).await {
                Ok(stored) => {
                    return Ok(Updated {
                        output,
                        stream_version: stored.stream_version,
                        last_position: stored.last_position,
                    });
                }
                Err(conflict @ Error::Concurrency { .. }) => {
                    self.after_conflict(root.stream_id(), attempt, conflict)?;
                }
                Err(other) => return Err(other.into()),
            }
        }
    }

    /// Loads the aggregate and snapshots its current state, whatever the strategy (on-demand
    /// snapshots). Returns the snapshot. [`Error::InvalidInput`] if the repository has no
    /// snapshot store.
    pub async fn snapshot(&self, id: impl Into<A::Id>) -> Result<Snapshot> {
        let root = self.load(id).await?;
        self.snapshot_root(&root).await
    }

    /// Snapshots the state of `root`, which must have no unsaved events.
    pub async fn snapshot_root(&self, root: &Root<A>) -> Result<Snapshot> {
        let Some(snapshots) = &self.snapshots else {
            return Err(Error::InvalidInput {
                stream: root.stream_id().clone(),
                reason: "this repository has no snapshot store: build it with `with_snapshots()`"
                    .into(),
            });
        };
        if root.has_pending_events() {
            return Err(Error::InvalidInput {
                stream: root.stream_id().clone(),
                reason: "a root with unsaved events cannot be snapshotted: save it first".into(),
            });
        }
        snapshots.take(root).await
    }

    /// Waits for the snapshot writes started in the background so far.
    pub async fn flush_snapshots(&self) {
        if let Some(snapshots) = &self.snapshots {
            snapshots.flush().await;
        }
    }

    async fn load_query(&self, id: A::Id, query: StreamQuery) -> Result<Root<A>> {
        let span = tracing::debug_span!(
            "eventsource.load",
            aggregate_type = A::TYPE,
            stream = %self.stream_id(&id),
            version = tracing::field::Empty,
            from_snapshot = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = async {
            // A store applies a stream's events as they arrive, so a transient failure part way
            // through a stream cannot be retried by the store: the load starts over here.
            let (mut id, mut restarts) = (id, 0);
            loop {
                match self.load_inner(id, query.clone()).await {
                    Err(Interrupted(error, again)) if restarts < LOAD_RESTARTS => {
                        restarts += 1;
                        tracing::warn!(%error, restarts, "load interrupted part way; starting over");
                        id = again;
                    }
                    Err(Interrupted(error, _) | Failed(error)) => return Err(error),
                    Ok(root) => return Ok(root),
                }
            }
        }
        .traced(span.clone())
        .await;
        metrics::histogram!(crate::telemetry::LOAD_SECONDS, "aggregate_type" => A::TYPE)
            .record(started.elapsed().as_secs_f64());
        if let Ok(root) = &result {
            span.record("version", root.version());
            span.record("from_snapshot", root.snapshot_version().is_some());
        }
        result
    }

    async fn load_inner(
        &self,
        id: A::Id,
        query: StreamQuery,
    ) -> std::result::Result<Root<A>, LoadFailure<A::Id>> {
        let mut root = Root::<A>::new(id);
        let stream = root.stream_id().clone();
        // Before anything reads: a snapshot store would otherwise meet the id first.
        stream.validate().map_err(Failed)?;
        let whole_stream = query.to_version.is_none() && query.until.is_none();
        let mut replace_snapshot = false;
        if let Some(snapshots) = &self.snapshots {
            match snapshots
                .restore(&stream, query.to_version, query.until)
                .await
            {
                Restored::Hit { state, version } => {
                    snapshot_loaded_of::<A>("hit");
                    root.restore_snapshot(state, version);
                }
                Restored::Miss => snapshot_loaded_of::<A>("miss"),
                Restored::Unusable => {
                    snapshot_loaded_of::<A>("stale");
                    replace_snapshot = whole_stream;
                }
            }
        }
        let from_version = root.version() + 1;
        let query = StreamQuery {
            from_version,
            ..query
        };
        let folded = self
            .store
            .fold_stream(&stream, query, |event| root.apply_stored(event))
            .await;
        if let Err(error) = folded {
            let part_way = root.version() >= from_version;
            return Err(if part_way && error.is_transient() {
                Interrupted(error, root.id().clone())
            } else {
                Failed(error)
            });
        }
        if root.version() == 0 {
            return Err(Failed(Error::AggregateNotFound { stream }));
        }
        if replace_snapshot && let Some(snapshots) = &self.snapshots {
            // Re-snapshot as the strategy would have, had the stream been saved from nothing.
            snapshots.saved(&root, 0).await;
        }
        Ok(root)
    }
}

/// How many times a load interrupted part way through its stream starts over.
const LOAD_RESTARTS: u32 = 10;

/// Why a load attempt failed: after some of the stream's events were applied, with a transient
/// error (the load may start over, for the aggregate id it carries back), or otherwise.
enum LoadFailure<Id> {
    Interrupted(Error, Id),
    Failed(Error),
}
use LoadFailure::{Failed, Interrupted};

/// Counts a snapshot look-up of aggregate type `A`.
fn snapshot_loaded_of<A: Aggregate>(outcome: &'static str) {
    metrics::counter!(crate::telemetry::SNAPSHOT_LOADS, "aggregate_type" => A::TYPE, "outcome" => outcome)
        .increment(1);
}

impl<A: Aggregate, S: Clone> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Repository {
            store: self.store.clone(),
            snapshots: self.snapshots.clone(),
            requested: self.requested,
            warned: Arc::clone(&self.warned),
            max_attempts: self.max_attempts,
            cache: self.cache.clone(),
        }
    }
}

impl<A: Aggregate, S: fmt::Debug> fmt::Debug for Repository<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE)
            .field("store", &self.store)
            .field("snapshots", &self.snapshots)
            .field("max_attempts", &self.max_attempts)
            .field("cache", &self.cache)
            .finish()
    }
}
