//! Projections: read models built from the global log.
//!
//! A projection is a type with `#[handles]` methods, under `#[projection]`: each handler receives
//! an event (decoded, upcast) and its [`EventContext`]. Two kinds:
//!
//! - [`Projection`]: a read model folded in process (`fn(&mut self, &E, &EventContext)`), kept
//!   current by a [`Subscriptions`](crate::subscription::Subscriptions) manager: in memory, built
//!   again at each start, or durable, with its checkpoint in the store's database. Durable is
//!   at-least-once: after a crash (or by a runner that lost its lease mid-batch), the events
//!   since the last checkpoint are applied again (the context's `event_id` lets a handler
//!   de-duplicate).
//! - [`SqlProjection`]: a read model in the same SQLite or PostgreSQL database as the events,
//!   whose handlers write through the transaction the framework hands them
//!   (`async fn(&mut self, &E, &EventContext, &mut Tx)`); the checkpoint is written in the same
//!   transaction, as a compare-and-set, so each event's effect is applied exactly once, even
//!   with two runners.

use crate::error::Error;
use crate::event::{EventView, Metadata};
use crate::stream::{Position, StreamId};
use chrono::{DateTime, Utc};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use futures::future::BoxFuture;
use uuid::Uuid;

/// What a handler's failure carries: any error. The manager retries the event, then
/// dead-letters it with this error's text.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    /// [`Projection::handle`] they are the nil id, the Unix epoch and empty metadata. Dead
    /// letters still carry the real ones (a failing event is read again in full).
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

/// A read model folded in process from the global log. Implemented by `#[projection]`.
///
/// ```
/// use eventsource::prelude::*;
/// use eventsource::Projection;
/// use serde::{Deserialize, Serialize};
/// use std::collections::HashMap;
///
/// #[derive(DomainEvent, Serialize, Deserialize)]
/// struct Deposited { cents: i64 }
///
/// #[derive(Default)]
/// struct Balances { by_account: HashMap<String, i64> }
///
/// #[projection(name = "balances")]
/// impl Balances {
///     #[handles]
///     fn deposited(&mut self, e: &Deposited, ctx: &EventContext) {
///         *self.by_account.entry(ctx.aggregate_id().to_owned()).or_default() += e.cents;
///     }
/// }
/// assert_eq!(<Balances as Projection>::NAME, "balances");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a projection",
    label = "not a projection",
    note = "put `#[projection]` on an `impl {Self}` block whose `#[handles]` methods take the events it reads"
)]
pub trait Projection: Send + 'static {
    /// The projection's name: the key of its checkpoint and dead letters. Renaming it starts
    /// the projection over from the first event.
    const NAME: &'static str;
    /// The stored names (and aliases) of the handled event types: the store reads only these.
    fn event_types() -> Vec<&'static str>;
    /// Which parts of the context the handlers read ([`ContextFields::All`] unless declared):
    /// with [`ContextFields::Location`] the manager reads neither the event id, nor the time,
    /// nor the metadata.
    const CONTEXT: ContextFields = ContextFields::All;

    /// Decodes a stored event and applies it with its handler (generated dispatch). An event of
    /// a type no handler takes is skipped.
    fn handle(
        &mut self,
        event: EventView<'_>,
        context: &EventContext<'_>,
    ) -> std::result::Result<(), HandlerError>;

    /// Whether [`reset`](Self::reset) empties the read model, so that an in-memory rebuild
    /// starts from nothing. `#[projection]` sets it: true for a `Default` type or one that names
    /// `reset = method`, false otherwise. The in-memory
    /// [`add`](crate::subscription::Subscriptions::add) refuses (when the program is built) a
    /// projection for which it is false; a durable one
    /// ([`add_durable`](crate::subscription::Subscriptions::add_durable)), whose effects live
    /// elsewhere, needs no reset.
    const RESETS: bool = true;

    /// Empties the read model, before a rebuild from the first event. `#[projection]` generates
    /// `*self = Default::default()` for a `Default` type, or calls the method named by
    /// `#[projection(reset = method)]`; otherwise, and by default, it does nothing: what a
    /// durable projection whose state lives in another system needs.
    fn reset(&mut self) {}
}

