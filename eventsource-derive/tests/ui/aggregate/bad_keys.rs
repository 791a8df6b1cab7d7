// Unknown keys, a duplicate key and a bad policy: all reported together.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Opened;

#[derive(Default)]
struct Account;

#[aggregate(nme = "Account", name = "A", name = "B", unknown_events = "sometimes", snapshot = 5)]
impl Account {
    #[handles]
    fn opened(&mut self, _event: &Opened) {}
}

fn main() {}
