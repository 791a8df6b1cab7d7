//! One runner of a name at a time: the lease, and the progress a standby shows.

use super::runner::{RunnerCore, item_position, read_page, sleep_or_stop};
use crate::checkpoint::CheckpointStore;
use crate::error::Result;
use crate::store::EventStore;
use crate::stream::Position;
use tokio::sync::watch;

/// A projection's progress as its stores tell it, for an instance that does not run it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stored {
    /// The stored checkpoint.
    pub(super) checkpoint: Option<Position>,
    /// Every event the projection handles up to here is applied (see [`Progress::caught_up`]).
    pub(super) caught_up: Option<Position>,
}

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

/// Waits for the runner's lease (standing by while another process holds it, showing the
/// progress that one stores); `None` on shutdown.
pub(super) async fn take_lease<S: EventStore, C: CheckpointStore>(
    core: &RunnerCore<S, C>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<crate::checkpoint::Lease> {
    let name = &*core.name;
    loop {
        match core.checkpoints.lease(name).await {
            Ok(Some(lease)) => return Some(lease),
            Ok(None) => {
                let stored =
                    read_stored(&core.store, &core.checkpoints, name, &core.event_types).await;
                if let Err(error) = &stored {
                    tracing::debug!(projection = name, %error, "cannot read the stored progress");
                }
                core.progress.stand_by(stored.ok());
            }
            Err(error) => {
                tracing::warn!(projection = name, %error, "cannot take the projection's lease; retrying");
            }
        }
        if *shutdown.borrow() {
            return None;
        }
        sleep_or_stop(shutdown, core.options.lease_retry).await;
        if *shutdown.borrow() {
            return None;
        }
    }
}
