// No `#[handles]` method.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    cents: i64,
}

#[derive(Default)]
struct Balances;

#[projection]
impl Balances {
    fn deposited(&mut self, _event: &Deposited) {}
}

fn main() {}
