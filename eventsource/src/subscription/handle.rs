//! What every `add_*` returns: the runner's status, and what it shares with the caller.

use super::status::{Progress, RunnerStatus};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

/// A runner added to a [`Subscriptions`](super::Subscriptions) manager (a projection, a process
/// manager, a relay): its [`status`](Self::status) while it runs, and what it shares with the
/// caller, `T`:
///
/// | added with | handle | besides `status()` |
/// | --- | --- | --- |
/// | [`add`](super::Subscriptions::add), [`add_durable`](super::Subscriptions::add_durable) | `Handle<RwLock<P>>` | [`read`](Self::read): the read model |
/// | [`add_process`](super::Subscriptions::add_process) | `Handle<M>` | [`manager`](Self::manager) (in `process`) |
/// | `add_sql`, [`add_relay`](super::Subscriptions::add_relay) | `Handle` | (the model lives in the database; a relay has none) |
pub struct Handle<T = ()> {
    target: Arc<T>,
    progress: Arc<Progress>,
}

impl<T> Handle<T> {
    pub(crate) fn new(target: Arc<T>, progress: Arc<Progress>) -> Self {
        Handle { target, progress }
    }

    /// The runner's state and checkpoint.
    pub fn status(&self) -> RunnerStatus {
        self.progress.get()
    }

    /// What the runner shares with the caller (the model, the process manager).
    pub(crate) fn target(&self) -> &T {
        &self.target
    }
}

impl<P> Handle<RwLock<P>> {
    /// The read model, read-locked (the manager applies a batch at a time under the write lock).
    pub fn read(&self) -> RwLockReadGuard<'_, P> {
        self.target.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Handle {
            target: Arc::clone(&self.target),
            progress: Arc::clone(&self.progress),
        }
    }
}

impl<T> fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("status", &self.progress.get())
            .finish_non_exhaustive()
    }
}
