//! The in-memory (and durable, at-least-once) projection's runner.

use super::page::{event_at, item_position};
use super::runner::{Applied, Replayed, Runner, RunnerCore, Step, StepError};
use super::shared;
use super::status::RunnerState;
use crate::checkpoint::CheckpointStore;
use crate::error::{Error, Result};
use crate::event::{EventView, RecordedEvent};
use crate::projection::{EventContext, HandlerError, Projection};
use crate::store::{EventStore, FoldEnd, FoldItem, ReadAll};
use crate::stream::Position;
use std::sync::{Arc, PoisonError, RwLock};

/// One in-memory (or durable, at-least-once) projection's loop.
pub(super) struct MemoryRunner<S, C, P> {
    pub(super) core: RunnerCore<S, C>,
    /// The pages shared with the manager's other in-process projections.
    pub(super) shared: Arc<shared::SharedLog<S>>,
    pub(super) model: Arc<RwLock<P>>,
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
                    self.core.options.batch_size,
                    &self.core.event_types,
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
                    .event_types(self.core.event_types.iter().copied())
                    .batch_size(self.core.options.batch_size)
                    .context(P::CONTEXT);
                self.core.store.fold_all(&query, &mut apply).await
            }
        };
        let end = match end {
            Ok(end) => end,
            // Nothing applied: read again later from the same checkpoint.
            Err(error) if reached == checkpoint => return Err(StepError::Read(error)),
            // The read failed part way through the page, after applying events: keep them
            // (move the checkpoint past them), and read the rest again.
            Err(error) => {
                tracing::warn!(projection = &*self.core.name, %error, "reading the log failed part way through a page; going on from the last event applied");
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
                let Some(item) = event_at(&self.core.store, position)
                    .await
                    .map_err(StepError::Read)?
                else {
                    return Ok(Step::Moved {
                        to: reached,
                        full: true,
                    });
                };
                match self.apply_one(item, first_error).await {
                    Applied::Done(()) | Applied::DeadLettered => reached = Some(position),
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
            self.core
                .checkpoints
                .save_checkpoint(&self.core.name, checkpoint, position)
                .await
                .map_err(|error| StepError::Stop(checkpoint, error))?;
        }
        if let Some(error) = stop {
            return Err(StepError::Stop(reached, error));
        }
        Ok(Step::Moved {
            to: reached,
            full: end.rows >= self.core.options.batch_size || end.stopped,
        })
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
                Applied::Done(()) | Applied::DeadLettered => reached = Some(position),
                Applied::Stop(error) => {
                    stop = Some(error);
                    break;
                }
            }
        }
        if reached != checkpoint
            && let Some(position) = reached
            && let Err(error) = self
                .core
                .checkpoints
                .save_checkpoint(&self.core.name, checkpoint, position)
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
    ) -> Applied<()> {
        self.core
            .apply_or_dead_letter(
                "handler",
                item,
                first_error,
                &mut &*self.model,
                |_, model, event| Box::pin(async move { Ok(apply(model, event)) }),
            )
            .await
    }
}

impl<S, C, P> Runner for MemoryRunner<S, C, P>
where
    S: EventStore + 'static,
    C: CheckpointStore + 'static,
    P: Projection + Sync,
{
    type Store = S;
    type Checkpoints = C;

    fn core(&self) -> &RunnerCore<S, C> {
        &self.core
    }

    async fn step(&mut self, checkpoint: Option<Position>) -> std::result::Result<Step, StepError> {
        self.lean_step(checkpoint).await
    }

    /// Resets the model and the checkpoint, and catches up from the first event.
    async fn rebuild(&mut self, checkpoint: Option<Position>) -> Result<Option<Position>> {
        self.model
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .reset();
        if checkpoint.is_some() {
            self.core
                .checkpoints
                .delete_checkpoint(&self.core.name)
                .await?;
        }
        let mut at = None;
        self.core.progress.set(RunnerState::CatchingUp, None);
        loop {
            let page = self.core.read_page(at).await?;
            if page.is_empty() {
                return Ok(at);
            }
            at = self
                .apply_page(page, at)
                .await
                .map_err(|(_, error)| error)?;
        }
    }

    async fn replay(&mut self) -> Result<usize> {
        self.core
            .replay_dead_letters(&mut &*self.model, |_, model, event| {
                Box::pin(async move { Ok(apply(model, event).map(|()| Replayed::Applied)) })
            })
            .await
    }
}

/// Applies one recorded event to an in-memory projection, under its write lock.
fn apply<P: Projection>(
    model: &RwLock<P>,
    event: &RecordedEvent,
) -> std::result::Result<(), HandlerError> {
    let mut model = model.write().unwrap_or_else(PoisonError::into_inner);
    apply_event(&mut *model, event)
}

/// Applies one recorded event to an in-memory projection.
fn apply_event<P: Projection>(
    model: &mut P,
    event: &RecordedEvent,
) -> std::result::Result<(), HandlerError> {
    let view: EventView<'_> = event.view();
    model.handle(view, &EventContext::of(event))
}
