// A key given twice, in one attribute or across two, points at the second occurrence.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(name = "Deposited", name = "MoneyDeposited")]
#[event(version = 2)]
#[event(version = 3)]
struct Deposited {
    amount: i64,
}

fn main() {}
