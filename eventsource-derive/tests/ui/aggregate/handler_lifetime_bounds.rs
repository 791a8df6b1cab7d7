// Lifetime parameters of a handler are accepted only when they change nothing.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Opened;

#[derive(Default)]
struct Account;

#[aggregate]
impl Account {
    #[handles]
    fn opened<'a: 'static>(&mut self, _event: &'a Opened) {}
}

fn main() {}
