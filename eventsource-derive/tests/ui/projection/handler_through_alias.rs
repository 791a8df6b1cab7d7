// A type alias names the same event type: two handlers for one event.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    cents: i64,
}

type Money = Deposited;

#[derive(Default)]
struct Balances;

#[projection]
impl Balances {
    #[handles]
    fn money(&mut self, _event: &Money) {}

    #[handles]
    fn deposited(&mut self, _event: &Deposited) {}
}

fn main() {}
