//! The one error type of the crate.

use crate::stream::{ExpectedVersion, Position, StreamId};
use std::fmt;
use std::time::Duration;
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

    /// A stored row is damaged: a column that cannot be read or breaks the store's invariants (a
    /// version out of sequence or range, metadata of the wrong shape, a value of the wrong type).
    /// The data was changed outside eventsource, or a bug. Names everything that could be read of
    /// the row; a global read that meets one yields this error for the row and goes on after
    /// it (its [`position`](Error::position) is where to resume).
    #[error(
        "stored data of stream {stream} is damaged{}: {reason}",
        RowPlace { position: *position, version: *version, event_type: event_type.as_deref() }
    )]
    Corrupt {
        /// The stream concerned.
        stream: StreamId,
        /// The damaged row's position in the global order, where it is known.
        position: Option<Position>,
        /// The damaged row's version in its stream, where it can be read.
        version: Option<u64>,
        /// The damaged row's event type, where it can be read.
        event_type: Option<String>,
        /// What is wrong.
        reason: String,
    },

    /// The database failed (connection, I/O, a constraint that no other variant explains), or a
    /// third-party store's backend did.
    #[error("database error during {operation}")]
    Database {
        /// What the store was doing (`append`, `read_stream`, ...).
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: DatabaseError,
    },

    /// The store's schema could not be created or migrated.
    #[error("cannot migrate the event store schema")]
    Migration(#[source] DatabaseError),

    /// [`AnyStore::connect`](crate::store::AnyStore::connect) got a URL of a scheme it does not
    /// know, or whose backend's feature is off.
    #[error(
        "no event store for URL scheme `{scheme}`: expected `memory:`, `sqlite:` (feature `sqlite`) or `postgres:` (feature `postgres`)"
    )]
    UnsupportedUrl {
        /// The URL's scheme.
        scheme: String,
    },

    /// A projection's checkpoint was not where its runner left it: another runner of the same
    /// projection (in another process) moved it. The runner stops; nothing it did in that
    /// transaction is kept.
    #[error(
        "checkpoint of projection `{projection}` moved under its runner: expected {}, found {}",
        fmt_position(*expected),
        fmt_position(*found)
    )]
    CheckpointConflict {
        /// The projection.
        projection: String,
        /// Where the runner expected it.
        expected: Option<Position>,
        /// Where it was.
        found: Option<Position>,
    },

    /// A projection's handler kept failing on an event and the projection's policy is to stop
    /// (the event is in the dead-letter table).
    #[error("projection `{projection}` stopped at position {position}: {error}")]
    ProjectionStopped {
        /// The projection.
        projection: String,
        /// The event it stopped at.
        position: Position,
        /// The handler's last error, as text.
        error: String,
    },

    /// No projection of that name runs in this manager.
    #[error("no projection named `{name}` in this subscription manager")]
    UnknownProjection {
        /// The name asked for.
        name: String,
    },

    /// A wait gave up: [`EventStore::wait_for`](crate::EventStore::wait_for) did not see the
    /// position become readable in time.
    #[error("{operation} timed out after {waited:?}")]
    Timeout {
        /// What was waited for.
        operation: &'static str,
        /// How long.
        waited: Duration,
    },

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

    /// Several event types of the program share a stored name (or alias), usually two events of
    /// different aggregates with the same type name: a stored event of that name could be
    /// either, so the [`EventRegistry`](crate::EventRegistry) decodes none of them. Returned by
    /// [`EventRegistry::decode_json`](crate::EventRegistry::decode_json) for such a name, and by
    /// [`EventRegistry::check`](crate::EventRegistry::check), which also lists the other clashes.
    #[error(
        "stored event name `{event_type}` is ambiguous: it names {}; give one of them #[event(name = \"...\")]{}",
        .rust_types.join(" and "),
        more_clashes(.other_clashes)
    )]
    AmbiguousEventType {
        /// The stored name (or alias) more than one event type claims.
        event_type: String,
        /// The Rust types that claim it, as `std::any::type_name` gives them.
        rust_types: Vec<&'static str>,
        /// The program's other ambiguous names, each with the Rust types claiming it (empty
        /// except from [`EventRegistry::check`](crate::EventRegistry::check)).
        other_clashes: Vec<(String, Vec<&'static str>)>,
    },

    /// A setting or name given to the library cannot be used (a bus group name with a space, a
    /// group subscribed with two different filters).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// The message broker behind an [`EventBus`](crate::bus::EventBus) failed an operation (it
    /// is down, refused the message, or did not confirm it). Nothing the caller asked for is
    /// known to be done: publish again (consumers de-duplicate by event id).
    #[error("{bus} bus: {operation} failed: {source}")]
    Bus {
        /// The bus (`memory`, `redis`, `rabbitmq`, `nats`, `kafka`).
        bus: &'static str,
        /// What was attempted.
        operation: &'static str,
        /// The broker client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A message on the bus is not an event this library published (it cannot be read as one).
    /// It was taken off the subscription (dead-lettered where the bus has dead letters), so it
    /// does not block the ones after it.
    #[error("{bus} bus: message {message} is not an eventsource event: {reason}")]
    MalformedMessage {
        /// The bus.
        bus: &'static str,
        /// The broker's id of the message.
        message: String,
        /// Why it cannot be read.
        reason: String,
    },

    /// The database has no event store schema, or an older one, and the caller asked not to
    /// create or upgrade it ([`AnyStore::open_existing`](crate::AnyStore::open_existing)): run
    /// the migrations (`eventsource migrate`, or connect with
    /// [`AnyStore::connect`](crate::AnyStore::connect)).
    #[error("no usable event store schema: {reason}")]
    SchemaMissing {
        /// What is missing.
        reason: String,
    },

    /// A tenant-scoped store ([`TenantStore`](crate::tenant::TenantStore)) refused to write
    /// outside its tenant: an event stamped with another tenant, or an append to (or a snapshot
    /// of) a stream that belongs to another tenant. Nothing was written.
    #[error("tenant `{tenant}` cannot write to stream {stream}: {reason}")]
    TenantMismatch {
        /// The store's tenant.
        tenant: String,
        /// The stream written to.
        stream: StreamId,
        /// Why the write was refused.
        reason: String,
    },

    /// A subject's key in the keys table does not unwrap with the master key: the master key is
    /// not the one the key was wrapped with (a wrong `EVENTSOURCE_MASTER_KEY`), or the table
    /// was altered. Nothing is decrypted with a wrong key.
    #[error(
        "the master key cannot unwrap subject key {key_id}: a wrong master key, or an altered keys table"
    )]
    MasterKey {
        /// The key that does not unwrap.
        key_id: uuid::Uuid,
    },
}

