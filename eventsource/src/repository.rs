//! [`Repository`]: loads aggregates from their events and saves the events they record, with
//! optimistic concurrency.

use crate::aggregate::{Aggregate, Root};
use crate::error::{Error, Result};
use crate::store::{AppendResult, EventStore, ExpectedVersion, StreamId, StreamQuery};
use std::fmt;
use std::marker::PhantomData;

/// Loads and saves aggregates of type `A` in store `S`.
pub struct Repository<A, S> {
    store: S,
    max_attempts: u32,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// How many times [`update`](Self::update) runs a command by default before giving up.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

    /// A repository over `store`.
    pub fn new(store: S) -> Self {
        Repository {
            store,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            _aggregate: PhantomData,
        }
    }

    /// Sets how many times [`update`](Self::update) runs a command that keeps meeting concurrent
    /// writers (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// A new aggregate with no events. Its first save fails with [`Error::Concurrency`] if the
    /// stream already exists.
    pub fn create(&self, id: impl Into<A::Id>) -> Root<A> {
        Root::new(id.into())
    }

    /// Loads the aggregate from all its events. [`Error::AggregateNotFound`] if it has none.
    pub async fn load(&self, id: impl Into<A::Id>) -> Result<Root<A>> {
        self.load_query(id.into(), StreamQuery::all()).await
    }

    /// Loads the aggregate as it was at `version` (time travel): its first `version` events.
    /// [`Error::VersionNotFound`] if the stream has not reached `version`.
    pub async fn load_at(&self, id: impl Into<A::Id>, version: u64) -> Result<Root<A>> {
        let root = self
            .load_query(id.into(), StreamQuery::all().to_version(version))
            .await?;
        if root.version() < version {
            let current = self.store.stream_version(root.stream_id()).await?;
            return Err(Error::VersionNotFound {
                stream: root.stream_id().clone(),
                requested: version,
                current,
            });
        }
        Ok(root)
    }

    /// Loads the aggregate as it was at `time`: its events that occurred at or before it.
    /// [`Error::AggregateNotFound`] if it had none yet.
    pub async fn load_as_of(
        &self,
        id: impl Into<A::Id>,
        time: chrono::DateTime<chrono::Utc>,
    ) -> Result<Root<A>> {
        self.load_query(id.into(), StreamQuery::all().until(time))
            .await
    }

    /// Whether the aggregate has events.
    pub async fn exists(&self, id: impl Into<A::Id>) -> Result<bool> {
        let stream = StreamId::new(A::TYPE, id.into().to_string());
        self.store.stream_exists(&stream).await
    }

    /// Appends the aggregate's pending events, if the stream is still at the version the
    /// aggregate was loaded at. On [`Error::Concurrency`] nothing is stored and the root keeps its
    /// pending events.
    pub async fn save(&self, root: &mut Root<A>) -> Result<AppendResult> {
        let committed = root.committed_version();
        let expected = if committed == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(committed)
        };
        let events = root.encode_pending()?;
        if events.is_empty() {
            let stream_version = self.store.stream_version(root.stream_id()).await?;
            return Ok(AppendResult {
                stream_version,
                last_position: 0,
            });
        }
        let result = self
            .store
            .append(root.stream_id(), expected, events)
            .await?;
        root.mark_committed(result.stream_version);
        Ok(result)
    }

    /// Loads the aggregate, runs `command` on it and saves what it recorded; on a concurrency
    /// conflict, does it all again on the fresh state, up to the repository's attempt limit
    /// ([`Error::RetriesExhausted`] after that). An error of the command ends the update at once
    /// with nothing saved.
    ///
    /// The command's error type `E` is the application's own (any type that an [`Error`] converts
    /// into), or [`Error`] itself with [`Error::command`] for domain errors.
    pub async fn update<T, E, F>(&self, id: impl Into<A::Id>, mut command: F) -> Result<T, E>
    where
        F: FnMut(&mut Root<A>) -> Result<T, E>,
        E: From<Error>,
    {
        let id = id.into();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut root = self.load(id.clone()).await?;
            let output = command(&mut root)?;
            match self.save(&mut root).await {
                Ok(_) => return Ok(output),
                Err(conflict @ Error::Concurrency { .. }) if attempt < self.max_attempts => {
                    tracing::debug!(stream = %root.stream_id(), attempt, error = %conflict, "retrying command after a concurrent write");
                }
                Err(conflict @ Error::Concurrency { .. }) => {
                    return Err(Error::RetriesExhausted {
                        stream: root.stream_id().clone(),
                        attempts: attempt,
                        last: Box::new(conflict),
                    }
                    .into());
                }
                Err(other) => return Err(other.into()),
            }
        }
    }

    async fn load_query(&self, id: A::Id, query: StreamQuery) -> Result<Root<A>> {
        let mut root = Root::new(id);
        let stream = root.stream_id().clone();
        self.store
            .fold_stream(&stream, query, |event| root.apply_stored(event))
            .await?;
        if root.version() == 0 {
            return Err(Error::AggregateNotFound { stream });
        }
        Ok(root)
    }
}

impl<A, S: Clone> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Repository {
            store: self.store.clone(),
            max_attempts: self.max_attempts,
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate, S: fmt::Debug> fmt::Debug for Repository<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE)
            .field("store", &self.store)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}
