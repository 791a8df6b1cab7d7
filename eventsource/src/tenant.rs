//! Multi-tenancy: [`TenantStore`], a view of a store that reads and writes one tenant's events
//! only, and [`Tenancy::for_tenant`], which makes one.
//!
//! A tenant is the `tenant_id` of an event's [`Metadata`](crate::Metadata). Stream ids form
//! one namespace across tenants, and a stream belongs to the tenant of its events. Through a
//! scoped store:
//!
//! - an append stamps every event with the tenant; an event already stamped with another tenant
//!   is refused with [`Error::TenantMismatch`], and so is an append to a stream of another
//!   tenant;
//! - a stream of another tenant (or one without a tenant) reads as a stream that does not
//!   exist: no events, version 0, no snapshot; a repository over the scoped store fails to load
//!   it with [`Error::AggregateNotFound`], never with another tenant's data;
//! - global reads (`read_all`, `fold_all`, `count`) see only the tenant's events: the store's
//!   query carries the tenant filter, which the SQL stores evaluate in the database on the
//!   index `events_tenant_position`;
//! - projection checkpoints, dead letters and leases are kept under `<tenant>/<projection>`,
//!   with `%` and `/` in the tenant escaped as `%25` and `%2F`: two tenants never share one,
//!   whatever their ids and projection names, and a dead letter or a checkpoint conflict names
//!   the projection as the caller does.
//!
//! On PostgreSQL, [`PostgresEventStore::for_tenant`](Tenancy::for_tenant) also sets the
//! transaction-local setting `eventsource.tenant` in each of its transactions: connected as a
//! role that does not own the tables, the database's row-level security policies limit every
//! statement to that tenant's rows (events, snapshots, checkpoints and dead letters), whatever
//! the library does (see docs/tenancy.md). Cross-tenant reads stay possible through
//! the unscoped store only.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eventsource::Result<()> {
//! use eventsource::prelude::*;
//! use eventsource::tenant::Tenancy;
//! use eventsource::{ExpectedVersion, StreamId};
//! use eventsource::{NewEvent, StreamQuery};
//!
//! let store = InMemoryEventStore::new();
//! let acme = store.for_tenant("acme")?;
//! let globex = store.for_tenant("globex")?;
//! let stream = StreamId::new("Invoice", "7")?;
//! let event = NewEvent::from_json("Issued", 1, r#"{"cents":100}"#);
//! acme.append(&stream, ExpectedVersion::NoStream, vec![event]).await?;
//!
//! let read = acme.read_stream(&stream, StreamQuery::all()).await?;
//! assert_eq!(read[0].metadata.tenant_id.as_deref(), Some("acme"));
//! assert!(globex.read_stream(&stream, StreamQuery::all()).await?.is_empty());
//! assert_eq!(store.read_stream(&stream, StreamQuery::all()).await?.len(), 1); // unscoped
//! # Ok(())
//! # }
//! ```

use crate::checkpoint::{CheckpointStore, DeadLetter, Lease};
use crate::error::{Error, Result};
use crate::event::{NewEvent, RecordedEvent};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{
    AppendResult, EventStore, ExpectedVersion, FoldEnd, FoldItem, LogHead, MAX_ID_LEN, Position,
    ReadAll, StreamId, StreamQuery,
};
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::Duration;

/// How many times an append with [`ExpectedVersion::Any`] or [`ExpectedVersion::StreamExists`]
/// re-checks the stream's owner after concurrent writers moved it, before it reports the conflict.
const APPEND_ATTEMPTS: u32 = 10;

/// A view of the store `S` that reads and writes the events of one tenant only (see the
/// [module](self)). An [`EventStore`] itself, so repositories, projections and the
/// subscription manager work on it unchanged; also a [`SnapshotStore`] and a
/// [`CheckpointStore`] when `S` is. Clones share the store.
#[derive(Clone, Debug)]
pub struct TenantStore<S> {
    store: S,
    tenant: Arc<str>,
}

/// Stores that can be scoped to one tenant.
pub trait Tenancy: EventStore + Clone + Sized {
    /// A view of this store that reads and writes `tenant`'s events only. On PostgreSQL its
    /// transactions also set `eventsource.tenant`, for the row-level security policies.
    /// [`Error::InvalidConfig`] for an empty tenant id, one longer than
    /// [`MAX_ID_LEN`] or one holding a NUL character.
    fn for_tenant(&self, tenant: impl Into<String>) -> Result<TenantStore<Self>> {
        let tenant = checked_tenant(tenant.into())?;
        Ok(TenantStore {
            store: self.scoped_session(&tenant),
            tenant,
        })
    }

    /// This store, set to scope its database sessions to `tenant` where the database enforces
    /// tenancy itself (PostgreSQL's row-level security); the same store elsewhere.
    #[doc(hidden)]
    fn scoped_session(&self, tenant: &Arc<str>) -> Self {
        let _ = tenant;
        self.clone()
    }
}

