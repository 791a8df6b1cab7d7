// One type, one `#[aggregate]` block: a second one would generate a second `Aggregate` impl.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Opened;

#[derive(DomainEvent, Serialize, Deserialize)]
struct Closed;

#[derive(Default)]
struct Account;

#[aggregate]
impl Account {
    #[handles]
    fn opened(&mut self, _event: &Opened) {}
}

#[aggregate]
impl Account {
    #[handles]
    fn closed(&mut self, _event: &Closed) {}
}

fn main() {}
