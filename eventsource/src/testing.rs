//! Given / when / then for users' own domains, with no database: give an aggregate a history,
//! run a command, and check the events it recorded or the error it returned; feed a projection
//! events and check its read model. A failure panics with both sides side by side, events as
//! `type JSON` lines, the way a test expects to read them.
//!
//! ```
//! use eventsource::prelude::*;
//! use eventsource::testing::{AggregateFixture, event};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(DomainEvent, Serialize, Deserialize, Debug, PartialEq)]
//! struct Opened;
//! #[derive(DomainEvent, Serialize, Deserialize, Debug, PartialEq)]
//! struct Deposited { cents: i64 }
//!
//! #[derive(Debug, PartialEq, thiserror::Error)]
//! #[error("the account is not open")]
//! struct NotOpen;
//!
//! #[derive(Default)]
//! struct Account { open: bool, balance: i64 }
//!
//! #[aggregate(error = NotOpen)]
//! impl Account {
//!     #[handles]
//!     fn opened(&mut self, _: &Opened) { self.open = true; }
//!     #[handles]
//!     fn deposited(&mut self, e: &Deposited) { self.balance += e.cents; }
//! }
//!
//! impl Account {
//!     fn deposit(&self, cents: i64) -> Result<Deposited, NotOpen> {
//!         if !self.open { return Err(NotOpen); }
//!         Ok(Deposited { cents })
//!     }
//! }
//!
//! AggregateFixture::<Account>::new()
//!     .given([event(Opened)])
//!     .when(|account| account.deposit(5).map(|e| account.record(e)))
//!     .then_events([event(Deposited { cents: 5 })]);
//!
//! AggregateFixture::<Account>::new()
//!     .when(|account| account.deposit(5).map(|e| account.record(e)))
//!     .then_error(NotOpen);
//! ```

use crate::aggregate::{Aggregate, AppliesTo, Root};
use crate::event::{DomainEvent, EventView, Metadata, NewEvent, RecordedEvent};
use crate::projection::{EventContext, Projection};
use crate::stream::{Position, StreamId};
use std::fmt::{self, Debug};

/// An event for a fixture's `given` or `then_events`, of any type the aggregate handles: build
/// it with [`event`].
pub struct FixtureEvent<A: Aggregate> {
    apply: Box<dyn FnOnce(Root<A>) -> Root<A>>,
    line: String,
}

impl<A: Aggregate> Debug for FixtureEvent<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line)
    }
}

/// Wraps an event for [`AggregateFixture::given`] and [`Outcome::then_events`].
pub fn event<A: Aggregate, E: AppliesTo<A>>(event: E) -> FixtureEvent<A> {
    let line = line_of(E::EVENT_TYPE, &event);
    FixtureEvent {
        apply: Box::new(move |root| root.given(event)),
        line,
    }
}

/// `Type {json}`: how fixtures print an event.
fn line_of<E: DomainEvent>(name: &str, event: &E) -> String {
    match serde_json::to_string(event) {
        Ok(json) => format!("{name} {json}"),
        Err(error) => format!("{name} <does not serialize: {error}>"),
    }
}

/// Given an aggregate's history, when a command runs, then these events or this error.
pub struct AggregateFixture<A: Aggregate> {
    root: Root<A>,
}

impl<A: Aggregate> Debug for AggregateFixture<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateFixture")
            .field("aggregate", &A::TYPE)
            .field("version", &self.root.version())
            .finish()
    }
}

impl<A: Aggregate> AggregateFixture<A>
where
    A::Id: Default,
{
    /// A fixture for a new aggregate with the id type's default id.
    pub fn new() -> Self {
        Self::with_id(A::Id::default())
    }
}

impl<A: Aggregate> Default for AggregateFixture<A>
where
    A::Id: Default,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Aggregate> AggregateFixture<A> {
    /// A fixture for a new aggregate with this id.
    pub fn with_id(id: A::Id) -> Self {
        AggregateFixture {
            root: Root::new(id),
        }
    }

    /// The history: these events happened (applied, not pending).
    pub fn given(mut self, history: impl IntoIterator<Item = FixtureEvent<A>>) -> Self {
        for event in history {
            self.root = (event.apply)(self.root);
        }
        self
    }

    /// Runs the command on the aggregate with that history.
    pub fn when<T, F>(mut self, command: F) -> Outcome<A, T>
    where
        F: FnOnce(&mut Root<A>) -> Result<T, A::Error>,
    {
        let result = command(&mut self.root);
        Outcome {
            root: self.root,
            result,
        }
    }
}

/// What a command did, to check with `then_*`.
pub struct Outcome<A: Aggregate, T> {
    root: Root<A>,
    result: Result<T, A::Error>,
}

