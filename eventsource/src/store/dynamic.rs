//! [`DynEventStore`]: the object-safe form of [`EventStore`], for `Arc<dyn DynEventStore>`.

use super::{
    AppendResult, EventStore, ExpectedVersion, FoldEnd, FoldItem, LogHead, Position, ReadAll,
    StreamId, StreamQuery,
};
use crate::error::Result;
use crate::event::{EventView, NewEvent, RecordedEvent};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use std::time::Duration;

/// [`EventStore`] with boxed futures, so that it can be a trait object: implemented for every
/// event store, and `Arc<dyn DynEventStore>` (or `Box`, or `&dyn`) is itself an [`EventStore`]
/// that a [`Repository`](crate::Repository) takes.
///
/// For a store chosen at run time among the built-in backends, [`AnyStore`](super::AnyStore)
/// does the same without boxing; this trait is for stores of your own mixed with ours. Its
/// methods are not meant to be called directly: call those of [`EventStore`].
///
/// ```
/// use eventsource::store::DynEventStore;
/// use eventsource::prelude::*;
/// use std::sync::Arc;
///
/// let store: Arc<dyn DynEventStore> = Arc::new(InMemoryEventStore::new());
/// fn takes_a_store(_: impl EventStore) {}
/// takes_a_store(store);
/// ```
pub trait DynEventStore: Send + Sync {
    /// [`EventStore::append`].
    fn dyn_append<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, Result<AppendResult>>;

    /// [`EventStore::read_stream`].
    fn dyn_read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        query: StreamQuery,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>>>;

    /// [`EventStore::read_all`].
    fn dyn_read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent>>;

    /// [`EventStore::stream_version`].
    fn dyn_stream_version<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, Result<u64>>;

    /// [`EventStore::stream_exists`].
    fn dyn_stream_exists<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, Result<bool>>;

    /// [`EventStore::fold_stream`].
    fn dyn_fold_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        query: StreamQuery,
        apply: &'a mut (dyn FnMut(EventView<'_>) -> Result<()> + Send),
    ) -> BoxFuture<'a, Result<()>>;

    /// [`EventStore::log_head`].
    fn dyn_log_head(&self) -> BoxFuture<'_, Result<LogHead>>;

    /// [`EventStore::wait_for`].
    fn dyn_wait_for(&self, position: Position, timeout: Duration) -> BoxFuture<'_, Result<()>>;

    /// [`EventStore::watch_appends`].
    fn dyn_watch_appends(&self) -> tokio::sync::watch::Receiver<u64>;

    /// [`EventStore::count`].
    fn dyn_count(&self, query: ReadAll) -> BoxFuture<'_, Result<u64>>;

    /// [`EventStore::fold_all`].
    fn dyn_fold_all<'a>(
        &'a self,
        query: &'a ReadAll,
        apply: &'a mut (dyn for<'e> FnMut(FoldItem<'e>) -> std::ops::ControlFlow<()> + Send),
    ) -> BoxFuture<'a, Result<FoldEnd>>;
}

impl<S: EventStore> DynEventStore for S {
    fn dyn_append<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, Result<AppendResult>> {
        Box::pin(self.append(stream, expected, events))
    }

    fn dyn_read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        query: StreamQuery,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>>> {
        Box::pin(self.read_stream(stream, query))
    }

    fn dyn_read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent>> {
        self.read_all(query)
    }

    fn dyn_stream_version<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.stream_version(stream))
    }

    fn dyn_stream_exists<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.stream_exists(stream))
    }

    fn dyn_fold_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        query: StreamQuery,
        apply: &'a mut (dyn FnMut(EventView<'_>) -> Result<()> + Send),
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.fold_stream(stream, query, apply))
    }

    fn dyn_log_head(&self) -> BoxFuture<'_, Result<LogHead>> {
        Box::pin(self.log_head())
    }

    fn dyn_wait_for(&self, position: Position, timeout: Duration) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.wait_for(position, timeout))
    }

    fn dyn_watch_appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.watch_appends()
    }

    fn dyn_count(&self, query: ReadAll) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.count(query))
    }

    fn dyn_fold_all<'a>(
        &'a self,
        query: &'a ReadAll,
        apply: &'a mut (dyn for<'e> FnMut(FoldItem<'e>) -> std::ops::ControlFlow<()> + Send),
    ) -> BoxFuture<'a, Result<FoldEnd>> {
        Box::pin(self.fold_all(query, apply))
    }
}

impl EventStore for dyn DynEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.dyn_append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        query: StreamQuery,
    ) -> Result<Vec<RecordedEvent>> {
        self.dyn_read_stream(stream, query).await
    }

    fn read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent>> {
        self.dyn_read_all(query)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        self.dyn_stream_version(stream).await
    }

    async fn fold_stream<F>(
        &self,
        stream: &StreamId,
        query: StreamQuery,
        mut apply: F,
    ) -> Result<()>
    where
        F: FnMut(EventView<'_>) -> Result<()> + Send,
    {
        self.dyn_fold_stream(stream, query, &mut apply).await
    }

    async fn stream_exists(&self, stream: &StreamId) -> Result<bool> {
        self.dyn_stream_exists(stream).await
    }

    async fn log_head(&self) -> Result<LogHead> {
        self.dyn_log_head().await
    }

    async fn wait_for(&self, position: Position, timeout: Duration) -> Result<()> {
        self.dyn_wait_for(position, timeout).await
    }

    fn watch_appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.dyn_watch_appends()
    }

    async fn count(&self, query: ReadAll) -> Result<u64> {
        self.dyn_count(query).await
    }

    async fn fold_all<F>(&self, query: &ReadAll, mut apply: F) -> Result<FoldEnd>
    where
        F: for<'e> FnMut(FoldItem<'e>) -> std::ops::ControlFlow<()> + Send,
    {
        self.dyn_fold_all(query, &mut apply).await
    }
}
