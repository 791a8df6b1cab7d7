use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(name = 5, version = "2", aggregate = "")]
struct Deposited {
    amount: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(version = 2147483648)]
struct Withdrawn {
    amount: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event]
struct Closed;

fn main() {}
