//! Where a runner is: its state and checkpoint, shared with its handle and the manager.

use crate::stream::Position;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// A projection's progress as its stores tell it, for an instance that does not run it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stored {
    /// The stored checkpoint.
    pub(super) checkpoint: Option<Position>,
    /// Every event the projection handles up to here is applied (see [`Progress::caught_up`]).
    pub(super) caught_up: Option<Position>,
}

/// Where a runner (a projection, a process manager, a relay) is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunnerState {
    /// Not started yet.
    Starting,
    /// Reading events that were stored before it got there.
    CatchingUp,
    /// At the head of the log, woken by new appends.
    Live,
    /// Another process runs this runner's name; this one takes over when that one stops.
    Standby,
    /// Shut down.
    Stopped,
    /// Stopped by an error (a dead-lettered event with [`OnFailure::Stop`](super::OnFailure::Stop), a checkpoint moved by
    /// another runner, the database failing for good); the text says which.
    Failed(String),
}

/// A runner's name, state and checkpoint: what [`Handle::status`](super::Handle::status) and
/// [`RunningSubscriptions::status`](super::RunningSubscriptions::status) report.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunnerStatus {
    /// The runner's name.
    pub name: String,
    /// Where it is.
    pub state: RunnerState,
    /// Every event up to here is applied (`None`: none yet).
    pub checkpoint: Option<Position>,
}

/// The shared view of one projection's progress.
#[derive(Debug)]
pub(crate) struct Progress {
    status: Mutex<RunnerStatus>,
    /// The readable head as of the projection's last read that found nothing more to apply:
    /// every event it handles up to there is applied.
    caught_up: Mutex<Option<Position>>,
    pub(super) changed: watch::Sender<u64>,
}

impl Progress {
    pub(crate) fn new(name: &str) -> Arc<Self> {
        Arc::new(Progress {
            status: Mutex::new(RunnerStatus {
                name: name.to_owned(),
                state: RunnerState::Starting,
                checkpoint: None,
            }),
            caught_up: Mutex::new(None),
            changed: watch::channel(0).0,
        })
    }

    pub(super) fn caught_up(&self) -> Option<Position> {
        *self
            .caught_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn set_caught_up(&self, head: Option<Position>) {
        *self
            .caught_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = head;
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn get(&self) -> RunnerStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stands by (another instance holds the lease), showing the progress that instance stored
    /// (`None`: it could not be read; what was shown stays).
    pub(super) fn stand_by(&self, stored: Option<Stored>) {
        self.update(|status| {
            status.state = RunnerState::Standby;
            stored
        });
    }

    /// Shows the progress another instance stored, if this one still stands by.
    pub(super) fn refresh_standby(&self, stored: Stored) {
        self.update(|status| (status.state == RunnerState::Standby).then_some(stored));
    }

    /// Changes the status under its lock; the stored progress `change` returns (if any) replaces
    /// the checkpoint and the caught-up head, under the same lock (so a runner that takes the
    /// lease meanwhile is not overwritten).
    fn update(&self, change: impl FnOnce(&mut RunnerStatus) -> Option<Stored>) {
        {
            let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(stored) = change(&mut status) {
                status.checkpoint = stored.checkpoint;
                *self
                    .caught_up
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = stored.caught_up;
            }
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn set(&self, state: RunnerState, checkpoint: Option<Position>) {
        {
            let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            status.state = state;
            status.checkpoint = checkpoint;
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}
