// No single event type: no suggestion, the shape of a handler.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    amount: i64,
}

#[derive(Default)]
struct Account;

#[aggregate]
impl Account {
    #[handles]
    fn any(&mut self, _event: impl DomainEvent) {}

    #[handles]
    fn pair(&mut self, _event: &(Deposited, Deposited)) {}

    #[handles]
    fn many(&mut self, _events: &[Deposited]) {}
}

fn main() {}
