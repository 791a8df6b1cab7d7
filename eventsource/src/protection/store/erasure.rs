//! What `forget` hands to the application's hooks, and the hooks it offers.

use crate::error::Result;
use crate::snapshot::SnapshotStore;
use crate::stream::StreamId;
use futures::future::BoxFuture;
use std::future::Future;

/// What [`ProtectedStore::forget`](super::ProtectedStore::forget) did, as handed to each
/// [`ErasureHook`].
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

/// Called by [`ProtectedStore::forget`](super::ProtectedStore::forget) after the subject's keys
/// are destroyed, to remove the plain copies the application made: read-model rows, caches,
/// search indexes. Runs again,
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
