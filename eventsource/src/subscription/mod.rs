//! The subscription manager: keeps projections current, catch-up then live.
//!
//! Each projection runs in a task of its own: it reads the global log after its checkpoint, in
//! batches, filtered to the event types it handles, applies each event, and moves its
//! checkpoint. When it reaches the head it waits for the store's wake-up
//! ([`EventStore::watch_appends`](crate::store::EventStore::watch_appends): an in-process signal for memory and SQLite, `LISTEN`/`NOTIFY`
//! for PostgreSQL), with a bounded poll as the safety net, and reads the store again from its
//! checkpoint. The store is the only source of events, so the switch from catch-up to live can
//! neither skip nor repeat one.
//!
//! A handler that fails is retried with exponential backoff; when the attempts run out the event
//! goes to the dead-letter table and the projection goes on ([`OnFailure::Skip`], the default)
//! or stops ([`OnFailure::Stop`]). A stored row that cannot be read at all is dead-lettered the
//! same way.

mod handle;
mod lease;
mod manager;
mod memory;
mod options;
mod page;
mod runner;
mod shared;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
mod status;

pub use handle::Handle;
pub use manager::{RunningSubscriptions, Subscriptions};
pub use options::{OnFailure, RunnerOptions};
pub use status::{RunnerState, RunnerStatus};

pub(crate) use page::item_position;
pub(crate) use runner::{
    Applied, Replayed, Runner, RunnerCore, Step, StepError, letter_for_damaged,
};
