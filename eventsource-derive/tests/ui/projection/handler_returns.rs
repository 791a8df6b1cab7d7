// A handler returns `()` or `Result<(), E>`.
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
    fn deposited(&mut self, event: &Deposited) -> i64 {
        event.cents
    }
}

fn main() {}
