//! The manager: the runners it was given, started, and the operations on them.

use super::handle::Handle;
use super::lease::{Stored, read_stored};
use super::memory::MemoryRunner;
use super::options::RunnerOptions;
use super::runner::{Command, Runner, RunnerCore, drive};
use super::shared;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use super::sql::SqlRunner;
use super::status::{Progress, RunnerState, RunnerStatus};
use crate::bus::relay::RelayRunner;
use crate::bus::{EventBus, Relay};
use crate::checkpoint::CheckpointStore;
use crate::error::{Error, Result};
use crate::process::{ProcessManager, ProcessRunner};
use crate::projection::Projection;
use crate::store::{EventStore, ReadAll};
use crate::stream::Position;
use futures::future::BoxFuture;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub(crate) type Spawn = Box<
    dyn FnOnce(watch::Receiver<bool>, mpsc::Receiver<Command>) -> BoxFuture<'static, ()> + Send,
>;

/// Counts the events a projection has still to read after a checkpoint.
pub(crate) type Lag =
    Arc<dyn Fn(Option<Position>) -> BoxFuture<'static, Result<u64>> + Send + Sync>;

/// Reads a projection's progress as stored (see [`read_stored`]).
pub(crate) type StoredReader = Arc<dyn Fn() -> BoxFuture<'static, Result<Stored>> + Send + Sync>;

pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) progress: Arc<Progress>,
    pub(crate) spawn: Spawn,
    pub(crate) lag: Lag,
    pub(crate) stored: StoredReader,
}

impl Entry {
    /// `runner`'s entry: driven by [`drive`] in a task of its own once started; its lag and
    /// stored progress read from its stores.
    pub(crate) fn new<R: Runner>(runner: R) -> Self
    where
        R::Store: Clone,
        R::Checkpoints: Clone,
    {
        let core = runner.core();
        let name = Arc::clone(&core.name);
        let event_types = core.event_types.clone();
        let lag: Lag = {
            let store = core.store.clone();
            let event_types = event_types.clone();
            Arc::new(move |checkpoint| {
                let store = store.clone();
                let query = ReadAll::after(checkpoint.unwrap_or(Position::START))
                    .event_types(event_types.iter().copied());
                Box::pin(async move { store.count(query).await })
            })
        };
        let stored: StoredReader = {
            let (store, checkpoints) = (core.store.clone(), core.checkpoints.clone());
            let name = Arc::clone(&name);
            Arc::new(move || {
                let (store, checkpoints) = (store.clone(), checkpoints.clone());
                let (name, event_types) = (Arc::clone(&name), event_types.clone());
                Box::pin(
                    async move { read_stored(&store, &checkpoints, &name, &event_types).await },
                )
            })
        };
        Entry {
            name: name.to_string(),
            progress: Arc::clone(&core.progress),
            spawn: Box::new(move |shutdown, commands| Box::pin(drive(runner, shutdown, commands))),
            lag,
            stored,
        }
    }
}

/// Runs projections against one store: catch-up from each checkpoint, then live.
///
/// ```
/// use eventsource::prelude::*;
/// use eventsource::{ExpectedVersion, StreamId};
/// use eventsource::subscription::Subscriptions;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(DomainEvent, Serialize, Deserialize)]
/// struct Deposited { cents: i64 }
///
/// #[derive(Default)]
/// struct Total { cents: i64 }
///
/// #[projection]
/// impl Total {
///     #[handles]
///     fn deposited(&mut self, e: &Deposited) { self.cents += e.cents; }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> eventsource::Result<()> {
/// let store = InMemoryEventStore::new();
/// let mut subscriptions = Subscriptions::new(store.clone());
/// let total = subscriptions.add(Total::default());
/// let running = subscriptions.start();
///
/// let stream = StreamId::new("Account", "a-1")?;
/// let event = eventsource::NewEvent::new(&Deposited { cents: 5 }).unwrap();
/// let appended = store.append(&stream, ExpectedVersion::Any, vec![event]).await?;
/// running.wait_until(appended.last_position, std::time::Duration::from_secs(5)).await?;
/// assert_eq!(total.read().cents, 5);
/// running.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct Subscriptions<S> {
    pub(crate) store: S,
    pub(crate) options: RunnerOptions,
    pub(crate) entries: Vec<Entry>,
    /// The pages the in-process projections share.
    shared: Arc<shared::SharedLog<S>>,
}

