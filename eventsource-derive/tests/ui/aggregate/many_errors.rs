// One bad aggregate, every mistake reported in the same compiler run.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Opened;

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    amount: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
struct Closed;

#[derive(Default)]
struct Account {
    balance: i64,
}

#[aggregate(nmae = "Account")]
impl Account {
    #[handles]
    fn opened(&self, _event: &Opened) {}

    #[handles]
    fn deposited(&mut self, event: Deposited) -> i64 {
        self.balance += event.amount;
        self.balance
    }

    #[handles]
    fn closed(&mut self, _event: &Closed, _why: String) {}
}

fn main() {}
