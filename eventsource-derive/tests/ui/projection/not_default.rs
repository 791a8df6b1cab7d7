// An in-memory projection without `reset = ...` must be `Default`.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    cents: i64,
}

struct Balances {
    total: i64,
}

#[projection]
impl Balances {
    #[handles]
    fn deposited(&mut self, event: &Deposited) {
        self.total += event.cents;
    }
}

fn main() {}
