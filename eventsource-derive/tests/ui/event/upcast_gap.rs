// Version 3 declares how to decode version 1, but nothing decodes version 2.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct DepositedV1 {
    amount: i64,
}

impl From<DepositedV1> for Deposited {
    fn from(v1: DepositedV1) -> Self {
        Deposited { cents: v1.amount * 100 }
    }
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(version = 3, upcast(from_version = 1, via = DepositedV1))]
struct Deposited {
    cents: i64,
}

fn main() {}
