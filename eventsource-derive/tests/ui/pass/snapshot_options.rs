// Snapshot options become the aggregate's constants; without them, manual snapshots and state
// schema version 1.
use eventsource::prelude::*;
use eventsource::Aggregate;
use eventsource::SnapshotStrategy;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Opened;

#[derive(Default, Serialize, Deserialize)]
struct Account;

#[aggregate(snapshot_every = 100, state_version = 3)]
impl Account {
    #[handles]
    fn opened(&mut self, _event: &Opened) {}
}

#[derive(Default)]
struct Plain;

#[aggregate]
impl Plain {
    #[handles]
    fn opened(&mut self, _event: &Opened) {}
}

fn main() {
    assert_eq!(<Account as Aggregate>::SNAPSHOT_EVERY, Some(100));
    assert_eq!(<Account as Aggregate>::STATE_VERSION, 3);
    assert_eq!(SnapshotStrategy::of::<Account>(), SnapshotStrategy::every(100));
    assert_eq!(<Plain as Aggregate>::SNAPSHOT_EVERY, None);
    assert_eq!(<Plain as Aggregate>::STATE_VERSION, 1);
    assert_eq!(SnapshotStrategy::of::<Plain>(), SnapshotStrategy::manual());
}
