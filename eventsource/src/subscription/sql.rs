//! The database read model's runner: a transaction per batch, with the checkpoint in it.

use super::options::{OnFailure, ProjectionOptions};
use super::runner::{
    Command, Runner, Step, StepError, event_at, item_position, letter_for, letter_for_damaged,
    read_page,
};
use super::status::{Progress, ProjectionState};
use crate::checkpoint::DeadLetter;
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::projection::{EventContext, HandlerError};
use crate::stream::Position;
use std::sync::Arc;

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

/// One database read model's loop: a transaction per batch, with the checkpoint in it.
pub(super) struct SqlRunner<S, P> {
    pub(super) store: S,
    pub(super) model: P,
    pub(super) progress: Arc<Progress>,
    pub(super) options: ProjectionOptions,
    pub(super) name: &'static str,
    pub(super) event_types: Vec<&'static str>,
}

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
fn lost_connection(error: HandlerError) -> Error {
    Error::Database {
        operation: "projection handler",
        source: crate::error::DatabaseError::new(error),
    }
}

enum BatchFailure {
    /// A handler failed (its error, as text): retry the events one by one.
    Handler(String),
    /// The database or the checkpoint failed: stop.
    Checkpoint(Error),
}
