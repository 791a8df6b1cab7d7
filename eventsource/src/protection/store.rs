//! [`ProtectedStore`]: the event store wrapper that encrypts personal fields on append, decrypts
//! them on every read, and forgets subjects.

use super::cipher::{DataKey, Envelope};
use super::keys::{KeyState, KeyStore};
use super::{PersonalField, forgotten_value, is_forgotten_value};
use crate::checkpoint::{CheckpointStore, DeadLetter, Lease};
use crate::error::{Error, Result};
use crate::event::{NewEvent, RecordedEvent};
use crate::registry::EventRegistry;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{AppendResult, EventStore, LogHead, ReadAll, StreamQuery};
use crate::stream::{ExpectedVersion, Position, StreamId};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// An [`EventStore`] that keeps the `#[personal]` fields of events encrypted, one key per data
/// subject from a [`KeyStore`], and can [`forget`](Self::forget) a subject.
///
/// - On append, each personal field of a registered event type (looked up by stored name in the
///   [`EventRegistry`]) is replaced by an envelope
///   `{"$enc": "v1", "kid": key id, "n": nonce, "c": ciphertext}` (AES-256-GCM, base64),
///   encrypted with the current key of the subject named by the field's `subject`; the key is
///   created on first use. Only payloads of the type's current schema version are encrypted
///   (the declaration is that version's); older ones, as an import writes them, stay as given.
/// - Every read ([`read_stream`](EventStore::read_stream), [`read_all`](EventStore::read_all)
///   and the folds built on them) replaces envelopes by the plain values, so repositories,
///   projections, process managers, the relay to a bus and the embedded command line see plain
///   events. A field whose key was destroyed reads as `{"$forgotten": true}`, which decodes as
///   [`Personal::Forgotten`](super::Personal::Forgotten). A ciphertext that does not
///   authenticate (altered in the database) is an [`Error::Corrupt`] for its row.
/// - Payloads stored in plain (before the field became personal, or before the store was
///   protected) read as they are.
///
/// Keys are cached in the wrapper once unwrapped; [`forget`](Self::forget) evicts them. Another
/// process forgetting a subject is seen here only for keys not cached yet: run erasure where
/// the readers run, or restart them.
pub struct ProtectedStore<S, K> {
    inner: S,
    shared: Arc<Shared<K>>,
}

struct Shared<K> {
    keys: K,
    /// Personal fields by stored event name (and alias), with the schema version that declares
    /// them, from the registry.
    personal: HashMap<&'static str, (u32, Vec<PersonalField>)>,
    /// Unwrapped keys by id (`None`: destroyed).
    by_id: Mutex<HashMap<Uuid, Option<DataKey>>>,
    /// Current key by subject.
    current: Mutex<HashMap<String, DataKey>>,
    hooks: Vec<Box<dyn ErasureHook>>,
}

impl<S: Clone, K> Clone for ProtectedStore<S, K> {
    fn clone(&self) -> Self {
        ProtectedStore {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, K: fmt::Debug> fmt::Debug for ProtectedStore<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtectedStore")
            .field("inner", &self.inner)
            .field("keys", &self.shared.keys)
            .field("hooks", &self.shared.hooks.len())
            .finish_non_exhaustive()
    }
}

/// What [`ProtectedStore::forget`] did, as handed to each [`ErasureHook`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Erasure {
    /// The forgotten subject.
    pub subject: String,
    /// How many live keys were destroyed (0 when the subject was already forgotten).
    pub keys_destroyed: u64,
    /// The streams holding events encrypted for the subject: their snapshots were deleted.
    pub streams: Vec<StreamId>,
}

/// Called by [`ProtectedStore::forget`] after the subject's keys are destroyed, to remove the
/// plain copies the application made: read-model rows, caches, search indexes. Runs again,
/// with the same [`Erasure`], if `forget` is called again after a failure, so make it
/// idempotent.
pub trait ErasureHook: Send + Sync {
    /// Removes what this hook keeps of `erasure.subject`.
    fn erase<'a>(&'a self, erasure: &'a Erasure) -> BoxFuture<'a, Result<()>>;
}

impl<F, Fut> ErasureHook for F
where
    F: Fn(Erasure) -> Fut + Send + Sync,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    fn erase<'a>(&'a self, erasure: &'a Erasure) -> BoxFuture<'a, Result<()>> {
        Box::pin(self(erasure.clone()))
    }
}

/// An [`ErasureHook`] that deletes the snapshots of the erased streams from a snapshot store
/// other than the event store (the event store's own snapshots are deleted by `forget`
/// itself).
#[derive(Debug)]
pub struct EraseSnapshots<T>(pub T);