impl<S: fmt::Debug> fmt::Debug for Subscriptions<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriptions")
            .field("store", &self.store)
            .field("options", &self.options)
            .field(
                "projections",
                &self.entries.iter().map(|e| &e.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<S> Subscriptions<S>
where
    S: EventStore + CheckpointStore + Clone + 'static,
{
    /// A manager of projections over `store`, with default options.
    pub fn new(store: S) -> Self {
        Subscriptions {
            shared: Arc::new(shared::SharedLog::new(store.clone())),
            store,
            options: RunnerOptions::default(),
            entries: Vec::new(),
        }
    }

    /// The options of the projections added from now on.
    pub fn with_options(mut self, options: RunnerOptions) -> Self {
        self.options = options;
        self
    }

    /// Adds an in-memory read model. Its checkpoint lives in memory too: the model is built from
    /// the first event at every start, as its state is. It must empty itself for a rebuild
    /// ([`Projection::RESETS`]): a `Default` type, or one that names `#[projection(reset = ...)]`.
    pub fn add<P: Projection + Sync>(&mut self, projection: P) -> Handle<RwLock<P>> {
        const { must_reset::<P>() };
        self.add_in_memory(P::NAME.into(), projection)
    }

    /// [`add`](Self::add) under `name` instead of [`Projection::NAME`]: one projection type
    /// run several times (per tenant, per region), each under a name built at run time.
    ///
    /// ```
    /// # use eventsource::prelude::*;
    /// # use eventsource::subscription::Subscriptions;
    /// # #[derive(DomainEvent, serde::Serialize, serde::Deserialize)]
    /// # struct Deposited { cents: i64 }
    /// # #[derive(Default)]
    /// # struct Total { cents: i64 }
    /// # #[projection]
    /// # impl Total {
    /// #     #[handles]
    /// #     fn deposited(&mut self, e: &Deposited) { self.cents += e.cents; }
    /// # }
    /// # let store = InMemoryEventStore::new();
    /// let mut subscriptions = Subscriptions::new(store);
    /// for region in ["eu", "us"] {
    ///     subscriptions.add_named(format!("total-{region}"), Total::default());
    /// }
    /// ```
    pub fn add_named<P: Projection + Sync>(
        &mut self,
        name: impl Into<Arc<str>>,
        projection: P,
    ) -> Handle<RwLock<P>> {
        const { must_reset::<P>() };
        self.add_in_memory(name.into(), projection)
    }

    fn add_in_memory<P: Projection + Sync>(
        &mut self,
        name: Arc<str>,
        projection: P,
    ) -> Handle<RwLock<P>> {
        let checkpoints = crate::store::memory::InMemoryEventStore::new();
        self.add_in_process(name, projection, checkpoints)
    }

    /// Adds a projection whose effects outlive the process (it writes to another system, say),
    /// with its checkpoint in the event store's database: after a restart it resumes there.
    /// At-least-once: the events of a batch interrupted by a crash are applied again, as are
    /// those a runner that lost its lease mid-batch applied before the checkpoint's
    /// compare-and-set stopped it; the context's `event_id` is the key to de-duplicate them.
    pub fn add_durable<P: Projection + Sync>(&mut self, projection: P) -> Handle<RwLock<P>> {
        self.add_durable_named(P::NAME, projection)
    }

    /// [`add_durable`](Self::add_durable) under `name` (the key of its checkpoint, lease and dead
    /// letters) instead of [`Projection::NAME`].
    pub fn add_durable_named<P: Projection + Sync>(
        &mut self,
        name: impl Into<Arc<str>>,
        projection: P,
    ) -> Handle<RwLock<P>> {
        let checkpoints = self.store.clone();
        self.add_in_process(name.into(), projection, checkpoints)
    }

    fn add_in_process<P, C>(
        &mut self,
        name: Arc<str>,
        projection: P,
        checkpoints: C,
    ) -> Handle<RwLock<P>>
    where
        P: Projection + Sync,
        C: CheckpointStore + Clone + 'static,
    {
        let model = Arc::new(RwLock::new(projection));
        self.shared.join(&P::event_types(), P::CONTEXT);
        let shared = Arc::clone(&self.shared);
        let progress = self.add_runner(name, P::event_types(), checkpoints, |core| MemoryRunner {
            core,
            shared,
            model: Arc::clone(&model),
        });
        Handle::new(model, progress)
    }

    /// Adds a read model in the event store's own database: its handlers write through the
    /// transaction that also moves its checkpoint (a compare-and-set), so each event's effect is
    /// applied exactly once, across crashes, restarts and two runners that both believe they
    /// hold the lease.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub fn add_sql<P>(&mut self, projection: P) -> Handle
    where
        S: crate::checkpoint::TransactionalStore,
        P: crate::projection::SqlProjection<Database = S::Database>,
    {
        self.add_sql_named(P::NAME, projection)
    }

    /// [`add_sql`](Self::add_sql) under `name` (the key of its checkpoint, lease and dead
    /// letters) instead of [`SqlProjection::NAME`](crate::projection::SqlProjection::NAME).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub fn add_sql_named<P>(&mut self, name: impl Into<Arc<str>>, projection: P) -> Handle
    where
        S: crate::checkpoint::TransactionalStore,
        P: crate::projection::SqlProjection<Database = S::Database>,
    {
        let checkpoints = self.store.clone();
        let progress = self.add_runner(name, P::event_types(), checkpoints, |core| SqlRunner {
            core,
            model: projection,
        });
        Handle::new(Arc::new(()), progress)
    }

    /// Adds a process manager, run like a durable projection: its checkpoint in the event
    /// store's database, moved after each event it has reacted to; at least once, its commands
    /// made idempotent by [`Reaction::send`](crate::process::Reaction::send). A reaction that
    /// keeps failing is dead-lettered
    /// ([`replay_dead_letters`](crate::subscription::RunningSubscriptions::replay_dead_letters)
    /// reacts again). A process manager is not rebuilt: `rebuild` fails, as its effects are
    /// commands, not a read model.
    pub fn add_process<M: ProcessManager>(&mut self, manager: M) -> Handle<M> {
        let manager = Arc::new(manager);
        let checkpoints = self.store.clone();
        let progress = self.add_runner(M::NAME, M::event_types(), checkpoints, |core| {
            ProcessRunner {
                core,
                manager: Arc::clone(&manager),
            }
        });
        Handle::new(manager, progress)
    }

    /// Adds a relay that publishes the log to a bus, in position order, at least once, from its
    /// checkpoint in the store's database. It runs beside the projections and answers the same
    /// calls ([`status`](crate::subscription::RunningSubscriptions::status),
    /// [`lag`](crate::subscription::RunningSubscriptions::lag) (the relay's backlog),
    /// [`wait_until`](crate::subscription::RunningSubscriptions::wait_until),
    /// [`shutdown`](crate::subscription::RunningSubscriptions::shutdown)); a rebuild publishes
    /// everything again from the first event.
    ///
    /// While the broker refuses, the relay retries the same batch (every `max_backoff` of the
    /// [`RunnerOptions`]) and its checkpoint stays: nothing committed is skipped.
    ///
    /// ```
    /// use eventsource::bus::{BusConsumer, InMemoryBus, Relay, EventBus, ConsumerGroup};
    /// use eventsource::prelude::*;
    /// use eventsource::{ExpectedVersion, StreamId};
    /// use eventsource::NewEvent;
    /// use eventsource::subscription::Subscriptions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> eventsource::Result<()> {
    /// let store = InMemoryEventStore::new();
    /// let bus = InMemoryBus::new(1024);
    /// let mut mailer = bus.subscribe(&ConsumerGroup::new("mailer")).await?;
    ///
    /// let mut subscriptions = Subscriptions::new(store.clone());
    /// subscriptions.add_relay(Relay::new("outbox", bus.clone()));
    /// let running = subscriptions.start();
    ///
    /// let stream = StreamId::new("Order", "o-1")?;
    /// store.append(&stream, ExpectedVersion::NoStream, vec![NewEvent::from_json("Placed", 1, "{}")]).await?;
    /// let delivery = mailer.next().await?;
    /// assert_eq!(delivery.event().stream, stream);
    /// mailer.ack(&delivery).await?;
    /// running.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn add_relay<B: EventBus>(&mut self, relay: Relay<B>) -> Handle {
        let checkpoints = self.store.clone();
        let bus = relay.bus;
        let progress = self.add_runner(relay.name, relay.event_types, checkpoints, |core| {
            RelayRunner { core, bus }
        });
        Handle::new(Arc::new(()), progress)
    }

    /// Registers the runner `build` makes from its [`RunnerCore`] (named `name`, reading
    /// `event_types`, its checkpoints in `checkpoints`), to be driven by [`drive`] in a task of
    /// its own from [`start`](Self::start): the one path every `add_*` takes. Returns its
    /// progress, for the handle.
    fn add_runner<C, R>(
        &mut self,
        name: impl Into<Arc<str>>,
        event_types: Vec<&'static str>,
        checkpoints: C,
        build: impl FnOnce(RunnerCore<S, C>) -> R,
    ) -> Arc<Progress>
    where
        C: CheckpointStore + Clone + 'static,
        R: Runner<Store = S, Checkpoints = C>,
    {
        let name = name.into();
        let progress = Progress::new(&name);
        let runner = build(RunnerCore {
            name,
            store: self.store.clone(),
            checkpoints,
            progress: Arc::clone(&progress),
            options: self.options.clone(),
            event_types,
        });
        self.entries.push(Entry::new(runner));
        progress
    }

    /// Starts every projection, each in a task of its own.
    pub fn start(self) -> RunningSubscriptions {
        let (shutdown, stop) = watch::channel(false);
        let mut projections = Vec::new();
        for entry in self.entries {
            let (commands, inbox) = mpsc::channel(8);
            let task = tokio::spawn((entry.spawn)(stop.clone(), inbox));
            projections.push(Running {
                name: entry.name,
                lag: entry.lag,
                stored: entry.stored,
                progress: entry.progress,
                commands,
                task: Mutex::new(Some(task)),
            });
        }
        RunningSubscriptions {
            shutdown,
            projections,
        }
    }
}

struct Running {
    name: String,
    lag: Lag,
    stored: StoredReader,
    progress: Arc<Progress>,
    commands: mpsc::Sender<Command>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// The projections of a started [`Subscriptions`]: their status, operations, and shutdown.
pub struct RunningSubscriptions {
    shutdown: watch::Sender<bool>,
    projections: Vec<Running>,
}

impl fmt::Debug for RunningSubscriptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningSubscriptions")
            .field("status", &self.status())
            .finish()
    }
}