impl Tenancy for crate::store::memory::InMemoryEventStore {}

#[cfg(feature = "sqlite")]
impl Tenancy for crate::store::sqlite::SqliteEventStore {}

#[cfg(feature = "postgres")]
impl Tenancy for crate::store::postgres::PostgresEventStore {
    fn scoped_session(&self, tenant: &Arc<str>) -> Self {
        self.with_tenant_setting(Arc::clone(tenant))
    }
}

impl Tenancy for crate::store::AnyStore {
    fn scoped_session(&self, tenant: &Arc<str>) -> Self {
        #[cfg(feature = "postgres")]
        if let crate::store::AnyStore::Postgres(store) = self {
            return crate::store::AnyStore::Postgres(store.scoped_session(tenant));
        }
        let _ = tenant;
        self.clone()
    }
}

fn checked_tenant(tenant: String) -> Result<Arc<str>> {
    if tenant.is_empty() || tenant.len() > MAX_ID_LEN || tenant.contains('\0') {
        return Err(Error::InvalidConfig(format!(
            "a tenant id must have 1 to {MAX_ID_LEN} bytes and no NUL character: `{}`",
            tenant.escape_debug()
        )));
    }
    Ok(tenant.into())
}

impl<S: EventStore> TenantStore<S> {
    /// A view of `store` scoped to `tenant`, checked by the library only: prefer
    /// [`Tenancy::for_tenant`], which on PostgreSQL also engages row-level security.
    pub fn new(store: S, tenant: impl Into<String>) -> Result<Self> {
        Ok(TenantStore {
            store,
            tenant: checked_tenant(tenant.into())?,
        })
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The store this view scopes (unscoped: it reads and writes every tenant's events).
    pub fn inner(&self) -> &S {
        &self.store
    }

    fn owns(&self, event: &RecordedEvent) -> bool {
        event.metadata.tenant_id.as_deref() == Some(&*self.tenant)
    }

    fn mismatch(&self, stream: &StreamId, reason: impl Into<String>) -> Error {
        Error::TenantMismatch {
            tenant: self.tenant.to_string(),
            stream: stream.clone(),
            reason: reason.into(),
        }
    }

    /// The stream's version as this tenant sees it: `Some(0)` for no stream, `None` for a
    /// stream of another tenant (whose last event is not this tenant's).
    async fn owned_version(&self, stream: &StreamId) -> Result<Option<u64>> {
        let last = self.store.read_stream(stream, StreamQuery::last(1)).await?;
        Ok(match last.first() {
            None => Some(0),
            Some(event) if self.owns(event) => Some(event.version),
            Some(_) => None,
        })
    }

    /// The query limited to this tenant, or `None` if it asks for another tenant's events.
    fn scoped(&self, query: &ReadAll) -> Option<ReadAll> {
        match &query.tenant_id {
            Some(tenant) if **tenant != *self.tenant => None,
            _ => Some(ReadAll {
                tenant_id: Some(self.tenant.to_string()),
                ..query.clone()
            }),
        }
    }

    /// The store's key of this tenant's projection: `<tenant>/<projection>`, with `%` and `/`
    /// in the tenant escaped (`%25`, `%2F`), so that the first `/` ends the tenant and distinct
    /// (tenant, projection) pairs never share a key. A tenant without either keeps its plain
    /// name.
    fn checkpoint_name(&self, projection: &str) -> String {
        let mut name = String::with_capacity(self.tenant.len() + 1 + projection.len());
        for c in self.tenant.chars() {
            match c {
                '%' => name.push_str("%25"),
                '/' => name.push_str("%2F"),
                c => name.push(c),
            }
        }
        name.push('/');
        name.push_str(projection);
        name
    }

    /// An error of the store about this tenant's projection, naming the projection as the
    /// caller does rather than by the store's key.
    fn own_name(&self, projection: &str, error: Error) -> Error {
        match error {
            Error::CheckpointConflict {
                expected, found, ..
            } => Error::CheckpointConflict {
                projection: projection.to_owned(),
                expected,
                found,
            },
            error => error,
        }
    }
}

const FOREIGN_STREAM: &str = "the stream belongs to another tenant";

impl<S: EventStore> EventStore for TenantStore<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        // Bad input is refused as every store refuses it, before the owner check reads.
        crate::store::validate_append(stream, &events)?;
        for event in &mut events {
            match event.metadata.tenant_id.as_deref() {
                None => event.metadata.tenant_id = Some(self.tenant.to_string()),
                Some(tenant) if tenant == &*self.tenant => {}
                Some(_) => {
                    return Err(self.mismatch(
                        stream,
                        format!("event {} is stamped with another tenant", event.event_id),
                    ));
                }
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self
                .owned_version(stream)
                .await?
                .ok_or_else(|| self.mismatch(stream, FOREIGN_STREAM))?;
            // A stream with events of this tenant stays this tenant's: the append can go as
            // asked (and a retried append is recognised by the store). A stream without events
            // may be created by another tenant meanwhile: append only if it still has none.
            let asked = if current > 0 {
                expected
            } else if expected.is_satisfied_by(0) {
                ExpectedVersion::NoStream
            } else if self.store.stream_hidden(stream).await? {
                // Another tenant's, hidden from this session (PostgreSQL's row-level security).
                return Err(self.mismatch(stream, FOREIGN_STREAM));
            } else {
                return Err(expected.conflict(stream, 0));
            };
            match self.store.append(stream, asked, events.clone()).await {
                Err(Error::Concurrency { .. }) if current == 0 => {
                    // Created meanwhile, by this tenant or another; or it exists and is hidden
                    // from this session (PostgreSQL's row-level security): still no events seen.
                    let now = self
                        .owned_version(stream)
                        .await?
                        .filter(|version| *version > 0)
                        .ok_or_else(|| self.mismatch(stream, FOREIGN_STREAM))?;
                    let retry = matches!(
                        expected,
                        ExpectedVersion::Any | ExpectedVersion::StreamExists
                    );
                    if !retry || attempt >= APPEND_ATTEMPTS {
                        return Err(expected.conflict(stream, now));
                    }
                }
                outcome => return outcome,
            }
        }
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        query: StreamQuery,
    ) -> Result<Vec<RecordedEvent>> {
        let events = self.store.read_stream(stream, query).await?;
        if events.iter().all(|event| self.owns(event)) {
            Ok(events)
        } else {
            // Another tenant's stream does not exist for this one.
            Ok(Vec::new())
        }
    }

    fn read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent>> {
        match self.scoped(&query) {
            Some(query) => self.store.read_all(query),
            None => Box::pin(futures::stream::empty()),
        }
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        Ok(self.owned_version(stream).await?.unwrap_or(0))
    }

    async fn log_head(&self) -> Result<LogHead> {
        self.store.log_head().await
    }

    fn tenant_scope(&self) -> Option<&str> {
        Some(&self.tenant)
    }

    fn watch_appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.watch_appends()
    }

