//! [`ProtectedStore`]: the event store wrapper that encrypts personal fields on append, decrypts
//! them on every read, and forgets subjects.

use super::cipher::{DataKey, Envelope};
use super::keys::{KeyState, KeyStore};
use super::sealed::{self, KeyRef};
use super::{PersonalField, forgotten_value};
use crate::checkpoint::{CheckpointStore, DeadLetter, Lease};
use crate::error::{Error, Result};
use crate::event::{EventView, NewEvent, RecordedEvent};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{AppendResult, EventStore, LogHead, ReadAll, StreamQuery};
use crate::stream::{ExpectedVersion, Position, StreamId};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use lru::LruCache;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// An [`EventStore`] that keeps the `#[personal]` fields of events encrypted, one key per data
/// subject from a [`KeyStore`], and can [`forget`](Self::forget) a subject.
///
/// - On append, each personal field of a registered event type (looked up by stored name among
///   the [`PersonalEventType`](super::PersonalEventType)s) is replaced by an envelope
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
/// - Only declared personal fields are decrypted: an envelope-shaped value anywhere else is
///   the application's data and reads as it was written. Every declared field of the current
///   schema version is encrypted on append, whatever its value holds (a map with a `"$enc"`
///   key included), so user data can never pass for an envelope.
/// - Payloads stored in plain (before the field became personal, or before the store was
///   protected) read as they are.
/// - Snapshots of a stream holding personal data are sealed: encrypted so that they open only
///   with the keys of every subject of the stream ([`forget`](Self::forget) makes them
///   unreadable, in every copy of the database); a snapshot that does not open reads as none.
///
/// Subjects are named within their tenant: the key of an event's subject is the key of (the
/// event's tenant, the subject), so two tenants' subjects of one id never share a key, and a
/// `ProtectedStore` over a [`TenantStore`](crate::tenant::TenantStore) forgets its own
/// tenant's subjects only.
///
/// Unwrapped keys are cached in the wrapper: at most [`DEFAULT_KEY_CACHE`] keys, each for at
/// most [`DEFAULT_KEY_TTL`] ([`with_key_cache`](Self::with_key_cache) sets both), zeroed when
/// evicted. [`forget`](Self::forget) evicts the subject's keys here at once; another process
/// sharing the key store stops using a forgotten key when its cached copy expires.
pub struct ProtectedStore<S, K> {
    inner: S,
    shared: Arc<Shared<K>>,
}

/// How many unwrapped keys a [`ProtectedStore`] keeps by default.
pub const DEFAULT_KEY_CACHE: usize = 10_000;

/// How long a [`ProtectedStore`] uses a cached key by default before it asks the key store
/// again: the longest another process may go on decrypting with a key this one forgot.
pub const DEFAULT_KEY_TTL: Duration = Duration::from_secs(30);

struct Shared<K> {
    keys: K,
    /// Personal fields by stored event name (and alias), with the schema version that declares
    /// them, from the registry.
    personal: HashMap<&'static str, (u32, Vec<PersonalField>)>,
    cache: KeyCache,
    hooks: Vec<Box<dyn ErasureHook>>,
}

/// A cached key by id: when it was read, its tenant, the key (`None`: destroyed).
type CachedKey = (Instant, Option<String>, Option<DataKey>);
/// A subject: its tenant and its id.
type SubjectSlot = (Option<String>, String);

/// Unwrapped keys, bounded in number and age.
struct KeyCache {
    ttl: Duration,
    by_id: Option<Mutex<LruCache<Uuid, CachedKey>>>,
    /// Current key by subject, with when it was read.
    current: Option<Mutex<LruCache<SubjectSlot, (Instant, DataKey)>>>,
}

impl KeyCache {
    fn new(capacity: usize, ttl: Duration) -> Self {
        let capacity = NonZeroUsize::new(capacity).filter(|_| !ttl.is_zero());
        KeyCache {
            ttl,
            by_id: capacity.map(|c| Mutex::new(LruCache::new(c))),
            current: capacity.map(|c| Mutex::new(LruCache::new(c))),
        }
    }

    fn fresh(&self, at: Instant) -> bool {
        at.elapsed() < self.ttl
    }

