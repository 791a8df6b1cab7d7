//! [`InMemoryEventStore`]: the whole log in process memory, for tests and prototypes. Same
//! semantics as the database stores; nothing survives the process.

use super::AppendSignal;
use super::{
    AppendResult, EventStore, ExpectedVersion, LogHead, Position, ReadAll, StreamId, StreamQuery,
    check_sequence, paged, validate_append,
};
use crate::checkpoint::{CheckpointStore, DeadLetter, conflict};
use crate::error::{Error, Result};
use crate::event::{NewEvent, RecordedEvent};
use crate::snapshot::{Snapshot, SnapshotStore};
use futures::stream::BoxStream;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use uuid::Uuid;

/// An event store in memory. Cloning gives another handle to the same log, safe to share
/// between tokio tasks: appends are serialized by a lock that is never held across an `.await`.
#[derive(Clone, Debug, Default)]
pub struct InMemoryEventStore {
    leases: crate::checkpoint::LocalLeases,
    log: Arc<RwLock<Log>>,
    snapshots: Arc<RwLock<HashMap<StreamId, Snapshot>>>,
    projections: Arc<Mutex<Projections>>,
    appended: Arc<AppendSignal>,
}

/// Checkpoints and dead letters, by projection.
#[derive(Debug, Default)]
struct Projections {
    checkpoints: HashMap<String, Position>,
    dead_letters: BTreeMap<(String, Position), DeadLetter>,
}

#[derive(Debug, Default)]
struct Log {
    /// The global log; an event's position is its index + 1.
    events: Vec<RecordedEvent>,
    /// Per stream, the indices of its events in version order.
    streams: HashMap<StreamId, Vec<usize>>,
    /// Each event's index in `events`, by id.
    positions: HashMap<Uuid, usize>,
}