impl<A: Aggregate, T: Debug> Debug for Outcome<A, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outcome")
            .field("recorded", &recorded_lines(&self.root))
            .field("result", &self.result.as_ref().map_err(|e| e.to_string()))
            .finish()
    }
}

/// The pending events of `root`, one `Type {json}` line each.
fn recorded_lines<A: Aggregate>(root: &Root<A>) -> Vec<String> {
    match root.encode_pending() {
        Ok(events) => events
            .iter()
            .map(|e| format!("{} {}", e.event_type, e.payload))
            .collect(),
        Err(error) => vec![format!("<a recorded event does not serialize: {error}>")],
    }
}

impl<A: Aggregate, T> Outcome<A, T> {
    /// The command succeeded and recorded exactly these events, in this order (compared as
    /// type and JSON). Panics with both lists otherwise.
    #[track_caller]
    pub fn then_events(self, expected: impl IntoIterator<Item = FixtureEvent<A>>) -> Root<A> {
        let expected: Vec<String> = expected.into_iter().map(|e| e.line).collect();
        let actual = recorded_lines(&self.root);
        if let Err(error) = &self.result {
            panic!(
                "expected the command to record events, it failed: {error}\n  expected:\n{}",
                lines(&expected)
            );
        }
        if expected != actual {
            panic!(
                "the command recorded other events\n  expected:\n{}\n  recorded:\n{}",
                lines(&expected),
                lines(&actual)
            );
        }
        self.root
    }

    /// The command succeeded and recorded nothing.
    #[track_caller]
    pub fn then_no_events(self) -> Root<A> {
        self.then_events([])
    }

    /// The command failed with this error, and recorded nothing it could keep.
    #[track_caller]
    pub fn then_error(self, expected: A::Error)
    where
        A::Error: PartialEq + Debug,
    {
        match self.result {
            Err(error) if error == expected => {}
            Err(error) => panic!("expected the error {expected:?}, got {error:?}"),
            Ok(_) => panic!(
                "expected the error {expected:?}, the command succeeded and recorded:\n{}",
                lines(&recorded_lines(&self.root))
            ),
        }
    }

    /// The command's result and the aggregate after it, for checks of your own.
    pub fn into_parts(self) -> (Result<T, A::Error>, Root<A>) {
        (self.result, self.root)
    }
}

fn lines(lines: &[String]) -> String {
    if lines.is_empty() {
        return "    (none)".to_owned();
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| format!("    {}. {line}", i + 1))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Given these events, then the read model is... for a [`Projection`], with no store: each
/// event gets a context as if it had been stored (stream, version, position counting from 1).
pub struct ProjectionFixture<P> {
    projection: P,
    position: u64,
    versions: std::collections::HashMap<StreamId, u64>,
}

impl<P: Debug> Debug for ProjectionFixture<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionFixture")
            .field("projection", &self.projection)
            .field("position", &self.position)
            .finish()
    }
}

impl<P: Projection> ProjectionFixture<P> {
    /// A fixture around a projection (usually empty: `Default::default()`).
    pub fn new(projection: P) -> Self {
        ProjectionFixture {
            projection,
            position: 0,
            versions: std::collections::HashMap::new(),
        }
    }

    /// Applies `event`, as stored in `stream` of aggregate type `aggregate_type`. Panics if the
    /// projection's handler fails.
    #[track_caller]
    pub fn given<E: DomainEvent>(mut self, aggregate_type: &str, stream: &str, event: E) -> Self {
        if let Err(error) = self.try_given(aggregate_type, stream, &event, Metadata::new()) {
            panic!(
                "the projection failed on {}: {error}",
                line_of(E::EVENT_TYPE, &event)
            );
        }
        self
    }

    /// Applies `event` with `metadata`; returns the handler's error instead of panicking.
    pub fn try_given<E: DomainEvent>(
        &mut self,
        aggregate_type: &str,
        stream: &str,
        event: &E,
        metadata: Metadata,
    ) -> Result<(), crate::projection::HandlerError> {
        let stream = StreamId::new(aggregate_type, stream)?;
        let version = {
            let version = self.versions.entry(stream.clone()).or_default();
            *version += 1;
            *version
        };
        self.position += 1;
        let new = NewEvent::new(event)?.with_metadata(metadata);
        let recorded = RecordedEvent::new(stream, version, Position::new(self.position), new);
        let view: EventView<'_> = recorded.view();
        self.projection.handle(view, &EventContext::of(&recorded))
    }

    /// The read model, to check.
    pub fn then(self) -> P {
        self.projection
    }

    /// The read model equals `expected`; panics with both otherwise.
    #[track_caller]
    pub fn then_equals(self, expected: &P) -> P
    where
        P: PartialEq + Debug,
    {
        if &self.projection != expected {
            panic!(
                "the read model differs\n  expected: {expected:#?}\n  actual:   {:#?}",
                self.projection
            );
        }
        self.projection
    }
}
