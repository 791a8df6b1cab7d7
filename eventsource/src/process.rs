//! Process managers (sagas): react to events by sending commands to aggregates.
//!
//! A [`ProcessManager`] names the events it reacts to and, for each, runs an async
//! [`react`](ProcessManager::react) that sends commands through [`Reaction::send`]: a
//! [`Repository::update_once`] whose idempotency key is derived from the process's name, the
//! triggering event's id and the step's name. The subscription manager runs it
//! ([`Subscriptions::add_process`](crate::subscription::Subscriptions::add_process)) like a durable projection: catch-up then live, its checkpoint
//! in the event store's database, retries, dead letters, one runner at a time (the lease).
//!
//! Delivery is at least once: a crash after a reaction's commands are saved and before the
//! checkpoint moves past its event delivers that event again after the restart. Each step then
//! finds its events already stored (same derived ids) and reports [`Once::AlreadyApplied`]
//! instead of acting twice, so the reaction as a whole is applied once. For that, a reaction must
//! send the same steps, under the same names, for the same event: derive every decision from the
//! event and from the aggregates' state, never from the clock or a random draw.
//!
//! Compensation is ordinary code: a step rejected with the aggregate's typed error
//! ([`UpdateError::Rejected`]) is answered with compensating steps (release the stock, cancel the
//! order), themselves idempotent.
//!
//! ```
//! use eventsource::prelude::*;
//! use eventsource::{HandlerError, Repository};
//! use eventsource::process::{ProcessManager, Reaction};
//! use eventsource::subscription::Subscriptions;
//! use serde::{Deserialize, Serialize};
//! use std::time::Duration;
//!
//! #[derive(DomainEvent, Serialize, Deserialize)]
//! struct OrderPlaced { cents: i64 }
//! #[derive(DomainEvent, Serialize, Deserialize)]
//! struct Charged { cents: i64 }
//!
//! #[derive(Default)]
//! struct Order;
//! #[aggregate(id = String)]
//! impl Order {
//!     #[handles]
//!     fn placed(&mut self, _: &OrderPlaced) {}
//! }
//!
//! #[derive(Default)]
//! struct Payment { charged: i64 }
//! #[aggregate(id = String)]
//! impl Payment {
//!     #[handles]
//!     fn charged(&mut self, e: &Charged) { self.charged += e.cents; }
//! }
//!
//! /// Charges every order placed.
//! struct Billing { payments: Repository<Payment, InMemoryEventStore> }
//!
//! impl ProcessManager for Billing {
//!     const NAME: &'static str = "billing";
//!     fn event_types() -> Vec<&'static str> { vec![OrderPlaced::EVENT_TYPE] }
//!     async fn react(&self, reaction: &Reaction<'_>) -> Result<(), HandlerError> {
//!         if let Some(placed) = reaction.decode::<OrderPlaced>()? {
//!             let order = reaction.event().aggregate_id().to_owned();
//!             reaction
//!                 .send(&self.payments, order, "charge", |payment| {
//!                     payment.record(Charged { cents: placed.cents });
//!                     Ok(())
//!                 })
//!                 .await?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = InMemoryEventStore::new();
//! let mut subscriptions = Subscriptions::new(store.clone());
//! subscriptions.add_process(Billing { payments: Payment::repository(store.clone()) });
//! let running = subscriptions.start();
//!
//! let orders = Order::repository(store.clone());
//! let mut order = orders.create("order-1");
//! order.record(OrderPlaced { cents: 250 });
//! let saved = orders.save(&mut order).await?;
//! running.wait_until(saved.last_position, Duration::from_secs(5)).await?;
//!
//! let payment = Payment::repository(store.clone()).load("order-1").await?;
//! assert_eq!(payment.charged, 250);
//! running.shutdown().await;
//! # Ok(())
//! # }
//! ```

use crate::aggregate::{Aggregate, Root};
use crate::checkpoint::CheckpointStore;
use crate::error::Result;
use crate::event::{DomainEvent, Metadata, RecordedEvent};
use crate::projection::HandlerError;
use crate::repository::{Once, Repository, UpdateError};
use crate::store::EventStore;
use crate::stream::Position;
use crate::subscription::{Applied, Replayed, Runner, RunnerCore, Step, StepError, item_position};
use std::future::Future;
use std::sync::Arc;
use uuid::Uuid;

