// A type alias names the same event type: two handlers for one event.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    amount: i64,
}

type Money = Deposited;

#[derive(Default)]
struct Account {
    balance: i64,
}

#[aggregate]
impl Account {
    #[handles]
    fn money(&mut self, event: &Money) {
        self.balance += event.amount;
    }

    #[handles]
    fn deposited(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }
}

fn main() {}
