use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(version = 0)]
struct Deposited {
    amount: i64,
}

fn main() {}