/// Reacts to events by sending commands: a saga, a policy, a workflow. Implement it by hand (no
/// macro): a name, the event types, and one async `react`.
///
/// See the [module](self) for an example, the delivery guarantee and what `react` must respect.
pub trait ProcessManager: Send + Sync + 'static {
    /// The process's name: the key of its checkpoint and dead letters, and part of every command
    /// id it derives (renaming it makes redelivered events act again).
    const NAME: &'static str;

    /// The stored names of the event types it reacts to: the store reads only these.
    fn event_types() -> Vec<&'static str>;

    /// Reacts to one event (one of [`event_types`](Self::event_types)). An error is retried with
    /// backoff, then the event is dead-lettered, as a projection's handler error is.
    fn react(
        &self,
        reaction: &Reaction<'_>,
    ) -> impl Future<Output = std::result::Result<(), HandlerError>> + Send;
}

/// The namespace of step keys: v5 UUIDs of (process, event id, step).
const STEP_NAMESPACE: Uuid = Uuid::from_u128(0x5a6a_1c0e_7b3d_4f4e_9c1a_e5d0_c0a5_5e00);

/// One delivery of an event to a process manager: the event, and the means to send commands
/// caused by it.
#[derive(Debug)]
pub struct Reaction<'a> {
    process: &'static str,
    event: &'a RecordedEvent,
    /// Whether the reaction asked for what its commands need (a step key, the metadata, a
    /// send): a reaction that did not acted on nothing, and the runner need not store its
    /// checkpoint before the next event.
    acted: std::sync::atomic::AtomicBool,
}