impl<T: SnapshotStore> ErasureHook for EraseSnapshots<T> {
    fn erase<'a>(&'a self, erasure: &'a Erasure) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for stream in &erasure.streams {
                self.0.delete_snapshot(stream).await?;
            }
            Ok(())
        })
    }
}

impl<S: EventStore, K: KeyStore> ProtectedStore<S, K> {
    /// Protects `inner` with the keys of `keys`.
    pub fn new(inner: S, keys: K) -> Self {
        let mut personal: HashMap<&'static str, (u32, Vec<PersonalField>)> = HashMap::new();
        for event_type in EventRegistry::global().iter() {
            if event_type.personal().is_empty() {
                continue;
            }
            for name in std::iter::once(&event_type.name()).chain(event_type.aliases()) {
                // A name several types claim encrypts the fields any of them declares.
                let (version, fields) = personal
                    .entry(name)
                    .or_insert_with(|| (event_type.schema_version(), Vec::new()));
                *version = event_type.schema_version();
                for field in event_type.personal() {
                    if !fields.contains(field) {
                        fields.push(*field);
                    }
                }
            }
        }
        ProtectedStore {
            inner,
            shared: Arc::new(Shared {
                keys,
                personal,
                by_id: Mutex::default(),
                current: Mutex::default(),
                hooks: Vec::new(),
            }),
        }
    }

    /// Adds a hook [`forget`](Self::forget) calls. Hooks are set before the store is cloned or
    /// shared.
    ///
    /// # Panics
    ///
    /// If the store was cloned already.
    pub fn with_erasure_hook(mut self, hook: impl ErasureHook + 'static) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("erasure hooks are added before the ProtectedStore is cloned")
            .hooks
            .push(Box::new(hook));
        self
    }

    /// The wrapped store: what is really stored, envelopes and all.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The key store.
    pub fn keys(&self) -> &K {
        &self.shared.keys
    }

    /// Gives the subject a new current key: events appended from now on use it; the older ones
    /// still decrypt with their own key.
    pub async fn rotate(&self, subject: &str) -> Result<DataKey> {
        let key = self.shared.keys.rotate(subject).await?;
        self.shared
            .current
            .lock()
            .expect("key cache")
            .insert(subject.to_owned(), key.clone());
        Ok(key)
    }

    /// Forgets a data subject: destroys every key of theirs, deletes the snapshots of the
    /// streams holding events encrypted for them (a snapshot holds plain values), then calls
    /// each [`ErasureHook`]. The events stay; their personal fields read as
    /// [`Personal::Forgotten`](super::Personal::Forgotten) from then on, everywhere.
    ///
    /// Finding the streams reads the whole log once (erasure is rare; the log is not
    /// decrypted, envelopes are matched by key id). Calling it again is harmless: after a
    /// failure, call it again to finish.
    pub async fn forget(&self, subject: &str) -> Result<Erasure>
    where
        S: SnapshotStore,
    {
        let key_ids = self.shared.keys.key_ids(subject).await?;
        let streams = self.streams_encrypted_with(&key_ids).await?;
        let keys_destroyed = self.shared.keys.forget(subject).await?;
        {
            let mut by_id = self.shared.by_id.lock().expect("key cache");
            for id in &key_ids {
                by_id.insert(*id, None);
            }
            self.shared
                .current
                .lock()
                .expect("key cache")
                .remove(subject);
        }
        for stream in &streams {
            self.inner.delete_snapshot(stream).await?;
        }
        let erasure = Erasure {
            subject: subject.to_owned(),
            keys_destroyed,
            streams,
        };
        for hook in &self.shared.hooks {
            hook.erase(&erasure).await?;
        }
        tracing::info!(
            keys_destroyed,
            streams = erasure.streams.len(),
            "data subject forgotten"
        );
        Ok(erasure)
    }

