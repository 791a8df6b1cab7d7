//! Identity and order: [`StreamId`] (which stream), [`ExpectedVersion`] (where a writer expects
//! it to be) and [`Position`] (where an event sits in the global order).
//!
//! The bottom layer of the crate: events, aggregates, errors and stores all speak these types,
//! and this module imports none of them. The two constructors that can fail, [`StreamId::new`]
//! and [`StreamId::validate`], and [`ExpectedVersion::conflict`] are written beside the error
//! they return, in `error.rs`, so that the error can name these types without a circle.

use std::fmt;
use std::sync::Arc;

/// The longest aggregate type, aggregate id or event type name a store accepts, in bytes.
pub const MAX_ID_LEN: usize = 255;

/// Identifies a stream: the events of one aggregate, keyed by its type and id.
///
/// Built only through [`StreamId::new`], which checks what every store requires, so a `StreamId`
/// in hand is one any store accepts. Cheap to clone: both parts are shared strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    aggregate_type: Arc<str>,
    aggregate_id: Arc<str>,
}

impl StreamId {
    /// A stream id whose parts are checked later, by the store that receives it (ids built from
    /// an aggregate's id at `create`, rows read back from a database).
    pub(crate) fn unchecked(
        aggregate_type: impl Into<Arc<str>>,
        aggregate_id: impl Into<Arc<str>>,
    ) -> Self {
        StreamId {
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
        }
    }

    /// The aggregate type (`BankAccount`).
    pub fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }

    /// The aggregate id, as stored (a UUID, or a readable id such as `order-123`).
    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }

    /// What is wrong with this id for a store, if anything: a part empty, longer than
    /// [`MAX_ID_LEN`] bytes, or holding a NUL byte.
    pub(crate) fn problem(&self) -> Option<String> {
        [
            ("aggregate type", &*self.aggregate_type),
            ("aggregate id", &*self.aggregate_id),
        ]
        .into_iter()
        .find_map(|(what, value)| {
            if value.is_empty() {
                Some(format!("the {what} is empty"))
            } else if value.len() > MAX_ID_LEN {
                Some(format!(
                    "the {what} is {} bytes long, the limit is {MAX_ID_LEN}",
                    value.len()
                ))
            } else if value.contains('\0') {
                Some(format!("the {what} holds a NUL byte"))
            } else {
                None
            }
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.aggregate_type, self.aggregate_id)
    }
}

/// What an append expects of the stream: the optimistic-concurrency check.
///
/// Versions count a stream's events: a stream with no events is at version 0, so
/// `Exact(0)` and `NoStream` are the same expectation (both are accepted; `NoStream` says it
/// better).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check: the events go after whatever the stream holds. Always succeeds against
    /// concurrent writers (the store serializes such appends on the stream).
    Any,
    /// The stream must not exist (have no events).
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream must be at exactly this version (`Exact(0)` is [`NoStream`](Self::NoStream)).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `current` (0: no stream) satisfies the expectation.
    pub fn is_satisfied_by(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::StreamExists => current > 0,
            ExpectedVersion::Exact(version) => current == version,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(version) => write!(f, "{version}"),
        }
    }
}

/// An event's place in the store's global order: assigned at append, increasing in commit
/// order, never reused. What a projection or a relay checkpoints.
///
/// Positions are opaque: not 1, 2, 3 on every backend (PostgreSQL's are transaction ids ×
/// 65,536 plus the index in the append), and never a stream version, which is why they have a
/// type of their own. [`Position::START`] comes before every event.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Position(u64);

impl Position {
    /// Before the first event: reading after it reads everything.
    pub const START: Position = Position(0);

    /// The position with this raw value (as stored in a checkpoint).
    pub const fn new(value: u64) -> Self {
        Position(value)
    }

    /// The raw value, for storing in a checkpoint.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// As an SQL `BIGINT` (positions never exceed `i64::MAX` on any backend).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn to_sql(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<Position> for u64 {
    fn from(position: Position) -> u64 {
        position.0
    }
}

/// What every read path checks of a stored row's numbers before anything else: a version in its
/// stream and a schema version both at least 1 (the schema version fitting a `u32`).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn checked_versions(version: i64, schema_version: i64) -> Option<(u64, u32)> {
    match (u64::try_from(version), u32::try_from(schema_version)) {
        (Ok(version), Ok(schema_version)) if version > 0 && schema_version > 0 => {
            Some((version, schema_version))
        }
        _ => None,
    }
}
