// The keys `from` and `version` of `upcast(...)` were renamed: each old key says its new name.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct DepositedV1 {
    cents: i64,
}

impl From<DepositedV1> for Deposited {
    fn from(v1: DepositedV1) -> Self {
        Deposited { cents: v1.cents }
    }
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(version = 2, upcast(from = DepositedV1, version = 1))]
struct Deposited {
    cents: i64,
}

fn main() {}
