// Two handlers for one event type, written the same way.
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
    #[handles]
    fn deposited(&mut self, _event: &Deposited) {}

    #[handles]
    fn deposited_again(&mut self, _event: &Deposited, _ctx: &EventContext) {}
}

fn main() {}