    fn key(&self, tenant: Option<&str>, id: Uuid) -> Option<KeyState> {
        let mut cache = self.by_id.as_ref()?.lock().expect("key cache");
        let (at, owner, key) = cache.get(&id)?;
        if owner.as_deref() != tenant {
            return Some(KeyState::Unknown);
        }
        // A destroyed key never comes back: that answer does not age.
        match key {
            None => Some(KeyState::Destroyed),
            Some(key) if self.fresh(*at) => Some(KeyState::Live(key.clone())),
            Some(_) => {
                cache.pop(&id);
                None
            }
        }
    }

    fn put_key(&self, tenant: Option<&str>, id: Uuid, key: Option<DataKey>) {
        if let Some(cache) = &self.by_id {
            let owner = tenant.map(str::to_owned);
            cache
                .lock()
                .expect("key cache")
                .put(id, (Instant::now(), owner, key));
        }
    }

    fn current(&self, tenant: Option<&str>, subject: &str) -> Option<DataKey> {
        let mut cache = self.current.as_ref()?.lock().expect("key cache");
        let slot = (tenant.map(str::to_owned), subject.to_owned());
        match cache.get(&slot) {
            Some((at, key)) if self.fresh(*at) => Some(key.clone()),
            Some(_) => {
                cache.pop(&slot);
                None
            }
            None => None,
        }
    }

    fn put_current(&self, key: &DataKey) {
        if let Some(cache) = &self.current {
            let slot = (key.tenant().map(str::to_owned), key.subject().to_owned());
            cache
                .lock()
                .expect("key cache")
                .put(slot, (Instant::now(), key.clone()));
        }
    }

