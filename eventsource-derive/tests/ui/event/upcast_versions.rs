// A version declared twice, and upcasts from versions that are not older than the current one.
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
#[event(
    version = 2,
    upcast(from_version = 1, via = DepositedV1),
    upcast(from_version = 1, via = DepositedV1),
    upcast(from_version = 2, via = DepositedV1),
    upcast(from_version = 7, via = DepositedV1)
)]
struct Deposited {
    cents: i64,
}

fn main() {}