impl<'a> Reaction<'a> {
    /// The delivery of `event` to process `process` (for tests that call `react` directly).
    pub fn new(process: &'static str, event: &'a RecordedEvent) -> Self {
        Reaction {
            process,
            event,
            acted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn mark_acted(&self) {
        self.acted.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn has_acted(&self) -> bool {
        self.acted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The event reacted to.
    pub fn event(&self) -> &'a RecordedEvent {
        self.event
    }

    /// The event as `E`, if it is one (`None` if it is of another type).
    pub fn decode<E: DomainEvent>(&self) -> Result<Option<E>> {
        if self.event.is::<E>() {
            self.event.decode().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The metadata of the events the reaction's commands record: caused by this event, in its
    /// correlation ([`Metadata::caused_by`]).
    pub fn metadata(&self) -> Metadata {
        self.mark_acted();
        Metadata::caused_by(self.event)
    }

    /// The idempotency key of step `step` of this reaction: the same for every delivery of the
    /// event to this process, different for another event, process or step.
    pub fn step_key(&self, step: &str) -> Uuid {
        self.mark_acted();
        let mut name = Vec::with_capacity(self.process.len() + step.len() + 18);
        name.extend_from_slice(self.process.as_bytes());
        name.push(0);
        name.extend_from_slice(self.event.event_id.as_bytes());
        name.push(0);
        name.extend_from_slice(step.as_bytes());
        Uuid::new_v5(&STEP_NAMESPACE, &name)
    }

    /// Sends a command to aggregate `id`: [`Repository::update_once`] under
    /// [`step_key(step)`](Self::step_key), with this reaction's [`metadata`](Self::metadata).
    /// [`Once::AlreadyApplied`] when a previous delivery of the event applied this step; the
    /// aggregate's error, typed, when the command refuses ([`UpdateError::Rejected`]): the cue
    /// for compensation. Name each step of a reaction differently.
    pub async fn send<A, S, T, F>(
        &self,
        repository: &Repository<A, S>,
        id: impl Into<A::Id>,
        step: &str,
        command: F,
    ) -> std::result::Result<Once<T>, UpdateError<A::Error>>
    where
        A: Aggregate,
        S: EventStore,
        F: FnMut(&mut Root<A>) -> std::result::Result<T, A::Error>,
    {
        repository
            .update_once(id, self.step_key(step), self.metadata(), command)
            .await
    }
}

/// One process manager's loop body: react to each event of a page, retried, and move the
/// checkpoint past it.
pub(crate) struct ProcessRunner<S, M> {
    pub(crate) core: RunnerCore<S>,
    pub(crate) manager: Arc<M>,
}

impl<S, M> ProcessRunner<S, M>
where
    S: EventStore + CheckpointStore + 'static,
    M: ProcessManager,
{
    /// Reacts to one event, with retries; dead-letters it when they run out. `Done(acted)`:
    /// whether the reaction did something (sent a command), so that the checkpoint is stored
    /// before the next event (as it is after a dead letter).
    async fn react(&self, item: Result<RecordedEvent>) -> Applied<bool> {
        self.core
            .apply_or_dead_letter(
                "reaction",
                item,
                None,
                &mut &*self.manager,
                |_, manager, event| {
                    Box::pin(async move {
                        let reaction = Reaction::new(M::NAME, event);
                        let outcome = manager.react(&reaction).await;
                        Ok(outcome.map(|()| reaction.has_acted()))
                    })
                },
            )
            .await
    }

    /// Stores the checkpoint at `reached` if it is past `saved` (the stored one), and reports it.
    async fn store_checkpoint(
        &self,
        saved: &mut Option<Position>,
        reached: Option<Position>,
    ) -> Result<()> {
        if let Some(position) = reached
            && reached != *saved
        {
            let core = &self.core;
            core.checkpoints
                .save_checkpoint(&core.name, *saved, position)
                .await?;
            *saved = reached;
            core.progress.set(core.progress.get().state, reached);
        }
        Ok(())
    }
}

impl<S, M> Runner for ProcessRunner<S, M>
where
    S: EventStore + CheckpointStore + 'static,
    M: ProcessManager,
{
    type Store = S;
    type Checkpoints = S;

    fn core(&self) -> &RunnerCore<S> {
        &self.core
    }

    /// Reacts to a page's events in order, storing the checkpoint after each reaction that did
    /// something (sent a command, or was dead-lettered) and at the end of the page: a crash
    /// redelivers at most the event whose reaction it interrupted, and the events after the
    /// last stored checkpoint that their reactions ignored (ignoring them again is harmless).
    /// A process that reacts to one event in twenty pays one checkpoint per reaction, not
    /// twenty.
    async fn step(&mut self, checkpoint: Option<Position>) -> std::result::Result<Step, StepError> {
        let Some((page, full)) = self.core.next_page(checkpoint).await? else {
            return Ok(Step::Empty);
        };
        // The checkpoint as stored, and how far the reactions went.
        let mut saved = checkpoint;
        let mut reached = checkpoint;
        for item in page {
            let position = item_position(&item);
            let acted = match self.react(item).await {
                Applied::Done(acted) => acted,
                Applied::DeadLettered => true,
                Applied::Stop(error) => {
                    self.store_checkpoint(&mut saved, reached)
                        .await
                        .map_err(|error| StepError::Stop(saved, error))?;
                    return Err(StepError::Stop(saved, error));
                }
            };
            reached = Some(position);
            if acted {
                self.store_checkpoint(&mut saved, reached)
                    .await
                    .map_err(|error| StepError::Stop(saved, error))?;
            }
        }
        self.store_checkpoint(&mut saved, reached)
            .await
            .map_err(|error| StepError::Stop(saved, error))?;
        Ok(Step::Moved { to: reached, full })
    }

    async fn rebuild(&mut self, checkpoint: Option<Position>) -> Result<Option<Position>> {
        Err(self.core.stopped(
            checkpoint.unwrap_or(Position::START),
            "a process manager is not rebuilt (its effects are commands, not a read model); it \
             goes on from its checkpoint"
                .into(),
        ))
    }

    /// Reacts again to each dead letter; one that now succeeds leaves the table.
    async fn replay(&mut self) -> Result<usize> {
        self.core
            .replay_dead_letters(&mut &*self.manager, |_, manager, event| {
                Box::pin(async move {
                    let outcome = manager.react(&Reaction::new(M::NAME, event)).await;
                    Ok(outcome.map(|()| Replayed::Applied))
                })
            })
            .await
    }
}
