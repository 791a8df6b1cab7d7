//! The relay: the event log itself as the outbox, published by a checkpointed reader.
//!
//! An event is published if and only if its append committed: the relay reads only committed
//! events (the global log, in position order), publishes a batch, and moves its checkpoint once
//! the broker has confirmed the whole batch. A crash between the two publishes the batch again
//! (at least once; consumers de-duplicate by event id), never skips one: PostgreSQL's positions
//! are gap-free in commit order, so a late-committing append cannot land behind a moved
//! checkpoint. One relay of a name runs at a time among the processes sharing the database
//! (the manager's lease); another takes over when it dies.

use super::EventBus;
use crate::checkpoint::CheckpointStore;
use crate::error::Result;
use crate::event::DomainEvent;
use crate::store::EventStore;
use crate::stream::Position;
use crate::subscription::{Runner, RunnerCore, RunnerState, Step, StepError, letter_for_damaged};
use crate::telemetry::Traced;
use std::fmt;
use std::sync::Arc;

/// A relay's configuration: its name (the key of its checkpoint and lease), the bus, and the
/// events it publishes. Add it with [`Subscriptions::add_relay`](crate::subscription::Subscriptions::add_relay).
pub struct Relay<B> {
    pub(crate) name: Arc<str>,
    pub(crate) bus: B,
    pub(crate) event_types: Vec<&'static str>,
}

impl<B: fmt::Debug> fmt::Debug for Relay<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.name)
            .field("bus", &self.bus)
            .field("event_types", &self.event_types)
            .finish()
    }
}

impl<B: EventBus> Relay<B> {
    /// A relay named `name` (a `&'static str`, or a name built at run time: a `String`)
    /// publishing every event to `bus`.
    pub fn new(name: impl Into<Arc<str>>, bus: B) -> Self {
        Relay {
            name: name.into(),
            bus,
            event_types: Vec::new(),
        }
    }

    /// Publishes only events of `E` (with the other types given so far).
    pub fn event<E: DomainEvent>(mut self) -> Self {
        self.event_types.push(E::EVENT_TYPE);
        self.event_types.extend_from_slice(E::ALIASES);
        self
    }

    /// Publishes only events stored under these names.
    pub fn event_types(mut self, types: impl IntoIterator<Item = &'static str>) -> Self {
        self.event_types.extend(types);
        self
    }
}

/// The relay's runner in the manager's loop.
pub(crate) struct RelayRunner<S, B> {
    pub(crate) core: RunnerCore<S>,
    pub(crate) bus: B,
}

impl<S, B> Runner for RelayRunner<S, B>
where
    S: EventStore + CheckpointStore + 'static,
    B: EventBus,
{
    type Store = S;
    type Checkpoints = S;

    fn core(&self) -> &RunnerCore<S> {
        &self.core
    }

    async fn step(&mut self, checkpoint: Option<Position>) -> std::result::Result<Step, StepError> {
        let core = &self.core;
        let name = &*core.name;
        let Some((page, full)) = core.next_page(checkpoint).await? else {
            return Ok(Step::Empty);
        };
        let mut events = Vec::with_capacity(page.len());
        let mut last = checkpoint;
        for item in page {
            match item {
                Ok(event) => {
                    last = Some(event.position);
                    events.push(event);
                }
                Err(error) => {
                    // A row that cannot be read cannot be published: it goes to the relay's
                    // dead letters, and the rest of the log goes on.
                    let position = error.position();
                    tracing::error!(relay = name, %error, "unreadable row not published");
                    let letter = letter_for_damaged(name, error).map_err(StepError::Read)?;
                    core.checkpoints
                        .add_dead_letter(&letter)
                        .await
                        .map_err(StepError::Read)?;
                    crate::telemetry::dead_lettered(name);
                    last = position.max(last);
                }
            }
        }
        if !events.is_empty() {
            let span = tracing::debug_span!(
                "eventsource.relay.publish",
                relay = name,
                events = events.len(),
                from = events.first().map(|event| event.position.get()),
                to = events.last().map(|event| event.position.get()),
            );
            self.bus.publish(&events).traced(span).await.map_err(|error| {
                tracing::warn!(relay = name, %error, "publish failed; the batch will be published again");
                StepError::Read(error)
            })?;
        }
        if let Some(to) = last
            && last != checkpoint
        {
            core.checkpoints
                .save_checkpoint(name, checkpoint, to)
                .await
                .map_err(|error| StepError::Stop(checkpoint, error))?;
        }
        Ok(Step::Moved { to: last, full })
    }

    /// Publishes everything again from the first event.
    async fn rebuild(&mut self, checkpoint: Option<Position>) -> Result<Option<Position>> {
        if checkpoint.is_some() {
            self.core
                .checkpoints
                .delete_checkpoint(&self.core.name)
                .await?;
        }
        self.core.progress.set(RunnerState::CatchingUp, None);
        Ok(None)
    }

    /// Unreadable rows do not read better on a second try: reports how many there are.
    async fn replay(&mut self) -> Result<usize> {
        let letters = self.core.checkpoints.dead_letters(&self.core.name).await?;
        Ok(letters.len())
    }
}