/// The transaction a [`SqlProjection`]'s handlers write through: the database of the events.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub type Transaction<DB> = sqlx::Transaction<'static, DB>;

/// A transaction of the SQLite event store's database.
#[cfg(feature = "sqlite")]
pub type SqliteTx = sqlx::Transaction<'static, sqlx::Sqlite>;

/// A transaction of the PostgreSQL event store's database.
#[cfg(feature = "postgres")]
pub type PgTx = sqlx::Transaction<'static, sqlx::Postgres>;

/// A read model in the event store's own database, written through the transaction that also
/// stores its checkpoint: each event's effect is applied exactly once, even across crashes.
/// Implemented by `#[projection]` when the handlers take a transaction:
/// `async fn on_paid(&mut self, e: &OrderPaid, ctx: &EventContext<'_>, tx: &mut SqliteTx) -> Result<(), sqlx::Error>`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a database projection",
    label = "not a database projection",
    note = "put `#[projection]` on an `impl {Self}` block whose `#[handles]` methods take a transaction (`tx: &mut SqliteTx` or `&mut PgTx`)"
)]
pub trait SqlProjection: Send + 'static {
    /// The projection's name: the key of its checkpoint and dead letters.
    const NAME: &'static str;
    /// The stored names (and aliases) of the handled event types.
    fn event_types() -> Vec<&'static str>;
    /// The database (`sqlx::Sqlite` or `sqlx::Postgres`).
    type Database: sqlx::Database;

    /// Decodes a stored event and applies it with its handler, through `tx`.
    fn handle<'a>(
        &'a mut self,
        event: EventView<'a>,
        context: &'a EventContext<'a>,
        tx: &'a mut Transaction<Self::Database>,
    ) -> BoxFuture<'a, std::result::Result<(), HandlerError>>;

    /// Empties the read model's tables before a rebuild, in the rebuild's transaction (so that
    /// readers never see it half built). `#[projection(reset = method)]` names it; without it a
    /// rebuild only resets the checkpoint.
    fn reset<'a>(
        &'a mut self,
        tx: &'a mut Transaction<Self::Database>,
    ) -> BoxFuture<'a, std::result::Result<(), HandlerError>>;
}

/// Support for the generated dispatch: decode a stored event as `E` for a projection, turning a
/// decode failure into the handler error the manager dead-letters.
#[doc(hidden)]
pub fn decode_for_projection<E: crate::event::DomainEvent>(
    event: EventView<'_>,
) -> std::result::Result<E, HandlerError> {
    crate::__private::decode_stored::<E>(event).map_err(|error: Error| Box::new(error) as _)
}

/// A handler's return value, as the manager sees it: `()` or a `Result` whose error is any
/// error type.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a projection handler returns `()` or `Result<(), E>`",
    label = "`{Self}` is not a handler's outcome",
    note = "return nothing, or a `Result<(), E>` whose `E` converts into `Box<dyn Error + Send + Sync>` (any error type)"
)]
pub trait HandlerOutcome {
    /// Into the manager's result.
    fn into_outcome(self) -> std::result::Result<(), HandlerError>;
}

impl HandlerOutcome for () {
    #[inline]
    fn into_outcome(self) -> std::result::Result<(), HandlerError> {
        Ok(())
    }
}

impl<E: Into<HandlerError>> HandlerOutcome for std::result::Result<(), E> {
    #[inline]
    fn into_outcome(self) -> std::result::Result<(), HandlerError> {
        self.map_err(Into::into)
    }
}

/// The database of a transaction type, so that `#[projection]` can name a [`SqlProjection`]'s
/// database from the type of its handlers' transaction parameter.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[doc(hidden)]
pub trait TxDatabase {
    /// The database.
    type Database: sqlx::Database;
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl<DB: sqlx::Database> TxDatabase for sqlx::Transaction<'static, DB> {
    type Database = DB;
}
