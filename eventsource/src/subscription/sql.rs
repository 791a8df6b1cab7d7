//! The database read model's runner: a transaction per batch, with the checkpoint in it.

use super::options::OnFailure;
use super::page::item_position;
use super::runner::{Replayed, Runner, RunnerCore, Step, StepError, letter_for_damaged};
use super::status::RunnerState;
use crate::checkpoint::TransactionalStore;
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::projection::{EventContext, HandlerError, SqlProjection};
use crate::stream::Position;

/// One database read model's loop: a transaction per batch, with the checkpoint in it.
pub(super) struct SqlRunner<S, P> {
    pub(super) core: RunnerCore<S>,
    pub(super) model: P,
}

impl<S, P> Runner for SqlRunner<S, P>
where
    S: TransactionalStore,
    P: SqlProjection<Database = S::Database>,
{
    type Store = S;
    type Checkpoints = S;

    fn core(&self) -> &RunnerCore<S> {
        &self.core
    }

    async fn step(&mut self, checkpoint: Option<Position>) -> std::result::Result<Step, StepError> {
        let Some((page, full)) = self.core.next_page(checkpoint).await? else {
            return Ok(Step::Empty);
        };
        let to = self
            .apply_page(page, checkpoint)
            .await
            .map_err(|(at, error)| StepError::Stop(at, error))?;
        Ok(Step::Moved { to, full })
    }

    /// Empties the read model and replays every event into it, all in one transaction, with
    /// the checkpoint: readers see the old model until the new one is complete. A handler that
    /// fails aborts the rebuild (nothing changes).
    async fn rebuild(&mut self, checkpoint: Option<Position>) -> Result<Option<Position>> {
        let core = &self.core;
        core.progress.set(RunnerState::CatchingUp, checkpoint);
        let mut tx = core.store.begin().await?;
        let aborted = |position, error| {
            core.stopped(
                position,
                format!("rebuild aborted, nothing changed: {error}"),
            )
        };
        self.model
            .reset(&mut tx)
            .await
            .map_err(|error| aborted(Position::START, error))?;
        let mut at = None;
        loop {
            let page = core.read_page(at).await?;
            if page.is_empty() {
                break;
            }
            for item in page {
                let event = item?;
                let context = EventContext::of(&event);
                self.model
                    .handle(event.view(), &context, &mut tx)
                    .await
                    .map_err(|error| aborted(event.position, error))?;
                at = Some(event.position);
            }
        }
        if let Some(at) = at {
            S::save_checkpoint_in(&mut tx, &core.name, checkpoint, at).await?;
        }
        tx.commit().await.map_err(Error::database("commit"))?;
        Ok(at.or(checkpoint))
    }

    /// Tries every dead letter again, each in a transaction that also removes it.
    async fn replay(&mut self) -> Result<usize> {
        let SqlRunner { core, model } = self;
        core.replay_dead_letters(model, |core, model, event| {
            Box::pin(async move {
                let mut tx = core.store.begin().await?;
                let context = EventContext::of(event);
                match model.handle(event.view(), &context, &mut tx).await {
                    Ok(()) => {
                        S::remove_dead_letter_in(&mut tx, &core.name, event.position).await?;
                        tx.commit().await.map_err(Error::database("commit"))?;
                        Ok(Ok(Replayed::Removed))
                    }
                    Err(error) => Ok(Err(error)),
                }
            })
        })
        .await
    }
}

impl<S, P> SqlRunner<S, P>
where
    S: TransactionalStore,
    P: SqlProjection<Database = S::Database>,
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
        let mut tx = self.core.store.begin().await.map_err(database)?;
        for event in page.iter().flatten() {
            let context = EventContext::of(event);
            if let Err(error) = self.model.handle(event.view(), &context, &mut tx).await {
                if crate::error::transient_cause(&*error) {
                    return Err(BatchFailure::Checkpoint(lost_connection(error)));
                }
                tracing::debug!(projection = &*self.core.name, position = %event.position, %error, "handler failed in a batch; applying the batch one event at a time");
                return Err(BatchFailure::Handler(error.to_string()));
            }
        }
        S::save_checkpoint_in(&mut tx, &self.core.name, checkpoint, last)
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
        let SqlRunner { core, model } = self;
        let letter = match item {
            Err(error) => letter_for_damaged(&core.name, error).map_err(|e| (checkpoint, e))?,
            Ok(event) => {
                let retried = core
                    .retry("handler", &event, None, model, |core, model, event| {
                        Box::pin(async move {
                            match apply_in_own_transaction(core, model, event, checkpoint).await {
                                Ok(()) => Ok(Ok(())),
                                Err(BatchFailure::Handler(error)) => Ok(Err(error.into())),
                                Err(BatchFailure::Checkpoint(error)) => Err(error),
                            }
                        })
                    })
                    .await
                    .map_err(|error| (checkpoint, error))?;
                match retried {
                    Ok(()) => return Ok(Some(position)),
                    Err(letter) => letter,
                }
            }
        };
        let stop = core.options.on_failure == OnFailure::Stop;
        let result: Result<()> = async {
            let mut tx = core.store.begin().await?;
            S::add_dead_letter_in(&mut tx, &letter).await?;
            crate::telemetry::dead_lettered(&core.name);
            if !stop {
                S::save_checkpoint_in(&mut tx, &core.name, checkpoint, position).await?;
            }
            tx.commit().await.map_err(Error::database("commit"))
        }
        .await;
        result.map_err(|error| (checkpoint, error))?;
        if stop {
            return Err((checkpoint, core.stopped(position, letter.error)));
        }
        Ok(Some(position))
    }
}

/// One event and the checkpoint past it, in one transaction.
async fn apply_in_own_transaction<S, P>(
    core: &RunnerCore<S>,
    model: &mut P,
    event: &RecordedEvent,
    checkpoint: Option<Position>,
) -> std::result::Result<(), BatchFailure>
where
    S: TransactionalStore,
    P: SqlProjection<Database = S::Database>,
{
    let database = BatchFailure::Checkpoint;
    let mut tx = core.store.begin().await.map_err(database)?;
    let context = EventContext::of(event);
    if let Err(error) = model.handle(event.view(), &context, &mut tx).await {
        if crate::error::transient_cause(&*error) {
            return Err(BatchFailure::Checkpoint(lost_connection(error)));
        }
        return Err(BatchFailure::Handler(error.to_string()));
    }
    S::save_checkpoint_in(&mut tx, &core.name, checkpoint, event.position)
        .await
        .map_err(database)?;
    tx.commit()
        .await
        .map_err(|error| database(Error::database("commit")(error)))
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