    fn forget(&self, tenant: Option<&str>, subject: &str, ids: &[Uuid]) {
        for id in ids {
            self.put_key(tenant, *id, None);
        }
        if let Some(cache) = &self.current {
            let slot = (tenant.map(str::to_owned), subject.to_owned());
            cache.lock().expect("key cache").pop(&slot);
        }
    }
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
        for event_type in super::PersonalEventType::all() {
            for name in std::iter::once(&event_type.name()).chain(event_type.aliases()) {
                // A name several types claim encrypts the fields any of them declares.
                let (version, fields) = personal
                    .entry(name)
                    .or_insert_with(|| (event_type.schema_version(), Vec::new()));
                *version = event_type.schema_version();
                for field in event_type.fields() {
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
                cache: KeyCache::new(DEFAULT_KEY_CACHE, DEFAULT_KEY_TTL),
                hooks: Vec::new(),
            }),
        }
    }

    /// Sets the key cache: at most `capacity` unwrapped keys, each used for at most `ttl`
    /// before the key store is asked again (a capacity or a time of 0: no cache, every read
    /// asks the key store). Set before the store is cloned or shared.
    ///
    /// # Panics
    ///
    /// If the store was cloned already.
    pub fn with_key_cache(mut self, capacity: usize, ttl: Duration) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("the key cache is set before the ProtectedStore is cloned")
            .cache = KeyCache::new(capacity, ttl);
        self
    }

    /// The tenant whose subjects this store's [`forget`](Self::forget) names: the wrapped
    /// store's, if it is scoped to one.
    fn tenant(&self) -> Option<&str> {
        self.inner.tenant_scope()
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
        let key = self.shared.keys.rotate(self.tenant(), subject).await?;
        self.shared.cache.put_current(&key);
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
        self.forget_in(self.tenant(), subject).await
    }

    /// [`forget`](Self::forget) for a subject of `tenant` (`None`: of the events with no
    /// tenant), from a store that is not scoped to it: what an operator's erasure tool calls.
    /// A `ProtectedStore` scoped to a tenant refuses another tenant with
    /// [`Error::TenantMismatch`].
    pub async fn forget_in(&self, tenant: Option<&str>, subject: &str) -> Result<Erasure>
    where
        S: SnapshotStore,
    {
        if let Some(scope) = self.tenant()
            && tenant != Some(scope)
        {
            return Err(Error::InvalidConfig(format!(
                "a ProtectedStore scoped to tenant `{scope}` forgets that tenant's subjects only"
            )));
        }
        let key_ids = self.shared.keys.key_ids(tenant, subject).await?;
        let streams = self.streams_encrypted_with(&key_ids).await?;
        let keys_destroyed = self.shared.keys.forget(tenant, subject).await?;
        self.shared.cache.forget(tenant, subject, &key_ids);
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
            // The substring test first; then the key ids of the declared fields' envelopes.
            if needles.iter().any(|n| event.payload.contains(n.as_str())) {
                let mut keys = BTreeSet::new();
                self.envelope_keys(&event, &mut keys);
                if keys.iter().any(|k| key_ids.contains(&k.key_id)) {
                    streams.insert(event.stream);
                }
            }
        }
        Ok(streams.into_iter().collect())
    }

    /// The personal fields declared by the type stored under `event_type`, and the schema
    /// version that declares them.
    fn declared(&self, event_type: &str) -> Option<&(u32, Vec<PersonalField>)> {
        self.shared.personal.get(event_type)
    }

    /// The keys of the envelopes in `event`'s declared personal fields.
    fn envelope_keys(&self, event: &RecordedEvent, into: &mut BTreeSet<KeyRef>) {
        let Some((_, fields)) = self.declared(&event.event_type) else {
            return;
        };
        if !event.payload.contains("\"$enc\"") {
            return;
        }
        let Ok(payload) =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&event.payload)
        else {
            return;
        };
        for field in fields {
            if let Some(value) = payload.get(field.field())
                && Envelope::is_envelope(value)
                && let Ok(envelope) = Envelope::parse(value)
            {
                into.insert(KeyRef {
                    tenant: event.metadata.tenant_id.clone(),
                    key_id: envelope.key_id,
                });
            }
        }
    }

    async fn current_key(&self, tenant: Option<&str>, subject: &str) -> Result<DataKey> {
        if let Some(key) = self.shared.cache.current(tenant, subject) {
            return Ok(key);
        }
        let key = self.shared.keys.get_or_create(tenant, subject).await?;
        self.shared.cache.put_current(&key);
        self.shared
            .cache
            .put_key(tenant, key.id(), Some(key.clone()));
        Ok(key)
    }

    async fn key(&self, tenant: Option<&str>, id: Uuid) -> Result<KeyState> {
        if let Some(cached) = self.shared.cache.key(tenant, id) {
            return Ok(cached);
        }
        let state = self.shared.keys.get(tenant, id).await?;
        match &state {
            KeyState::Live(key) => self.shared.cache.put_key(tenant, id, Some(key.clone())),
            KeyState::Destroyed => self.shared.cache.put_key(tenant, id, None),
            KeyState::Unknown => {}
        }
        Ok(state)
    }

    /// The keys a snapshot of `stream` at `version` must be sealed with: those of the
    /// envelopes in its events up to `version`, read from the last sealed snapshot on.
    async fn snapshot_keys(&self, stream: &StreamId, version: u64) -> Result<BTreeSet<KeyRef>>
    where
        S: SnapshotStore,
    {
        let mut keys = BTreeSet::new();
        if self.shared.personal.is_empty() {
            return Ok(keys);
        }
        let mut from = 1;
        if let Some(previous) = self.inner.load_snapshot(stream).await?
            && previous.version() <= version
            && let Some(sealed) = sealed::parse(previous.state())
        {
            keys.extend(sealed.shares.into_iter().map(|(key, _)| key));
            from = previous.version() + 1;
        }
        if from <= version {
            let query = StreamQuery::from_version(from).to_version(version);
            for event in self.inner.read_stream(stream, query).await? {
                self.envelope_keys(&event, &mut keys);
            }
        }
        Ok(keys)
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
        let tenant = event
            .metadata
            .tenant_id
            .clone()
            .or_else(|| self.tenant().map(str::to_owned));
        for field in fields {
            // Every declared value is encrypted, whatever it holds: user data never passes for
            // an envelope.
            let Some(value) = payload.get(field.field()) else {
                continue;
            };
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
            let key = self.current_key(tenant.as_deref(), &subject).await?;
            let plain = value.to_string();
            payload.insert(
                field.field().to_owned(),
                key.encrypt(field.field(), plain.as_bytes()),
            );
        }
        event.payload = serde_json::Value::Object(payload).to_string();
        Ok(event)
    }

    /// The envelopes of an event's declared personal fields, with where each stands in the
    /// payload. Empty for the events without any (most), after two cheap tests.
    fn sealed_fields(
        &self,
        event: &EventView<'_>,
    ) -> Result<Vec<(&'static str, Envelope, std::ops::Range<usize>)>> {
        let Some((_, fields)) = self.declared(event.event_type) else {
            return Ok(Vec::new());
        };
        if !event.payload.contains("\"$enc\"") {
            return Ok(Vec::new());
        }
        // The top-level fields as raw text, borrowed from the payload: only the declared
        // fields' envelopes are parsed, and the plain values are later spliced in where they
        // stood, so the rest of the payload is neither parsed into values nor written again.
        let Some(raw) = TopLevel::read(event.payload) else {
            return Ok(Vec::new());
        };
        let mut sealed = Vec::new();
        for field in fields.iter().map(PersonalField::field) {
            // Only the declared fields: an envelope-shaped value elsewhere is the
            // application's own data.
            let Some(text) = raw.get(field) else {
                continue;
            };
            if !text.contains("\"$enc\"") {
                continue;
            }
            let Some(envelope) = Envelope::parse_text(text) else {
                continue;
            };
            let envelope = envelope.map_err(|reason| {
                corrupt_view(event, format!("personal field `{field}`: {reason}"))
            })?;
            // Where the raw text lies in the payload it was borrowed from.
            let start = text.as_ptr() as usize - event.payload.as_ptr() as usize;
            sealed.push((field, envelope, start..start + text.len()));
        }
        Ok(sealed)
    }

    /// The payload with each sealed field replaced by its plain value, given each field's key
    /// (or what happened to it).
    fn open_fields(
        event: &EventView<'_>,
        sealed: &[(&'static str, Envelope, std::ops::Range<usize>)],
        keys: Vec<Result<KeyState>>,
    ) -> Result<String> {
        let mut splices: Vec<(std::ops::Range<usize>, String)> = Vec::with_capacity(sealed.len());
        for ((field, envelope, range), key) in sealed.iter().zip(keys) {
            let plain = match key {
                Ok(KeyState::Live(key)) => {
                    let plain = key.decrypt(field, envelope).ok_or_else(|| {
                        corrupt_view(
                            event,
                            format!(
                                "personal field `{field}` does not authenticate: its ciphertext \
                                 was altered"
                            ),
                        )
                    })?;
                    String::from_utf8(plain)
                        .ok()
                        .filter(|text| serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok())
                        .ok_or_else(|| {
                            corrupt_view(
                                event,
                                format!("personal field `{field}` decrypts to no JSON"),
                            )
                        })?
                }
                Ok(KeyState::Destroyed) => forgotten_value().to_string(),
                Ok(KeyState::Unknown) => {
                    return Err(corrupt_view(
                        event,
                        format!(
                            "personal field `{field}` is encrypted with key {}, which this key \
                             store does not know",
                            envelope.key_id
                        ),
                    ));
                }
                // One damaged key row is that row's problem, not every reader's: a wrong
                // master key is refused when the key store opens.
                Err(Error::MasterKey { key_id }) => {
                    return Err(corrupt_view(
                        event,
                        format!(
                            "personal field `{field}`: its key {key_id} does not unwrap under \
                             the master key (an altered keys table, or a key wrapped by another \
                             master key)"
                        ),
                    ));
                }
                Err(error) => return Err(error),
            };
            splices.push((range.clone(), plain));
        }
        splices.sort_by_key(|(range, _)| range.start);
        let mut payload = String::with_capacity(event.payload.len());
        let mut at = 0;
        for (range, plain) in &splices {
            payload.push_str(&event.payload[at..range.start]);
            payload.push_str(plain);
            at = range.end;
        }
        payload.push_str(&event.payload[at..]);
        Ok(payload)
    }

    /// Replaces the envelopes of a stored event by plain values (or the forgotten marker).
    async fn decrypt(&self, mut event: RecordedEvent) -> Result<RecordedEvent> {
        let sealed = self.sealed_fields(&event.view())?;
        if sealed.is_empty() {
            return Ok(event);
        }
        let tenant = event.metadata.tenant_id.as_deref();
        let mut keys = Vec::with_capacity(sealed.len());
        for (_, envelope, _) in &sealed {
            keys.push(self.key(tenant, envelope.key_id).await);
        }
        event.payload = Self::open_fields(&event.view(), &sealed, keys)?;
        Ok(event)
    }

    /// What [`decrypt`](Self::decrypt) would make of a view, from cached keys only: `None`
    /// when a key is not cached, or cannot be checked against the event's tenant without its
    /// metadata (a store not scoped to a tenant reading a tenant's key).
    fn decrypt_cached(&self, event: &EventView<'_>) -> Option<Result<Option<String>>> {
        let sealed = match self.sealed_fields(event) {
            Ok(sealed) if sealed.is_empty() => return Some(Ok(None)),
            Ok(sealed) => sealed,
            Err(error) => return Some(Err(error)),
        };
        // In a fold the events have no metadata: a scoped store's events are its tenant's; an
        // unscoped store's, of no tenant as far as the cache can tell.
        let tenant = self.tenant();
        let mut keys = Vec::with_capacity(sealed.len());
        for (_, envelope, _) in &sealed {
            match self.shared.cache.key(tenant, envelope.key_id)? {
                KeyState::Unknown => return None,
                state => keys.push(Ok(state)),
            }
        }
        Some(Self::open_fields(event, &sealed, keys).map(Some))
    }
}

/// The top-level fields of a JSON object as raw text borrowed from it: names without escapes
/// are read without allocating (the usual case: struct field names), the others owned.
enum TopLevel<'a> {
    Borrowed(Vec<(&'a str, &'a serde_json::value::RawValue)>),
    Owned(HashMap<String, &'a serde_json::value::RawValue>),
}

impl<'a> TopLevel<'a> {
    fn read(payload: &'a str) -> Option<Self> {
        struct Fields<'a>(Vec<(&'a str, &'a serde_json::value::RawValue)>);
        impl<'de> serde::Deserialize<'de> for Fields<'de> {
            fn deserialize<D: serde::Deserializer<'de>>(
                deserializer: D,
            ) -> std::result::Result<Self, D::Error> {
                struct Visit;
                impl<'de> serde::de::Visitor<'de> for Visit {
                    type Value = Fields<'de>;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a JSON object")
                    }
                    fn visit_map<M: serde::de::MapAccess<'de>>(
                        self,
                        mut map: M,
                    ) -> std::result::Result<Self::Value, M::Error> {
                        let mut fields = Vec::new();
                        while let Some(name) = map.next_key::<&'de str>()? {
                            fields.push((name, map.next_value()?));
                        }
                        Ok(Fields(fields))
                    }
                }
                deserializer.deserialize_map(Visit)
            }
        }
        if let Ok(Fields(fields)) = serde_json::from_str::<Fields<'a>>(payload) {
            return Some(TopLevel::Borrowed(fields));
        }
        serde_json::from_str(payload).ok().map(TopLevel::Owned)
    }

    /// The raw text of field `name` (the last one of that name, as a map would keep).
    fn get(&self, name: &str) -> Option<&'a str> {
        match self {
            TopLevel::Borrowed(fields) => fields
                .iter()
                .rev()
                .find(|(field, _)| *field == name)
                .map(|(_, value)| value.get()),
            TopLevel::Owned(fields) => fields.get(name).map(|value| value.get()),
        }
    }
}

