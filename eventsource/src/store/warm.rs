//! Connections a store keeps between its operations instead of giving each back to the pool.
//!
//! sqlx's pool tests every connection given back to it with a round trip to the database (for
//! PostgreSQL a `Sync` message, answered by `ReadyForQuery`), in a task it spawns, before
//! another operation may have it; and it hands out whichever idle connection comes first, so
//! that a loop of single statements wanders over several server processes. For a store whose
//! operations are one statement each, that is a second round trip per operation and a server
//! process that is rarely warm. The command path (a load, then an append) paid two such tests
//! per command: on PostgreSQL, one client's commands ran 15-19% faster without them (BENCHMARKS.md,
//! Performance).
//!
//! An operation that ran to its end leaves its connection in a known state (no statement in
//! flight, no transaction open), so the store keeps it on a shelf, up to a bound, and hands the
//! most recently shelved one to its next operation. An operation that failed or was cancelled
//! drops its connection as before, into the pool's test. A shelved connection unused for
//! [`IDLE`] goes back to the pool: an idle store holds none, and `Pool::close` (which waits for
//! every connection) completes. After a transient failure the store empties its shelf, so that
//! connections the server dropped go through the pool's test too.

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// How long a shelved connection waits for the store's next operation before it goes back to
/// the pool. The pool's test costs a round trip, which matters only to operations that follow
/// one another closely.
pub(crate) const IDLE: Duration = Duration::from_millis(100);

/// The shelf of one store's pool; clones share it. See the module's documentation.
#[derive(Debug)]
pub(crate) struct Warm<DB: Database> {
    shelf: Arc<Shelf<DB>>,
}

impl<DB: Database> Clone for Warm<DB> {
    fn clone(&self) -> Self {
        Warm {
            shelf: Arc::clone(&self.shelf),
        }
    }
}

#[derive(Debug)]
struct Shelf<DB: Database> {
    pool: Pool<DB>,
    /// Connections and when each was shelved, the most recent last.
    parked: Mutex<Vec<(PoolConnection<DB>, Instant)>>,
    /// How many connections the shelf holds at most.
    bound: usize,
    /// Set once the task that gives idle connections back is running.
    returner: OnceLock<()>,
}

impl<DB: Database> Warm<DB> {
    /// A shelf for `pool`'s connections holding at most half of them, so that code that takes
    /// connections from the pool itself always finds some (none of a pool of one).
    pub(crate) fn new(pool: Pool<DB>) -> Self {
        let bound = pool.options().get_max_connections() as usize / 2;
        Warm {
            shelf: Arc::new(Shelf {
                pool,
                parked: Mutex::new(Vec::new()),
                bound,
                returner: OnceLock::new(),
            }),
        }
    }

    /// A connection: the most recently shelved one, or else one of the pool.
    pub(crate) async fn acquire(&self) -> sqlx::Result<PoolConnection<DB>> {
        if let Some(conn) = self.take() {
            return Ok(conn);
        }
        self.shelf.pool.acquire().await
    }

    fn take(&self) -> Option<PoolConnection<DB>> {
        if self.shelf.pool.is_closed() {
            self.clear();
            return None;
        }
        let mut parked = self.shelf.parked.lock().unwrap_or_else(|e| e.into_inner());
        parked.pop().map(|(conn, _)| conn)
    }

    /// Shelves `conn`, whose operation ran to its end. A full shelf, a closed pool or the
    /// absence of a Tokio runtime (nothing could give it back later) sends it to the pool.
    pub(crate) fn put(&self, conn: PoolConnection<DB>) {
        if self.shelf.bound == 0 || self.shelf.pool.is_closed() || !self.returner_running() {
            return;
        }
        let mut parked = self.shelf.parked.lock().unwrap_or_else(|e| e.into_inner());
        if parked.len() < self.shelf.bound {
            parked.push((conn, Instant::now()));
        }
    }

    /// Gives every shelved connection back to the pool (after a transient failure: the pool
    /// tests them).
    pub(crate) fn clear(&self) {
        let parked =
            std::mem::take(&mut *self.shelf.parked.lock().unwrap_or_else(|e| e.into_inner()));
        drop(parked);
    }

    /// Starts, once, the task that gives idle connections back; whether it runs.
    fn returner_running(&self) -> bool {
        if self.shelf.returner.get().is_some() {
            return true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        self.shelf.returner.get_or_init(|| {
            runtime.spawn(give_back_idle(Arc::downgrade(&self.shelf)));
        });
        true
    }
}

/// Every [`IDLE`] / 2, gives the connections shelved for longer than [`IDLE`] back to the pool
/// (all of them once the pool is closed); ends with the shelf.
async fn give_back_idle<DB: Database>(shelf: Weak<Shelf<DB>>) {
    loop {
        tokio::time::sleep(IDLE / 2).await;
        let Some(shelf) = shelf.upgrade() else {
            return;
        };
        let closed = shelf.pool.is_closed();
        let stale: Vec<_> = {
            let mut parked = shelf.parked.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let fresh = parked
                .iter()
                .position(|(_, since)| !closed && now.duration_since(*since) < IDLE)
                .unwrap_or(parked.len());
            parked.drain(..fresh).collect()
        };
        // Dropped here, in the runtime: each goes back through the pool's test.
        drop(stale);
    }
}

impl<DB: Database> Drop for Shelf<DB> {
    fn drop(&mut self) {
        let parked = std::mem::take(self.parked.get_mut().unwrap_or_else(|e| e.into_inner()));
        if tokio::runtime::Handle::try_current().is_ok() {
            return;
        }
        // Outside a runtime the pool could not take them back (it spawns a task for that):
        // close them here, freeing their places in the pool.
        for (conn, _) in parked {
            drop(conn.detach());
        }
    }
}
