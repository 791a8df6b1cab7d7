// A retired event type is always skipped: a handler for it would never run.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Opened;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(name = "Frozen", alias = "Blocked")]
struct Frozen;

#[derive(Default)]
struct Account;

#[aggregate(retired = ["Closed", "Blocked"])]
impl Account {
    #[handles]
    fn opened(&mut self, _event: &Opened) {}

    #[handles]
    fn frozen(&mut self, _event: &Frozen) {}
}

fn main() {}