    async fn fold_all<F>(&self, query: &ReadAll, apply: F) -> Result<FoldEnd>
    where
        F: for<'e> FnMut(FoldItem<'e>) -> std::ops::ControlFlow<()> + Send,
    {
        match self.scoped(query) {
            Some(query) => self.store.fold_all(&query, apply).await,
            None => Ok(FoldEnd::default()),
        }
    }

    async fn count(&self, query: ReadAll) -> Result<u64> {
        match self.scoped(&query) {
            Some(query) => self.store.count(query).await,
            None => Ok(0),
        }
    }

    async fn wait_for(&self, position: Position, timeout: Duration) -> Result<()> {
        self.store.wait_for(position, timeout).await
    }
}

impl<S: EventStore + SnapshotStore> SnapshotStore for TenantStore<S> {
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        match self.owned_version(snapshot.stream()).await? {
            Some(version) if version > 0 => self.store.save_snapshot(snapshot).await,
            _ => Err(self.mismatch(snapshot.stream(), FOREIGN_STREAM)),
        }
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        match self.owned_version(stream).await? {
            Some(version) if version > 0 => self.store.load_snapshot(stream).await,
            _ => Ok(None),
        }
    }

    async fn delete_snapshot(&self, stream: &StreamId) -> Result<bool> {
        match self.owned_version(stream).await? {
            Some(version) if version > 0 => self.store.delete_snapshot(stream).await,
            _ => Ok(false),
        }
    }
}

impl<S: EventStore + CheckpointStore> CheckpointStore for TenantStore<S> {
    async fn checkpoint(&self, projection: &str) -> Result<Option<Position>> {
        self.store
            .checkpoint(&self.checkpoint_name(projection))
            .await
    }

    async fn save_checkpoint(
        &self,
        projection: &str,
        previous: Option<Position>,
        position: Position,
    ) -> Result<()> {
        self.store
            .save_checkpoint(&self.checkpoint_name(projection), previous, position)
            .await
            .map_err(|error| self.own_name(projection, error))
    }

    async fn delete_checkpoint(&self, projection: &str) -> Result<()> {
        self.store
            .delete_checkpoint(&self.checkpoint_name(projection))
            .await
    }

    async fn add_dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        let mut letter = letter.clone();
        letter.projection = self.checkpoint_name(&letter.projection);
        self.store.add_dead_letter(&letter).await
    }

    async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>> {
        let mut letters = self
            .store
            .dead_letters(&self.checkpoint_name(projection))
            .await?;
        for letter in &mut letters {
            letter.projection = projection.to_owned();
        }
        Ok(letters)
    }

    async fn remove_dead_letter(&self, projection: &str, position: Position) -> Result<bool> {
        self.store
            .remove_dead_letter(&self.checkpoint_name(projection), position)
            .await
    }

    async fn lease(&self, projection: &str) -> Result<Option<Lease>> {
        self.store.lease(&self.checkpoint_name(projection)).await
    }
}
