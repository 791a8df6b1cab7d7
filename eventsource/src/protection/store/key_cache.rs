//! The protected store's cache of unwrapped keys, bounded in number and age.

use super::super::cipher::DataKey;
use super::super::keys::KeyState;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A cached key by id: when it was read, its tenant, the key (`None`: destroyed).
type CachedKey = (Instant, Option<String>, Option<DataKey>);
/// A subject: its tenant and its id.
type SubjectSlot = (Option<String>, String);

/// Unwrapped keys, bounded in number and age.
pub(super) struct KeyCache {
    ttl: Duration,
    by_id: Option<Mutex<LruCache<Uuid, CachedKey>>>,
    /// Current key by subject, with when it was read.
    current: Option<Mutex<LruCache<SubjectSlot, (Instant, DataKey)>>>,
}

impl KeyCache {
    pub(super) fn new(capacity: usize, ttl: Duration) -> Self {
        let capacity = NonZeroUsize::new(capacity).filter(|_| !ttl.is_zero());
        KeyCache {
            ttl,
            by_id: capacity.map(|c| Mutex::new(LruCache::new(c))),
            current: capacity.map(|c| Mutex::new(LruCache::new(c))),
        }
    }

    pub(super) fn fresh(&self, at: Instant) -> bool {
        at.elapsed() < self.ttl
    }

    pub(super) fn key(&self, tenant: Option<&str>, id: Uuid) -> Option<KeyState> {
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

    pub(super) fn put_key(&self, tenant: Option<&str>, id: Uuid, key: Option<DataKey>) {
        if let Some(cache) = &self.by_id {
            let owner = tenant.map(str::to_owned);
            cache
                .lock()
                .expect("key cache")
                .put(id, (Instant::now(), owner, key));
        }
    }

    pub(super) fn current(&self, tenant: Option<&str>, subject: &str) -> Option<DataKey> {
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

    pub(super) fn put_current(&self, key: &DataKey) {
        if let Some(cache) = &self.current {
            let slot = (key.tenant().map(str::to_owned), key.subject().to_owned());
            cache
                .lock()
                .expect("key cache")
                .put(slot, (Instant::now(), key.clone()));
        }
    }

    pub(super) fn forget(&self, tenant: Option<&str>, subject: &str, ids: &[Uuid]) {
        for id in ids {
            self.put_key(tenant, *id, None);
        }
        if let Some(cache) = &self.current {
            let slot = (tenant.map(str::to_owned), subject.to_owned());
            cache.lock().expect("key cache").pop(&slot);
        }
    }
}
