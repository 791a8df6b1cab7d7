// Not on an impl block.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    cents: i64,
}

#[projection]
#[derive(Default)]
struct Balances;

fn main() {}
