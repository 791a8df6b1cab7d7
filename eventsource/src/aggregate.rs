//! Aggregates: the [`Aggregate`] and [`Handles`] traits that `#[aggregate]` implements, and
//! [`Root`], which wraps an aggregate's state with its identity, version and the events
//! recorded but not yet saved.

use crate::error::{Error, Result};
use crate::event::{DomainEvent, EventView, Metadata, NewEvent};
use crate::store::StreamId;
use chrono::{DateTime, Utc};
use std::any::Any;
use std::fmt::{self, Debug, Display};
use uuid::Uuid;

/// An event-sourced aggregate: state rebuilt by applying its events in order.
///
/// Implemented by `#[aggregate]` on the aggregate's inherent impl block; each `#[handles]`
/// method of the block applies one event type. Options: `#[aggregate(name = "...", id = Type,
/// unknown_events = "error" | "warn" | "ignore", retired = ["..."], snapshot_every = N,
/// state_version = N, crate = "...")]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an aggregate",
    label = "not an aggregate",
    note = "put `#[aggregate]` on an `impl {Self}` block whose `#[handles]` methods apply its events"
)]
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The aggregate type, stored with each event (default: the Rust type's name).
    const TYPE: &'static str;
    /// What to do with a stored event that no handler of this aggregate handles.
    const UNKNOWN_EVENTS: UnknownEvents;
    /// The stored names of the handled event types.
    const HANDLED_EVENTS: &'static [&'static str];
    /// Stored names of events retired from the code (`#[aggregate(retired = ["OldEvent"])]`):
    /// skipped on load, whatever the policy for unknown events.
    const RETIRED_EVENTS: &'static [&'static str];
    /// The aggregate id: `Uuid` by default, `#[aggregate(id = String)]` for readable ids such as
    /// `order-123`, or any type that displays as the stream's id.
    type Id: AggregateId;
    /// The default snapshot interval of a repository with a snapshot store
    /// (`#[aggregate(snapshot_every = N)]`); `None` snapshots only on demand.
    const SNAPSHOT_EVERY: Option<u64> = None;
    /// The schema version of the state as snapshots hold it (`#[aggregate(state_version = N)]`,
    /// default 1). Raise it when the state's fields change: snapshots of another version are
    /// ignored and the state is rebuilt from the events.
    const STATE_VERSION: u32 = 1;

    /// Decodes a stored event and applies it with its handler (generated dispatch).
    fn apply(&mut self, event: EventView<'_>) -> Result<()>;
}

/// `Self` has a `#[handles]` method for `E`: the proof that [`Root::record`] demands, so that
/// recording an event the aggregate cannot apply does not compile.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no handler for event `{E}`",
    label = "`{Self}` cannot apply `{E}`",
    note = "add `#[handles] fn on_event(&mut self, event: &{E}) {{ ... }}` to the `#[aggregate]` impl block of `{Self}`"
)]
pub trait Handles<E: DomainEvent>: Aggregate {
    /// Applies `event` to the state.
    fn handle(&mut self, event: &E);
}

/// The bound of [`Root::record`]: event `Self` can be applied to aggregate `A`. Implemented for
/// every event `A` [`Handles`]; it exists because a bound whose `Self` is the (still unknown)
/// event type keeps the compiler from guessing the event from `A`'s only handler, so recording
/// an unhandled event reports the missing handler instead of a type mismatch.
#[diagnostic::on_unimplemented(
    message = "`{A}` has no handler for event `{Self}`",
    label = "`{A}` cannot apply `{Self}`",
    note = "add `#[handles] fn on_event(&mut self, event: &{Self}) {{ ... }}` to the `#[aggregate]` impl block of `{A}`"
)]
pub trait AppliesTo<A: Aggregate>: DomainEvent {
    /// Applies the event to `aggregate` with its handler.
    fn apply_to(&self, aggregate: &mut A);
}

impl<A: Handles<E>, E: DomainEvent> AppliesTo<A> for E {
    #[inline]
    fn apply_to(&self, aggregate: &mut A) {
        aggregate.handle(self);
    }
}

/// An aggregate id: anything cloneable that displays as the stream id (`Uuid`, `String`, a
/// newtype).
pub trait AggregateId: Clone + Debug + Display + Send + Sync + 'static {}

impl<T: Clone + Debug + Display + Send + Sync + 'static> AggregateId for T {}

/// What loading does with a stored event whose type the aggregate does not handle (say, one
/// retired from the code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownEvents {
    /// Fail with [`Error::UnknownEventType`] (the default).
    Error,
    /// Skip the event and log a warning through `tracing`.
    Warn,
    /// Skip the event silently.
    Ignore,
}

/// An aggregate's state with its identity, its version and the events recorded since it was
/// loaded. Commands are ordinary methods of the aggregate; [`Root::record`] applies their events.
pub struct Root<A: Aggregate> {
    id: A::Id,
    stream: StreamId,
    state: A,
    version: u64,
    committed_version: u64,
    pending: Vec<PendingEvent>,
    metadata: Metadata,
    snapshot_version: Option<u64>,
}

impl<A: Aggregate> Root<A> {
    /// A new aggregate with no events (what [`Repository::create`](crate::Repository::create) gives).
    pub fn new(id: A::Id) -> Self {
        let stream = StreamId::new(A::TYPE, id.to_string());
        Root {
            id,
            stream,
            state: A::default(),
            version: 0,
            committed_version: 0,
            pending: Vec::new(),
            metadata: Metadata::default(),
            snapshot_version: None,
        }
    }