impl InMemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of events stored.
    pub fn len(&self) -> usize {
        self.read().events.len()
    }

    /// Whether no event is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A panic while the lock is held cannot leave the log half-updated (every append checks
    // everything before it mutates), so a poisoned lock is safe to keep using.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Log> {
        self.log.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The projections with a checkpoint (and where), and the projection of each dead letter:
    /// what [`Inspect::projections`](crate::admin::Inspect::projections) lists.
    pub(crate) fn projection_names(&self) -> (Vec<(String, Position)>, Vec<String>) {
        let projections = self
            .projections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (
            projections
                .checkpoints
                .iter()
                .map(|(name, position)| (name.clone(), *position))
                .collect(),
            projections
                .dead_letters
                .values()
                .map(|letter| letter.projection.clone())
                .collect(),
        )
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Log> {
        self.log.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SnapshotStore for InMemoryEventStore {
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        snapshot.stream().validate()?;
        let mut snapshots = self
            .snapshots
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match snapshots.get(snapshot.stream()) {
            Some(kept)
                if kept.version() > snapshot.version()
                    && kept.state_version() == snapshot.state_version() => {}
            _ => {
                snapshots.insert(snapshot.stream().clone(), snapshot.clone());
            }
        }
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        stream.validate()?;
        let snapshots = self
            .snapshots
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(snapshots.get(stream).cloned())
    }

    async fn delete_snapshot(&self, stream: &StreamId) -> Result<bool> {
        stream.validate()?;
        let mut snapshots = self
            .snapshots
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(snapshots.remove(stream).is_some())
    }
}

impl InMemoryEventStore {
    /// [`EventStore::append`], without its span and metrics.
    async fn append_unobserved(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        validate_append(stream, &events)?;
        let mut log = self.write();
        let current = log.streams.get(stream).map_or(0, Vec::len) as u64;
        let retried = events
            .iter()
            .any(|event| log.positions.contains_key(&event.event_id));
        if retried && let Some(done) = already_stored(&log, stream, expected, &events) {
            return Ok(done);
        }
        if !expected.is_satisfied_by(current) {
            return Err(expected.conflict(stream, current));
        }
        if let Some(taken) = events
            .iter()
            .find(|event| log.positions.contains_key(&event.event_id))
        {
            return Err(Error::DuplicateEvent {
                stream: stream.clone(),
                event_id: taken.event_id,
            });
        }

        let events_empty = events.is_empty();
        let Log {
            events: all,
            streams,
            positions,
        } = &mut *log;
        let indices = streams.entry(stream.clone()).or_default();
        for (offset, event) in events.into_iter().enumerate() {
            let index = all.len();
            positions.insert(event.event_id, index);
            indices.push(index);
            all.push(RecordedEvent::new(
                stream.clone(),
                current + offset as u64 + 1,
                Position::new(index as u64 + 1),
                event,
            ));
        }
        let last_position = Position::new(indices.last().map_or(0, |index| *index as u64 + 1));
        if !events_empty {
            self.appended.notify();
        }
        Ok(AppendResult {
            stream_version: indices.len() as u64,
            last_position,
        })
    }
}

impl EventStore for InMemoryEventStore {
    crate::store::observed_append!();

    async fn read_stream(
        &self,
        stream: &StreamId,
        query: StreamQuery,
    ) -> Result<Vec<RecordedEvent>> {
        stream.validate()?;
        let log = self.read();
        let Some(indices) = log.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let in_range = |index: &&usize| query.matches(&log.events[**index]);
        let limit = query.limit.unwrap_or(usize::MAX);
        let events: Vec<RecordedEvent> = if query.backwards {
            indices
                .iter()
                .rev()
                .filter(in_range)
                .take(limit)
                .map(|i| log.events[*i].clone())
                .collect()
        } else {
            indices
                .iter()
                .filter(in_range)
                .take(limit)
                .map(|i| log.events[*i].clone())
                .collect()
        };
        check_sequence(stream, &query, &events)?;
        Ok(events)
    }

    fn read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent>> {
        // One page per lock acquisition, so a long read neither holds the lock nor copies the log.
        paged(query, move |query| {
            let log = self.read();
            let start = usize::try_from(query.after.get())
                .unwrap_or(usize::MAX)
                .min(log.events.len());
            let page: Vec<_> = log.events[start..]
                .iter()
                .filter(|event| query.matches(event))
                .take(query.batch_size)
                .map(|event| (event.position, Some(Ok(event.clone()))))
                .collect();
            std::future::ready(Ok(page))
        })
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        stream.validate()?;
        Ok(self.read().streams.get(stream).map_or(0, Vec::len) as u64)
    }

    fn watch_appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    async fn log_head(&self) -> Result<LogHead> {
        let last = Position::new(self.read().events.len() as u64);
        Ok(LogHead {
            last,
            readable: last,
            held_back: 0,
        })
    }
}

/// For an append whose events are all stored already, with the same ids in the same stream at
/// consecutive versions that satisfy `expected`: the result the first append had (an append
/// retried after its outcome was lost). `None` otherwise.
fn already_stored(
    log: &Log,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Option<AppendResult> {
    let mut stored = Vec::with_capacity(events.len());
    for event in events {
        let index = log.positions.get(&event.event_id)?;
        stored.push(&log.events[*index]);
    }
    super::retried_append(
        stream,
        expected,
        stored.iter().map(|e| (&e.stream, e.version, e.position)),
    )
}

impl InMemoryEventStore {
    fn projections(&self) -> std::sync::MutexGuard<'_, Projections> {
        self.projections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl CheckpointStore for InMemoryEventStore {
    async fn checkpoint(&self, projection: &str) -> Result<Option<Position>> {
        crate::checkpoint::check_projection_name(projection)?;
        Ok(self.projections().checkpoints.get(projection).copied())
    }

    async fn save_checkpoint(
        &self,
        projection: &str,
        previous: Option<Position>,
        position: Position,
    ) -> Result<()> {
        crate::checkpoint::check_projection_name(projection)?;
        let mut projections = self.projections();
        let found = projections.checkpoints.get(projection).copied();
        if found != previous {
            return Err(conflict(projection, previous, found));
        }
        projections
            .checkpoints
            .insert(projection.to_owned(), position);
        Ok(())
    }

    async fn delete_checkpoint(&self, projection: &str) -> Result<()> {
        crate::checkpoint::check_projection_name(projection)?;
        self.projections().checkpoints.remove(projection);
        Ok(())
    }

    async fn add_dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        crate::checkpoint::check_projection_name(&letter.projection)?;
        let mut letter = letter.clone();
        letter.error = crate::checkpoint::storable_error(&letter.error).into_owned();
        self.projections()
            .dead_letters
            .insert((letter.projection.clone(), letter.position), letter);
        Ok(())
    }

    async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>> {
        crate::checkpoint::check_projection_name(projection)?;
        Ok(self
            .projections()
            .dead_letters
            .values()
            .filter(|letter| letter.projection == projection)
            .cloned()
            .collect())
    }

    async fn remove_dead_letter(&self, projection: &str, position: Position) -> Result<bool> {
        crate::checkpoint::check_projection_name(projection)?;
        Ok(self
            .projections()
            .dead_letters
            .remove(&(projection.to_owned(), position))
            .is_some())
    }

    async fn lease(&self, projection: &str) -> Result<Option<crate::checkpoint::Lease>> {
        crate::checkpoint::check_projection_name(projection)?;
        Ok(self.leases.try_take(projection))
    }
}
