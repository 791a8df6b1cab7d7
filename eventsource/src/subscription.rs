//! The subscription manager: keeps projections current, catch-up then live.
//!
//! Each projection runs in a task of its own: it reads the global log after its checkpoint, in
//! batches, filtered to the event types it handles, applies each event, and moves its
//! checkpoint. When it reaches the head it waits for the store's wake-up
//! ([`EventStore::watch_appends`]: an in-process signal for memory and SQLite, `LISTEN`/`NOTIFY`
//! for PostgreSQL), with a bounded poll as the safety net, and reads the store again from its
//! checkpoint. The store is the only source of events, so the switch from catch-up to live can
//! neither skip nor repeat one.
//!
//! A handler that fails is retried with exponential backoff; when the attempts run out the event
//! goes to the dead-letter table and the projection goes on ([`OnFailure::Skip`], the default)
//! or stops ([`OnFailure::Stop`]). A stored row that cannot be read at all is dead-lettered the
//! same way.

mod shared;

use crate::checkpoint::{CheckpointStore, DeadLetter};
use crate::error::{Error, Result};
use crate::event::{EventView, RecordedEvent};
use crate::projection::{EventContext, HandlerError, Projection};
use crate::store::{EventStore, FoldEnd, FoldItem, ReadAll};
use crate::stream::Position;
use crate::telemetry::Traced;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// How a projection reads, retries and fails.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProjectionOptions {
    /// Events read per round trip (and per transaction, for a database read model).
    pub batch_size: usize,
    /// How many times an event is tried before it is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// The wait before the first retry; it doubles with each attempt.
    pub backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// What happens after an event is dead-lettered.
    pub on_failure: OnFailure,
    /// The longest a live projection waits for a wake-up before it reads the store anyway.
    pub poll_interval: Duration,
    /// How often a projection on standby (another process runs it) tries to take over.
    pub lease_retry: Duration,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        ProjectionOptions {
            batch_size: 1000,
            max_attempts: 3,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            on_failure: OnFailure::Skip,
            poll_interval: Duration::from_secs(1),
            lease_retry: Duration::from_secs(1),
        }
    }
}

impl ProjectionOptions {
    /// Events read per round trip (at least 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Attempts per event before it is dead-lettered (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The first retry's wait (doubling, up to `max`).
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max.max(first);
        self
    }

    /// What to do after dead-lettering an event.
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }

    /// The safety-net poll of a live projection.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How often a projection on standby tries to take over.
    pub fn lease_retry(mut self, interval: Duration) -> Self {
        self.lease_retry = interval;
        self
    }

    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// What a projection does once an event has failed `max_attempts` times and is dead-lettered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnFailure {
    /// Go on with the next event (the default): one poison event does not hold back the rest.
    Skip,
    /// Stop the projection, with its checkpoint before the event: [`ProjectionState::Failed`].
    Stop,
}

/// Where a projection is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProjectionState {
    /// Not started yet.
    Starting,
    /// Reading events that were stored before it got there.
    CatchingUp,
    /// At the head of the log, woken by new appends.
    Live,
    /// Another process runs this projection; this one takes over when that one stops.
    Standby,
    /// Shut down.
    Stopped,
    /// Stopped by an error (a dead-lettered event with [`OnFailure::Stop`], a checkpoint moved by
    /// another runner, the database failing for good); the text says which.
    Failed(String),
}

/// A projection's state and checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// Where it is.
    pub state: ProjectionState,
    /// Every event up to here is applied (`None`: none yet).
    pub checkpoint: Option<Position>,
}

/// What a running projection's task is asked to do besides its work.
pub(crate) enum Command {
    /// Reset the read model and the checkpoint, then catch up from the first event.
    Rebuild(oneshot::Sender<Result<()>>),
    /// Try each dead letter again; reply how many are left.
    Replay(oneshot::Sender<Result<usize>>),
}

/// The shared view of one projection's progress.
#[derive(Debug)]
pub(crate) struct Progress {
    status: Mutex<ProjectionStatus>,
    /// The readable head as of the projection's last read that found nothing more to apply:
    /// every event it handles up to there is applied.
    caught_up: Mutex<Option<Position>>,
    changed: watch::Sender<u64>,
}

impl Progress {
    pub(crate) fn new(name: &str) -> Arc<Self> {
        Arc::new(Progress {
            status: Mutex::new(ProjectionStatus {
                name: name.to_owned(),
                state: ProjectionState::Starting,
                checkpoint: None,
            }),
            caught_up: Mutex::new(None),
            changed: watch::channel(0).0,
        })
    }