impl RunningSubscriptions {
    /// Every projection's state and checkpoint.
    pub fn status(&self) -> Vec<RunnerStatus> {
        self.projections.iter().map(|p| p.progress.get()).collect()
    }

    fn find(&self, name: &str) -> Result<&Running> {
        self.projections
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::UnknownProjection {
                name: name.to_owned(),
            })
    }

    /// How many events projection `name` has still to apply: the events it handles that are
    /// stored after its checkpoint and readable now (on standby, after the checkpoint the
    /// instance that runs it has stored).
    pub async fn lag(&self, name: &str) -> Result<u64> {
        let projection = self.find(name)?;
        if projection.progress.get().state == RunnerState::Standby {
            projection.refresh_standby().await?;
        }
        let checkpoint = projection.progress.get().checkpoint;
        let lag = (projection.lag)(checkpoint).await?;
        crate::telemetry::lag(name, lag);
        Ok(lag)
    }

    /// Waits until every projection has applied every event up to `position` it handles (or has
    /// stopped or failed), at most `timeout`: how a caller reads its own writes in a read model
    /// (pass the save's [`AppendResult::last_position`](crate::AppendResult::last_position)).
    /// A projection on standby (another instance holds its lease) is followed through the
    /// checkpoint that instance stores, read every few milliseconds while waiting.
    pub async fn wait_until(&self, position: Position, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        for projection in &self.projections {
            projection.wait_until(position, deadline, timeout).await?;
        }
        Ok(())
    }

    /// [`wait_until`](Self::wait_until) for projection `name` only: the read model a request
    /// is about to read, whatever the others are doing.
    pub async fn wait_until_for(
        &self,
        name: &str,
        position: Position,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.find(name)?
            .wait_until(position, deadline, timeout)
            .await
    }

    /// Resets projection `name`'s read model and checkpoint and rebuilds it from the first event
    /// (between two batches; the projection goes on live afterwards). Returns when the rebuild
    /// has caught up with the head.
    pub async fn rebuild(&self, name: &str) -> Result<()> {
        self.ask(name, Command::Rebuild).await
    }

    /// Tries each of projection `name`'s dead letters again, oldest first; one that now
    /// succeeds leaves the table. Returns how many are left.
    pub async fn replay_dead_letters(&self, name: &str) -> Result<usize> {
        self.ask(name, Command::Replay).await
    }

    /// Sends runner `name` the command `command` makes around a reply channel, and waits for
    /// the reply (between two of its pages).
    async fn ask<T>(
        &self,
        name: &str,
        command: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        let runner = self.find(name)?;
        let (reply, answer) = oneshot::channel();
        runner
            .commands
            .send(command(reply))
            .await
            .map_err(|_| stopped(name))?;
        answer.await.map_err(|_| stopped(name))?
    }

    /// Stops every projection at once, in the middle of whatever it does, as a crash would: an
    /// open transaction is rolled back, and an in-memory batch is not checkpointed. For tests of
    /// recovery; [`shutdown`](Self::shutdown) is the graceful stop.
    pub fn abort(&self) {
        for projection in &self.projections {
            if let Some(task) = projection
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                task.abort();
            }
        }
    }

    /// Waits for `signal`, then shuts down gracefully ([`shutdown`](Self::shutdown)). The signal
    /// is any future: `tokio::signal::ctrl_c()` (tokio's `signal` feature, in the application),
    /// a `CancellationToken`'s `cancelled()`, a oneshot receiver. Returns once every projection
    /// and relay has stopped with its checkpoint stored.
    ///
    /// ```no_run
    /// # async fn run(running: eventsource::subscription::RunningSubscriptions) {
    /// running.shutdown_on(async { let _ = tokio::signal::ctrl_c().await; }).await;
    /// # }
    /// ```
    pub async fn shutdown_on<F: std::future::Future>(&self, signal: F) {
        signal.await;
        tracing::info!(
            projections = self.projections.len(),
            "shutting down the projections and relays"
        );
        self.shutdown().await;
    }

    /// Asks every projection to stop after its current batch (its checkpoint stored), and waits
    /// until all have.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        for projection in &self.projections {
            let task = projection
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(task) = task {
                let _ = task.await;
            }
        }
    }
}

