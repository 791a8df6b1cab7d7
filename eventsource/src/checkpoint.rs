//! Checkpoints and dead letters: where each projection has got to in the global order, and the
//! events it gave up on.
//!
//! Every built-in store is a [`CheckpointStore`] (tables `checkpoints` and `dead_letters` next to
//! its events). A checkpoint is written as a compare-and-set on the previous position, so two
//! runners of one projection can never both move it: the second gets
//! [`Error::CheckpointConflict`]. That keeps two runners from both *applying* a batch only where
//! the compare-and-set is in the transaction of the batch's effects: database read models
//! (`Subscriptions::add_sql`), exactly once. Durable
//! projections, process managers and relays act first and move the checkpoint after: at least
//! once, their effects made idempotent by event id.

use crate::error::{Error, Result};
use crate::stream::{Position, StreamId};
use chrono::{DateTime, Utc};
use std::future::Future;
use std::sync::Arc;
use uuid::Uuid;

/// An event a projection could not apply: after its retries ran out, or because its stored row
/// could not be read at all. Kept until it is replayed successfully or removed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The projection that failed.
    pub projection: String,
    /// The event's position in the global order.
    pub position: Position,
    /// The event's id (`None` when the stored row could not be read).
    pub event_id: Option<Uuid>,
    /// The event's stream.
    pub stream: StreamId,
    /// The event's version in its stream, where known.
    pub version: Option<u64>,
    /// The stored event type, where known.
    pub event_type: Option<String>,
    /// Why the last attempt failed.
    pub error: String,
    /// How many times the event was tried.
    pub attempts: u32,
    /// When it was given up on.
    pub failed_at: DateTime<Utc>,
}

/// Checks a projection name (the key of a checkpoint, dead letters and a lease) before it
/// reaches a store, so that every backend answers the same, before any I/O:
/// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a name holding NUL (which
/// PostgreSQL's text cannot hold).
pub(crate) fn check_projection_name(name: &str) -> crate::Result<()> {
    if name.contains('\0') {
        return Err(crate::Error::InvalidConfig(format!(
            "a projection name cannot hold NUL: {name:?}"
        )));
    }
    Ok(())
}

/// A dead letter's error text as every store keeps it: NUL (which PostgreSQL's text cannot
/// hold, and a handler's message may) as U+FFFD, so that dead-lettering never fails on it.
pub(crate) fn storable_error(error: &str) -> std::borrow::Cow<'_, str> {
    if error.contains('\0') {
        std::borrow::Cow::Owned(error.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(error)
    }
}

impl DeadLetter {
    /// A dead letter of `projection` for the event at `position` of `stream`.
    pub fn new(
        projection: impl Into<String>,
        position: Position,
        stream: StreamId,
        error: impl Into<String>,
        attempts: u32,
    ) -> Self {
        DeadLetter {
            projection: projection.into(),
            position,
            event_id: None,
            stream,
            version: None,
            event_type: None,
            error: error.into(),
            attempts,
            failed_at: crate::event::now(),
        }
    }

    /// Adds the event's id, version and type.
    pub fn with_event(
        mut self,
        event_id: Option<Uuid>,
        version: Option<u64>,
        event_type: Option<String>,
    ) -> Self {
        self.event_id = event_id;
        self.version = version;
        self.event_type = event_type;
        self
    }
}

/// Where projections keep their checkpoints and dead letters.
pub trait CheckpointStore: Send + Sync {
    /// The projection's checkpoint: every event up to it is applied. `None`: never started.
    fn checkpoint(&self, projection: &str)
    -> impl Future<Output = Result<Option<Position>>> + Send;

