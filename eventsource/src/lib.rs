//! Event sourcing for Rust: annotate plain types, get an event-sourced system whose event
//! dispatch is checked by the compiler.
//!
//! - `#[derive(DomainEvent)]` names an event, versions its schema and registers it.
//! - `#[aggregate]` on an impl block, `#[handles]` on its methods: the generated dispatch applies
//!   stored events, and recording an event the aggregate has no handler for does not compile.
//! - [`Repository`] loads aggregates from an [`EventStore`] and saves what they recorded, with
//!   optimistic concurrency.
//!
//! ```
//! use eventsource::prelude::*;
//! use eventsource::Root;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(DomainEvent, Serialize, Deserialize, Debug)]
//! struct AccountOpened { owner: String }
//!
//! #[derive(DomainEvent, Serialize, Deserialize, Debug)]
//! struct Deposited { amount: i64 }
//!
//! #[derive(Default, Debug)]
//! struct BankAccount { owner: String, balance: i64 }
//!
//! #[aggregate]
//! impl BankAccount {
//!     #[handles]
//!     fn opened(&mut self, event: &AccountOpened) { self.owner = event.owner.clone(); }
//!     #[handles]
//!     fn deposited(&mut self, event: &Deposited) { self.balance += event.amount; }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eventsource::Result<()> {
//! let repo = BankAccount::repository(InMemoryEventStore::new());
//! let id = Uuid::now_v7();
//! let mut account = repo.create(id);
//! account.record(AccountOpened { owner: "Ada".into() });
//! account.record(Deposited { amount: 500 });
//! repo.save(&mut account).await?;
//!
//! let account = repo.load(id).await?;
//! assert_eq!(account.balance, 500);     // `Root<BankAccount>` reads as the state
//! assert_eq!(account.version(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! Where things live: an event is encoded in [`aggregate`](mod@aggregate) (`Root::record`, then
//! `Root::encode_pending` at save), stored by a backend in [`store`], decoded by the
//! `DomainEvent::decode` the derive generates, and dispatched by the `Aggregate::apply`
//! that `#[aggregate]` generates.

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

extern crate self as eventsource;

// Layers, bottom up: `stream` and `error`; the model (`event`, `aggregate`, `registry`); the
// stores and snapshots; the repository.
pub mod admin; // store inspection for operators and tools (the `eventsource` command line)
pub mod aggregate;
pub mod bus;
mod cache; // the repository's optional aggregate cache
pub mod checkpoint;
pub mod error;
pub mod event;
pub mod projection;
pub mod registry;
pub mod repository;
pub mod snapshot;
pub mod store;
pub mod stream;
pub mod subscription;
// Observability and operations: spans and metrics (`telemetry`), health reports (`health`).
pub mod health;
pub mod telemetry;
pub mod testing;

pub use aggregate::{
    Aggregate, AggregateId, AppliesTo, Handles, PendingEvent, Root, UnknownEvents,
};
pub use checkpoint::{CheckpointStore, DeadLetter};
pub use error::{DatabaseError, DecodeError, Error, Result};
pub use event::{DomainEvent, EventView, Metadata, NewEvent, RecordedEvent};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use projection::SqlProjection;
pub use projection::{ContextFields, EventContext, EventLocation, HandlerError, Projection};
pub use registry::{EventRegistry, EventType};
pub use repository::{AggregateRepository, Repository, StoreRepository, UpdateError, Updated};
pub use snapshot::{Snapshot, SnapshotStore, SnapshotStrategy};
pub use store::memory::InMemoryEventStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::postgres::PostgresEventStore;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use store::sqlite::SqliteEventStore;
pub use store::{AnyStore, AppendResult, DynEventStore, EventStore, LogHead, ReadAll, StreamQuery};
pub use stream::{ExpectedVersion, Position, StreamId};

// Process managers (sagas): reactions to events that send idempotent commands.
pub mod process;

// Multi-tenancy: a view of a store scoped to one tenant (and PostgreSQL's row-level security).
pub mod tenant;
// Personal data: fields encrypted per data subject, erasure by key destruction.
pub mod protection;
#[cfg(feature = "encryption")]
#[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
pub use protection::{InMemoryKeyStore, KeyStore, MasterKey, ProtectedStore};
pub use protection::{Personal, PersonalField};

