//! Aggregates: the [`Aggregate`] and [`Handles`] traits that `#[aggregate]` implements, and
//! [`Root`], which wraps an aggregate's state with its identity, version and the events
//! recorded but not yet saved.

use crate::error::{Error, Result};
use crate::event::{DomainEvent, EventView, Metadata, NewEvent};
use crate::stream::StreamId;
use chrono::{DateTime, Utc};
use std::any::Any;
use std::fmt::{self, Debug};
use std::ops::Deref;
use uuid::Uuid;

/// An event-sourced aggregate: state rebuilt by applying its events in order.
///
/// Implemented by `#[aggregate]` on the aggregate's inherent impl block; each `#[handles]`
/// method of the block applies one event type. Options: `#[aggregate(name = "...", id = Type,
/// error = Type, unknown_events = "error" | "warn" | "ignore", retired = ["..."],
/// snapshot_every = N, state_version = N, crate = "...")]`.
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
    /// `order-123`, or a type of your own ([`AggregateId`], [`typed_id!`](crate::typed_id)).
    type Id: AggregateId;
    /// The domain error of the aggregate's commands (`#[aggregate(error = AccountError)]`);
    /// `std::convert::Infallible` when not given. [`Repository::update`](crate::Repository::update)
    /// returns it as [`UpdateError::Rejected`](crate::UpdateError::Rejected), apart from the
    /// store's failures.
    type Error: std::error::Error + Send + Sync + 'static;
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
    note = "`record` takes an event by value (not boxed or borrowed) of a type that `{A}`'s `#[aggregate]` block has a `#[handles] fn name(&mut self, event: &EventType)` method for"
)]
pub trait AppliesTo<A: Aggregate>: DomainEvent {
    /// Applies the event to `aggregate` with its handler.
    fn apply_to(&self, aggregate: &mut A);
}

// Not recommended, so that one unrecordable value is one error in `AppliesTo`'s words, not one
// per bound of this impl (a `Box<E>` fails both).
#[diagnostic::do_not_recommend]
impl<A: Handles<E>, E: DomainEvent> AppliesTo<A> for E {
    #[inline]
    fn apply_to(&self, aggregate: &mut A) {
        aggregate.handle(self);
    }
}

/// An aggregate id, and the text its stream is stored under.
///
/// The conversion is explicit (not `Display`), so that changing how an id prints can never move
/// its stream. Implemented for `Uuid` (hyphenated, lowercase), `String` and the integer types;
/// [`typed_id!`](crate::typed_id) declares a UUID newtype per aggregate, so that an order's id
/// cannot load an account.
pub trait AggregateId: Clone + Debug + Send + Sync + 'static {
    /// The stream key: stored as the stream's aggregate id. Must never change for a given id.
    fn stream_key(&self) -> String;
}

impl AggregateId for Uuid {
    fn stream_key(&self) -> String {
        self.hyphenated().to_string()
    }
}

impl AggregateId for String {
    fn stream_key(&self) -> String {
        self.clone()
    }
}

