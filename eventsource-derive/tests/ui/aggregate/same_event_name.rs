// Two event types stored under one name cannot both be handled: dispatch is by name.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(name = "Deposited")]
struct Deposited {
    amount: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(name = "Deposited")]
struct DepositedInEuros {
    cents: i64,
}

#[derive(Default)]
struct Account {
    balance: i64,
}

#[aggregate]
impl Account {
    #[handles]
    fn deposited(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }

    #[handles]
    fn deposited_in_euros(&mut self, event: &DepositedInEuros) {
        self.balance += event.cents;
    }
}

fn main() {}
