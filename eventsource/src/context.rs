//! What a handler knows of an event besides the event itself: where it sits in the log and
//! what came with it ([`EventContext`], [`EventLocation`]), and which of that a reader fetches
//! ([`ContextFields`]). Below the stores, which produce it, and the projections, which take it;
//! reached as `eventsource::projection::EventContext`.

use crate::event::Metadata;
use crate::stream::{Position, StreamId};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Where an event sits in the log and what came with it: what a projection's handler knows
/// besides the event itself.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct EventContext<'a> {
    /// The event's id: the key to de-duplicate at-least-once deliveries.
    pub event_id: Uuid,
    /// The stream the event belongs to.
    pub stream: &'a StreamId,
    /// The event's version in its stream.
    pub version: u64,
    /// The event's position in the global order.
    pub position: Position,
    /// The stored type name.
    pub event_type: &'a str,
    /// When the event happened.
    pub occurred_at: DateTime<Utc>,
    /// Tenant, actor, correlation, causation and free-form metadata.
    pub metadata: &'a Metadata,
}

impl<'a> EventContext<'a> {
    /// Where the event sits: the part of the context that a [`ContextFields::Location`]
    /// projection reads.
    pub fn location(&self) -> EventLocation<'a> {
        EventLocation {
            stream: self.stream,
            version: self.version,
            position: self.position,
            event_type: self.event_type,
        }
    }

    /// The context of a recorded event.
    pub fn of(event: &'a crate::event::RecordedEvent) -> Self {
        EventContext {
            event_id: event.event_id,
            stream: &event.stream,
            version: event.version,
            position: event.position,
            event_type: &event.event_type,
            occurred_at: event.occurred_at,
            metadata: &event.metadata,
        }
    }

    /// The aggregate id of the event's stream.
    pub fn aggregate_id(&self) -> &'a str {
        self.stream.aggregate_id()
    }

    /// The metadata for events recorded in reaction to this one, as
    /// [`Metadata::caused_by`](crate::Metadata::caused_by) gives it: the same tenant, actor and
    /// correlation id (this event's id if it had none), and this event as the cause.
    pub fn reaction_metadata(&self) -> crate::event::Metadata {
        let mut metadata = crate::event::Metadata::new();
        metadata.tenant_id = self.metadata.tenant_id.clone();
        metadata.actor_id = self.metadata.actor_id.clone();
        metadata.correlation_id = Some(self.metadata.correlation_id.unwrap_or(self.event_id));
        metadata.causation_id = Some(self.event_id);
        metadata
    }
}

/// Where an event sits in the log, without its id, time and metadata: the context a handler
/// takes when that is all it reads (`ctx: &EventLocation`). A projection whose handlers take
/// no more than this is read without those columns ([`ContextFields::Location`]): less to
/// fetch and decode per event, checked by the compiler rather than by a promise.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct EventLocation<'a> {
    /// The stream the event belongs to.
    pub stream: &'a StreamId,
    /// The event's version in its stream.
    pub version: u64,
    /// The event's position in the global order.
    pub position: Position,
    /// The stored type name.
    pub event_type: &'a str,
}

impl<'a> EventLocation<'a> {
    /// The aggregate id of the event's stream.
    pub fn aggregate_id(&self) -> &'a str {
        self.stream.aggregate_id()
    }
}

/// Which parts of the [`EventContext`] a projection's handlers read, and so which columns the
/// subscription manager fetches for it. `#[projection]` derives it from the handlers' context
/// parameters: `Location` when none takes an `&EventContext` (they take an `&EventLocation`
/// or no context), `All` otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContextFields {
    /// The whole context: the event id, time and metadata are read with every event.
    #[default]
    All,
    /// The [`EventLocation`] only (stream, version, position, type). The event id, time and
    /// metadata are not read: in the [`EventContext`] handed to
    /// [`Projection::handle`](crate::projection::Projection::handle) they are the nil id, the
    /// Unix epoch and empty metadata. Dead letters still carry the real ones (a failing event is
    /// read again in full).
    Location,
}

impl ContextFields {
    /// The fields that both `self` and `other` need: `All` if either needs it.
    pub const fn and(self, other: ContextFields) -> ContextFields {
        match (self, other) {
            (ContextFields::Location, ContextFields::Location) => ContextFields::Location,
            _ => ContextFields::All,
        }
    }
}