/// Whether an error (from a driver, or a handler's error that wraps one) is a lost connection
/// or a pool timeout.
pub(crate) fn transient_cause(error: &(dyn std::error::Error + 'static)) -> bool {
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    if let Some(error) = error.downcast_ref::<sqlx::Error>() {
        return match error {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                code.starts_with("08")
                    || matches!(
                        &*code,
                        "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300"
                    )
            }),
            _ => false,
        };
    }
    if let Some(error) = error.downcast_ref::<Error>() {
        return error.is_transient();
    }
    error.downcast_ref::<std::io::Error>().is_some()
}

/// A checkpoint for messages: a position, or "none".
fn fmt_position(position: Option<Position>) -> String {
    position.map_or_else(|| "none".to_owned(), |p| p.to_string())
}

/// The rest of [`Error::AmbiguousEventType`]'s message: every other ambiguous name.
fn more_clashes(others: &[(String, Vec<&'static str>)]) -> String {
    others
        .iter()
        .map(|(name, types)| {
            format!(
                "; `{name}` is ambiguous too: it names {}",
                types.join(" and ")
            )
        })
        .collect()
}

impl Error {
    /// A broker error of `bus` during `operation`.
    #[allow(dead_code)] // used by the broker features
    pub(crate) fn bus<E>(bus: &'static str, operation: &'static str) -> impl FnOnce(E) -> Self
    where
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        move |source| Error::Bus {
            bus,
            operation,
            source: source.into(),
        }
    }

    /// A database error during `operation`.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn database(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Error::Database {
            operation,
            source: DatabaseError::from_sqlx(source),
        }
    }

    /// A damaged row of `stream`, with what is known of where it is.
    pub(crate) fn corrupt(stream: &StreamId, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            stream: stream.clone(),
            position: None,
            version: None,
            event_type: None,
            reason: reason.into(),
        }
    }

    /// Adds what is known of a damaged row's place to an [`Error::Corrupt`] (other errors are
    /// returned as they are).
    pub(crate) fn at_row(
        mut self,
        at: Option<Position>,
        row_version: Option<u64>,
        row_type: Option<&str>,
    ) -> Self {
        if let Error::Corrupt {
            position,
            version,
            event_type,
            ..
        } = &mut self
        {
            if position.is_none() {
                *position = at;
            }
            if version.is_none() {
                *version = row_version;
            }
            if event_type.is_none() {
                *event_type = row_type.map(str::to_owned);
            }
        }
        self
    }

    /// For an error about one stored row (a damaged row, an event that does not decode): the
    /// row's position in the global order, where it is known. A reader resumes after it.
    pub fn position(&self) -> Option<Position> {
        match self {
            Error::Corrupt { position, .. } => *position,
            _ => None,
        }
    }

    /// Whether this is an optimistic-concurrency conflict, the error worth retrying.
    pub fn is_concurrency(&self) -> bool {
        matches!(self, Error::Concurrency { .. })
    }

    /// Whether this is a transient failure of the database: the connection was lost or reset
    /// (a server restart, a failover, `pg_terminate_backend`), the pool timed out, or the
    /// server asked for the transaction to be tried again (serialization failure, deadlock).
    /// Stores retry such errors themselves where that is safe (see docs/stores.md, "Resilience");
    /// one that reaches the caller means the retries ran out.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

