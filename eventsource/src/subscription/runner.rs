//! What every runner is driven by: the `Runner` trait, the loop of `drive`, and the reads and
//! dead letters runners share.

use super::lease::read_stored;
use super::options::{OnFailure, RunnerOptions};
use super::page::{event_at, read_page};
use super::status::{Progress, RunnerState};
use crate::checkpoint::{CheckpointStore, DeadLetter};
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::projection::HandlerError;
use crate::store::EventStore;
use crate::stream::Position;
use crate::telemetry::Traced;
use futures::FutureExt;
use futures::future::BoxFuture;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// What a running projection's task is asked to do besides its work.
pub(crate) enum Command {
    /// Reset the read model and the checkpoint, then catch up from the first event.
    Rebuild(oneshot::Sender<Result<()>>),
    /// Try each dead letter again; reply how many are left.
    Replay(oneshot::Sender<Result<usize>>),
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

/// What every runner holds: its name (the key of its checkpoint, lease and dead letters), the
/// store it reads, where its checkpoints and dead letters live, the progress it shows, its
/// options, and the event types it reads (empty: all).
pub(crate) struct RunnerCore<S, C = S> {
    pub(crate) name: Arc<str>,
    pub(crate) store: S,
    pub(crate) checkpoints: C,
    pub(crate) progress: Arc<Progress>,
    pub(crate) options: RunnerOptions,
    pub(crate) event_types: Vec<&'static str>,
}

/// One attempt at applying an event: its outcome (`Err`: the runner stops), or the handler's
/// error (`Ok(Err(..))`: worth retrying).
pub(crate) type Attempt<'a, T, E> =
    BoxFuture<'a, std::result::Result<std::result::Result<T, HandlerError>, E>>;

/// What applying one event (or a damaged row) came to.
pub(crate) enum Applied<T> {
    /// Applied, with what the attempt returned.
    Done(T),
    /// Dead-lettered, and the runner goes on past it.
    DeadLettered,
    /// The runner stops before it.
    Stop(Error),
}

/// How retrying a dead letter went, as its runner tells it.
pub(crate) enum Replayed {
    /// Applied: the letter is to be removed.
    Applied,
    /// Applied, and the letter removed with its effects (in one transaction).
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    Removed,
}

impl<S: EventStore, C: CheckpointStore> RunnerCore<S, C> {
    /// The next page after `after`, of the runner's types and batch size (see [`read_page`]).
    pub(crate) async fn read_page(
        &self,
        after: Option<Position>,
    ) -> Result<Vec<Result<RecordedEvent>>> {
        read_page(
            &self.store,
            after,
            &self.event_types,
            self.options.batch_size,
        )
        .await
    }