// The crate-private parsers, reached by the fuzz targets in `fuzz/` (feature `fuzzing`).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzzing.rs"]
pub mod __fuzz;

// Crates whose types appear in this crate's public API, so that users name the same versions.
pub use chrono;
pub use futures;
pub use serde_json;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "postgres"))))]
pub use sqlx;
pub use uuid::{self, Uuid};

#[cfg(feature = "derive")]
pub use eventsource_derive::{DomainEvent, aggregate, handles, projection};

/// What a first application needs: `use eventsource::prelude::*;`.
pub mod prelude {
    // What the first aggregate and a first projection need, and no more (15 names at the most):
    // tenancy, process managers, buses, snapshots, administration and health are reached
    // through their modules.
    #[cfg(feature = "derive")]
    pub use eventsource_derive::{aggregate, handles, projection};

    // `DomainEvent` is the trait and, with the `derive` feature, the derive macro of that name.
    #[cfg(feature = "postgres")]
    pub use crate::PostgresEventStore;
    #[cfg(feature = "sqlite")]
    pub use crate::SqliteEventStore;
    pub use crate::subscription::Subscriptions;
    pub use crate::{
        AggregateRepository, DomainEvent, Error, EventContext, EventStore, InMemoryEventStore,
        Metadata, UpdateError, Uuid,
    };
}

/// Support for the generated code. Not public API: no semver promise.
#[doc(hidden)]
pub mod __private {
    pub use core::convert::Infallible;
    pub use core::option::Option::{self, None, Some};
    pub use core::result::Result::{self, Err, Ok};
    pub use inventory;
    pub use serde;
    pub use std::string::String;

    pub use crate::projection::{ContextFields, HandlerOutcome, decode_for_projection};
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub use crate::projection::{Transaction, TxDatabase};
    pub use crate::registry::EventType;
    pub use futures::future::BoxFuture;
    pub use std::boxed::Box;
    pub use std::vec::Vec;

    use crate::aggregate::{Aggregate, UnknownEvents};
    use crate::error::{DecodeError, Error};
    use crate::event::{DomainEvent, EventView};

    pub use serde_json::Value;

    /// Whether `name` is `E`'s stored name or one of its aliases.
    #[inline]
    pub fn named<E: DomainEvent>(name: &str) -> bool {
        name == E::EVENT_TYPE || E::ALIASES.contains(&name)
    }

    /// Deserializes a stored payload.
    #[inline]
    pub fn from_json<T: serde::de::DeserializeOwned>(payload: &str) -> Result<T, DecodeError> {
        serde_json::from_str(payload).map_err(DecodeError::Payload)
    }

    /// Deserializes a payload rewritten by a JSON upcaster.
    pub fn from_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, DecodeError> {
        serde_json::from_value(value).map_err(DecodeError::Payload)
    }

    /// Serializes an intermediate version for a JSON upcaster.
    pub fn to_json<T: serde::Serialize>(value: T) -> Result<Value, DecodeError> {
        serde_json::to_value(value).map_err(DecodeError::Payload)
    }

