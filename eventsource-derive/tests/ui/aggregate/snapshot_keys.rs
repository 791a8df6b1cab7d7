// Snapshot options take numbers from 1: an interval of 0 events or a state schema version of 0
// (or past what the stores hold) is refused, each on its literal, in one pass.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Opened;

#[derive(Default)]
struct Account;

#[aggregate(snapshot_every = 0, state_version = 0)]
impl Account {
    #[handles]
    fn opened(&mut self, _event: &Opened) {}
}

#[derive(Default)]
struct Ledger;

#[aggregate(snapshot_every = "100", state_version = 2147483648, snapshot_every = 10)]
impl Ledger {
    #[handles]
    fn opened(&mut self, _event: &Opened) {}
}

fn main() {}