    fn caught_up(&self) -> Option<Position> {
        *self
            .caught_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn set_caught_up(&self, head: Option<Position>) {
        *self
            .caught_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = head;
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn get(&self) -> ProjectionStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stands by (another instance holds the lease), showing the progress that instance stored
    /// (`None`: it could not be read; what was shown stays).
    fn stand_by(&self, stored: Option<Stored>) {
        self.update(|status| {
            status.state = ProjectionState::Standby;
            stored
        });
    }

    /// Shows the progress another instance stored, if this one still stands by.
    fn refresh_standby(&self, stored: Stored) {
        self.update(|status| (status.state == ProjectionState::Standby).then_some(stored));
    }

    /// Changes the status under its lock; the stored progress `change` returns (if any) replaces
    /// the checkpoint and the caught-up head, under the same lock (so a runner that takes the
    /// lease meanwhile is not overwritten).
    fn update(&self, change: impl FnOnce(&mut ProjectionStatus) -> Option<Stored>) {
        {
            let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(stored) = change(&mut status) {
                status.checkpoint = stored.checkpoint;
                *self
                    .caught_up
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = stored.caught_up;
            }
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn set(&self, state: ProjectionState, checkpoint: Option<Position>) {
        {
            let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            status.state = state;
            status.checkpoint = checkpoint;
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A read model kept current by the manager: read it while it runs.
pub struct ProjectionHandle<P> {
    model: Arc<RwLock<P>>,
    progress: Arc<Progress>,
}

impl<P> Clone for ProjectionHandle<P> {
    fn clone(&self) -> Self {
        ProjectionHandle {
            model: Arc::clone(&self.model),
            progress: Arc::clone(&self.progress),
        }
    }
}

impl<P> fmt::Debug for ProjectionHandle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionHandle")
            .field("status", &self.progress.get())
            .finish_non_exhaustive()
    }
}

impl<P> ProjectionHandle<P> {
    /// The read model, read-locked (the manager applies a batch at a time under the write lock).
    pub fn read(&self) -> RwLockReadGuard<'_, P> {
        self.model.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The projection's state and checkpoint.
    pub fn status(&self) -> ProjectionStatus {
        self.progress.get()
    }
}

pub(crate) type Spawn = Box<
    dyn FnOnce(watch::Receiver<bool>, mpsc::Receiver<Command>) -> BoxFuture<'static, ()> + Send,
>;

/// Counts the events a projection has still to read after a checkpoint.
pub(crate) type Lag =
    Arc<dyn Fn(Option<Position>) -> BoxFuture<'static, Result<u64>> + Send + Sync>;

/// Reads a projection's progress as stored (see [`read_stored`]).
pub(crate) type StoredReader = Arc<dyn Fn() -> BoxFuture<'static, Result<Stored>> + Send + Sync>;

/// A projection's progress as its stores tell it, for an instance that does not run it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stored {
    /// The stored checkpoint.
    checkpoint: Option<Position>,
    /// Every event the projection handles up to here is applied (see [`Progress::caught_up`]).
    caught_up: Option<Position>,
}

/// The progress the instance that holds `name`'s lease has stored: its checkpoint, and how far
/// that covers the log (the events after it up to the first it handles are passed over).
async fn read_stored<S: EventStore, C: CheckpointStore>(
    store: &S,
    checkpoints: &C,
    name: &str,
    event_types: &[&'static str],
) -> Result<Stored> {
    // The head first: every event the reads below do not find up to it is not to be applied.
    let head = store.log_head().await?.readable;
    let checkpoint = checkpoints.checkpoint(name).await?;
    let next = read_page(store, checkpoint, event_types, 1).await?;
    let caught_up = match next.first() {
        None => head,
        Some(item) => head.min(Position::new(item_position(item).get().saturating_sub(1))),
    };
    Ok(Stored {
        checkpoint,
        caught_up: Some(caught_up),
    })
}

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
        let name = runner.name();
        let event_types = runner.event_types().to_vec();
        let lag: Lag = {
            let store = runner.store().clone();
            let event_types = event_types.clone();
            Arc::new(move |checkpoint| {
                let store = store.clone();
                let query = ReadAll::after(checkpoint.unwrap_or(Position::START))
                    .event_types(event_types.iter().copied());
                Box::pin(async move { store.count(query).await })
            })
        };
        let stored: StoredReader = {
            let (store, checkpoints) = (runner.store().clone(), runner.checkpoints().clone());
            Arc::new(move || {
                let (store, checkpoints) = (store.clone(), checkpoints.clone());
                let event_types = event_types.clone();
                Box::pin(async move { read_stored(&store, &checkpoints, name, &event_types).await })
            })
        };
        Entry {
            name: name.to_owned(),
            progress: Arc::clone(runner.progress()),
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
    pub(crate) options: ProjectionOptions,
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
            options: ProjectionOptions::default(),
            entries: Vec::new(),
        }
    }

    /// The options of the projections added from now on.
    pub fn with_options(mut self, options: ProjectionOptions) -> Self {
        self.options = options;
        self
    }

    /// Adds an in-memory read model. Its checkpoint lives in memory too: the model is built from
    /// the first event at every start, as its state is.
    pub fn add<P: Projection + Sync>(&mut self, projection: P) -> ProjectionHandle<P> {
        let checkpoints = crate::store::memory::InMemoryEventStore::new();
        self.add_with_checkpoints(projection, checkpoints)
    }

    /// Adds a projection whose effects outlive the process (it writes to another system, say),
    /// with its checkpoint in the event store's database: after a restart it resumes there.
    /// At-least-once: the events of a batch interrupted by a crash are applied again, as are
    /// those a runner that lost its lease mid-batch applied before the checkpoint's
    /// compare-and-set stopped it; the context's `event_id` is the key to de-duplicate them.
    pub fn add_durable<P: Projection + Sync>(&mut self, projection: P) -> ProjectionHandle<P> {
        let checkpoints = self.store.clone();
        self.add_with_checkpoints(projection, checkpoints)
    }

    fn add_with_checkpoints<P, C>(&mut self, projection: P, checkpoints: C) -> ProjectionHandle<P>
    where
        P: Projection + Sync,
        C: CheckpointStore + Clone + 'static,
    {
        let handle = ProjectionHandle {
            model: Arc::new(RwLock::new(projection)),
            progress: Progress::new(P::NAME),
        };
        self.shared.join(&P::event_types(), P::CONTEXT);
        let runner = MemoryRunner {
            store: self.store.clone(),
            shared: Arc::clone(&self.shared),
            checkpoints,
            model: Arc::clone(&handle.model),
            progress: Arc::clone(&handle.progress),
            options: self.options.clone(),
            name: P::NAME,
            event_types: P::event_types(),
        };
        self.entries.push(Entry::new(runner));
        handle
    }

    /// Registers the runner `build` makes from the store and the options, to be driven by
    /// [`drive`] in a task of its own from [`start`](Self::start) (how process managers join).
    pub(crate) fn add_runner<R>(&mut self, build: impl FnOnce(S, ProjectionOptions) -> R)
    where
        R: Runner<Store = S, Checkpoints = S>,
    {
        let runner = build(self.store.clone(), self.options.clone());
        self.entries.push(Entry::new(runner));
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
    pub fn status(&self) -> Vec<ProjectionStatus> {
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
        if projection.progress.get().state == ProjectionState::Standby {
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
        let projection = self.find(name)?;
        let (reply, answer) = oneshot::channel();
        projection
            .commands
            .send(Command::Rebuild(reply))
            .await
            .map_err(|_| stopped(name))?;
        answer.await.map_err(|_| stopped(name))?
    }

    /// Tries each of projection `name`'s dead letters again, oldest first; one that now
    /// succeeds leaves the table. Returns how many are left.
    pub async fn replay_dead_letters(&self, name: &str) -> Result<usize> {
        let projection = self.find(name)?;
        let (reply, answer) = oneshot::channel();
        projection
            .commands
            .send(Command::Replay(reply))
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

/// One in-memory (or durable, at-least-once) projection's loop.
struct MemoryRunner<S, C, P> {
    store: S,
    /// The pages shared with the manager's other in-process projections.
    shared: Arc<shared::SharedLog<S>>,
    checkpoints: C,
    model: Arc<RwLock<P>>,
    progress: Arc<Progress>,
    options: ProjectionOptions,
    name: &'static str,
    event_types: Vec<&'static str>,
}

/// What woke a live projection.
enum Woken {
    Stop,
    Command(Option<Command>),
    Appended(bool),
    Poll,
}

/// What applying one event came to.
enum Applied {
    Done,
    DeadLettered,
    Stop(Error),
}

impl<S, C, P> MemoryRunner<S, C, P>
where
    S: EventStore + 'static,
    C: CheckpointStore + 'static,
    P: Projection + Sync,
{
    /// One page through the store's lean fold: each event applied as a borrowed view, under
    /// the model's write lock; the first event that fails (or a damaged row) ends the fold and
    /// goes through [`apply_one`](Self::apply_one)'s retries and dead letters, then the
    /// checkpoint moves.
    async fn lean_step(
        &self,
        checkpoint: Option<Position>,
    ) -> std::result::Result<Step, StepError> {
        let after = checkpoint.unwrap_or(Position::START);
        let mut reached = checkpoint;
        let mut failed: Option<(Position, Option<HandlerError>)> = None;
        let model = &self.model;
        let mut apply = |item: FoldItem<'_>| match item {
            Ok((view, context)) => {
                let outcome = model
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .handle(view, context);
                match outcome {
                    Ok(()) => {
                        reached = Some(context.position);
                        std::ops::ControlFlow::Continue(())
                    }
                    Err(error) => {
                        failed = Some((context.position, Some(error)));
                        std::ops::ControlFlow::Break(())
                    }
                }
            }
            Err(error) => {
                failed = Some((error.position().unwrap_or(Position::START), None));
                std::ops::ControlFlow::Break(())
            }
        };
        // A page shared with the manager's other projections, or one of its own.
        let shared = if self.shared.shared() {
            self.shared
                .fold(
                    after,
                    self.options.batch_size,
                    &self.event_types,
                    &mut apply,
                )
                .await
                .transpose()
        } else {
            None
        };
        let end = match shared {
            Some(end) => end,
            None => {
                let query = ReadAll::after(after)
                    .event_types(self.event_types.iter().copied())
                    .batch_size(self.options.batch_size)
                    .context(P::CONTEXT);
                self.store.fold_all(&query, &mut apply).await
            }
        };
        let end = match end {
            Ok(end) => end,
            // Nothing applied: read again later from the same checkpoint.
            Err(error) if reached == checkpoint => return Err(StepError::Read(error)),
            // The read failed part way through the page, after applying events: keep them
            // (move the checkpoint past them), and read the rest again.
            Err(error) => {
                tracing::warn!(projection = self.name, %error, "reading the log failed part way through a page; going on from the last event applied");
                FoldEnd {
                    last: reached,
                    rows: 1,
                    stopped: true,
                }
            }
        };
        if end.rows == 0 {
            return Ok(Step::Empty);
        }
        let mut stop = None;
        match failed {
            Some((position, first_error)) => {
                // The failing event (or damaged row) again, on its own, with retries.
                // It was just read, so it is there; if it is not, the read failed: try again.
                let Some(item) = event_at(&self.store, position)
                    .await
                    .map_err(StepError::Read)?
                else {
                    return Ok(Step::Moved {
                        to: reached,
                        full: true,
                    });
                };
                match self.apply_one(item, first_error).await {
                    Applied::Done | Applied::DeadLettered => reached = Some(position),
                    Applied::Stop(error) => stop = Some(error),
                }
            }
            None => {
                // Rows passed over by the filter move the checkpoint too.
                reached = end.last.max(reached);
            }
        }
        if reached != checkpoint
            && let Some(position) = reached
        {
            self.checkpoints
                .save_checkpoint(self.name, checkpoint, position)
                .await
                .map_err(|error| StepError::Stop(checkpoint, error))?;
        }
        if let Some(error) = stop {
            return Err(StepError::Stop(reached, error));
        }
        Ok(Step::Moved {
            to: reached,
            full: end.rows >= self.options.batch_size || end.stopped,
        })
    }

    async fn read_page(&self, after: Option<Position>) -> Result<Vec<Result<RecordedEvent>>> {
        read_page(
            &self.store,
            after,
            &self.event_types,
            self.options.batch_size,
        )
        .await
    }

    /// Applies a page under the model's write lock, then moves the checkpoint. On a stop, the
    /// checkpoint is left before the failing event.
    async fn apply_page(
        &self,
        page: Vec<Result<RecordedEvent>>,
        checkpoint: Option<Position>,
    ) -> std::result::Result<Option<Position>, (Option<Position>, Error)> {
        let mut reached = checkpoint;
        let mut stop = None;
        let mut items = page.into_iter();
        loop {
            // The common case under one write lock: every event applies at the first attempt.
            let mut failed = None;
            {
                let mut model = self.model.write().unwrap_or_else(PoisonError::into_inner);
                for item in items.by_ref() {
                    match &item {
                        Ok(event) => match apply_event(&mut *model, event) {
                            Ok(()) => reached = Some(event.position),
                            Err(error) => {
                                failed = Some((item, Some(error)));
                                break;
                            }
                        },
                        Err(_) => {
                            failed = Some((item, None));
                            break;
                        }
                    }
                }
            }
            // The exception, with the lock released while it waits between attempts.
            let Some((item, first_error)) = failed else {
                break;
            };
            let position = item_position(&item);
            match self.apply_one(item, first_error).await {
                Applied::Done | Applied::DeadLettered => reached = Some(position),
                Applied::Stop(error) => {
                    stop = Some(error);
                    break;
                }
            }
        }
        if reached != checkpoint
            && let Some(position) = reached
            && let Err(error) = self
                .checkpoints
                .save_checkpoint(self.name, checkpoint, position)
                .await
        {
            return Err((checkpoint, error));
        }
        match stop {
            Some(error) => Err((reached, error)),
            None => Ok(reached),
        }
    }

    /// Applies an event that failed once already (`first_error`), or a damaged row.
    async fn apply_one(
        &self,
        item: Result<RecordedEvent>,
        first_error: Option<HandlerError>,
    ) -> Applied {
        let event = match item {
            Ok(event) => event,
            Err(error) => {
                // A row that cannot be read: dead-letter it, it will not read better next time.
                return match letter_for_damaged(self.name, error) {
                    Ok(letter) => self.dead_letter(letter).await,
                    Err(error) => Applied::Stop(error),
                };
            }
        };
        let mut attempt = 0;
        let mut previous = first_error.map(Err);
        loop {
            attempt += 1;
            let outcome = match previous.take() {
                Some(outcome) => outcome,
                None => {
                    let mut model = self.model.write().unwrap_or_else(PoisonError::into_inner);
                    apply_event(&mut *model, &event)
                }
            };
            match outcome {
                Ok(()) => return Applied::Done,
                Err(error) if attempt < self.options.max_attempts => {
                    tracing::debug!(projection = self.name, position = %event.position, attempt, %error, "handler failed; retrying");
                    tokio::time::sleep(self.options.delay(attempt)).await;
                }
                Err(error) => {
                    tracing::warn!(projection = self.name, position = %event.position, attempts = attempt, %error, "handler failed; dead-lettering the event");
                    return self
                        .dead_letter(letter_for(self.name, &event, &*error, attempt))
                        .await;
                }
            }
        }
    }

    async fn dead_letter(&self, letter: DeadLetter) -> Applied {
        let position = letter.position;
        let error = letter.error.clone();
        if let Err(failed) = self.checkpoints.add_dead_letter(&letter).await {
            return Applied::Stop(failed);
        }
        crate::telemetry::dead_lettered(self.name);
        match self.options.on_failure {
            OnFailure::Skip => Applied::DeadLettered,
            OnFailure::Stop => Applied::Stop(Error::ProjectionStopped {
                projection: self.name.to_owned(),
                position,
                error,
            }),
        }
    }

    async fn command(&self, command: Command, checkpoint: Option<Position>) -> Option<Position> {
        match command {
            Command::Rebuild(reply) => {
                let result = self.rebuild(checkpoint).await;
                let next = match &result {
                    Ok(next) => *next,
                    Err(_) => checkpoint,
                };
                let _ = reply.send(result.map(drop));
                next
            }
            Command::Replay(reply) => {
                let _ = reply.send(self.replay().await);
                checkpoint
            }
        }
    }

    /// Resets the model and the checkpoint, and catches up from the first event.
    async fn rebuild(&self, checkpoint: Option<Position>) -> Result<Option<Position>> {
        self.model
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .reset();
        if checkpoint.is_some() {
            self.checkpoints.delete_checkpoint(self.name).await?;
        }
        let mut at = None;
        self.progress.set(ProjectionState::CatchingUp, None);
        loop {
            let page = self.read_page(at).await?;
            if page.is_empty() {
                return Ok(at);
            }
            at = self
                .apply_page(page, at)
                .await
                .map_err(|(_, error)| error)?;
        }
    }

    /// Tries every dead letter again; returns how many are left.
    async fn replay(&self) -> Result<usize> {
        let letters = self.checkpoints.dead_letters(self.name).await?;
        let mut left = 0;
        for letter in letters {
            let Some(Ok(event)) = event_at(&self.store, letter.position).await? else {
                // Gone, or still unreadable: it stays.
                left += 1;
                continue;
            };
            let outcome = {
                let mut model = self.model.write().unwrap_or_else(PoisonError::into_inner);
                apply_event(&mut *model, &event)
            };
            match outcome {
                Ok(()) => {
                    self.checkpoints
                        .remove_dead_letter(self.name, letter.position)
                        .await?;
                }
                Err(error) => {
                    left += 1;
                    let again = DeadLetter {
                        attempts: letter.attempts.saturating_add(1),
                        error: error.to_string(),
                        failed_at: crate::event::now(),
                        ..letter
                    };
                    self.checkpoints.add_dead_letter(&again).await?;
                }
            }
        }
        Ok(left)
    }
}

/// What one step of a runner came to.
pub(crate) enum Step {
    /// Nothing after the checkpoint.
    Empty,
    /// Applied (or dead-lettered) up to `to`; `full`: the page was full, there may be more.
    Moved { to: Option<Position>, full: bool },
}

/// Why a step did not move.
pub(crate) enum StepError {
    /// Reading the log failed: try again later.
    Read(Error),
    /// The projection stops, its checkpoint at the position given.
    Stop(Option<Position>, Error),
}

/// What the loop of [`drive`] needs of a projection's runner: where it reads and checkpoints,
/// and how it applies a page and answers a command.
pub(crate) trait Runner: Send + 'static {
    type Store: EventStore;
    type Checkpoints: CheckpointStore;

    fn store(&self) -> &Self::Store;
    fn checkpoints(&self) -> &Self::Checkpoints;
    fn progress(&self) -> &Arc<Progress>;
    fn options(&self) -> &ProjectionOptions;
    fn name(&self) -> &'static str;
    /// The event types it reads (empty: all).
    fn event_types(&self) -> &[&'static str];

    /// Reads the next page after `checkpoint` and applies it, moving the checkpoint.
    fn step(
        &mut self,
        checkpoint: Option<Position>,
    ) -> impl std::future::Future<Output = std::result::Result<Step, StepError>> + Send;

    /// Runs a command between two pages; returns the checkpoint after it.
    fn command(
        &mut self,
        command: Command,
        checkpoint: Option<Position>,
    ) -> impl std::future::Future<Output = Option<Position>> + Send;
}

/// A projection's life: take the lease, load the checkpoint, then read and apply pages,
/// catching up, then waiting at the head for a wake-up, until shutdown or a failure.
pub(crate) async fn drive<R: Runner>(
    mut runner: R,
    mut shutdown: watch::Receiver<bool>,
    mut commands: mpsc::Receiver<Command>,
) {
    let name = runner.name();
    let Some(_lease) = take_lease(&mut runner, &mut shutdown).await else {
        return runner.progress().set(ProjectionState::Stopped, None);
    };
    let mut checkpoint = loop {
        match runner.checkpoints().checkpoint(name).await {
            Ok(checkpoint) => break checkpoint,
            Err(error) => {
                tracing::warn!(projection = name, %error, "cannot read the checkpoint; retrying");
            }
        }
        if *shutdown.borrow() {
            return runner.progress().set(ProjectionState::Stopped, None);
        }
        sleep_or_stop(&mut shutdown, runner.options().max_backoff).await;
    };
    // The lease is ours: no longer standing by, before anything is applied (a standby's
    // `wait_until` must not see this runner's progress under the standby's state).
    runner
        .progress()
        .set(ProjectionState::CatchingUp, checkpoint);
    let mut appends = runner.store().watch_appends();
    let mut catching_up = true;
    loop {
        if *shutdown.borrow() {
            break;
        }
        while let Ok(command) = commands.try_recv() {
            checkpoint = runner.command(command, checkpoint).await;
        }
        appends.borrow_and_update();
        // Near the head, the head before the read: if the read finds nothing more, everything
        // up to it is applied (what `wait_until` asks).
        let head = if catching_up {
            None
        } else {
            runner
                .store()
                .log_head()
                .await
                .ok()
                .map(|head| head.readable)
        };
        let span = tracing::debug_span!(
            "eventsource.projection.batch",
            projection = name,
            from = checkpoint.map(Position::get),
            to = tracing::field::Empty,
        );
        let step = runner.step(checkpoint).traced(span.clone()).await;
        if let Ok(Step::Moved { to: Some(to), .. }) = &step {
            span.record("to", to.get());
        }
        let step = match step {
            Ok(step) => step,
            Err(StepError::Read(error)) => {
                tracing::warn!(projection = name, %error, "cannot read the log; retrying");
                sleep_or_stop(&mut shutdown, runner.options().max_backoff).await;
                continue;
            }
            Err(StepError::Stop(_, error)) if error.is_transient() => {
                // The database went away mid-batch (a lost connection, a failover): nothing of
                // the batch is known to be stored, or all of it is. Wait, then resume from the
                // checkpoint as stored.
                tracing::warn!(projection = name, %error, "transient database error; resuming from the stored checkpoint");
                loop {
                    sleep_or_stop(
                        &mut shutdown,
                        runner.options().backoff.max(Duration::from_millis(50)),
                    )
                    .await;
                    if *shutdown.borrow() {
                        break;
                    }
                    match runner.checkpoints().checkpoint(name).await {
                        Ok(stored) => {
                            checkpoint = stored;
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(projection = name, %error, "cannot read the checkpoint; retrying");
                        }
                    }
                }
                catching_up = true;
                continue;
            }
            Err(StepError::Stop(next, error)) => {
                tracing::error!(projection = name, %error, "projection stopped");
                runner
                    .progress()
                    .set(ProjectionState::Failed(error.to_string()), next);
                return;
            }
        };
        match step {
            Step::Empty if catching_up => {
                // Reached the head while catching up: probe it, then read once more.
                catching_up = false;
            }
            Step::Empty => {
                if !matches!(runner.progress().get().state, ProjectionState::Live) {
                    crate::telemetry::lag(name, 0);
                }
                runner.progress().set(ProjectionState::Live, checkpoint);
                runner.progress().set_caught_up(head);
                let poll_interval = runner.options().poll_interval;
                let woken = {
                    let stop = shutdown.changed().fuse();
                    let command = commands.recv().fuse();
                    let appended = appends.changed().fuse();
                    let poll = tokio::time::sleep(poll_interval).fuse();
                    futures::pin_mut!(stop, command, appended, poll);
                    futures::select_biased! {
                        _ = stop => Woken::Stop,
                        command = command => Woken::Command(command),
                        changed = appended => Woken::Appended(changed.is_ok()),
                        () = poll => Woken::Poll,
                    }
                };
                match woken {
                    Woken::Command(Some(command)) => {
                        checkpoint = runner.command(command, checkpoint).await;
                    }
                    // The store cannot signal: poll.
                    Woken::Appended(false) => tokio::time::sleep(poll_interval).await,
                    Woken::Stop | Woken::Command(None) | Woken::Appended(true) | Woken::Poll => {}
                }
            }
            Step::Moved { to, full } => {
                checkpoint = to;
                catching_up = full;
                let state = if full {
                    ProjectionState::CatchingUp
                } else {
                    ProjectionState::Live
                };
                runner.progress().set(state, checkpoint);
            }
        }
    }
    runner.progress().set(ProjectionState::Stopped, checkpoint);
}

impl<S, C, P> Runner for MemoryRunner<S, C, P>
where
    S: EventStore + 'static,
    C: CheckpointStore + 'static,
    P: Projection + Sync,
{
    type Store = S;
    type Checkpoints = C;

    fn store(&self) -> &S {
        &self.store
    }
    fn checkpoints(&self) -> &C {
        &self.checkpoints
    }
    fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }
    fn options(&self) -> &ProjectionOptions {
        &self.options
    }
    fn name(&self) -> &'static str {
        self.name
    }
    fn event_types(&self) -> &[&'static str] {
        &self.event_types
    }

    async fn step(&mut self, checkpoint: Option<Position>) -> std::result::Result<Step, StepError> {
        self.lean_step(checkpoint).await
    }

    async fn command(
        &mut self,
        command: Command,
        checkpoint: Option<Position>,
    ) -> Option<Position> {
        MemoryRunner::command(self, command, checkpoint).await
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl<S, P> Runner for SqlRunner<S, P>
where
    S: crate::checkpoint::TransactionalStore,
    P: crate::projection::SqlProjection<Database = S::Database>,
{
    type Store = S;
    type Checkpoints = S;

    fn store(&self) -> &S {
        &self.store
    }
    fn checkpoints(&self) -> &S {
        &self.store
    }
    fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }
    fn options(&self) -> &ProjectionOptions {
        &self.options
    }
    fn name(&self) -> &'static str {
        self.name
    }
    fn event_types(&self) -> &[&'static str] {
        &self.event_types
    }

    async fn step(&mut self, checkpoint: Option<Position>) -> std::result::Result<Step, StepError> {
        let page = read_page(
            &self.store,
            checkpoint,
            &self.event_types,
            self.options.batch_size,
        )
        .await
        .map_err(StepError::Read)?;
        if page.is_empty() {
            return Ok(Step::Empty);
        }
        let full = page.len() >= self.options.batch_size;
        let to = self
            .apply_page(page, checkpoint)
            .await
            .map_err(|(at, error)| StepError::Stop(at, error))?;
        Ok(Step::Moved { to, full })
    }

    async fn command(
        &mut self,
        command: Command,
        checkpoint: Option<Position>,
    ) -> Option<Position> {
        SqlRunner::command(self, command, checkpoint).await
    }
}

/// Waits for the projection's lease (standing by while another process holds it, showing the
/// progress that one stores); `None` on shutdown.
async fn take_lease<R: Runner>(
    // `&mut`: held across awaits, it must be `Send`, which a runner is (and need not be `Sync`).
    runner: &mut R,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<crate::checkpoint::Lease> {
    let (name, options) = (runner.name(), runner.options());
    loop {
        match runner.checkpoints().lease(name).await {
            Ok(Some(lease)) => return Some(lease),
            Ok(None) => {
                let stored = read_stored(
                    runner.store(),
                    runner.checkpoints(),
                    name,
                    runner.event_types(),
                )
                .await;
                if let Err(error) = &stored {
                    tracing::debug!(projection = name, %error, "cannot read the stored progress");
                }
                runner.progress().stand_by(stored.ok());
            }
            Err(error) => {
                tracing::warn!(projection = name, %error, "cannot take the projection's lease; retrying");
            }
        }
        if *shutdown.borrow() {
            return None;
        }
        sleep_or_stop(shutdown, options.lease_retry).await;
        if *shutdown.borrow() {
            return None;
        }
    }
}

async fn sleep_or_stop(shutdown: &mut watch::Receiver<bool>, delay: Duration) {
    let stop = shutdown.changed().fuse();
    let sleep = tokio::time::sleep(delay).fuse();
    futures::pin_mut!(stop, sleep);
    futures::select_biased! {
        _ = stop => {}
        () = sleep => {}
    }
}

/// One page of the global log after `after`, filtered to `event_types`: the events, and the
/// damaged rows as their errors. An error that is not about a row (the database failing) fails
/// the whole read.
pub(crate) async fn read_page<S: EventStore>(
    store: &S,
    after: Option<Position>,
    event_types: &[&'static str],
    batch_size: usize,
) -> Result<Vec<Result<RecordedEvent>>> {
    let query = ReadAll::after(after.unwrap_or(Position::START))
        .event_types(event_types.iter().copied())
        .batch_size(batch_size);
    let mut page = Vec::new();
    let mut events = store.read_all(query).take(batch_size);
    while let Some(item) = events.next().await {
        match item {
            Err(error) if error.position().is_none() => return Err(error),
            item => page.push(item),
        }
    }
    Ok(page)
}

/// The event (or damaged row) at `position`, if the store has one there.
pub(crate) async fn event_at<S: EventStore>(
    store: &S,
    position: Position,
) -> Result<Option<Result<RecordedEvent>>> {
    let before = Position::new(position.get().saturating_sub(1));
    match store
        .read_all(ReadAll::after(before).batch_size(1))
        .next()
        .await
    {
        Some(Err(error)) if error.position().is_none() => Err(error),
        Some(item) if item_position(&item) == position => Ok(Some(item)),
        _ => Ok(None),
    }
}

/// The position of a page item.
pub(crate) fn item_position(item: &Result<RecordedEvent>) -> Position {
    match item {
        Ok(event) => event.position,
        Err(error) => error.position().unwrap_or(Position::START),
    }
}

/// The dead letter for a stored row that cannot be read, or the error back if it is not about a
/// row.
pub(crate) fn letter_for_damaged(
    projection: &str,
    error: Error,
) -> std::result::Result<DeadLetter, Error> {
    let Error::Corrupt {
        stream,
        position,
        version,
        event_type,
        ..
    } = &error
    else {
        return Err(error);
    };
    Ok(DeadLetter::new(
        projection,
        position.unwrap_or(Position::START),
        stream.clone(),
        error.to_string(),
        1,
    )
    .with_event(None, *version, event_type.clone()))
}

/// Applies one recorded event to an in-memory projection.
fn apply_event<P: Projection>(
    model: &mut P,
    event: &RecordedEvent,
) -> std::result::Result<(), HandlerError> {
    let view: EventView<'_> = event.view();
    model.handle(view, &EventContext::of(event))
}

/// The dead letter for `event`, which failed `attempts` times with `error`.
pub(crate) fn letter_for(
    projection: &str,
    event: &RecordedEvent,
    error: &(dyn std::error::Error + Send + Sync),
    attempts: u32,
) -> DeadLetter {
    DeadLetter::new(
        projection,
        event.position,
        event.stream.clone(),
        error.to_string(),
        attempts,
    )
    .with_event(
        Some(event.event_id),
        Some(event.version),
        Some(event.event_type.clone()),
    )
}

/// The status of a database read model: the model itself lives in the database.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Clone, Debug)]
pub struct SqlProjectionHandle {
    progress: Arc<Progress>,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl SqlProjectionHandle {
    /// The projection's state and checkpoint.
    pub fn status(&self) -> ProjectionStatus {
        self.progress.get()
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl<S> Subscriptions<S>
where
    S: crate::checkpoint::TransactionalStore,
{
    /// Adds a read model in the event store's own database: its handlers write through the
    /// transaction that also moves its checkpoint (a compare-and-set), so each event's effect is
    /// applied exactly once, across crashes, restarts and two runners that both believe they
    /// hold the lease.
    pub fn add_sql<P>(&mut self, projection: P) -> SqlProjectionHandle
    where
        P: crate::projection::SqlProjection<Database = S::Database>,
    {
        let progress = Progress::new(P::NAME);
        let runner = SqlRunner {
            store: self.store.clone(),
            model: projection,
            progress: Arc::clone(&progress),
            options: self.options.clone(),
            name: P::NAME,
            event_types: P::event_types(),
        };
        self.entries.push(Entry::new(runner));
        SqlProjectionHandle { progress }
    }
}

/// One database read model's loop: a transaction per batch, with the checkpoint in it.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
struct SqlRunner<S, P> {
    store: S,
    model: P,
    progress: Arc<Progress>,
    options: ProjectionOptions,
    name: &'static str,
    event_types: Vec<&'static str>,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl<S, P> SqlRunner<S, P>
where
    S: crate::checkpoint::TransactionalStore,
    P: crate::projection::SqlProjection<Database = S::Database>,
{
    /// The whole page in one transaction with its checkpoint; if anything in it fails, the
    /// page again one event per transaction, with retries and dead letters.
    async fn apply_page(
        &mut self,
        page: Vec<Result<RecordedEvent>>,
        checkpoint: Option<Position>,
    ) -> std::result::Result<Option<Position>, (Option<Position>, Error)> {
        let last = page.last().map(item_position);
        if page.iter().all(Result::is_ok)
            && let Some(last) = last
        {
            match self.apply_batch(&page, checkpoint, last).await {
                Ok(()) => return Ok(Some(last)),
                Err(BatchFailure::Checkpoint(error)) => return Err((checkpoint, error)),
                Err(BatchFailure::Handler(_)) => {}
            }
        }
        let mut reached = checkpoint;
        for item in page {
            reached = self.apply_alone(item, reached).await?;
        }
        Ok(reached)
    }

    async fn apply_batch(
        &mut self,
        page: &[Result<RecordedEvent>],
        checkpoint: Option<Position>,
        last: Position,
    ) -> std::result::Result<(), BatchFailure> {
        let database = |error| BatchFailure::Checkpoint(error);
        let mut tx = self.store.begin().await.map_err(database)?;
        for event in page.iter().flatten() {
            let context = EventContext::of(event);
            if let Err(error) = self.model.handle(event.view(), &context, &mut tx).await {
                if crate::error::transient_cause(&*error) {
                    return Err(BatchFailure::Checkpoint(lost_connection(error)));
                }
                tracing::debug!(projection = self.name, position = %event.position, %error, "handler failed in a batch; applying the batch one event at a time");
                return Err(BatchFailure::Handler(error.to_string()));
            }
        }
        S::save_checkpoint_in(&mut tx, self.name, checkpoint, last)
            .await
            .map_err(database)?;
        tx.commit()
            .await
            .map_err(|error| database(Error::database("commit")(error)))
    }

    /// One event in a transaction of its own, retried; dead-lettered (in the transaction that
    /// moves the checkpoint past it) when its attempts run out.
    async fn apply_alone(
        &mut self,
        item: Result<RecordedEvent>,
        checkpoint: Option<Position>,
    ) -> std::result::Result<Option<Position>, (Option<Position>, Error)> {
        let position = item_position(&item);
        let letter = match item {
            Err(error) => letter_for_damaged(self.name, error).map_err(|e| (checkpoint, e))?,
            Ok(event) => {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let outcome = self.apply_in_own_transaction(&event, checkpoint).await;
                    match outcome {
                        Ok(()) => return Ok(Some(position)),
                        Err(BatchFailure::Checkpoint(error)) => return Err((checkpoint, error)),
                        Err(BatchFailure::Handler(error))
                            if attempt < self.options.max_attempts =>
                        {
                            tracing::debug!(projection = self.name, %position, attempt, %error, "handler failed; retrying");
                            tokio::time::sleep(self.options.delay(attempt)).await;
                        }
                        Err(BatchFailure::Handler(error)) => {
                            tracing::warn!(projection = self.name, %position, attempts = attempt, %error, "handler failed; dead-lettering the event");
                            let mut letter =
                                letter_for(self.name, &event, &*HandlerError::from(error), attempt);
                            letter.attempts = attempt;
                            break letter;
                        }
                    }
                }
            }
        };
        let stop = self.options.on_failure == OnFailure::Stop;
        let result: Result<()> = async {
            let mut tx = self.store.begin().await?;
            S::add_dead_letter_in(&mut tx, &letter).await?;
            crate::telemetry::dead_lettered(self.name);
            if !stop {
                S::save_checkpoint_in(&mut tx, self.name, checkpoint, position).await?;
            }
            tx.commit().await.map_err(Error::database("commit"))
        }
        .await;
        result.map_err(|error| (checkpoint, error))?;
        if stop {
            return Err((
                checkpoint,
                Error::ProjectionStopped {
                    projection: self.name.to_owned(),
                    position,
                    error: letter.error,
                },
            ));
        }
        Ok(Some(position))
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl<S, P> SqlRunner<S, P>
where
    S: crate::checkpoint::TransactionalStore,
    P: crate::projection::SqlProjection<Database = S::Database>,
{
    /// One event and the checkpoint past it, in one transaction.
    async fn apply_in_own_transaction(
        &mut self,
        event: &RecordedEvent,
        checkpoint: Option<Position>,
    ) -> std::result::Result<(), BatchFailure> {
        let database = BatchFailure::Checkpoint;
        let mut tx = self.store.begin().await.map_err(database)?;
        let context = EventContext::of(event);
        if let Err(error) = self.model.handle(event.view(), &context, &mut tx).await {
            if crate::error::transient_cause(&*error) {
                return Err(BatchFailure::Checkpoint(lost_connection(error)));
            }
            return Err(BatchFailure::Handler(error.to_string()));
        }
        S::save_checkpoint_in(&mut tx, self.name, checkpoint, event.position)
            .await
            .map_err(database)?;
        tx.commit()
            .await
            .map_err(|error| database(Error::database("commit")(error)))
    }

    async fn command(
        &mut self,
        command: Command,
        checkpoint: Option<Position>,
    ) -> Option<Position> {
        match command {
            Command::Rebuild(reply) => {
                let result = self.rebuild(checkpoint).await;
                let next = match &result {
                    Ok(next) => *next,
                    Err(_) => checkpoint,
                };
                let _ = reply.send(result.map(drop));
                next
            }
            Command::Replay(reply) => {
                let _ = reply.send(self.replay().await);
                checkpoint
            }
        }
    }

    /// Empties the read model and replays every event into it, all in one transaction, with
    /// the checkpoint: readers see the old model until the new one is complete. A handler that
    /// fails aborts the rebuild (nothing changes).
    async fn rebuild(&mut self, checkpoint: Option<Position>) -> Result<Option<Position>> {
        self.progress.set(ProjectionState::CatchingUp, checkpoint);
        let mut tx = self.store.begin().await?;
        let failed = |error: HandlerError| Error::ProjectionStopped {
            projection: self.name.to_owned(),
            position: Position::START,
            error: format!("rebuild aborted, nothing changed: {error}"),
        };
        self.model.reset(&mut tx).await.map_err(failed)?;
        let mut at = None;
        loop {
            let page =
                read_page(&self.store, at, &self.event_types, self.options.batch_size).await?;
            if page.is_empty() {
                break;
            }
            for item in page {
                let event = item?;
                let context = EventContext::of(&event);
                self.model
                    .handle(event.view(), &context, &mut tx)
                    .await
                    .map_err(|error| Error::ProjectionStopped {
                        projection: self.name.to_owned(),
                        position: event.position,
                        error: format!("rebuild aborted, nothing changed: {error}"),
                    })?;
                at = Some(event.position);
            }
        }
        if let Some(at) = at {
            S::save_checkpoint_in(&mut tx, self.name, checkpoint, at).await?;
        }
        tx.commit().await.map_err(Error::database("commit"))?;
        Ok(at.or(checkpoint))
    }

    /// Tries every dead letter again, each in a transaction that also removes it.
    async fn replay(&mut self) -> Result<usize> {
        let letters = self.store.dead_letters(self.name).await?;
        let mut left = 0;
        for letter in letters {
            let Some(Ok(event)) = event_at(&self.store, letter.position).await? else {
                // Gone, or still unreadable: it stays.
                left += 1;
                continue;
            };
            let mut tx = self.store.begin().await?;
            let context = EventContext::of(&event);
            match self.model.handle(event.view(), &context, &mut tx).await {
                Ok(()) => {
                    S::remove_dead_letter_in(&mut tx, self.name, letter.position).await?;
                    tx.commit().await.map_err(Error::database("commit"))?;
                }
                Err(error) => {
                    drop(tx);
                    left += 1;
                    let again = DeadLetter {
                        attempts: letter.attempts.saturating_add(1),
                        error: error.to_string(),
                        failed_at: crate::event::now(),
                        ..letter
                    };
                    self.store.add_dead_letter(&again).await?;
                }
            }
        }
        Ok(left)
    }
}

/// Why a batch transaction did not commit.
/// A handler's failure that is the database's, not the event's (the connection was lost): the
/// batch is tried again from the stored checkpoint instead of dead-lettering the event.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn lost_connection(error: HandlerError) -> Error {
    Error::Database {
        operation: "projection handler",
        source: crate::error::DatabaseError::new(error),
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
enum BatchFailure {
    /// A handler failed (its error, as text): retry the events one by one.
    Handler(String),
    /// The database or the checkpoint failed: stop.
    Checkpoint(Error),
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
            let done = matches!(
                status.state,
                ProjectionState::Stopped | ProjectionState::Failed(_)
            ) || status.checkpoint.is_some_and(|c| c >= position)
                || self.progress.caught_up().is_some_and(|c| c >= position);
            if done {
                return Ok(());
            }
            let mut wake_at = deadline;
            if status.state == ProjectionState::Standby {
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
