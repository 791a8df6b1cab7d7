//! The one error type of the crate.

use crate::store::ExpectedVersion;
use crate::store::StreamId;
use uuid::Uuid;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in eventsource.
///
/// Errors about stored events name the stream, the version in the stream and the event type, so
/// that an operator can find the offending row. No error leaves a partial write behind: an append
/// that fails stores none of its events.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream was not at the expected version: another writer appended first (or the stream
    /// exists when it should not, or the other way round). Nothing was written. Reload and retry
    /// the command, or use [`Repository::update`](crate::Repository::update), which does both.
    #[error("concurrency conflict on stream {stream}: expected version {expected}, found {actual}")]
    Concurrency {
        /// The stream written to.
        stream: StreamId,
        /// The version the writer expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was refused (0: the stream does not exist).
        actual: u64,
    },

    /// The aggregate's stream has no events.
    #[error("aggregate not found: stream {stream} has no events")]
    AggregateNotFound {
        /// The stream that was read.
        stream: StreamId,
    },

    /// A version was asked for that the stream has not reached.
    #[error("stream {stream} has no version {requested}: it is at version {current}")]
    VersionNotFound {
        /// The stream that was read.
        stream: StreamId,
        /// The version asked for.
        requested: u64,
        /// The stream's current version.
        current: u64,
    },

    /// An event with this id is already stored. Appends are idempotent by event id: a retried
    /// command cannot store its events twice. Nothing of the batch was written.
    #[error(
        "duplicate event {event_id} in append to stream {stream}: an event with this id is already stored"
    )]
    DuplicateEvent {
        /// The stream written to.
        stream: StreamId,
        /// The id that is already taken.
        event_id: Uuid,
    },

    /// A stored event's type is not handled by the aggregate that loads it (and the aggregate's
    /// policy for unknown events is `error`, the default).
    #[error(
        "unknown event type `{event_type}` (schema version {schema_version}) at version {version} of stream {stream}"
    )]
    UnknownEventType {
        /// The stream being read.
        stream: StreamId,
        /// The event's version in the stream.
        version: u64,
        /// The stored event type name.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
    },

    /// A stored payload could not be decoded into its event type.
    #[error(
        "cannot decode event `{event_type}` (schema version {schema_version}) at version {version} of stream {stream}"
    )]
    Decode {
        /// The stream being read.
        stream: StreamId,
        /// The event's version in the stream.
        version: u64,
        /// The stored event type name.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
        /// What was wrong with the payload.
        #[source]
        source: DecodeError,
    },

    /// An event could not be serialized to JSON (for example a map with non-string keys).
    /// Nothing was written.
    #[error("cannot encode event `{event_type}` for stream {stream}")]
    Encode {
        /// The stream the event was recorded on.
        stream: StreamId,
        /// The event type.
        event_type: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// An aggregate's state could not be serialized for a snapshot. Nothing was written.
    #[error("cannot encode the state of {stream} for a snapshot")]
    SnapshotEncode {
        /// The aggregate's stream.
        stream: StreamId,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// A stream id or an event that no store accepts: empty, too long, or holding a NUL byte.
    #[error("invalid input for stream {stream}: {reason}")]
    InvalidInput {
        /// The stream concerned.
        stream: StreamId,
        /// What is wrong.
        reason: String,
    },

    /// What a store returned contradicts its own invariants (a version out of sequence, a
    /// negative number): the data was changed outside eventsource, or a bug.
    #[error("stored data of stream {stream} is inconsistent: {reason}")]
    Corrupt {
        /// The stream concerned.
        stream: StreamId,
        /// What is wrong.
        reason: String,
    },

    /// The database failed (connection, I/O, a constraint that no other variant explains).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "postgres"))))]
    #[error("database error during {operation}")]
    Database {
        /// What the store was doing (`append`, `read_stream`, ...).
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// The store's schema could not be created or migrated.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "postgres"))))]
    #[error("cannot migrate the event store schema")]
    Migration(#[source] sqlx::migrate::MigrateError),

    /// [`Repository::update`](crate::Repository::update) met a concurrent writer on every attempt.
    #[error("gave up on stream {stream} after {attempts} attempts, each met a concurrent write")]
    RetriesExhausted {
        /// The stream written to.
        stream: StreamId,
        /// How many times the command ran.
        attempts: u32,
        /// The conflict of the last attempt.
        #[source]
        last: Box<Error>,
    },

    /// A command refused to run: a domain error of the application, carried through.
    #[error("command rejected")]
    Command(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    /// A database error during `operation`.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn database(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Error::Database { operation, source }
    }

    /// Wraps an application's domain error, for commands whose error type is [`Error`]:
    /// `account.state().withdraw(100).map_err(Error::command)?`.
    pub fn command(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Command(Box::new(error))
    }

    /// Whether this is an optimistic-concurrency conflict, the error worth retrying.
    pub fn is_concurrency(&self) -> bool {
        matches!(self, Error::Concurrency { .. })
    }
}

/// Why a stored payload did not decode, before the stream and version are known. Wrapped in
/// [`Error::Decode`] when it reaches the user.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The JSON payload does not match the event's Rust type (or is not JSON at all).
    #[error("payload does not match the event type: {0}")]
    Payload(#[source] serde_json::Error),

    /// An upcaster (a `TryFrom` conversion or a JSON rewrite) refused the payload on its way from
    /// schema version `from` to `to`.
    #[error(
        "upcasting from schema version {from} to {to} (current schema version {current}) failed"
    )]
    Upcast {
        /// The version the failing step starts from.
        from: u32,
        /// The version it should have produced.
        to: u32,
        /// The event type's current version.
        current: u32,
        /// The upcaster's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// The stored schema version is one this code cannot decode: newer than the event type's
    /// current version, or an older one with no upcaster.
    #[error(
        "stored schema version {stored} is not decodable by this code (current schema version {current})"
    )]
    UnsupportedSchemaVersion {
        /// The version of the stored payload.
        stored: u32,
        /// The event type's current version.
        current: u32,
    },
}
