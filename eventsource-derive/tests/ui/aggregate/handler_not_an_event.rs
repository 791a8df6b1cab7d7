// A handler of a type that is not a domain event (here a type of another crate).
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
    fn note(&mut self, _event: &String) {}
}

fn main() {}