    /// Moves the checkpoint from `previous` (`None`: no checkpoint yet) to `position`, if it is
    /// still at `previous`; [`Error::CheckpointConflict`] if another runner moved it.
    fn save_checkpoint(
        &self,
        projection: &str,
        previous: Option<Position>,
        position: Position,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Forgets the checkpoint (the projection starts over from the first event).
    fn delete_checkpoint(&self, projection: &str) -> impl Future<Output = Result<()>> + Send;

    /// Stores a dead letter (replacing one for the same projection and position).
    fn add_dead_letter(&self, letter: &DeadLetter) -> impl Future<Output = Result<()>> + Send;

    /// The projection's dead letters, oldest position first.
    fn dead_letters(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send;

    /// Removes the projection's dead letter at `position`. Returns whether there was one.
    fn remove_dead_letter(
        &self,
        projection: &str,
        position: Position,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Tries to become the one runner of `projection` among processes sharing the database:
    /// `Some(lease)` while it holds it (dropping the lease releases it; so does the process
    /// dying), `None` if another runner holds it. PostgreSQL holds a session advisory lock on a
    /// connection of its own; SQLite an exclusive lock on a file beside the database file (an
    /// in-process lock for `:memory:`); the in-memory store an in-process lock. The default
    /// implementation always grants it.
    fn lease(&self, projection: &str) -> impl Future<Output = Result<Option<Lease>>> + Send {
        let _ = projection;
        async { Ok(Some(Lease::default())) }
    }
}

/// The right to run a projection, held until dropped. See [`CheckpointStore::lease`].
#[derive(Default)]
pub struct Lease {
    _holder: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Lease {
    /// A lease held by `holder` (a connection holding a lock, say) until it is dropped.
    pub fn held_by(holder: impl std::any::Any + Send + Sync) -> Self {
        Lease {
            _holder: Some(Box::new(holder)),
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}

/// The leases held in this process, by name: what the in-memory store (and SQLite's
/// `:memory:` database) grant, one holder per name until its lease is dropped.
#[derive(Clone, Debug, Default)]
pub(crate) struct LocalLeases {
    held: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl LocalLeases {
    /// The lease of `name`, unless it is held.
    pub(crate) fn try_take(&self, name: &str) -> Option<Lease> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !held.insert(name.to_owned()) {
            return None;
        }
        Some(Lease::held_by(LocalLease {
            leases: self.clone(),
            name: name.to_owned(),
        }))
    }
}

/// Gives a [`LocalLeases`] lease back when dropped.
struct LocalLease {
    leases: LocalLeases,
    name: String,
}

impl Drop for LocalLease {
    fn drop(&mut self) {
        self.leases
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.name);
    }
}

/// A lease held as an exclusive lock on a file beside a database file, for runners sharing the
/// file from several processes: the operating system releases it when the holder drops it or
/// dies.
#[cfg(feature = "sqlite")]
pub(crate) fn file_lease(database: &std::path::Path, name: &str) -> Result<Option<Lease>> {
    use std::hash::{Hash, Hasher};
    // A readable, file-name-safe form of the name, and a hash against clashes after the
    // replacement.
    let readable: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    let mut path = database.as_os_str().to_owned();
    path.push(format!(".lease-{readable}-{:016x}", hasher.finish()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| Error::Database {
            operation: "lease",
            source: crate::error::DatabaseError::new(error),
        })?;
    match file.try_lock() {
        Ok(()) => Ok(Some(Lease::held_by(file))),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(error)) => Err(Error::Database {
            operation: "lease",
            source: crate::error::DatabaseError::new(error),
        }),
    }
}

macro_rules! forward_checkpoint_store {
    ($($ty:ty),*) => {$(
        /// Forwards to the store behind the pointer.
        impl<T: CheckpointStore + ?Sized> CheckpointStore for $ty {
            fn checkpoint(&self, projection: &str) -> impl Future<Output = Result<Option<Position>>> + Send {
                (**self).checkpoint(projection)
            }
            fn save_checkpoint(
                &self,
                projection: &str,
                previous: Option<Position>,
                position: Position,
            ) -> impl Future<Output = Result<()>> + Send {
                (**self).save_checkpoint(projection, previous, position)
            }
            fn delete_checkpoint(&self, projection: &str) -> impl Future<Output = Result<()>> + Send {
                (**self).delete_checkpoint(projection)
            }
            fn add_dead_letter(&self, letter: &DeadLetter) -> impl Future<Output = Result<()>> + Send {
                (**self).add_dead_letter(letter)
            }
            fn dead_letters(&self, projection: &str) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send {
                (**self).dead_letters(projection)
            }
            fn remove_dead_letter(
                &self,
                projection: &str,
                position: Position,
            ) -> impl Future<Output = Result<bool>> + Send {
                (**self).remove_dead_letter(projection, position)
            }
            fn lease(&self, projection: &str) -> impl Future<Output = Result<Option<Lease>>> + Send {
                (**self).lease(projection)
            }
        }
    )*};
}

forward_checkpoint_store!(&T, Arc<T>, Box<T>);

/// The conflict error for a checkpoint found at `found` instead of `expected`.
pub(crate) fn conflict(
    projection: &str,
    expected: Option<Position>,
    found: Option<Position>,
) -> Error {
    Error::CheckpointConflict {
        projection: projection.to_owned(),
        expected,
        found,
    }
}

/// The transaction a [`SqlProjection`]'s handlers write through: the database of the events.
///
/// [`SqlProjection`]: crate::SqlProjection
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub type Transaction<DB> = sqlx::Transaction<'static, DB>;

/// A transaction of the SQLite event store's database.
#[cfg(feature = "sqlite")]
pub type SqliteTx = sqlx::Transaction<'static, sqlx::Sqlite>;

/// A transaction of the PostgreSQL event store's database.
#[cfg(feature = "postgres")]
pub type PgTx = sqlx::Transaction<'static, sqlx::Postgres>;

/// A transaction of the event store's own database, in which a [`SqlProjection`]'s handlers
/// write and its checkpoint moves: implemented by the SQLite and PostgreSQL stores.
///
/// [`SqlProjection`]: crate::SqlProjection
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub trait TransactionalStore: crate::store::EventStore + CheckpointStore + Clone + 'static {
    /// The database.
    type Database: sqlx::Database;

    /// Begins a transaction.
    fn begin(&self) -> impl Future<Output = Result<Transaction<Self::Database>>> + Send;

    /// [`CheckpointStore::save_checkpoint`], inside `tx`.
    fn save_checkpoint_in<'a>(
        tx: &'a mut Transaction<Self::Database>,
        projection: &'a str,
        previous: Option<Position>,
        position: Position,
    ) -> impl Future<Output = Result<()>> + Send + 'a;

    /// [`CheckpointStore::add_dead_letter`], inside `tx`.
    fn add_dead_letter_in<'a>(
        tx: &'a mut Transaction<Self::Database>,
        letter: &'a DeadLetter,
    ) -> impl Future<Output = Result<()>> + Send + 'a;

    /// [`CheckpointStore::remove_dead_letter`], inside `tx`.
    fn remove_dead_letter_in<'a>(
        tx: &'a mut Transaction<Self::Database>,
        projection: &'a str,
        position: Position,
    ) -> impl Future<Output = Result<bool>> + Send + 'a;
}