/// A damaged row, from what a view says of it.
fn corrupt_view(event: &EventView<'_>, reason: String) -> Error {
    Error::Corrupt {
        stream: event.stream.clone(),
        position: Some(event.position),
        version: Some(event.version),
        event_type: Some(event.event_type.to_owned()),
        reason,
    }
}

impl<S, K> crate::tenant::TenantStore<ProtectedStore<S, K>>
where
    S: EventStore + SnapshotStore,
    K: KeyStore,
{
    /// Forgets a data subject of this tenant ([`ProtectedStore::forget`]): the same subject id
    /// in another tenant is another subject, and keeps its keys.
    pub async fn forget(&self, subject: &str) -> Result<Erasure> {
        self.inner().forget_in(Some(self.tenant()), subject).await
    }
}

/// A protected store scoped to a tenant: `protected.for_tenant(t)` reads and writes `t`'s
/// events, encrypted under `t`'s subjects' keys (the tenant view stamps the tenant before the
/// wrapper encrypts).
impl<S: crate::tenant::Tenancy, K: KeyStore> crate::tenant::Tenancy for ProtectedStore<S, K> {
    fn scoped_session(&self, tenant: &Arc<str>) -> Self {
        ProtectedStore {
            inner: self.inner.scoped_session(tenant),
            shared: Arc::clone(&self.shared),
        }
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

    /// The wrapped store's lean fold, each event decrypted with the cached keys; from the first
    /// event whose key is not cached, the rest of the stream is read whole and decrypted as
    /// [`read_stream`](EventStore::read_stream) does (keys fetched, the tenant checked).
    async fn fold_stream<F>(
        &self,
        stream: &StreamId,
        query: StreamQuery,
        mut apply: F,
    ) -> Result<()>
    where
        F: FnMut(EventView<'_>) -> Result<()> + Send,
    {
        let mut applied = 0usize;
        let mut rest_from: Option<u64> = None;
        self.inner
            .fold_stream(stream, query.clone(), |view| {
                if rest_from.is_some() {
                    return Ok(());
                }
                match self.decrypt_cached(&view) {
                    None => {
                        rest_from = Some(view.version);
                        Ok(())
                    }
                    Some(Ok(None)) => {
                        applied += 1;
                        apply(view)
                    }
                    Some(Ok(Some(payload))) => {
                        applied += 1;
                        apply(EventView {
                            payload: &payload,
                            ..view
                        })
                    }
                    Some(Err(error)) => Err(error),
                }
            })
            .await?;
        let Some(from) = rest_from else {
            return Ok(());
        };
        let rest = StreamQuery {
            from_version: from,
            backwards: false,
            limit: query.limit.map(|limit| limit.saturating_sub(applied)),
            ..query
        };
        for event in self.read_stream(stream, rest).await? {
            apply(event.view())?;
        }
        Ok(())
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

    fn tenant_scope(&self) -> Option<&str> {
        self.inner.tenant_scope()
    }

    fn wait_for(
        &self,
        position: Position,
        timeout: Duration,
    ) -> impl Future<Output = Result<()>> + Send {
        self.inner.wait_for(position, timeout)
    }
}

/// Snapshots of streams holding personal data are sealed under the keys of every subject of
/// the stream (see [`ProtectedStore`]); the others go to the wrapped store as they are.
impl<S: EventStore + SnapshotStore, K: KeyStore> SnapshotStore for ProtectedStore<S, K> {
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        let stream = snapshot.stream();
        let refs = self.snapshot_keys(stream, snapshot.version()).await?;
        if refs.is_empty() {
            return self.inner.save_snapshot(snapshot).await;
        }
        let mut keys = Vec::with_capacity(refs.len());
        for reference in &refs {
            match self
                .key(reference.tenant.as_deref(), reference.key_id)
                .await?
            {
                KeyState::Live(key) => keys.push(key),
                // A subject of the stream was forgotten: the state may still hold what was
                // read before, so it is not written (the events replay instead).
                _ => {
                    tracing::debug!(%stream, "snapshot not taken: a subject of the stream was forgotten");
                    return Ok(());
                }
            }
        }
        let state = sealed::seal_state(
            &keys,
            stream,
            snapshot.version(),
            snapshot.state_version(),
            snapshot.state(),
        );
        let sealed = Snapshot::new(
            stream.clone(),
            snapshot.version(),
            snapshot.state_version(),
            state,
        )
        .taken_at(snapshot.time());
        self.inner.save_snapshot(&sealed).await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        let Some(snapshot) = self.inner.load_snapshot(stream).await? else {
            return Ok(None);
        };
        let Some(sealed) = sealed::parse(snapshot.state()) else {
            return Ok(Some(snapshot));
        };
        let mut keys = Vec::with_capacity(sealed.shares.len());
        for (reference, _) in &sealed.shares {
            match self
                .key(reference.tenant.as_deref(), reference.key_id)
                .await
            {
                Ok(KeyState::Live(key)) => keys.push(key),
                // Forgotten, unknown or damaged: no snapshot; the events replay.
                Ok(_) | Err(Error::MasterKey { .. }) => return Ok(None),
                Err(error) => return Err(error),
            }
        }
        let version = snapshot.version();
        let state_version = snapshot.state_version();
        Ok(sealed
            .open(&keys, stream, version, state_version)
            .map(|state| {
                Snapshot::new(stream.clone(), version, state_version, state)
                    .taken_at(snapshot.time())
            }))
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