macro_rules! integer_ids {
    ($($ty:ty),*) => {$(
        impl AggregateId for $ty {
            fn stream_key(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

integer_ids!(u32, u64, i32, i64, u128);

/// Declares a UUID newtype to use as an aggregate's id (`#[aggregate(id = AccountId)]`), so that
/// the ids of different aggregates cannot be mixed up: `orders.load(account_id)` does not
/// compile. The type gets `new()` (a fresh UUID v7), `From<Uuid>`, `Display`, `FromStr`,
/// serde (as the bare UUID), and [`AggregateId`].
///
/// ```
/// eventsource::typed_id!(
///     /// Identifies a bank account.
///     pub struct AccountId;
/// );
/// let id = AccountId::new();
/// let parsed: AccountId = id.to_string().parse().unwrap();
/// assert_eq!(id, parsed);
/// ```
#[macro_export]
macro_rules! typed_id {
    ($(#[$meta:meta])* $vis:vis struct $name:ident;) => {
        $(#[$meta])*
        #[derive(
            ::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug, ::core::cmp::PartialEq,
            ::core::cmp::Eq, ::core::hash::Hash, ::core::cmp::PartialOrd, ::core::cmp::Ord,
        )]
        $vis struct $name($crate::Uuid);

        impl $name {
            /// A new, unique id (UUID v7: ids sort by creation time).
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                $name($crate::Uuid::now_v7())
            }

            /// The UUID inside.
            pub fn uuid(&self) -> $crate::Uuid {
                self.0
            }
        }

        impl ::core::convert::From<$crate::Uuid> for $name {
            fn from(uuid: $crate::Uuid) -> Self {
                $name(uuid)
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::fmt::Display::fmt(&self.0, f)
            }
        }

        impl ::core::str::FromStr for $name {
            type Err = $crate::uuid::Error;
            fn from_str(s: &str) -> ::core::result::Result<Self, Self::Err> {
                $crate::Uuid::parse_str(s).map($name)
            }
        }

        impl $crate::AggregateId for $name {
            fn stream_key(&self) -> $crate::__private::String {
                $crate::AggregateId::stream_key(&self.0)
            }
        }

        impl $crate::__private::serde::Serialize for $name {
            fn serialize<S: $crate::__private::serde::Serializer>(
                &self,
                serializer: S,
            ) -> ::core::result::Result<S::Ok, S::Error> {
                $crate::__private::serde::Serialize::serialize(&self.0, serializer)
            }
        }

        impl<'de> $crate::__private::serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__private::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::core::result::Result<Self, D::Error> {
                <$crate::Uuid as $crate::__private::serde::Deserialize>::deserialize(deserializer)
                    .map($name)
            }
        }
    };
}

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
    /// Set by [`Root::derive_event_ids`]: recorded events get ids derived from this key.
    event_id_key: Option<Uuid>,
}

impl<A: Aggregate> Root<A> {
    /// A new aggregate with no events (what [`Repository::create`](crate::Repository::create) gives).
    /// Takes what [`Repository::load`](crate::Repository::load) takes: the id, or anything
    /// that converts into it.
    pub fn new(id: impl Into<A::Id>) -> Self {
        let id = id.into();
        let stream = StreamId::unchecked(A::TYPE, id.stream_key());
        Root {
            id,
            stream,
            state: A::default(),
            version: 0,
            committed_version: 0,
            pending: Vec::new(),
            metadata: Metadata::default(),
            snapshot_version: None,
            event_id_key: None,
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

    /// The current state. `Root<A>` also dereferences to it: `account.balance` reads the state.
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
        let event_id = match self.event_id_key {
            Some(key) => crate::event::derived_event_id(key, self.pending.len()),
            None => Uuid::now_v7(),
        };
        self.pending.push(PendingEvent {
            event: Box::new(event),
            event_id,
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

    /// Gives the events recorded from now on ids derived from `key` instead of fresh ones: the
    /// n-th pending event's id is [`derived_event_id(key, n)`](crate::event::derived_event_id).
    /// A command run again under the same key records events with the same ids, which the store
    /// refuses as [`Error::DuplicateEvent`]: how [`Repository::update_once`](crate::Repository::update_once)
    /// recognises a command that was already applied. Call it before recording.
    pub fn derive_event_ids(&mut self, key: Uuid) {
        debug_assert!(
            self.pending.is_empty(),
            "Root::derive_event_ids after Root::record: set the key first"
        );
        self.event_id_key = Some(key);
    }

    /// Applies `event` as if it had been loaded from the store: it is not pending, and the version
    /// the next save expects moves past it. For tests: build the state a command runs on from a
    /// given history, without a store (`Root::new(id).given(Opened { .. }).given(Deposited { .. })`).
    /// Call it before recording anything.
    pub fn given<E: AppliesTo<A>>(mut self, event: E) -> Self {
        debug_assert!(
            self.pending.is_empty(),
            "Root::given after Root::record: give the history first"
        );
        event.apply_to(&mut self.state);
        self.version += 1;
        self.committed_version = self.version;
        self
    }

    /// The pending events of type `E`, oldest first: what a command recorded, typed.
    pub fn recorded<E: DomainEvent>(&self) -> impl Iterator<Item = &E> + '_ {
        self.pending.iter().filter_map(PendingEvent::downcast_ref)
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
            return Err(Error::corrupt(
                &self.stream,
                format!(
                    "the store returned version {} where version {expected} was due",
                    event.version
                ),
            )
            .at_row(
                Some(event.position),
                Some(event.version),
                Some(event.event_type),
            ));
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

    /// A copy of the saved state: no pending events, no command metadata, no derived ids (what
    /// the repository's aggregate cache keeps and hands out).
    pub(crate) fn committed_copy(&self) -> Self
    where
        A: Clone,
    {
        Root {
            id: self.id.clone(),
            stream: self.stream.clone(),
            state: self.state.clone(),
            version: self.committed_version,
            committed_version: self.committed_version,
            pending: Vec::new(),
            metadata: Metadata::default(),
            snapshot_version: self.snapshot_version,
            event_id_key: None,
        }
    }

    /// Marks the pending events as saved at `version`.
    pub(crate) fn mark_committed(&mut self, version: u64) {
        self.pending.clear();
        self.version = version;
        self.committed_version = version;
    }
}

impl<A: Aggregate> Deref for Root<A> {
    type Target = A;

    /// The state, read-only: changes go through [`Root::record`].
    fn deref(&self) -> &A {
        &self.state
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
