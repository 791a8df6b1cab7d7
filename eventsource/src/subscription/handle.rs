//! What `add*` returns: the runner's status (and its read model, for an in-memory one).

use super::status::{Progress, ProjectionStatus};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

/// A read model kept current by the manager: read it while it runs.
pub struct ProjectionHandle<P> {
    pub(super) model: Arc<RwLock<P>>,
    pub(super) progress: Arc<Progress>,
}

impl<P> Clone for ProjectionHandle<P> {
    fn clone(&self) -> Self {
        ProjectionHandle {
            model: Arc::clone(&self.model),
            progress: Arc::clone(&self.progress),
        }
    }
}

impl<P> fmt::Debug for ProjectionHandle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionHandle")
            .field("status", &self.progress.get())
            .finish_non_exhaustive()
    }
}

impl<P> ProjectionHandle<P> {
    /// The read model, read-locked (the manager applies a batch at a time under the write lock).
    pub fn read(&self) -> RwLockReadGuard<'_, P> {
        self.model.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The projection's state and checkpoint.
    pub fn status(&self) -> ProjectionStatus {
        self.progress.get()
    }
}

/// The status of a database read model: the model itself lives in the database.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Clone, Debug)]
pub struct SqlProjectionHandle {
    pub(super) progress: Arc<Progress>,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl SqlProjectionHandle {
    /// The projection's state and checkpoint.
    pub fn status(&self) -> ProjectionStatus {
        self.progress.get()
    }
}
