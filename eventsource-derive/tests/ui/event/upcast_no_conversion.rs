// The old type exists but nothing converts it into the current one.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct DepositedV1 {
    amount: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(version = 2, upcast(from_version = 1, via = DepositedV1))]
struct Deposited {
    cents: i64,
}

fn main() {}