    async fn streams_encrypted_with(&self, key_ids: &[Uuid]) -> Result<Vec<StreamId>> {
        if key_ids.is_empty() {
            return Ok(Vec::new());
        }
        // Every committed event, including those of transactions still finishing (PostgreSQL).
        let head = self.inner.log_head().await?;
        self.inner
            .wait_for(head.last, Duration::from_secs(30))
            .await?;
        let needles: Vec<String> = key_ids.iter().map(|id| format!("\"{id}\"")).collect();
        let mut streams = BTreeSet::new();
        let mut events = self.inner.read_all(ReadAll::from_start());
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(error) if error.position().is_some() => continue,
                Err(error) => return Err(error),
            };
            if needles.iter().any(|n| event.payload.contains(n.as_str())) {
                streams.insert(event.stream);
            }
        }
        Ok(streams.into_iter().collect())
    }

    async fn current_key(&self, subject: &str) -> Result<DataKey> {
        if let Some(key) = self.shared.current.lock().expect("key cache").get(subject) {
            return Ok(key.clone());
        }
        let key = self.shared.keys.get_or_create(subject).await?;
        self.shared
            .current
            .lock()
            .expect("key cache")
            .insert(subject.to_owned(), key.clone());
        Ok(key)
    }

    async fn key(&self, id: Uuid) -> Result<KeyState> {
        if let Some(cached) = self.shared.by_id.lock().expect("key cache").get(&id) {
            return Ok(match cached {
                Some(key) => KeyState::Live(key.clone()),
                None => KeyState::Destroyed,
            });
        }
        let state = self.shared.keys.get(id).await?;
        let cached = match &state {
            KeyState::Live(key) => Some(key.clone()),
            KeyState::Destroyed => None,
            KeyState::Unknown => return Ok(state),
        };
        self.shared
            .by_id
            .lock()
            .expect("key cache")
            .insert(id, cached);
        Ok(state)
    }

    /// Encrypts the personal fields of one event about to be appended.
    async fn encrypt(&self, stream: &StreamId, mut event: NewEvent) -> Result<NewEvent> {
        // The declaration is the current schema's: a payload of an older version (written by
        // `NewEvent::from_json`, an import) is stored as given, as its upcasters expect it.
        let Some((_, fields)) = self
            .shared
            .personal
            .get(event.event_type.as_ref())
            .filter(|(version, _)| *version == event.schema_version)
        else {
            return Ok(event);
        };
        let invalid = |reason: String| Error::InvalidInput {
            stream: stream.clone(),
            reason,
        };
        let mut payload: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&event.payload).map_err(|_| {
                invalid(format!(
                    "event `{}` has personal fields but its payload is not a JSON object",
                    event.event_type
                ))
            })?;
        for field in fields {
            let Some(value) = payload.get(field.field()) else {
                continue;
            };
            if Envelope::is_envelope(value) || is_forgotten_value(value) {
                continue;
            }
            let subject = match payload.get(field.subject()) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    v.to_string()
                }
                _ => {
                    return Err(invalid(format!(
                        "personal field `{}` of event `{}` needs its subject in field `{}`, a \
                         non-empty string or a number",
                        field.field(),
                        event.event_type,
                        field.subject()
                    )));
                }
            };
            let key = self.current_key(&subject).await?;
            let plain = value.to_string();
            payload.insert(
                field.field().to_owned(),
                key.encrypt(field.field(), plain.as_bytes()),
            );
        }
        event.payload = serde_json::Value::Object(payload).to_string();
        Ok(event)
    }

    /// Replaces the envelopes of a stored event by plain values (or the forgotten marker).
    async fn decrypt(&self, mut event: RecordedEvent) -> Result<RecordedEvent> {
        // The cheap test first: most events carry no envelope.
        if !event.payload.contains("\"$enc\"") {
            return Ok(event);
        }
        let corrupt = |reason: String| Error::Corrupt {
            stream: event.stream.clone(),
            position: Some(event.position),
            version: Some(event.version),
            event_type: Some(event.event_type.clone()),
            reason,
        };
        let Ok(mut payload) =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&event.payload)
        else {
            return Ok(event);
        };
        for (field, value) in payload.iter_mut() {
            if !Envelope::is_envelope(value) {
                continue;
            }
            let envelope = Envelope::parse(value)
                .map_err(|reason| corrupt(format!("personal field `{field}`: {reason}")))?;
            *value = match self.key(envelope.key_id).await? {
                KeyState::Live(key) => {
                    let plain = key.decrypt(field, &envelope).ok_or_else(|| {
                        corrupt(format!(
                            "personal field `{field}` does not authenticate: its ciphertext \
                             was altered"
                        ))
                    })?;
                    serde_json::from_slice(&plain).map_err(|_| {
                        corrupt(format!("personal field `{field}` decrypts to no JSON"))
                    })?
                }
                KeyState::Destroyed => forgotten_value(),
                KeyState::Unknown => {
                    return Err(corrupt(format!(
                        "personal field `{field}` is encrypted with key {}, which this key \
                         store does not know",
                        envelope.key_id
                    )));
                }
            };
        }
        event.payload = serde_json::Value::Object(payload).to_string();
        Ok(event)
    }
}

