// The aggregate's name and its retired event names follow the rules of stored names.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Opened;

#[derive(Default)]
struct Account;

#[aggregate(name = "Account ", retired = ["Closed", "Frozen\n", ""])]
impl Account {
    #[handles]
    fn opened(&mut self, _event: &Opened) {}
}

fn main() {}
