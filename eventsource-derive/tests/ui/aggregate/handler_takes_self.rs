// A handler whose event parameter is `Self`: the aggregate is not one of its events.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Opened;

#[derive(Default)]
struct Account;

#[aggregate]
impl Account {
    #[handles]
    fn opened(&mut self, _event: &Opened) {}

    #[handles]
    fn merged(&mut self, _other: &Self) {}
}

fn main() {}
