//! The repository's optional aggregate cache ([`Repository::with_cache`]): the newest saved
//! state of recently used aggregates, so that a command skips the load.
//!
//! The cache is trusted optimistically. A cached aggregate may be behind the store when another
//! process (or another repository) wrote to its stream; the save's expected-version check finds
//! that out, as it does for any stale load: the save fails with [`Error::Concurrency`], the
//! cached copy is dropped, and [`Repository::update`] runs the command again on a fresh load.
//! Nothing stale is ever saved.
//!
//! [`Repository::with_cache`]: crate::Repository::with_cache
//! [`Repository::update`]: crate::Repository::update
//! [`Error::Concurrency`]: crate::Error::Concurrency

use crate::aggregate::{Aggregate, Root};
use lru::LruCache;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Mutex;

/// A bounded least-recently-used map from stream key to the aggregate's saved state.
pub(crate) struct AggregateCache<A: Aggregate> {
    entries: Mutex<LruCache<String, Root<A>>>,
    /// `Root::committed_copy`, captured where `A: Clone` is known (the repository's methods do
    /// not require it).
    copy: fn(&Root<A>) -> Root<A>,
}

impl<A: Aggregate + Clone> AggregateCache<A> {
    /// A cache of at most `capacity` aggregates.
    pub(crate) fn new(capacity: NonZeroUsize) -> Self {
        AggregateCache {
            entries: Mutex::new(LruCache::new(capacity)),
            copy: Root::committed_copy,
        }
    }
}

impl<A: Aggregate> AggregateCache<A> {
    fn entries(&self) -> std::sync::MutexGuard<'_, LruCache<String, Root<A>>> {
        // A panic elsewhere while the lock was held leaves a map that is still consistent.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A copy of the cached aggregate of stream `key`, marked most recently used.
    pub(crate) fn get(&self, key: &str) -> Option<Root<A>> {
        self.entries().get(key).map(self.copy)
    }

    /// Keeps `root`'s saved state (its pending events are not part of it).
    pub(crate) fn put(&self, root: &Root<A>) {
        let copy = (self.copy)(root);
        self.entries()
            .put(root.stream_id().aggregate_id().to_owned(), copy);
    }

    /// Drops the cached copy of stream `key`, if any.
    pub(crate) fn remove(&self, key: &str) {
        self.entries().pop(key);
    }

    /// How many aggregates are cached.
    pub(crate) fn len(&self) -> usize {
        self.entries().len()
    }

    /// The most aggregates kept.
    pub(crate) fn capacity(&self) -> usize {
        self.entries().cap().get()
    }
}

impl<A: Aggregate> fmt::Debug for AggregateCache<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateCache")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .finish()
    }
}