/// How often `wait_until` reads a standby projection's stored progress: soon, then less often.
const STANDBY_POLL_FIRST: Duration = Duration::from_millis(5);
const STANDBY_POLL_MAX: Duration = Duration::from_millis(100);

impl Running {
    /// Shows the progress the instance that holds the lease stored, if this one stands by.
    async fn refresh_standby(&self) -> Result<()> {
        let stored = (self.stored)().await?;
        self.progress.refresh_standby(stored);
        Ok(())
    }
}

fn stopped(name: &str) -> Error {
    Error::ProjectionStopped {
        projection: name.to_owned(),
        position: Position::START,
        error: "the projection is not running".into(),
    }
}

impl Running {
    /// Waits until this projection has applied every event up to `position` it handles (or has
    /// stopped or failed), until `deadline`.
    async fn wait_until(
        &self,
        position: Position,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<()> {
        let mut changed = self.progress.changed.subscribe();
        let mut standby_poll = STANDBY_POLL_FIRST;
        loop {
            let status = self.progress.get();
            let done = matches!(status.state, RunnerState::Stopped | RunnerState::Failed(_))
                || status.checkpoint.is_some_and(|c| c >= position)
                || self.progress.caught_up().is_some_and(|c| c >= position);
            if done {
                return Ok(());
            }
            let mut wake_at = deadline;
            if status.state == RunnerState::Standby {
                // Nothing here signals the other instance's progress: read it as stored.
                if let Err(error) = self.refresh_standby().await {
                    tracing::debug!(projection = %self.name, %error, "cannot read the stored progress; retrying");
                }
                wake_at = deadline.min(tokio::time::Instant::now() + standby_poll);
                standby_poll = (standby_poll * 2).min(STANDBY_POLL_MAX);
            }
            let woken = tokio::time::timeout_at(wake_at, changed.changed()).await;
            if woken.is_err() && tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    operation: "waiting for projections to catch up",
                    waited: timeout,
                });
            }
        }
    }
}

/// Rebuilt in place, an in-memory model must be emptied first: checked when the program is
/// built, in `add` and `add_named` (each, so that the error points at the caller's line).
const fn must_reset<P: Projection>() {
    assert!(
        P::RESETS,
        "an in-memory projection starts empty: derive `Default` for it, or name a reset method \
         with `#[projection(reset = clear)]` (a projection whose effects live elsewhere is added \
         with `add_durable`, which needs neither)"
    );
}