    /// Tries `apply` on `event` until it succeeds or the attempts run out, waiting the backoff
    /// between two (`first_error`: the first attempt, made already). `Ok(Err(..))`: the dead
    /// letter for it, once they have run out; `Err`: `apply` failed otherwise, stop.
    ///
    /// `apply` is handed the core and `target` (what it applies to) each time, so that its
    /// future may borrow them.
    pub(crate) async fn retry<X: Send + ?Sized, T, E>(
        &self,
        what: &str,
        event: &RecordedEvent,
        first_error: Option<HandlerError>,
        target: &mut X,
        mut apply: impl for<'a> FnMut(&'a Self, &'a mut X, &'a RecordedEvent) -> Attempt<'a, T, E>,
    ) -> std::result::Result<std::result::Result<T, DeadLetter>, E> {
        let name = &*self.name;
        let mut previous = first_error.map(Err);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = match previous.take() {
                Some(outcome) => outcome,
                None => apply(self, target, event).await?,
            };
            match outcome {
                Ok(done) => return Ok(Ok(done)),
                Err(error) if attempt < self.options.max_attempts => {
                    tracing::debug!(projection = name, position = %event.position, attempt, %error, "{what} failed; retrying");
                    tokio::time::sleep(self.options.delay(attempt)).await;
                }
                Err(error) => {
                    tracing::warn!(projection = name, position = %event.position, attempts = attempt, %error, "{what} failed; dead-lettering the event");
                    return Ok(Err(letter_for(name, event, &*error, attempt)));
                }
            }
        }
    }

    /// The page after `checkpoint` (see [`read_page`]) and whether it is full (there may be
    /// more); `None`: nothing after the checkpoint.
    pub(crate) async fn next_page(
        &self,
        checkpoint: Option<Position>,
    ) -> std::result::Result<Option<(Vec<Result<RecordedEvent>>, bool)>, StepError> {
        let page = self.read_page(checkpoint).await.map_err(StepError::Read)?;
        let full = page.len() >= self.options.batch_size;
        Ok((!page.is_empty()).then_some((page, full)))
    }

    /// Applies `item` with [`retry`](Self::retry), or dead-letters it (a damaged row, or an
    /// event whose attempts ran out) with [`dead_letter`](Self::dead_letter).
    pub(crate) async fn apply_or_dead_letter<X: Send + ?Sized, T>(
        &self,
        what: &str,
        item: Result<RecordedEvent>,
        first_error: Option<HandlerError>,
        target: &mut X,
        apply: impl for<'a> FnMut(&'a Self, &'a mut X, &'a RecordedEvent) -> Attempt<'a, T, Infallible>,
    ) -> Applied<T> {
        let letter = match item {
            // A row that cannot be read: dead-letter it, it will not read better next time.
            Err(error) => letter_for_damaged(&self.name, error),
            Ok(event) => match self.retry(what, &event, first_error, target, apply).await {
                Ok(Ok(done)) => return Applied::Done(done),
                Ok(Err(letter)) => Ok(letter),
                Err(never) => match never {},
            },
        };
        let stopped = match letter {
            Ok(letter) => self.dead_letter(letter).await,
            Err(error) => Err(error),
        };
        match stopped {
            Ok(()) => Applied::DeadLettered,
            Err(error) => Applied::Stop(error),
        }
    }

    /// Stores `letter`, then: `Ok` to go on past its event ([`OnFailure::Skip`]), or the error
    /// that stops the runner ([`OnFailure::Stop`], or the letter could not be stored).
    pub(crate) async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        self.checkpoints.add_dead_letter(&letter).await?;
        crate::telemetry::dead_lettered(&self.name);
        match self.options.on_failure {
            OnFailure::Skip => Ok(()),
            OnFailure::Stop => Err(self.stopped(letter.position, letter.error)),
        }
    }

    /// The error of this runner stopped at `position` by `error`.
    pub(crate) fn stopped(&self, position: Position, error: String) -> Error {
        Error::ProjectionStopped {
            projection: self.name.to_string(),
            position,
            error,
        }
    }

    /// Tries each dead letter again with `apply`, oldest first; one that now succeeds leaves the
    /// table, one that fails again stays with one attempt more. Returns how many are left.
    pub(crate) async fn replay_dead_letters<X: Send + ?Sized>(
        &self,
        target: &mut X,
        mut apply: impl for<'a> FnMut(
            &'a Self,
            &'a mut X,
            &'a RecordedEvent,
        ) -> Attempt<'a, Replayed, Error>,
    ) -> Result<usize> {
        let letters = self.checkpoints.dead_letters(&self.name).await?;
        let mut left = 0;
        for letter in letters {
            let Some(Ok(event)) = event_at(&self.store, letter.position).await? else {
                // Gone, or still unreadable: it stays.
                left += 1;
                continue;
            };
            match apply(self, target, &event).await? {
                Ok(Replayed::Removed) => {}
                Ok(Replayed::Applied) => {
                    self.checkpoints
                        .remove_dead_letter(&self.name, letter.position)
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

/// What the loop of [`drive`] needs of a runner: its [`RunnerCore`], and how it applies a page,
/// rebuilds and replays its dead letters.
pub(crate) trait Runner: Send + 'static {
    type Store: EventStore;
    type Checkpoints: CheckpointStore;

    fn core(&self) -> &RunnerCore<Self::Store, Self::Checkpoints>;

    /// Reads the next page after `checkpoint` and applies it, moving the checkpoint.
    fn step(
        &mut self,
        checkpoint: Option<Position>,
    ) -> impl std::future::Future<Output = std::result::Result<Step, StepError>> + Send;

    /// Starts over from the first event (between two pages); returns the checkpoint after it.
    fn rebuild(
        &mut self,
        checkpoint: Option<Position>,
    ) -> impl std::future::Future<Output = Result<Option<Position>>> + Send;

    /// Tries each dead letter again; returns how many are left.
    fn replay(&mut self) -> impl std::future::Future<Output = Result<usize>> + Send;
}

/// Runs a command between two pages; returns the checkpoint after it.
async fn answer<R: Runner>(
    runner: &mut R,
    command: Command,
    checkpoint: Option<Position>,
) -> Option<Position> {
    match command {
        Command::Rebuild(reply) => {
            let result = runner.rebuild(checkpoint).await;
            let next = match &result {
                Ok(next) => *next,
                Err(_) => checkpoint,
            };
            let _ = reply.send(result.map(drop));
            next
        }
        Command::Replay(reply) => {
            let _ = reply.send(runner.replay().await);
            checkpoint
        }
    }
}

/// What woke a live projection.
enum Woken {
    Stop,
    Command(Option<Command>),
    Appended(bool),
    Poll,
}

/// A projection's life: take the lease, load the checkpoint, then read and apply pages,
/// catching up, then waiting at the head for a wake-up, until shutdown or a failure.
pub(crate) async fn drive<R: Runner>(
    mut runner: R,
    mut shutdown: watch::Receiver<bool>,
    mut commands: mpsc::Receiver<Command>,
) {
    let name = Arc::clone(&runner.core().name);
    let name = &*name;
    let Some(_lease) = take_lease(runner.core(), &mut shutdown).await else {
        return runner.core().progress.set(RunnerState::Stopped, None);
    };
    let mut checkpoint = loop {
        match runner.core().checkpoints.checkpoint(name).await {
            Ok(checkpoint) => break checkpoint,
            Err(error) => {
                tracing::warn!(projection = name, %error, "cannot read the checkpoint; retrying");
            }
        }
        if *shutdown.borrow() {
            return runner.core().progress.set(RunnerState::Stopped, None);
        }
        sleep_or_stop(&mut shutdown, runner.core().options.max_backoff).await;
    };
    // The lease is ours: no longer standing by, before anything is applied (a standby's
    // `wait_until` must not see this runner's progress under the standby's state).
    runner
        .core()
        .progress
        .set(RunnerState::CatchingUp, checkpoint);
    let mut appends = runner.core().store.watch_appends();
    let mut catching_up = true;
    loop {
        if *shutdown.borrow() {
            break;
        }
        while let Ok(command) = commands.try_recv() {
            checkpoint = answer(&mut runner, command, checkpoint).await;
        }
        appends.borrow_and_update();
        // Near the head, the head before the read: if the read finds nothing more, everything
        // up to it is applied (what `wait_until` asks).
        let head = if catching_up {
            None
        } else {
            runner
                .core()
                .store
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
                sleep_or_stop(&mut shutdown, runner.core().options.max_backoff).await;
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
                        runner.core().options.backoff.max(Duration::from_millis(50)),
                    )
                    .await;
                    if *shutdown.borrow() {
                        break;
                    }
                    match runner.core().checkpoints.checkpoint(name).await {
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
                    .core()
                    .progress
                    .set(RunnerState::Failed(error.to_string()), next);
                return;
            }
        };
        match step {
            Step::Empty if catching_up => {
                // Reached the head while catching up: probe it, then read once more.
                catching_up = false;
            }
            Step::Empty => {
                if !matches!(runner.core().progress.get().state, RunnerState::Live) {
                    crate::telemetry::lag(name, 0);
                }
                runner.core().progress.set(RunnerState::Live, checkpoint);
                runner.core().progress.set_caught_up(head);
                let poll_interval = runner.core().options.poll_interval;
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
                        checkpoint = answer(&mut runner, command, checkpoint).await;
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
                    RunnerState::CatchingUp
                } else {
                    RunnerState::Live
                };
                runner.core().progress.set(state, checkpoint);
            }
        }
    }
    runner.core().progress.set(RunnerState::Stopped, checkpoint);
}

/// Waits for the runner's lease (standing by while another process holds it, showing the
/// progress that one stores); `None` on shutdown.
pub(super) async fn take_lease<S: EventStore, C: CheckpointStore>(
    core: &RunnerCore<S, C>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<crate::checkpoint::Lease> {
    let name = &*core.name;
    loop {
        match core.checkpoints.lease(name).await {
            Ok(Some(lease)) => return Some(lease),
            Ok(None) => {
                let stored =
                    read_stored(&core.store, &core.checkpoints, name, &core.event_types).await;
                if let Err(error) = &stored {
                    tracing::debug!(projection = name, %error, "cannot read the stored progress");
                }
                core.progress.stand_by(stored.ok());
            }
            Err(error) => {
                tracing::warn!(projection = name, %error, "cannot take the projection's lease; retrying");
            }
        }
        if *shutdown.borrow() {
            return None;
        }
        sleep_or_stop(shutdown, core.options.lease_retry).await;
        if *shutdown.borrow() {
            return None;
        }
    }
}

pub(super) async fn sleep_or_stop(shutdown: &mut watch::Receiver<bool>, delay: Duration) {
    let stop = shutdown.changed().fuse();
    let sleep = tokio::time::sleep(delay).fuse();
    futures::pin_mut!(stop, sleep);
    futures::select_biased! {
        _ = stop => {}
        () = sleep => {}
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
