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
use crate::subscription::{
    Command, Progress, ProjectionOptions, ProjectionState, ProjectionStatus, Runner, Step,
    StepError, letter_for_damaged, read_page,
};
use crate::telemetry::Traced;
use std::fmt;
use std::sync::Arc;

/// A relay's configuration: its name (the key of its checkpoint and lease), the bus, and the
/// events it publishes. Add it with [`Subscriptions::add_relay`](crate::subscription::Subscriptions::add_relay).
pub struct Relay<B> {
    pub(crate) name: &'static str,
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
    /// A relay named `name` publishing every event to `bus`.
    pub fn new(name: &'static str, bus: B) -> Self {
        Relay {
            name,
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

/// A relay added to a [`Subscriptions`](crate::subscription::Subscriptions) manager: its state and checkpoint (the position up to
/// which every event is confirmed by the broker).
#[derive(Clone)]
pub struct RelayHandle {
    pub(crate) progress: Arc<Progress>,
}

impl fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayHandle")
            .field("status", &self.progress.get())
            .finish()
    }
}

impl RelayHandle {
    /// The relay's state and checkpoint.
    pub fn status(&self) -> ProjectionStatus {
        self.progress.get()
    }
}

/// The relay's runner in the manager's loop.
pub(crate) struct RelayRunner<S, B> {
    pub(crate) store: S,
    pub(crate) bus: B,
    pub(crate) progress: Arc<Progress>,
    pub(crate) options: ProjectionOptions,
    pub(crate) name: &'static str,
    pub(crate) event_types: Vec<&'static str>,
}

impl<S, B> Runner for RelayRunner<S, B>
where
    S: EventStore + CheckpointStore + 'static,
    B: EventBus,
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
        let batch_size = self.options.batch_size;
        let page = read_page(&self.store, checkpoint, &self.event_types, batch_size)
            .await
            .map_err(StepError::Read)?;
        if page.is_empty() {
            return Ok(Step::Empty);
        }
        let full = page.len() >= batch_size;
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
                    tracing::error!(relay = self.name, %error, "unreadable row not published");
                    let letter = letter_for_damaged(self.name, error).map_err(StepError::Read)?;
                    self.store
                        .add_dead_letter(&letter)
                        .await
                        .map_err(StepError::Read)?;
                    crate::telemetry::dead_lettered(self.name);
                    last = position.max(last);
                }
            }
        }
        if !events.is_empty() {
            let span = tracing::debug_span!(
                "eventsource.relay.publish",
                relay = self.name,
                events = events.len(),
                from = events.first().map(|event| event.position.get()),
                to = events.last().map(|event| event.position.get()),
            );
            self.bus.publish(&events).traced(span).await.map_err(|error| {
                tracing::warn!(relay = self.name, %error, "publish failed; the batch will be published again");
                StepError::Read(error)
            })?;
        }
        if let Some(to) = last
            && last != checkpoint
        {
            self.store
                .save_checkpoint(self.name, checkpoint, to)
                .await
                .map_err(|error| StepError::Stop(checkpoint, error))?;
        }
        Ok(Step::Moved { to: last, full })
    }

    async fn command(
        &mut self,
        command: Command,
        checkpoint: Option<Position>,
    ) -> Option<Position> {
        match command {
            Command::Rebuild(reply) => {
                let result: Result<()> = match checkpoint {
                    Some(_) => self.store.delete_checkpoint(self.name).await,
                    None => Ok(()),
                };
                let next = if result.is_ok() {
                    self.progress.set(ProjectionState::CatchingUp, None);
                    None
                } else {
                    checkpoint
                };
                let _ = reply.send(result);
                next
            }
            Command::Replay(reply) => {
                // Unreadable rows do not read better on a second try: report how many there are.
                let left = self.store.dead_letters(self.name).await.map(|l| l.len());
                let _ = reply.send(left);
                checkpoint
            }
        }
    }
}
