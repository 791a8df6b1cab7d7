//! One runner of a name at a time: what a standby shows of the runner that holds the lease.

use super::page::{item_position, read_page};
use super::status::Stored;
use crate::checkpoint::CheckpointStore;
use crate::error::Result;
use crate::store::EventStore;
use crate::stream::Position;

/// The progress the instance that holds `name`'s lease has stored: its checkpoint, and how far
/// that covers the log (the events after it up to the first it handles are passed over).
pub(super) async fn read_stored<S: EventStore, C: CheckpointStore>(
    store: &S,
    checkpoints: &C,
    name: &str,
    event_types: &[&'static str],
) -> Result<Stored> {
    // The head first: every event the reads below do not find up to it is not to be applied.
    let head = store.log_head().await?.readable;
    let checkpoint = checkpoints.checkpoint(name).await?;
    let next = read_page(store, checkpoint, event_types, 1).await?;
    let caught_up = match next.first() {
        None => head,
        Some(item) => head.min(Position::new(item_position(item).get().saturating_sub(1))),
    };
    Ok(Stored {
        checkpoint,
        caught_up: Some(caught_up),
    })
}