/// Where in the log a damaged row is, for [`Error::Corrupt`]'s message.
struct RowPlace<'a> {
    position: Option<Position>,
    version: Option<u64>,
    event_type: Option<&'a str>,
}

impl fmt::Display for RowPlace<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(version) = self.version {
            write!(f, " at version {version}")?;
        }
        if let Some(event_type) = self.event_type {
            write!(f, " (event `{event_type}`)")?;
        }
        if let Some(position) = self.position {
            write!(f, ", position {position}")?;
        }
        Ok(())
    }
}

/// A database driver's error, kept behind a type of our own so that upgrading the driver is not
/// a breaking change of this crate. It displays as the driver's error; [`get_ref`](Self::get_ref)
/// gives the driver's error itself (to downcast, knowing the driver's version). Third-party
/// stores wrap theirs with [`DatabaseError::new`].
#[derive(Debug)]
pub struct DatabaseError {
    code: Option<String>,
    inner: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl DatabaseError {
    /// Wraps a backend's error (for stores outside this crate).
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        DatabaseError {
            code: None,
            inner: error.into(),
        }
    }

    /// Sets the database's own error code (SQLSTATE, SQLite extended result code).
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// The backend's error, as it was.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.inner
    }

    /// The database's error code, if it reported one: SQLSTATE on PostgreSQL (`40001`), the
    /// extended result code on SQLite (`2067`).
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// Whether the failure is transient (see [`Error::is_transient`]): a SQLSTATE of class 08
    /// (connection exception), 40001 (serialization failure), 40P01 (deadlock), 57P01-57P03
    /// (the server shutting down or starting), 53300 (too many connections); or a lost
    /// connection or pool timeout reported by the driver.
    pub fn is_transient(&self) -> bool {
        if let Some(code) = self.code() {
            return code.starts_with("08")
                || matches!(
                    code,
                    "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300"
                );
        }
        transient_cause(&*self.inner)
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn from_sqlx(error: sqlx::Error) -> Self {
        let code = error
            .as_database_error()
            .and_then(|db| db.code())
            .map(|code| code.into_owned());
        DatabaseError {
            code,
            inner: Box::new(error),
        }
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn from_migrate(error: sqlx::migrate::MigrateError) -> Self {
        match error {
            sqlx::migrate::MigrateError::Execute(error) => Self::from_sqlx(error),
            other => DatabaseError {
                code: None,
                inner: Box::new(other),
            },
        }
    }
}

impl fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl std::error::Error for DatabaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
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

// The constructors of the identity types that can fail, written here so that `stream.rs` stays
// below the error it would otherwise import.
impl StreamId {
    /// The stream of aggregate `aggregate_id` of type `aggregate_type`.
    ///
    /// Fails with [`Error::InvalidInput`] if either part is empty, longer than
    /// [`MAX_ID_LEN`](crate::stream::MAX_ID_LEN) bytes, or holds a NUL byte.
    pub fn new(
        aggregate_type: impl Into<std::sync::Arc<str>>,
        aggregate_id: impl Into<std::sync::Arc<str>>,
    ) -> Result<Self> {
        let stream = Self::unchecked(aggregate_type, aggregate_id);
        stream.validate()?;
        Ok(stream)
    }

    /// Checks what every store requires of a stream id: neither part empty, longer than
    /// [`MAX_ID_LEN`](crate::stream::MAX_ID_LEN) bytes, or holding a NUL byte.
    pub fn validate(&self) -> Result<()> {
        match self.problem() {
            None => Ok(()),
            Some(reason) => Err(Error::InvalidInput {
                stream: self.clone(),
                reason,
            }),
        }
    }
}

impl ExpectedVersion {
    /// The conflict error for a stream found at `actual`.
    pub fn conflict(self, stream: &StreamId, actual: u64) -> Error {
        Error::Concurrency {
            stream: stream.clone(),
            expected: self,
            actual,
        }
    }
}