    /// The bound of a typed upcast step, on the older type so that a missing conversion is
    /// reported in our words (the same reason as `AppliesTo`).
    #[diagnostic::on_unimplemented(
        message = "no conversion from `{Self}` to `{T}` for the upcast chain",
        label = "`{T}` cannot be built from `{Self}`",
        note = "implement `From<{Self}> for {T}` (or `TryFrom`, with an error type that implements `std::error::Error`)"
    )]
    pub trait UpcastInto<T> {
        /// Converts to the next schema version's type.
        fn upcast_into(self) -> Result<T, Box<dyn std::error::Error + Send + Sync + 'static>>;
    }

    // Not recommended, so that a missing conversion is reported as this trait, in our words,
    // rather than as the `From` bound this impl reaches through `TryFrom`'s blanket impl.
    #[diagnostic::do_not_recommend]
    impl<P, T> UpcastInto<T> for P
    where
        T: TryFrom<P>,
        <T as TryFrom<P>>::Error: std::error::Error + Send + Sync + 'static,
    {
        #[inline]
        fn upcast_into(self) -> Result<T, Box<dyn std::error::Error + Send + Sync + 'static>> {
            T::try_from(self).map_err(|err| Box::new(err) as _)
        }
    }

    /// One typed step of an upcast chain: version `from` (type `P`) to version `to` (type `T`),
    /// for an event type whose current version is `current`.
    #[inline]
    pub fn upcast<P: UpcastInto<T>, T>(
        previous: P,
        from: u32,
        to: u32,
        current: u32,
    ) -> Result<T, DecodeError> {
        previous
            .upcast_into()
            .map_err(|source| DecodeError::Upcast {
                from,
                to,
                current,
                source,
            })
    }

    /// The bound of a JSON upcast step, so that a function of another signature is reported in
    /// our words, on the function's path (the same reason as `AppliesTo`).
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not a JSON upcaster",
        label = "not a JSON upcaster",
        note = "expected `fn(serde_json::Value) -> Result<serde_json::Value, E>` where E: Into<Box<dyn Error + Send + Sync>>"
    )]
    pub trait JsonUpcaster {
        /// Rewrites one version's JSON into the next version's.
        fn rewrite(self, value: Value) -> Result<Value, Box<dyn std::error::Error + Send + Sync>>;
    }

    // On the function pointer the derive coerces the user's function to, not on `FnOnce`: a
    // mismatch with an `Fn` bound is reported as rustc's own "type mismatch in function
    // arguments", which skips `on_unimplemented`. Not recommended, so that an error type that
    // is not an error is reported as this trait too.
    #[diagnostic::do_not_recommend]
    impl<E> JsonUpcaster for fn(Value) -> Result<Value, E>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        #[inline]
        fn rewrite(self, value: Value) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
            self(value).map_err(Into::into)
        }
    }

    /// One JSON step of an upcast chain: `function` rewrites version `from`'s JSON into the next
    /// version's.
    pub fn upcast_json<F: JsonUpcaster>(
        function: F,
        value: Value,
        from: u32,
        current: u32,
    ) -> Result<Value, DecodeError> {
        function
            .rewrite(value)
            .map_err(|source| DecodeError::Upcast {
                from,
                to: from + 1,
                current,
                source,
            })
    }

    /// Every use an `#[aggregate]` makes of a handled event type goes through this trait, spanned
    /// on the handler's parameter: when the type is not an event, each use fails with the same
    /// error at the same place, which rustc reports once, in our words.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not a domain event, so a `#[handles]` method cannot take it",
        label = "not a domain event",
        note = "a handler borrows an event: a struct or enum of this crate with `#[derive(DomainEvent, Serialize, Deserialize)]`"
    )]
    pub trait Handled: Sized {
        /// `DomainEvent::EVENT_TYPE`.
        const EVENT_TYPE: &'static str;
        /// `DomainEvent::ALIASES`.
        const ALIASES: &'static [&'static str];
        /// `DomainEvent::AGGREGATE_TYPE`.
        const AGGREGATE_TYPE: Option<&'static str>;
        /// Decodes a recorded event whose name is known to be this type's.
        fn decode_stored(event: EventView<'_>) -> Result<Self, Error>;
    }

    // Not recommended, so that a type that is not an event is reported as `Handled`.
    #[diagnostic::do_not_recommend]
    impl<E: DomainEvent> Handled for E {
        const EVENT_TYPE: &'static str = E::EVENT_TYPE;
        const ALIASES: &'static [&'static str] = E::ALIASES;
        const AGGREGATE_TYPE: Option<&'static str> = E::AGGREGATE_TYPE;
        #[inline]
        fn decode_stored(event: EventView<'_>) -> Result<Self, Error> {
            decode_stored::<E>(event)
        }
    }

    /// A decoding error as a projection handler's error.
    #[inline]
    pub fn for_handler<T>(decoded: Result<T, Error>) -> Result<T, crate::HandlerError> {
        decoded.map_err(|error| crate::__private::Box::new(error) as _)
    }

    /// Whether `name` is `event_type` or one of `aliases`.
    #[inline]
    pub fn is_named(name: &str, event_type: &str, aliases: &[&str]) -> bool {
        name == event_type || aliases.contains(&name)
    }

    /// How `#[projection]` without `reset = ...` empties a read model: to `Default::default()`
    /// if the type is `Default` ([`Probe`]'s inherent items, chosen when they apply), and not at
    /// all otherwise ([`NotDefault`]'s, the fallback): a projection whose effects live elsewhere
    /// (run with `add_durable`) need not be `Default`, and the in-memory `add` refuses one
    /// whose `RESETS` is false.
    #[derive(Debug)]
    pub struct Probe<T>(core::marker::PhantomData<T>);

    impl<T: Default> Probe<T> {
        /// The type is `Default`: a rebuild starts from it.
        pub const IS_DEFAULT: bool = true;

        /// Empties `model`.
        #[inline]
        pub fn reset(model: &mut T) {
            *model = T::default();
        }
    }

    /// [`Probe`]'s fallback, for a type that is not `Default`.
    pub trait NotDefault {
        /// The type is not `Default`.
        const IS_DEFAULT: bool = false;

        /// Leaves `model` as it is.
        #[inline]
        fn reset<T>(model: &mut T) {
            let _ = model;
        }
    }

    impl<T> NotDefault for Probe<T> {}

    /// Whether two event types share a stored name, counting aliases.
    pub const fn names_overlap(a: &str, a_aliases: &[&str], b: &str, b_aliases: &[&str]) -> bool {
        if str_eq(a, b) || contains(a_aliases, b) || contains(b_aliases, a) {
            return true;
        }
        let mut i = 0;
        while i < a_aliases.len() {
            if contains(b_aliases, a_aliases[i]) {
                return true;
            }
            i += 1;
        }
        false
    }

    const fn contains(names: &[&str], name: &str) -> bool {
        let mut i = 0;
        while i < names.len() {
            if str_eq(names[i], name) {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Decodes a recorded event whose name is known to be `E`'s.
    #[inline]
    pub fn decode_stored<E: DomainEvent>(event: EventView<'_>) -> Result<E, Error> {
        E::decode(event.schema_version, event.payload).map_err(|source| event.decode_error(source))
    }

    /// What an aggregate does with a stored event none of its handlers takes.
    pub fn unhandled_event<A: Aggregate>(event: EventView<'_>) -> Result<(), Error> {
        if A::RETIRED_EVENTS.contains(&event.event_type) {
            return Ok(());
        }
        match A::UNKNOWN_EVENTS {
            UnknownEvents::Error => Err(event.unknown_type()),
            UnknownEvents::Warn => {
                tracing::warn!(
                    aggregate = A::TYPE,
                    stream = %event.stream,
                    version = event.version,
                    event_type = %event.event_type,
                    "skipping a stored event the aggregate has no handler for"
                );
                Ok(())
            }
            UnknownEvents::Ignore => Ok(()),
        }
    }

    /// `a == b`, usable in the compile-time checks the macros generate.
    pub const fn str_eq(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Whether an event that declares `declared` as its aggregate may be handled by `aggregate`.
    pub const fn belongs_to(declared: Option<&str>, aggregate: &str) -> bool {
        match declared {
            Some(declared) => str_eq(declared, aggregate),
            None => true,
        }
    }
}

/// The README's and the chapters' examples, compiled and run as doctests so that they cannot
/// rot.
#[cfg(doctest)]
mod documentation {
    #[doc = include_str!("../../README.md")]
    struct Readme;
    #[doc = include_str!("../../docs/events-and-aggregates.md")]
    struct EventsAndAggregates;
    #[doc = include_str!("../../docs/stores.md")]
    struct Stores;
    #[doc = include_str!("../../docs/testing.md")]
    struct Testing;
    #[doc = include_str!("../../docs/projections.md")]
    struct Projections;
    #[doc = include_str!("../../docs/buses.md")]
    struct Buses;
    #[doc = include_str!("../../docs/tenancy.md")]
    struct Tenancy;
    #[doc = include_str!("../../docs/personal-data.md")]
    struct PersonalData;
    #[doc = include_str!("../../docs/operations.md")]
    struct Operations;
    #[doc = include_str!("../../docs/cli.md")]
    struct Cli;
}