    /// The aggregate id.
    pub fn id(&self) -> &A::Id {
        &self.id
    }

    /// The stream the aggregate's events live in.
    pub fn stream_id(&self) -> &StreamId {
        &self.stream
    }

    /// The current state.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// The state, without the root.
    pub fn into_state(self) -> A {
        self.state
    }

    /// The version of the state: the number of events applied, saved or not.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The version the store had when the aggregate was loaded or last saved; the next save
    /// expects the stream to be exactly there.
    pub fn committed_version(&self) -> u64 {
        self.committed_version
    }

    /// Applies `event` to the state and keeps it to be saved. Only compiles if the aggregate has
    /// a `#[handles]` method for `E`.
    pub fn record<E: AppliesTo<A>>(&mut self, event: E) {
        let metadata = self.metadata.clone();
        self.record_with(event, metadata);
    }

    /// Like [`record`](Self::record), with metadata for this event only (instead of the root's).
    pub fn record_with<E: AppliesTo<A>>(&mut self, event: E, metadata: Metadata) {
        event.apply_to(&mut self.state);
        self.version += 1;
        self.pending.push(PendingEvent {
            event: Box::new(event),
            event_id: Uuid::now_v7(),
            occurred_at: crate::event::now(),
            metadata,
        });
    }

    /// Sets the metadata (tenant, actor, correlation, causation) that every event recorded from
    /// now on carries.
    pub fn set_metadata(&mut self, metadata: Metadata) {
        self.metadata = metadata;
    }

    /// The metadata recorded events get.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The events recorded and not yet saved, oldest first.
    pub fn pending_events(&self) -> &[PendingEvent] {
        &self.pending
    }

    /// Whether there are events to save.
    pub fn has_pending_events(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The version of the snapshot this root was loaded from, if it was (the events after it
    /// were replayed on top).
    pub fn snapshot_version(&self) -> Option<u64> {
        self.snapshot_version
    }

    /// Starts a load from a snapshot's state at `version`.
    pub(crate) fn restore_snapshot(&mut self, state: A, version: u64) {
        self.state = state;
        self.version = version;
        self.committed_version = version;
        self.snapshot_version = Some(version);
    }

    /// Applies a stored event (used while loading).
    pub(crate) fn apply_stored(&mut self, event: EventView<'_>) -> Result<()> {
        let expected = self.version + 1;
        if event.version != expected {
            return Err(Error::Corrupt {
                stream: self.stream.clone(),
                reason: format!(
                    "the store returned version {} where version {expected} was due",
                    event.version
                ),
            });
        }
        self.state.apply(event)?;
        self.version = event.version;
        self.committed_version = event.version;
        Ok(())
    }

    /// Serializes the pending events for an append. Nothing changes if one fails to encode.
    pub(crate) fn encode_pending(&self) -> Result<Vec<NewEvent>> {
        self.pending
            .iter()
            .map(|pending| {
                let payload = pending.event.encode().map_err(|source| Error::Encode {
                    stream: self.stream.clone(),
                    event_type: pending.event_type().to_owned(),
                    source,
                })?;
                Ok(
                    NewEvent::from_json(pending.event_type(), pending.schema_version(), payload)
                        .with_event_id(pending.event_id)
                        .with_occurred_at(pending.occurred_at)
                        .with_metadata(pending.metadata.clone()),
                )
            })
            .collect()
    }

    /// Marks the pending events as saved at `version`.
    pub(crate) fn mark_committed(&mut self, version: u64) {
        self.pending.clear();
        self.version = version;
        self.committed_version = version;
    }
}

impl<A: Aggregate + Debug> Debug for Root<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Root")
            .field("stream", &self.stream)
            .field("version", &self.version)
            .field("committed_version", &self.committed_version)
            .field("pending", &self.pending)
            .field("state", &self.state)
            .finish()
    }
}

/// An event recorded on a [`Root`] and not yet saved. Its id is fixed when it is recorded, so a
/// save retried after an unclear failure cannot store it twice.
pub struct PendingEvent {
    event: Box<dyn ErasedEvent>,
    event_id: Uuid,
    occurred_at: DateTime<Utc>,
    metadata: Metadata,
}

impl PendingEvent {
    /// The event's id.
    pub fn event_id(&self) -> Uuid {
        self.event_id
    }

    /// The stored type name.
    pub fn event_type(&self) -> &'static str {
        self.event.event_type()
    }

    /// The schema version it will be stored with.
    pub fn schema_version(&self) -> u32 {
        self.event.schema_version()
    }

    /// When it was recorded.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.occurred_at
    }

    /// Its metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The typed event, if it is an `E`.
    pub fn downcast_ref<E: DomainEvent>(&self) -> Option<&E> {
        self.event.as_any().downcast_ref()
    }
}

impl Debug for PendingEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingEvent")
            .field("event_id", &self.event_id)
            .field("event_type", &self.event_type())
            .finish_non_exhaustive()
    }
}

/// A recorded event with its type erased, so that one root holds events of many types.
trait ErasedEvent: Send + Sync {
    fn event_type(&self) -> &'static str;
    fn schema_version(&self) -> u32;
    fn encode(&self) -> serde_json::Result<String>;
    fn as_any(&self) -> &dyn Any;
}

impl<E: DomainEvent> ErasedEvent for E {
    fn event_type(&self) -> &'static str {
        E::EVENT_TYPE
    }
    fn schema_version(&self) -> u32 {
        E::SCHEMA_VERSION
    }
    fn encode(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