impl<S: EventStore, K: KeyStore> EventStore for ProtectedStore<S, K> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let mut encrypted = Vec::with_capacity(events.len());
        for event in events {
            encrypted.push(self.encrypt(stream, event).await?);
        }
        self.inner.append(stream, expected, encrypted).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        query: StreamQuery,
    ) -> Result<Vec<RecordedEvent>> {
        let events = self.inner.read_stream(stream, query).await?;
        let mut plain = Vec::with_capacity(events.len());
        for event in events {
            plain.push(self.decrypt(event).await?);
        }
        Ok(plain)
    }

    fn read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent>> {
        self.inner
            .read_all(query)
            .then(move |item| async move {
                match item {
                    Ok(event) => self.decrypt(event).await,
                    Err(error) => Err(error),
                }
            })
            .boxed()
    }

    fn stream_version(&self, stream: &StreamId) -> impl Future<Output = Result<u64>> + Send {
        self.inner.stream_version(stream)
    }

    fn stream_exists(&self, stream: &StreamId) -> impl Future<Output = Result<bool>> + Send {
        self.inner.stream_exists(stream)
    }

    fn log_head(&self) -> impl Future<Output = Result<LogHead>> + Send {
        self.inner.log_head()
    }

    fn count(&self, query: ReadAll) -> impl Future<Output = Result<u64>> + Send {
        self.inner.count(query)
    }

    fn watch_appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watch_appends()
    }

    fn wait_for(
        &self,
        position: Position,
        timeout: Duration,
    ) -> impl Future<Output = Result<()>> + Send {
        self.inner.wait_for(position, timeout)
    }
}

/// Snapshots go to the wrapped store as they are: a snapshot holds the aggregate's plain state,
/// which is why [`ProtectedStore::forget`] deletes the snapshots of the subject's streams.
impl<S: SnapshotStore, K: Send + Sync> SnapshotStore for ProtectedStore<S, K> {
    fn save_snapshot(&self, snapshot: &Snapshot) -> impl Future<Output = Result<()>> + Send {
        self.inner.save_snapshot(snapshot)
    }

    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>>> + Send {
        self.inner.load_snapshot(stream)
    }

    fn delete_snapshot(&self, stream: &StreamId) -> impl Future<Output = Result<bool>> + Send {
        self.inner.delete_snapshot(stream)
    }
}

/// Checkpoints and dead letters go to the wrapped store, so that the subscription manager runs
/// projections over a `ProtectedStore` (they read decrypted events).
impl<S: CheckpointStore, K: Send + Sync> CheckpointStore for ProtectedStore<S, K> {
    fn checkpoint(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Option<Position>>> + Send {
        self.inner.checkpoint(projection)
    }

    fn save_checkpoint(
        &self,
        projection: &str,
        previous: Option<Position>,
        position: Position,
    ) -> impl Future<Output = Result<()>> + Send {
        self.inner.save_checkpoint(projection, previous, position)
    }

    fn delete_checkpoint(&self, projection: &str) -> impl Future<Output = Result<()>> + Send {
        self.inner.delete_checkpoint(projection)
    }

    fn add_dead_letter(&self, letter: &DeadLetter) -> impl Future<Output = Result<()>> + Send {
        self.inner.add_dead_letter(letter)
    }

    fn dead_letters(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send {
        self.inner.dead_letters(projection)
    }

    fn remove_dead_letter(
        &self,
        projection: &str,
        position: Position,
    ) -> impl Future<Output = Result<bool>> + Send {
        self.inner.remove_dead_letter(projection, position)
    }

    fn lease(&self, projection: &str) -> impl Future<Output = Result<Option<Lease>>> + Send {
        self.inner.lease(projection)
    }
}

/// Transactions go to the wrapped store, so that SQL projections (`Subscriptions::add_sql`) run
/// over a `ProtectedStore` too: they read decrypted events, and write their rows and checkpoint
/// in one transaction of the wrapped store's database.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl<S, K> crate::checkpoint::TransactionalStore for ProtectedStore<S, K>
where
    S: crate::checkpoint::TransactionalStore,
    K: KeyStore + 'static,
{
    type Database = S::Database;

    fn begin(
        &self,
    ) -> impl Future<Output = Result<crate::projection::Transaction<Self::Database>>> + Send {
        self.inner.begin()
    }

    fn save_checkpoint_in<'a>(
        tx: &'a mut crate::projection::Transaction<Self::Database>,
        projection: &'a str,
        previous: Option<Position>,
        position: Position,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        S::save_checkpoint_in(tx, projection, previous, position)
    }

    fn add_dead_letter_in<'a>(
        tx: &'a mut crate::projection::Transaction<Self::Database>,
        letter: &'a DeadLetter,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        S::add_dead_letter_in(tx, letter)
    }

    fn remove_dead_letter_in<'a>(
        tx: &'a mut crate::projection::Transaction<Self::Database>,
        projection: &'a str,
        position: Position,
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        S::remove_dead_letter_in(tx, projection, position)
    }
}
