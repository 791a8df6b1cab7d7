// Two event types stored under one name: dispatch is by name, the second would never run.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(name = "Deposited")]
struct DepositedInEuros {
    cents: i64,
}

#[derive(Default)]
struct Balances;

#[projection]
impl Balances {
    #[handles]
    fn deposited(&mut self, _event: &Deposited) {}

    #[handles]
    fn deposited_in_euros(&mut self, _event: &DepositedInEuros) {}
}

fn main() {}
